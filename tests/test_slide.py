"""The reader interface: level reads on each level's own grid, white outside the
slide with both readers, exact integer reductions."""

from __future__ import annotations

import numpy as np
import pytest

from multimag.wsi.slide import open_slide
from multimag.wsi.tile_decoding import reduce_pixels


def test_reduce_pixels_is_the_block_mean():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (240, 256, 3), dtype=np.uint8)
    for f in (2, 4, 8, 16):
        expected = a.reshape(240 // f, f, 256 // f, f, 3).astype(np.float64).mean(axis=(1, 3))
        assert np.abs(reduce_pixels(a, f) - expected).max() <= 0.5 + 1e-9
    edge = rng.integers(0, 256, (37, 50, 3), dtype=np.uint8)
    out = reduce_pixels(edge, 4)
    assert out.shape == (10, 13, 3)
    # the partial bottom-right block is the mean of the pixels it has
    assert np.abs(out[-1, -1] - edge[36:, 48:].reshape(-1, 3).mean(axis=0)).max() <= 0.5


@pytest.mark.parametrize("reader", ["tiffslide", "openslide"])
def test_outside_the_slide_is_white(cmu_slide, reader):
    with open_slide(cmu_slide, reader=reader) as slide:
        lv = slide.pyramid.levels[0]
        region = slide.read(0, lv.width - 10, -5, 30, 20)
        pixels = region.pixels
        assert pixels.shape == (20, 30, 3)
        assert (pixels[:5] == 255).all() and (pixels[:, 10:] == 255).all()
        inside = pixels[5:, :10]
        assert inside.mean() < 250  # real tissue/glass pixels, not padding
        assert (region.ox, region.oy) == (lv.width - 10, -5)


def test_both_readers_give_the_same_level0_pixels(cmu_slide):
    with open_slide(cmu_slide, reader="tiffslide") as a, \
            open_slide(cmu_slide, reader="openslide") as b:
        ra, rb = a.read(0, 300, 700, 500, 400), b.read(0, 300, 700, 500, 400)
    assert np.abs(ra.pixels.astype(int) - rb.pixels).max() <= 2


def test_reduced_reads_match_reduced_regions(fiducial_slide):
    path, _ = fiducial_slide
    with open_slide(path) as slide:
        for level, f in ((0, 2), (1, 2), (0, 4)):
            direct = slide.read_reduced(level, f, 37, 11, 150, 90)
            region = slide.read(level, 37 * f, 11 * f, 150 * f, 90 * f).pixels
            np.testing.assert_array_equal(direct, reduce_pixels(region, f))
