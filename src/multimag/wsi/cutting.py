"""Cutting a slide's planned patches, run by run, at every magnification.

A run is consecutive grid columns of one row of one stripe; each run is cut at each
magnification as one band of the level reduced by an integer factor, and its patches
are views of the band (from :class:`~multimag.wsi.bands.StripeBands` with a tiled
reader, else from a region read). A patch off its magnification's integer grid is
resampled from its own level region with PIL's anti-aliased filter (docs/wsi.md).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from multimag.wsi.bands import StripeBands
from multimag.wsi.geometry import MagPlan, footprints
from multimag.wsi.patch_plan import PatchPlan
from multimag.wsi.slide import Slide

FILTERS = {"box": Image.Resampling.BOX, "bilinear": Image.Resampling.BILINEAR,
           "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}
_SUPPORT = {"box": 0.5, "bilinear": 1.0, "bicubic": 2.0, "lanczos": 3.0}
# how far a footprint may lie off the reduced grid and still count as on it
_GRID_TOLERANCE = 1e-6


def filter_margin(plan: MagPlan, resample: str) -> int:
    """Level pixels the filter reads beyond a patch's footprint."""
    return math.ceil(_SUPPORT[resample] * max(plan.factor_x, plan.factor_y, 1.0)) + 1


def resample_patch(slide: Slide, plan: MagPlan, cx: float, cy: float,
                   resample: str = "box") -> np.ndarray:
    """The exact, general path: read the level region under the patch (plus the
    filter's support) and resample it onto the patch grid with PIL."""
    bx0, by0, bx1, by1 = plan.level_box(cx, cy)
    margin = filter_margin(plan, resample)
    x, y = math.floor(bx0) - margin, math.floor(by0) - margin
    w, h = math.ceil(bx1) + margin - x, math.ceil(by1) + margin - y
    region = slide.read(plan.level.index, x, y, w, h)
    box = (bx0 - region.ox, by0 - region.oy, bx1 - region.ox, by1 - region.oy)
    image = Image.fromarray(region.pixels)
    return np.asarray(image.resize((plan.side, plan.side), FILTERS[resample], box=box))


@dataclass(frozen=True)
class ReducedGrid:
    """Where a magnification's patches sit on their level reduced by an integer
    ``factor`` (box filter): patch ``i`` is ``[y[i], y[i] + side) x [x[i], x[i] + side)``
    on that grid where ``exact[i]``, i.e. its footprint falls on the grid."""

    factor: int
    x: np.ndarray
    y: np.ndarray
    exact: np.ndarray

    @classmethod
    def of(cls, plan: MagPlan, centers: np.ndarray, resample: str) -> ReducedGrid | None:
        factor = round(plan.factor_x)
        if resample != "box" or factor < 1 or abs(plan.factor_x - factor) > _GRID_TOLERANCE \
                or abs(plan.factor_y - factor) > _GRID_TOLERANCE:
            return None
        boxes = footprints(centers, plan.extent)
        x = boxes[:, 0] / plan.level.scale_x / factor
        y = boxes[:, 1] / plan.level.scale_y / factor
        xi, yi = np.rint(x), np.rint(y)
        exact = (np.abs(x - xi) <= _GRID_TOLERANCE) & (np.abs(y - yi) <= _GRID_TOLERANCE)
        return cls(factor, xi.astype(np.int64), yi.astype(np.int64), exact)


def _cut_run(slide: Slide, plan: MagPlan, grid: ReducedGrid | None, centers: np.ndarray,
             start: int, end: int, resample: str) -> list[np.ndarray]:
    """Patches ``[start, end)`` (one run) at one magnification: views into one band of
    the reduced level when they all lie on its grid in one row."""
    if grid is not None and grid.exact[start:end].all() \
            and (grid.y[start:end] == grid.y[start]).all():
        xs, side = grid.x[start:end], plan.side
        x0 = int(xs.min())
        pixels = slide.read_reduced(plan.level.index, grid.factor, x0, int(grid.y[start]),
                                    int(xs.max()) + side - x0, side)
        if pixels is not None:
            return [pixels[:, x:x + side] for x in (xs - x0).tolist()]
    return [resample_patch(slide, plan, cx, cy, resample) for cx, cy in centers[start:end]]


def _run_bounds(patches: PatchPlan) -> np.ndarray:
    """``[start, end)`` of each run (rows of an ``(runs, 2)`` array): consecutive grid
    columns of one row of one stripe."""
    n = len(patches.centers)
    new = np.r_[True, (patches.stripes[1:] != patches.stripes[:-1])
                | (patches.rows[1:] != patches.rows[:-1])
                | (patches.cols[1:] != patches.cols[:-1] + 1)] if n else np.zeros(0, bool)
    starts = np.flatnonzero(new)
    return np.c_[starts, np.r_[starts[1:], n]].astype(np.int64)


def _rows_per_canvas(rects: np.ndarray, rows: np.ndarray) -> int:
    """How many grid rows share a canvas at one magnification: 1 where rows do not
    overlap, else twice as many as overlap one row (each row's pixels then go to at
    most 2 canvases)."""
    used = rects[:, 2] > 0
    if used.sum() < 2:
        return 1
    y, r = rects[used, 0], rows[used]
    step = np.diff(r) > 0
    pitch = np.min(np.diff(y)[step] / np.diff(r)[step], initial=np.inf)
    overlap = int(rects[used, 2].max() // pitch) if np.isfinite(pitch) and pitch > 0 else 1
    return 2 * overlap if overlap > 1 else 1


class RunCutter:
    """Cuts a slide's planned patches run by run, any stretch ``[start, end)`` of them.

    A magnification whose patches lie on an integer reduction of a tiled level is cut
    from bands that :class:`~multimag.wsi.bands.StripeBands` fills (one per stripe, the
    current one and the one before, for a cut that goes backwards across a stripe's
    edge); the others through :func:`_cut_run`.
    """

    def __init__(self, slide: Slide, patches: PatchPlan, resample: str = "box") -> None:
        self.slide, self.patches, self.resample = slide, patches, resample
        self.grids = [ReducedGrid.of(plan, patches.centers, resample) for plan in patches.plans]
        self.runs = _run_bounds(patches)
        starts = self.runs[:, 0]
        self.run_stripes = patches.stripes[starts]
        self.run_rows = patches.rows[starts]
        self.versions, self.rects, self.painted = [], [], []  # painted: magnification indices
        self.rows_per_canvas = []
        for m, (plan, grid) in enumerate(zip(patches.plans, self.grids, strict=True)):
            rect = self._band_rects(plan, grid, starts)
            if rect is not None:
                self.painted.append(m)
                self.versions.append((plan.level.index, grid.factor))
                self.rects.append(rect)
                self.rows_per_canvas.append(_rows_per_canvas(rect, self.run_rows))
        self._stripes: dict[int, tuple[int, StripeBands]] = {}  # stripe -> (first run, bands)
        self._last = -1

    def _band_rects(self, plan: MagPlan, grid: ReducedGrid | None, starts: np.ndarray
                    ) -> np.ndarray | None:
        """Each run's band ``y, x, h, w`` on the reduced level (``h = 0`` where the run is
        not on the grid), or None when this magnification is not cut from bands."""
        size = self.slide.tile_size(plan.level.index)
        if grid is None or self.slide.tile_cache is None or size is None \
                or size[0] % grid.factor or size[1] % grid.factor or not len(starts):
            return None
        side = plan.side
        x0 = np.minimum.reduceat(grid.x, starts)
        on_grid = np.logical_and.reduceat(grid.exact, starts) \
            & (np.minimum.reduceat(grid.y, starts) == np.maximum.reduceat(grid.y, starts))
        w = np.maximum.reduceat(grid.x, starts) + side - x0
        return np.c_[grid.y[starts], x0, np.where(on_grid, side, 0), w].astype(np.int64)

    def _stripe_bands(self, stripe: int) -> tuple[int, StripeBands]:
        if stripe not in self._stripes:
            if len(self._stripes) >= 2:  # keep the last stripe used
                self._stripes = {k: v for k, v in self._stripes.items() if k == self._last}
            first, end = np.searchsorted(self.run_stripes, [stripe, stripe + 1])
            lengths = self.runs[first:end, 1] - self.runs[first:end, 0]
            self._stripes[stripe] = (int(first), StripeBands(
                self.slide, self.versions, [r[first:end] for r in self.rects],
                self.run_rows[first:end], lengths, self.rows_per_canvas))
        self._last = stripe
        return self._stripes[stripe]

    def sets(self, start: int, end: int) -> Iterator[list[np.ndarray]]:
        """Patch sets ``[start, end)`` (one array per magnification, finest first)."""
        patches, plans = self.patches, self.patches.plans
        first = int(np.searchsorted(self.runs[:, 1], start, side="right"))
        last = int(np.searchsorted(self.runs[:, 0], end, side="left"))
        for r in range(first, last):
            a, b = max(int(self.runs[r, 0]), start), min(int(self.runs[r, 1]), end)
            per_mag = [None] * len(plans)
            if self.painted:
                offset, bands = self._stripe_bands(int(self.run_stripes[r]))
                for v, m in enumerate(self.painted):
                    y, x, h, _ = self.rects[v][r]
                    if h:
                        band = bands.band(v, r - offset, b - a)
                        per_mag[m] = [band[:, i:i + h] for i in (self.grids[m].x[a:b] - x).tolist()]
            for m, (plan, grid) in enumerate(zip(plans, self.grids, strict=True)):
                if per_mag[m] is None:
                    per_mag[m] = _cut_run(self.slide, plan, grid, patches.centers, a, b,
                                          self.resample)
            yield from (list(patch_set) for patch_set in zip(*per_mag, strict=True))


def iter_patch_sets(slide: Slide, patches: PatchPlan, resample: str = "box"
                    ) -> Iterator[list[np.ndarray]]:
    """Patch sets (one array per magnification, finest first) in grid order."""
    return RunCutter(slide, patches, resample).sets(0, len(patches.centers))
