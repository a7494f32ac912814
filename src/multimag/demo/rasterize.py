"""Polygons on the pixel grid: snapping outlines to level-0 pixels and filling them.

A pixel ``(row i, col j)`` covers ``[j, j+1) x [i, i+1)`` in level-0 pixel units
and is inside a polygon when its centre ``(j + 0.5, i + 0.5)`` is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import shapely
from shapely.geometry import Polygon
from shapely.geometry.polygon import orient

__all__ = ["rasterize_polygons", "to_pixel_grid"]


def rasterize_polygons(polygons: Sequence[Polygon], shape: tuple[int, int],
                       downsample: float = 1.0) -> np.ndarray:
    """Boolean mask of the pixels whose centres lie inside the polygons (holes excluded).

    ``polygons`` are in level-0 pixel units; the mask pixel ``(i, j)`` has its
    centre at ``((j + 0.5) * downsample, (i + 0.5) * downsample)``. Scanline
    even-odd fill per polygon, union over polygons; vectorised, O(pixels).
    """
    h, w = shape
    out = np.zeros((h, w), bool)
    for poly in polygons:
        rings = [np.asarray(poly.exterior.coords, np.float64)[:-1] / downsample]
        rings += [np.asarray(r.coords, np.float64)[:-1] / downsample for r in poly.interiors]
        allxy = np.concatenate(rings)
        r0 = int(np.clip(math.floor(allxy[:, 1].min()) - 1, 0, h))
        r1 = int(np.clip(math.ceil(allxy[:, 1].max()) + 1, 0, h))
        c0 = int(np.clip(math.floor(allxy[:, 0].min()) - 1, 0, w))
        c1 = int(np.clip(math.ceil(allxy[:, 0].max()) + 1, 0, w))
        if r1 <= r0 or c1 <= c0:
            continue
        toggles = np.zeros((r1 - r0, c1 - c0 + 1), np.uint8)
        for ring in rings:
            _count_edge_crossings(toggles, ring, (r0, r1), (c0, c1))
        inside = (np.cumsum(toggles, axis=1, dtype=np.uint8)[:, : c1 - c0] & 1).astype(bool)
        out[r0:r1, c0:c1] |= inside
    return out


def _count_edge_crossings(toggles: np.ndarray, ring: np.ndarray, rows_range: tuple[int, int],
                          cols_range: tuple[int, int]) -> None:
    """Add 1 in ``toggles`` at the first pixel centre right of each edge crossing of a row.

    ``toggles`` covers rows ``rows_range`` and one column more than ``cols_range``.
    """
    r0, r1 = rows_range
    c0, c1 = cols_range
    x1, y1 = ring[:, 0], ring[:, 1]
    x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
    # rows i whose centre yc = i + 0.5 is in [min(y1, y2), max(y1, y2))
    i0 = np.clip(np.ceil(np.minimum(y1, y2) - 0.5).astype(np.int64), r0, r1)
    i1 = np.clip(np.ceil(np.maximum(y1, y2) - 0.5).astype(np.int64), r0, r1)
    counts = np.maximum(i1 - i0, 0)
    total = int(counts.sum())
    if total == 0:
        return
    edge = np.repeat(np.arange(len(x1)), counts)
    starts = np.cumsum(counts) - counts
    rows = i0[edge] + (np.arange(total) - starts[edge])
    yc = rows + 0.5
    xi = x1[edge] + (yc - y1[edge]) * (x2[edge] - x1[edge]) / (y2[edge] - y1[edge])
    # first column whose centre is right of the crossing
    col = np.clip(np.floor(xi - 0.5).astype(np.int64) + 1, c0, c1) - c0
    np.add.at(toggles, (rows - r0, col), 1)


def to_pixel_grid(poly: Polygon, mpp: float) -> Polygon:
    """um -> level-0 px on a 0.01 px grid (the exact coordinates written to disk).

    Snapping goes through ``shapely.set_precision``, which keeps the outline
    valid (a rounding that would fold a thin spike removes it instead).
    """
    px = shapely.transform(poly, lambda xy: xy / mpp)
    snapped = shapely.set_precision(px, 0.01)
    parts = [g for g in getattr(snapped, "geoms", [snapped]) if isinstance(g, Polygon)]
    best = max(parts, key=lambda g: g.area)
    out = orient(Polygon(np.round(np.asarray(best.exterior.coords), 2),
                         [np.round(np.asarray(r.coords), 2) for r in best.interiors]), sign=1.0)
    if not out.is_valid:
        raise RuntimeError("demo polygon became invalid on the 0.01 px grid")
    return out
