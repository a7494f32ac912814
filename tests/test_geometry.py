"""The single source of truth for magnification geometry."""

from __future__ import annotations

import numpy as np
import pytest

from multimag.errors import ConfigError, ResolutionError
from multimag.wsi.geometry import (
    Pyramid,
    Resolution,
    grid_centers,
    level_scale,
    mag_label,
    patch_sides,
    plan_magnifications,
    stripe_order,
)


def test_mag_labels():
    assert [mag_label(m) for m in (40, 20.0, 2.5, 1.25)] == ["40x", "20x", "2.5x", "1.25x"]


def test_resolution_is_a_pixel_size():
    r = Resolution()
    assert [r.mpp(m) for m in (40, 20, 10, 5)] == [0.25, 0.5, 1.0, 2.0]
    assert Resolution(base_magnification=20, base_mpp=0.5).mpp(40) == 0.25


@pytest.mark.parametrize("size0,size,expected", [
    (46000, 11500, 4.0),       # exact
    (46001, 11500, 4.0),       # floor(W/4): Aperio
    (46003, 11501, 4.0),       # ceil(W/4)
    (250, 62, 4.0),            # boxes.tiff level 2 (openslide says 4.016)
    (300, 37, 8.0),            # boxes.tiff level 3
    (1000, 333, 3.0),          # floor(1000 / 3)
    (1000, 300, 1000 / 300),   # not an integer reduction: the true ratio
])
def test_level_scale_snaps_only_integer_reductions(size0, size, expected):
    assert level_scale(size0, size) == pytest.approx(expected)


def aperio_pyramid(mpp=0.25):
    return Pyramid.from_dimensions([(40001, 30003), (10000, 7500), (2500, 1875)], mpp)


def test_best_level_is_largest_pixel_not_exceeding_target():
    p = aperio_pyramid()
    plans = plan_magnifications(p, [40, 20, 10, 5, 2.5, 1.25], 224, "same_center")
    assert [pl.level.index for pl in plans] == [0, 0, 1, 1, 2, 2]
    assert [pl.factor_x for pl in plans] == [1, 2, 1, 2, 1, 2]
    assert [pl.array_name for pl in plans][-2:] == ["mag_2.5x", "mag_1.25x"]


def test_slightly_coarser_scan_still_counts_as_its_magnification():
    p = Pyramid.from_dimensions([(2220, 2967)], 0.499)
    (plan,) = plan_magnifications(p, [20], 224, "same_center")
    assert plan.level.index == 0 and plan.factor_x == pytest.approx(0.5 / 0.499)


def test_finer_than_scan_needs_allow_upsample():
    p = aperio_pyramid(mpp=0.5)
    with pytest.raises(ResolutionError, match="40x needs 0.25"):
        plan_magnifications(p, [40, 20], 224, "same_center", slide="s")
    plans = plan_magnifications(p, [40, 20], 224, "same_center", allow_upsample=True)
    assert plans[0].factor_x == 0.5 and plans[0].upsampled


def test_same_field_sides_and_errors():
    assert patch_sides([40, 20, 10, 5], 448, "same_field") == [448, 224, 112, 56]
    assert patch_sides([40, 20], 224, "same_center") == [224, 224]
    with pytest.raises(ConfigError, match="non-integer"):
        patch_sides([40, 20, 10, 5], 100, "same_field")
    with pytest.raises(ConfigError, match="mode"):
        patch_sides([40], 100, "nonsense")


def test_same_field_covers_one_field_same_center_widens():
    p = aperio_pyramid()
    field = plan_magnifications(p, [40, 20, 5], 448, "same_field")
    center = plan_magnifications(p, [40, 20, 5], 224, "same_center")
    assert {pl.extent for pl in field} == {448.0}
    assert [pl.extent for pl in center] == [224.0, 448.0, 1792.0]
    x0, y0, x1, y1 = center[2].footprint(1000, 2000)
    assert (x0, y0, x1, y1) == (104.0, 1104.0, 1896.0, 2896.0)
    assert center[2].level_box(1000, 2000) == (26.0, 276.0, 474.0, 724.0)
    # level-0 point -> patch coordinates is the inverse of the footprint
    assert center[2].to_patch(104.0, 1104.0, 1000, 2000) == (0.0, 0.0)
    assert center[2].to_patch(1000, 2000, 1000, 2000) == (112.0, 112.0)


def test_grid_keeps_finest_patch_inside_and_is_row_major():
    p = aperio_pyramid()
    (plan,) = plan_magnifications(p, [40], 224, "same_center")
    grid = grid_centers(p, plan)
    assert grid.centers[0].tolist() == [112, 112]
    assert grid.centers[1].tolist() == [336, 112]
    assert (grid.centers[:, 0] + 112 <= 40001).all() and (grid.centers[:, 1] + 112 <= 30003).all()
    assert grid.cols.max() == (40001 - 224) // 224
    half = grid_centers(p, plan, stride_px=112)
    assert half.centers[1].tolist() == [224, 112]


def test_stripe_order():
    rows, cols = np.meshgrid(np.arange(3), np.arange(5), indexing="ij")
    order = stripe_order(cols.ravel(), rows.ravel(), 2)
    pairs = list(zip(rows.ravel()[order], cols.ravel()[order], strict=True))
    assert pairs[:6] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    assert pairs[-3:] == [(0, 4), (1, 4), (2, 4)]
