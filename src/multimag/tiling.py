"""Cut co-registered patches at every magnification and stream them into a store.

Order of work: the kept grid centres are visited in grid order (stripes of grid
columns, rows within a stripe, see :func:`geometry.stripe_order`). For each
row of a stripe, every source tile the row needs (on each level, reduced by
each integer factor) is decoded and reduced once, in parallel, into the
reader's tile cache; patches are then slices of the cached tiles. A patch whose
footprint does not fall on its magnification's integer grid (a 0.499 um/px
slide, a non-box filter, upsampling) is resampled from its own level region
with PIL's anti-aliased filter, on the level's own pixel grid.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from .geometry import (
    MagPlan,
    Resolution,
    footprints,
    grid_centers,
    plan_magnifications,
    stripe_order,
)
from .slide import Slide
from .store import StoreWriter, source_attrs
from .tissue import TissueMask, TissueParams, detect_tissue, draw_qc

FILTERS = {"box": Image.Resampling.BOX, "bilinear": Image.Resampling.BILINEAR,
           "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}
_SUPPORT = {"box": 0.5, "bilinear": 1.0, "bicubic": 2.0, "lanczos": 3.0}
_EPS = 1e-6


@dataclass(frozen=True)
class TilingConfig:
    magnifications: tuple[float, ...] = (40.0, 20.0, 10.0, 5.0)
    patch_px: int = 224
    mode: str = "same_center"
    stride_px: int | None = None
    allow_upsample: bool = False
    resample: str = "box"
    resolution: Resolution = field(default_factory=Resolution)
    tissue: TissueParams = field(default_factory=TissueParams)
    min_tissue: float = 0.5
    compression: str = "jpeg"
    jpeg_quality: int = 90
    zstd_level: int = 5
    shard_patches: int = 64
    stripe_columns: int = 64
    threads: int = 2

    @classmethod
    def from_config(cls, config: dict) -> TilingConfig:
        t, s = dict(config["tissue"]), config["store"]
        min_tissue = t.pop("min_fraction")
        return cls(tuple(float(m) for m in config["magnifications"]), config["patch_px"],
                   config["mode"], config["stride_px"], config["allow_upsample"],
                   config["resample"], Resolution(**config["resolution"]), TissueParams(**t),
                   min_tissue, s["compression"], s["jpeg_quality"], s["zstd_level"],
                   s["shard_patches"], s["stripe_columns"], config["threads"])

    def plans(self, slide: Slide) -> tuple[MagPlan, ...]:
        return plan_magnifications(slide.pyramid, self.magnifications, self.patch_px, self.mode,
                                   self.resolution, self.allow_upsample, slide.slide_id,
                                   str(slide.path))


@dataclass(frozen=True)
class PatchPlan:
    """The kept patches of one slide, in grid order."""

    plans: tuple[MagPlan, ...]
    centers: np.ndarray  # (N, 2) int64
    tissue: np.ndarray  # (N,) float32
    rows: np.ndarray  # (N,) grid row of each patch
    cols: np.ndarray  # (N,) grid column of each patch
    stripes: np.ndarray  # (N,) stripe of each patch
    candidates: int  # grid cells before the tissue filter

    def boxes(self, mag: int = 0) -> np.ndarray:
        """Level-0 footprints ``(x0, y0, x1, y1)`` at one magnification (finest: 0)."""
        return footprints(self.centers, self.plans[mag].extent)


def plan_patches(slide: Slide, tissue: TissueMask, config: TilingConfig) -> PatchPlan:
    plans = config.plans(slide)
    grid = grid_centers(slide.pyramid, plans[0], config.stride_px)
    fractions = tissue.fractions(footprints(grid.centers, plans[0].extent))
    keep = fractions >= max(config.min_tissue, _EPS)
    order = stripe_order(grid.cols[keep], grid.rows[keep], config.stripe_columns)
    cols = grid.cols[keep][order]
    return PatchPlan(plans, grid.centers[keep][order], fractions[keep][order],
                     grid.rows[keep][order], cols, cols // config.stripe_columns,
                     len(grid.centers))


# -- cutting ------------------------------------------------------------------------------

def _margin(plan: MagPlan, resample: str) -> int:
    """Level pixels the filter reads beyond a patch's footprint."""
    return math.ceil(_SUPPORT[resample] * max(plan.factor_x, plan.factor_y, 1.0)) + 1


def resample_patch(slide: Slide, plan: MagPlan, cx: float, cy: float,
                   resample: str = "box") -> np.ndarray:
    """The exact, general path: read the level region under the patch (plus the
    filter's support) and resample it onto the patch grid with PIL."""
    bx0, by0, bx1, by1 = plan.level_box(cx, cy)
    margin = _margin(plan, resample)
    x, y = math.floor(bx0) - margin, math.floor(by0) - margin
    w, h = math.ceil(bx1) + margin - x, math.ceil(by1) + margin - y
    region = slide.read(plan.level.index, x, y, w, h)
    box = (bx0 - region.ox, by0 - region.oy, bx1 - region.ox, by1 - region.oy)
    image = Image.fromarray(region.pixels)
    return np.asarray(image.resize((plan.side, plan.side), FILTERS[resample], box=box))


@dataclass(frozen=True)
class _Band:
    """Patches of one run that are slices of their level reduced by ``factor``:
    patch ``j`` is ``[y, y + side) x [xs[j], xs[j] + side)`` on that reduced grid."""

    factor: int
    y: int
    xs: np.ndarray

    @property
    def x0(self) -> int:
        return int(self.xs.min())

    def width(self, side: int) -> int:
        return int(self.xs.max()) + side - self.x0


def _band(plan: MagPlan, centers: np.ndarray, resample: str) -> _Band | None:
    """The run's patches as one band, when they all sit on an integer-reduced grid
    (box filter, integer factor, footprints on that grid) and share a row."""
    if resample != "box":
        return None
    f = round(plan.factor_x)
    if f < 1 or abs(plan.factor_x - f) > _EPS or abs(plan.factor_y - f) > _EPS:
        return None
    boxes = footprints(centers, plan.extent)
    x = boxes[:, 0] / plan.level.scale_x / f
    y = boxes[:, 1] / plan.level.scale_y / f
    xi, yi = np.rint(x), np.rint(y)
    if np.abs(x - xi).max() > _EPS or np.abs(y - yi).max() > _EPS or (yi != yi[0]).any():
        return None
    return _Band(f, int(yi[0]), xi.astype(np.int64))


def _run_tiles(slide: Slide, plan: MagPlan, centers: np.ndarray, band: _Band | None,
               resample: str) -> list[tuple[int, int, int, int]]:
    """The ``(level, factor, tile_row, tile_col)`` one run of patches needs at ``plan``."""
    lv = plan.level
    size = slide.reduced_tile_size(lv.index, band.factor) if band else None
    if band is not None and size is not None:
        f = band.factor
        x0, y0 = band.x0, band.y
        x1, y1 = x0 + band.width(plan.side), y0 + plan.side
        lim_w, lim_h = -(-lv.width // f), -(-lv.height // f)
    else:
        f, size = 1, slide.tile_size(lv.index)
        if size is None:
            return []
        sx, sy = plan.level.scale_x, plan.level.scale_y
        boxes = footprints(centers, plan.extent) / [sx, sy, sx, sy]  # on the level's grid
        m = _margin(plan, resample)
        x0, y0 = math.floor(boxes[:, 0].min()) - m, math.floor(boxes[:, 1].min()) - m
        x1, y1 = math.ceil(boxes[:, 2].max()) + m, math.ceil(boxes[:, 3].max()) + m
        lim_w, lim_h = lv.width, lv.height
    th, tw = size
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(lim_w, x1), min(lim_h, y1)
    return [(lv.index, f, ty, tx) for ty in range(y0 // th, (y1 - 1) // th + 1)
            for tx in range(x0 // tw, (x1 - 1) // tw + 1)] if x0 < x1 and y0 < y1 else []


def _cut_run(slide: Slide, plan: MagPlan, centers: np.ndarray, band: _Band | None,
             resample: str) -> list[np.ndarray]:
    """One run's patches at one magnification: views into one band when aligned."""
    if band is not None:
        x0, side = band.x0, plan.side
        pixels = slide.read_reduced(plan.level.index, band.factor, x0, band.y,
                                    band.width(side), side)
        if pixels is not None:
            return [pixels[:, x:x + side] for x in (band.xs - x0).tolist()]
    return [resample_patch(slide, plan, cx, cy, resample) for cx, cy in centers]


def _runs(patches: PatchPlan) -> list[tuple[int, int]]:
    """``[start, end)`` of each run: consecutive grid columns of one row of one stripe."""
    n = len(patches.centers)
    if n == 0:
        return []
    new = np.r_[True, (patches.stripes[1:] != patches.stripes[:-1])
                | (patches.rows[1:] != patches.rows[:-1])
                | (patches.cols[1:] != patches.cols[:-1] + 1)]
    starts = np.flatnonzero(new)
    return list(zip(starts.tolist(), np.r_[starts[1:], n].tolist(), strict=True))


def iter_patch_sets(slide: Slide, patches: PatchPlan, resample: str = "box",
                    lookahead: int = 3) -> Iterator[list[np.ndarray]]:
    """Patch sets (one array per magnification, finest first) in grid order.

    The source tiles of the next ``lookahead`` runs are decoded and reduced in
    the reader's pool while the current run is cut, so the decoders never wait
    for the cutter.
    """
    runs = _runs(patches)
    bands: dict[int, list[_Band | None]] = {}

    def prefetch(k: int) -> None:
        centers = patches.centers[runs[k][0]:runs[k][1]]
        bands[k] = [_band(plan, centers, resample) for plan in patches.plans]
        slide.prefetch([t for plan, band in zip(patches.plans, bands[k], strict=True)
                        for t in _run_tiles(slide, plan, centers, band, resample)])

    for k in range(min(lookahead, len(runs))):
        prefetch(k)
    for k, (start, end) in enumerate(runs):
        if k + lookahead < len(runs):
            prefetch(k + lookahead)
        centers = patches.centers[start:end]
        per_mag = [_cut_run(slide, plan, centers, band, resample)
                   for plan, band in zip(patches.plans, bands.pop(k), strict=True)]
        yield from (list(patch_set) for patch_set in zip(*per_mag, strict=True))


# -- the tile command ----------------------------------------------------------------------

def tile_slide(slide: Slide, out: str | Path, config: TilingConfig, *,
               patient_id: str | None = None, tissue: TissueMask | None = None,
               qc_path: str | Path | None = None, progress: bool | None = None) -> dict:
    """Build ``out`` (a ``.zarr`` store) for an open slide; returns a summary."""
    if tissue is None:
        tissue = detect_tissue(slide, config.tissue)
    patches = plan_patches(slide, tissue, config)
    n = len(patches.centers)
    if qc_path is not None:
        draw_qc(tissue, patches.boxes(), qc_path, f"{slide.slide_id}: {n} patches")
    if n == 0:
        warnings.warn(f"slide {slide.slide_id!r} ({slide.path}): no tissue patch reaches "
                      f"min_fraction {config.min_tissue}; writing an empty store (N = 0)",
                      stacklevel=2)
    attrs = {
        "slide_id": slide.slide_id,
        "patient_id": patient_id,
        "source": source_attrs(slide.path),
        **slide.describe(),
        "mode": config.mode,
        "patch_px": config.patch_px,
        "magnifications": [p.magnification for p in patches.plans],
        "resolution": {"base_magnification": config.resolution.base_magnification,
                       "base_mpp": config.resolution.base_mpp},
        "resample": config.resample,
        "levels": [p.provenance() for p in patches.plans],
        "grid": {"stride_level0": (config.stride_px or patches.plans[0].side)
                 * patches.plans[0].scale, "stripe_columns": config.stripe_columns,
                 "order": "stripes of stripe_columns grid columns left to right; rows top "
                          "to bottom within a stripe; columns left to right within a row",
                 "candidates": patches.candidates},
        "tissue": {**{k: getattr(config.tissue, k) for k in config.tissue.__dataclass_fields__},
                   "min_fraction": config.min_tissue, "threshold": tissue.threshold,
                   "slide_fraction": tissue.fraction},
    }
    with ThreadPoolExecutor(max(1, config.threads)) as pool, StoreWriter(
            out, centers=patches.centers, tissue=patches.tissue, plans=patches.plans,
            attrs=attrs, pool=pool, compression=config.compression,
            quality=config.jpeg_quality, zstd_level=config.zstd_level,
            shard_patches=config.shard_patches) as writer:
        bar = tqdm(total=n, unit="patch", desc=slide.slide_id, file=sys.stderr,
                   disable=(not sys.stderr.isatty()) if progress is None else not progress)
        try:
            for patch_set in iter_patch_sets(slide, patches, config.resample):
                writer.add(patch_set)
                bar.update()
        finally:
            bar.close()
        writer.commit()
    return {"slide_id": slide.slide_id, "store": str(out), "patches": n,
            "candidates": patches.candidates, "magnifications": [p.label for p in patches.plans]}

