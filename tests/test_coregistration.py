"""Every mark lands on its predicted pixel, at every magnification, in both modes,
with both readers: the store is checked against geometry computed independently
here from the level-0 positions."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from conftest import FIDUCIAL_SIZE, full_tissue

from multimag.wsi.patch_plan import TilingConfig
from multimag.wsi.slide import open_slide
from multimag.wsi.tiling import tile_slide

MAGS = (40.0, 20.0, 10.0, 5.0)


def mark_centroid(patch: np.ndarray, u: float, v: float, radius: float):
    """Darkness-weighted centroid (pixel-index coordinates) near (u, v)."""
    gray = patch.astype(np.float64).mean(axis=2)
    background = np.median(gray)
    y0, y1 = int(max(0, np.floor(v - radius))), int(min(patch.shape[0], np.ceil(v + radius) + 1))
    x0, x1 = int(max(0, np.floor(u - radius))), int(min(patch.shape[1], np.ceil(u + radius) + 1))
    weight = np.clip(background - gray[y0:y1, x0:x1] - 20, 0, None)
    if weight.sum() == 0:
        return None
    yy, xx = np.mgrid[y0:y1, x0:x1]
    return (xx * weight).sum() / weight.sum(), (yy * weight).sum() / weight.sum()


@pytest.mark.parametrize("reader", ["tiffslide", "openslide"])
@pytest.mark.parametrize("mode,patch_px", [("same_center", 96), ("same_field", 256)])
def test_fiducials_land_on_predicted_pixels(fiducial_slide, tmp_path, reader, mode, patch_px):
    path, marks = fiducial_slide
    config = TilingConfig(magnifications=MAGS, patch_px=patch_px, mode=mode, min_tissue=0.5)
    with open_slide(path, reader=reader) as slide:
        # 10x and 5x must come from level 1 (downsample ~4), 40x and 20x from level 0
        summary = tile_slide(slide, tmp_path / "f.zarr", config, tissue=full_tissue(slide))
    assert summary["patches"] > 50
    store = zarr.open_group(tmp_path / "f.zarr", mode="r")
    assert [lv["level"] for lv in store.attrs["levels"]] == [0, 0, 1, 1]
    centers = store["centers"][:]
    finest_side = patch_px
    checked = {m: 0 for m in MAGS}
    errors = {m: [] for m in MAGS}
    for m in MAGS:
        scale = 40.0 / m  # level-0 px per output px at 0.25 um/px
        side = patch_px if mode == "same_center" else round(finest_side * m / 40.0)
        arr = store[f"mag_{m:g}x"]
        assert arr.shape == (len(centers), side, side, 3)
        half_mark = FIDUCIAL_SIZE / 2 / scale
        # only patches whose field contains a whole mark, with a margin
        for i, (cx, cy) in enumerate(centers):
            x0, y0 = cx - side * scale / 2, cy - side * scale / 2
            # predicted centroid in pixel-index coordinates: (m + 0.5 - x0) / s - 0.5
            u = (marks[:, 0] + 0.5 - x0) / scale - 0.5
            v = (marks[:, 1] + 0.5 - y0) / scale - 0.5
            inside = ((u - half_mark > 1) & (u + half_mark < side - 2)
                      & (v - half_mark > 1) & (v + half_mark < side - 2))
            if not inside.any():
                continue
            patch = arr[i]
            for uu, vv in zip(u[inside], v[inside], strict=True):
                found = mark_centroid(patch, uu, vv, half_mark + 3)
                assert found is not None, f"mark missing at {m:g}x patch {i}"
                errors[m].append(max(abs(found[0] - uu), abs(found[1] - vv)))
                checked[m] += 1
    for m in MAGS:
        assert checked[m] >= 10, f"too few marks checked at {m:g}x: {checked[m]}"
        worst = max(errors[m])
        assert worst <= 1.0, f"{reader}/{mode} {m:g}x: worst mark offset {worst:.2f} px"


def test_a_shifted_prediction_would_fail(fiducial_slide, tmp_path):
    """The check above can fail: a one-level-0-pixel-per-step bias at 40x shows up."""
    path, marks = fiducial_slide
    config = TilingConfig(magnifications=(40.0,), patch_px=96)
    with open_slide(path) as slide:
        tile_slide(slide, tmp_path / "f.zarr", config, tissue=full_tissue(slide))
    store = zarr.open_group(tmp_path / "f.zarr", mode="r")
    centers = store["centers"][:]
    offsets = []
    for i, (cx, cy) in enumerate(centers):
        u = marks[:, 0] + 0.5 - (cx - 48) - 0.5
        v = marks[:, 1] + 0.5 - (cy - 48) - 0.5
        inside = (u > 15) & (u < 80) & (v > 15) & (v < 80)
        for uu, vv in zip(u[inside], v[inside], strict=True):
            found = mark_centroid(store["mag_40x"][i], uu + 2, vv, 16)  # predicted 2 px off
            offsets.append(abs(found[0] - (uu + 2)))
    assert offsets and min(offsets) > 1.0
