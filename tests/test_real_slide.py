"""The real Aperio slide (20x, 0.499 um/px): patches match an independent
reference, openslide read_region at level 0 plus PIL's anti-aliased resize of
the exact (fractional) footprint computed here from the slide's mpp."""

from __future__ import annotations

import numpy as np
import openslide
import pytest
import zarr
from PIL import Image

from multimag.wsi.patch_plan import TilingConfig
from multimag.wsi.slide import open_slide
from multimag.wsi.tiling import tile_slide

MAGS = (20.0, 10.0, 5.0)
FILTERS = {"box": Image.Resampling.BOX, "lanczos": Image.Resampling.LANCZOS}


def reference_patch(osr: openslide.OpenSlide, cx: float, cy: float, mag: float, side: int,
                    resample: str, shift: float = 0.0) -> np.ndarray:
    """``shift`` moves the footprint right by that many output pixels."""
    mpp0 = float(osr.properties["openslide.mpp-x"])
    scale = (0.25 * 40 / mag) / mpp0  # level-0 px per output px
    x0 = cx - side * scale / 2 + shift * scale
    y0 = cy - side * scale / 2
    margin = 16
    rx, ry = int(np.floor(x0)) - margin, int(np.floor(y0)) - margin
    n = int(np.ceil(side * scale)) + 2 * margin + 1
    rgb = osr.read_region((rx, ry), 0, (n, n))
    white = Image.new("RGBA", rgb.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(white, rgb).convert("RGB")
    box = (x0 - rx, y0 - ry, x0 - rx + side * scale, y0 - ry + side * scale)
    return np.asarray(rgb.resize((side, side), FILTERS[resample], box=box)).astype(np.float64)


@pytest.mark.parametrize("reader", ["tiffslide", "openslide"])
@pytest.mark.parametrize("resample", ["box", "lanczos"])
def test_patches_match_openslide_reference(cmu_slide, tmp_path, reader, resample):
    # lossless storage, so the comparison measures geometry and resampling only
    config = TilingConfig(magnifications=MAGS, patch_px=128, resample=resample,
                          compression="zstd")
    with open_slide(cmu_slide, reader=reader) as slide:
        assert slide.mpp == pytest.approx(0.499)
        assert slide.objective_power == 20
        summary = tile_slide(slide, tmp_path / "cmu.zarr", config)
    assert summary["patches"] >= 20
    store = zarr.open_group(tmp_path / "cmu.zarr", mode="r")
    assert store.attrs["mpp"] == pytest.approx(0.499)
    assert [lv["resample_factor"][0] for lv in store.attrs["levels"]] == pytest.approx(
        [0.5 / 0.499, 1 / 0.499, 2 / 0.499])
    osr = openslide.OpenSlide(str(cmu_slide))
    centers = store["centers"][:]
    picks = np.random.default_rng(0).choice(len(centers), size=6, replace=False)
    for m in MAGS:
        arr = store[f"mag_{m:g}x"]
        mads, shifted = [], []
        for i in picks:
            cx, cy = centers[i]
            ours = arr[i].astype(np.float64)
            mads.append(np.abs(ours - reference_patch(osr, cx, cy, m, 128, resample)).mean())
            shifted.append(np.abs(
                ours - reference_patch(osr, cx, cy, m, 128, resample, shift=0.5)).mean())
        assert np.median(mads) < 1.0, f"{m:g}x MAD {np.median(mads):.2f}"
        # half an output pixel of misplacement is far above that threshold
        assert np.median(shifted) > 5.0, f"{m:g}x: a half-pixel shift went unnoticed"


def test_jpeg_store_stays_close_to_reference(cmu_slide, tmp_path):
    config = TilingConfig(magnifications=MAGS, patch_px=128)
    with open_slide(cmu_slide) as slide:
        tile_slide(slide, tmp_path / "cmu.zarr", config)
    store = zarr.open_group(tmp_path / "cmu.zarr", mode="r")
    osr = openslide.OpenSlide(str(cmu_slide))
    cx, cy = store["centers"][0]
    for m in MAGS:
        ours = store[f"mag_{m:g}x"][0].astype(np.float64)
        # JPEG q90 on this already Q30-compressed, detailed tissue costs ~5-6 levels
        assert np.abs(ours - reference_patch(osr, cx, cy, m, 128, "box")).mean() < 8.0
