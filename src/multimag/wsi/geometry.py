"""The multi-magnification grid: the one source of truth for where a patch lies.

Coordinates are continuous (pixel ``i`` covers ``[i, i + 1)``), on level 0 unless
said otherwise. A magnification is a pixel size; each pyramid level maps to level
0 by its own per-axis scale; patch centres lie on the finest magnification's grid.
The rules and formulas are in docs/wsi.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from multimag.errors import ConfigError, ResolutionError

#: relative tolerance when comparing pixel sizes (0.499 um/px counts as 20x)
MPP_RTOL = 0.01
MODES = ("same_center", "same_field")
#: no whole-slide scanner has pixels this large (um); such a value is a bogus tag
IMPLAUSIBLE_MPP = 20.0


def mag_label(magnification: float) -> str:
    """``40 -> '40x'``, ``2.5 -> '2.5x'`` (the suffix of the store arrays)."""
    return f"{float(magnification):g}x"


@dataclass(frozen=True)
class Resolution:
    """What a magnification means in micrometres per pixel."""

    base_magnification: float = 40.0
    base_mpp: float = 0.25

    def mpp(self, magnification: float) -> float:
        return self.base_mpp * self.base_magnification / float(magnification)


def level_scale(size0: int, size: int) -> float:
    """Level-0 pixels per level pixel along one axis (integer when the pyramid is)."""
    if size <= 0:
        raise ValueError("level dimension must be positive")
    k = round(size0 / size)
    if k >= 1 and size in (size0 // k, -(-size0 // k)):
        return float(k)
    return size0 / size


@dataclass(frozen=True)
class Level:
    index: int
    width: int
    height: int
    scale_x: float
    scale_y: float

    @property
    def scale(self) -> float:
        """The coarser axis' scale: the pixel size used to pick this level."""
        return max(self.scale_x, self.scale_y)


@dataclass(frozen=True)
class Pyramid:
    """Level geometry of one slide, with its level-0 pixel size."""

    mpp: float
    levels: tuple[Level, ...]

    @classmethod
    def from_dimensions(cls, dimensions: Sequence[tuple[int, int]], mpp: float) -> Pyramid:
        w0, h0 = dimensions[0]
        levels = tuple(
            Level(i, int(w), int(h), level_scale(w0, w), level_scale(h0, h))
            for i, (w, h) in enumerate(dimensions)
        )
        return cls(float(mpp), levels)

    @property
    def width(self) -> int:
        return self.levels[0].width

    @property
    def height(self) -> int:
        return self.levels[0].height

    def level_mpp(self, level: Level) -> float:
        return self.mpp * level.scale

    def level_for(self, target_mpp: float) -> Level:
        """The level whose pixel size is the largest not exceeding ``target_mpp``.

        Returns level 0 when even level 0 is coarser than the target; callers
        decide whether that upsampling is allowed (:func:`plan_magnifications`).
        """
        best = self.levels[0]
        for level in self.levels[1:]:
            if self.level_mpp(level) <= target_mpp * (1 + MPP_RTOL) and level.scale > best.scale:
                best = level
        return best


@dataclass(frozen=True)
class MagPlan:
    """How one magnification is produced: its patch side, source level and scale."""

    magnification: float
    side: int  # output patch side in pixels
    target_mpp: float
    scale: float  # level-0 pixels per output pixel
    level: Level  # pyramid level the pixels are read from
    level_mpp: float
    factor_x: float  # level pixels per output pixel (> 1: downsample, < 1: upsample)
    factor_y: float

    @property
    def label(self) -> str:
        return mag_label(self.magnification)

    @property
    def array_name(self) -> str:
        return f"mag_{self.label}"

    @property
    def extent(self) -> float:
        """Side of the field of view in level-0 pixels."""
        return self.side * self.scale

    def footprint(self, cx: float, cy: float) -> tuple[float, float, float, float]:
        """Level-0 box ``(x0, y0, x1, y1)`` of the patch centred on ``(cx, cy)``."""
        half = self.extent / 2
        return cx - half, cy - half, cx + half, cy + half

    def level_box(self, cx: float, cy: float) -> tuple[float, float, float, float]:
        """The same box on the source level's own pixel grid."""
        x0, y0, x1, y1 = self.footprint(cx, cy)
        sx, sy = self.level.scale_x, self.level.scale_y
        return x0 / sx, y0 / sy, x1 / sx, y1 / sy

    def to_patch(self, x: float, y: float, cx: float, cy: float) -> tuple[float, float]:
        """Continuous patch coordinates of the level-0 point ``(x, y)``."""
        x0, y0, _, _ = self.footprint(cx, cy)
        return (x - x0) / self.scale, (y - y0) / self.scale

    @property
    def upsampled(self) -> bool:
        """Whether the level is read finer than it was scanned."""
        return min(self.factor_x, self.factor_y) < 1 - MPP_RTOL


def patch_sides(magnifications: Sequence[float], patch_px: int, mode: str) -> list[int]:
    """Output side per magnification.

    ``same_center``: every magnification is ``patch_px`` wide. ``same_field``:
    ``patch_px`` is the side at the finest magnification and the others shrink
    with magnification so that all cover the same field of view.
    """
    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r}", fix=f"set mode to one of {', '.join(MODES)}")
    if mode == "same_center":
        return [int(patch_px)] * len(magnifications)
    finest = max(magnifications)
    sides = []
    for m in magnifications:
        side = patch_px * m / finest
        if abs(side - round(side)) > 1e-9 or round(side) < 1:
            raise ConfigError(
                f"same_field: patch_px {patch_px} at {mag_label(finest)} gives a non-integer "
                f"side {side:g} px at {mag_label(m)}",
                fix="choose patch_px divisible by the ratio of the finest to the coarsest "
                "magnification",
            )
        sides.append(round(side))
    return sides


def plan_magnifications(
    pyramid: Pyramid,
    magnifications: Sequence[float],
    patch_px: int,
    mode: str,
    resolution: Resolution = Resolution(),
    allow_upsample: bool = False,
    slide: str | None = None,
    path: str | None = None,
) -> tuple[MagPlan, ...]:
    """One :class:`MagPlan` per magnification, finest first."""
    mags = sorted({float(m) for m in magnifications}, reverse=True)
    if len(mags) != len(magnifications):
        raise ConfigError("magnifications repeat", fix="list each magnification once")
    plans = []
    for m, side in zip(mags, patch_sides(mags, patch_px, mode), strict=True):
        target = resolution.mpp(m)
        if pyramid.mpp > target * (1 + MPP_RTOL) and not allow_upsample:
            fix = "drop that magnification, or set allow_upsample: true"
            if pyramid.mpp > IMPLAUSIBLE_MPP:
                fix = (f"{pyramid.mpp:g} um/px is no scanner's pixel size (a 72-dpi TIFF "
                       "resolution tag?): give the true mpp in samples.tsv or with --mpp")
            raise ResolutionError(
                f"{mag_label(m)} needs {target:g} um/px but the finest level is "
                f"{pyramid.mpp:g} um/px",
                slide=slide,
                path=path,
                fix=fix,
            )
        level = pyramid.level_for(target)
        scale = target / pyramid.mpp
        plans.append(MagPlan(m, side, target, scale, level, pyramid.level_mpp(level),
                             scale / level.scale_x, scale / level.scale_y))
    return tuple(plans)


@dataclass(frozen=True)
class Grid:
    """Candidate patch centres on the finest magnification's grid."""

    centers: np.ndarray  # (N, 2) int64 level-0 (x, y)
    rows: np.ndarray  # (N,) grid row
    cols: np.ndarray  # (N,) grid column
    stride: float  # level-0 pixels between neighbouring centres


def grid_centers(pyramid: Pyramid, finest: MagPlan, stride_px: int | None = None) -> Grid:
    """All grid centres whose finest-magnification patch lies inside level 0, row-major."""
    stride = (stride_px or finest.side) * finest.scale
    extent = finest.extent
    ncols = max(0, math.floor((pyramid.width - extent) / stride) + 1)
    nrows = max(0, math.floor((pyramid.height - extent) / stride) + 1)
    rows, cols = np.meshgrid(np.arange(nrows), np.arange(ncols), indexing="ij")
    rows, cols = rows.ravel(), cols.ravel()
    cx = np.floor(cols * stride + extent / 2 + 0.5).astype(np.int64)
    cy = np.floor(rows * stride + extent / 2 + 0.5).astype(np.int64)
    return Grid(np.stack([cx, cy], axis=1), rows, cols, stride)


def stripe_order(cols: np.ndarray, rows: np.ndarray, stripe_columns: int) -> np.ndarray:
    """Grid order: stripes of ``stripe_columns`` grid columns, left to right; rows
    top to bottom within a stripe; columns left to right within a row.

    Stripes bound the tiler's memory by the stripe width instead of the slide
    width, while every source tile is still decoded about once.
    """
    stripe = cols // max(1, int(stripe_columns))
    return np.lexsort((cols, rows, stripe))


def tiles_under(ty0: np.ndarray, tx0: np.ndarray, ty1: np.ndarray, tx1: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every tile under boxes that cover tile rows ``ty0[i]..ty1[i]`` and columns
    ``tx0[i]..tx1[i]`` (inclusive): arrays ``box, row, col``, one entry per box and
    tile."""
    boxes, rows, cols = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for dy in range(int((ty1 - ty0).max(initial=-1)) + 1):
        for dx in range(int((tx1 - tx0).max(initial=-1)) + 1):
            box = np.flatnonzero((ty0 + dy <= ty1) & (tx0 + dx <= tx1))
            boxes.append(box)
            rows.append(ty0[box] + dy)
            cols.append(tx0[box] + dx)
    return np.concatenate(boxes), np.concatenate(rows), np.concatenate(cols)


def footprints(centers: np.ndarray, extent: float) -> np.ndarray:
    """Level-0 boxes ``(x0, y0, x1, y1)`` of patches of side ``extent`` (level-0 px)."""
    c = np.asarray(centers, np.float64).reshape(-1, 2)
    return np.concatenate([c - extent / 2, c + extent / 2], axis=1)


def mask_fractions(mask: np.ndarray, scale_x: float, scale_y: float, boxes: np.ndarray
                   ) -> np.ndarray:
    """Area fraction of each level-0 box covered by a boolean (or 0..1) mask whose
    pixels are ``scale_x`` x ``scale_y`` level-0 pixels; area-exact.

    The summed-area table of a piecewise-constant mask is piecewise linear along
    each axis, so bilinear interpolation of it integrates the mask over boxes
    with fractional edges exactly. Outside the mask counts as 0.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if len(boxes) == 0 or mask.size == 0:
        return np.zeros(len(boxes), np.float32)
    h, w = mask.shape
    sat = np.zeros((h + 1, w + 1), np.float64)
    sat[1:, 1:] = np.asarray(mask, np.float64).cumsum(0).cumsum(1)
    bx = boxes / [scale_x, scale_y, scale_x, scale_y]
    x0, x1 = np.clip(bx[:, 0], 0, w), np.clip(bx[:, 2], 0, w)
    y0, y1 = np.clip(bx[:, 1], 0, h), np.clip(bx[:, 3], 0, h)

    def integral(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        xi = np.minimum(np.floor(x).astype(np.int64), w - 1)
        yi = np.minimum(np.floor(y).astype(np.int64), h - 1)
        fx, fy = x - xi, y - yi
        return ((1 - fx) * (1 - fy) * sat[yi, xi] + fx * (1 - fy) * sat[yi, xi + 1]
                + (1 - fx) * fy * sat[yi + 1, xi] + fx * fy * sat[yi + 1, xi + 1])

    inside = integral(x1, y1) - integral(x0, y1) - integral(x1, y0) + integral(x0, y0)
    area = (bx[:, 2] - bx[:, 0]) * (bx[:, 3] - bx[:, 1])
    return np.clip(inside / np.maximum(area, 1e-12), 0, 1).astype(np.float32)
