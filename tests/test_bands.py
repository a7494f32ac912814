"""Bands filled as each tile is decoded (multimag.wsi.bands) against the reader's own
region reads, and tiles decoded into a reused buffer against tifffile's decoding."""

from __future__ import annotations

import inspect
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from conftest import fixture_path, full_tissue

from multimag.wsi import cutting
from multimag.wsi.cutting import RunCutter
from multimag.wsi.patch_plan import TilingConfig, plan_patches
from multimag.wsi.slide import open_slide
from multimag.wsi.tile_decoding import decode_buffer


def _ragged(patches):
    """Tissue with a ragged edge and holes: runs of many lengths in a row, canvases
    wider than most of their bands."""
    keep = (patches.cols % 17 < 4 + (patches.rows * 7) % 13) \
        & ~((patches.rows % 5 == 2) & (patches.cols % 4 == 1))
    return replace(patches, centers=patches.centers[keep], tissue=patches.tissue[keep],
                   rows=patches.rows[keep], cols=patches.cols[keep],
                   stripes=patches.stripes[keep])


@pytest.mark.parametrize("mode", ["same_center", "same_field"])
@pytest.mark.parametrize("backward", [False, True])
@pytest.mark.parametrize("ragged", [False, True])
def test_bands_give_the_pixels_of_region_reads(fiducial_slide, mode, backward, ragged):
    """Every patch at every magnification, cut from the bands (forwards, or chunk by
    chunk from the last as the backward worker cuts, so that runs and canvases are
    split between chunks and stripes are entered from below), equals the same patch
    cut from the reader's region reads: the edge tiles of the odd-sized level, the
    white beyond the slide, the canvases shared by rows. Nothing is left open."""
    path, _ = fiducial_slide
    config = TilingConfig(magnifications=(40.0, 20.0, 10.0, 5.0), patch_px=96, mode=mode,
                          stripe_columns=8)
    with open_slide(path, test_read=False) as slide:
        patches = plan_patches(slide, full_tissue(slide), config)
        if ragged:
            patches = _ragged(patches)
        cutter = RunCutter(slide, patches)
        assert cutter.painted == [0, 1, 2, 3]
        assert (max(cutter.rows_per_canvas) > 1) == (mode == "same_center")
        n, chunk = len(patches.centers), 40  # chunks that split rows
        starts = range(0, n, chunk)
        cut = {}
        for start in (reversed(starts) if backward else starts):
            for k, patch_set in enumerate(cutter.sets(start, min(start + chunk, n))):
                cut[start + k] = [patch.copy() for patch in patch_set]
        assert sorted(cut) == list(range(n)) and patches.stripes.max() >= 3
        for i in range(n):
            for m, (plan, grid) in enumerate(zip(patches.plans, cutter.grids, strict=True)):
                expected, = cutting._cut_run(slide, plan, grid, patches.centers, i, i + 1, "box")
                np.testing.assert_array_equal(cut[i][m], expected, err_msg=f"patch {i} mag {m}")
        assert not any(opened for _, bands in cutter._stripes.values() for opened in bands._open)


@pytest.mark.parametrize("parts, jpeg", [(("openslide", "small.svs"), True),
                                         (("real", "cmu-1-small-region.svs"), True),
                                         (("openslide", "boxes.tiff"), False)])
def test_tiles_decoded_into_a_buffer_are_tifffiles_pixels(parts, jpeg):
    """JPEG tiles (with shared tables, RGB or YCbCr) are decoded straight into the
    buffer; other codecs through tifffile. Either way the pixels are tifffile's."""
    with open_slide(fixture_path(*parts), mpp=0.5, test_read=False) as slide:
        for lv in slide.pyramid.levels:
            th, tw = slide.tile_size(lv.index)
            buffer = np.empty((th, tw, 3), np.uint8)
            rows, cols = -(-lv.height // th), -(-lv.width // tw)
            for ty, tx in {(0, 0), (rows // 2, cols // 2), (rows - 1, cols - 1)}:
                mine = slide.decode_tile(lv.index, ty, tx, out=buffer)
                theirs = slide.decode_tile(lv.index, ty, tx)
                assert mine.shape == (min(th, lv.height - ty * th), min(tw, lv.width - tx * tw), 3)
                np.testing.assert_array_equal(mine, theirs)
                if mine.shape[:2] == (th, tw):
                    assert np.shares_memory(mine, buffer) == jpeg


@pytest.mark.parametrize("side", [240, 256])
def test_decode_buffers_keep_every_row_off_the_boundaries_of_streaming_stores(side):
    """libjpeg-turbo writes rows that start on a 16- or 32-byte boundary with stores
    that bypass the CPU cache; every row of a decode buffer starts 8 bytes past one."""
    for _ in range(8):  # wherever numpy happens to put the memory
        buffer = decode_buffer(side, side)
        assert buffer.shape == (side, side, 3) and buffer.flags.c_contiguous
        rows = buffer.ctypes.data + np.arange(side) * buffer.strides[0]
        assert (rows % 16 == 8).all()


def _vma_flags(address: int) -> list[str] | None:
    """The VmFlags of the mapping that holds ``address`` (Linux), None elsewhere."""
    try:
        lines = open("/proc/self/smaps").read().splitlines()
    except OSError:
        return None
    inside = False
    for line in lines:
        head = line.split()[0]
        if "-" in head and ":" not in head:
            start, end = (int(x, 16) for x in head.split("-"))
            inside = start <= address < end
        elif inside and line.startswith("VmFlags:"):
            return line.split()[1:]
    return None


_HUGE_PAGE_CHECK = """
import sys

import numpy as np

from multimag.wsi import bands

if bands._set_madvise_hugepage is None:
    print("this numpy has no switch for huge pages")
    sys.exit(3)
shape = (1024, 4096, 3)  # 12 MiB
before = bands._set_madvise_hugepage(True)
try:
    control = np.empty(shape, np.uint8)
    flags = _vma_flags(control.ctypes.data + control.nbytes // 2)
    if flags is None or "hg" not in flags:
        print("numpy does not ask this kernel for huge pages")
        sys.exit(3)
    canvas = bands._canvas_memory(shape)
    assert canvas.shape == shape and canvas.dtype == np.uint8
    assert "hg" not in _vma_flags(canvas.ctypes.data + canvas.nbytes // 2)
    assert bands._set_madvise_hugepage(True) is True  # still on
finally:
    bands._set_madvise_hugepage(before)
"""


def test_canvases_are_not_put_on_huge_pages():
    """numpy asks for transparent huge pages for arrays of 4 MiB or more; the
    canvases are allocated without asking (faulted in after an idle spell they cost
    several times their small pages), and numpy's setting is left as it was.

    Checked in a fresh interpreter: in a long-lived one (a test worker), malloc may
    hand the canvas memory that numpy advised for an array freed earlier."""
    code = inspect.getsource(_vma_flags) + _HUGE_PAGE_CHECK
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if result.returncode == 3:
        pytest.skip(result.stdout.strip())
    assert result.returncode == 0, result.stdout + result.stderr
