"""Which source tiles the cut of a slide's planned patches reads, and where: the
decoding each patch brings to its block, and the tiles two stripes share."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from multimag.wsi.cutting import ReducedGrid, filter_margin
from multimag.wsi.geometry import MagPlan, footprints, tiles_under
from multimag.wsi.patch_plan import PatchPlan
from multimag.wsi.slide import Slide

_ROW, _LEVEL = 21, 42  # bit offsets of a tile's row and level in its id
_ROW_MASK = 2**_ROW - 1

TileVersion = tuple[int, int, int, int]  # (level, factor, tile row, tile column)


def _tiles_read(slide: Slide, plan: MagPlan, centers: np.ndarray, resample: str
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Every read of a tile at one magnification: the tile's id, the factor it is
    reduced by and the patch that reads it; None when the level is not tiled."""
    level = plan.level
    size = slide.tile_size(level.index)
    if size is None:
        return None
    th, tw = size
    n = len(centers)
    box = footprints(centers, plan.extent) / ([level.scale_x, level.scale_y] * 2)
    grid = ReducedGrid.of(plan, centers, resample)
    exact = np.zeros(n, bool) if grid is None else grid.exact
    factor = np.ones(n, np.int64)  # the reader reduces whole tiles by the factor
    if grid is not None and th % grid.factor == 0 and tw % grid.factor == 0:
        factor[exact] = grid.factor
    margin = filter_margin(plan, resample)  # what resample_patch reads around a footprint
    box = np.where(exact[:, None], box, np.c_[np.floor(box[:, :2]) - margin,
                                              np.ceil(box[:, 2:]) + margin])
    x0 = np.clip(np.floor(box[:, 0]), 0, level.width - 1).astype(np.int64) // tw
    y0 = np.clip(np.floor(box[:, 1]), 0, level.height - 1).astype(np.int64) // th
    x1 = np.clip(np.ceil(box[:, 2]) - 1, 0, level.width - 1).astype(np.int64) // tw
    y1 = np.clip(np.ceil(box[:, 3]) - 1, 0, level.height - 1).astype(np.int64) // th
    owner, rows, cols = tiles_under(y0, x0, y1, x1)
    return (level.index << _LEVEL) + (rows << _ROW) + cols, factor[owner], owner


def _versions(tile: np.ndarray, factor: np.ndarray) -> set[TileVersion]:
    """The distinct ``(level, factor, row, col)`` among reads of tile ids ``tile``."""
    keys = np.unique((tile << 8) + factor)  # factor < 256
    return set(zip((keys >> (_LEVEL + 8)).tolist(), (keys & 255).tolist(),
                   ((keys >> (_ROW + 8)) & _ROW_MASK).tolist(),
                   ((keys >> 8) & _ROW_MASK).tolist(), strict=True))


@dataclass(frozen=True)
class TileUse:
    """How a cut uses the slide's tiles (tile-based readers only).

    ``new[i]``: how many tiles patch ``i`` is the first to read, i.e. the decoding it
    brings to the block that cuts it. ``again[backward]``: the tile versions
    ``(level, factor, row, col)`` that a stripe reads after another stripe decoded
    the tile, when the stripes are cut forwards (``again[0]``) or backwards
    (``again[1]``): a stripe's edge tiles, which the cutter keeps in the reader's
    cache for the next stripe (:meth:`~multimag.wsi.slide.Slide.keep`).
    """

    new: np.ndarray
    again: tuple[set[TileVersion], set[TileVersion]]

    @classmethod
    def of(cls, slide: Slide, patches: PatchPlan, resample: str = "box") -> TileUse | None:
        """None when the reader's reads are not tile-based."""
        n = len(patches.centers)
        reads = []
        for plan in patches.plans:
            read = _tiles_read(slide, plan, patches.centers, resample)
            if read is None:
                return None
            reads.append(read)
        if n == 0 or not reads:
            return cls(np.zeros(n, np.int64), (set(), set()))
        tile, factor, owner = (np.concatenate(part) for part in zip(*reads, strict=True))
        order = np.argsort(tile)
        tile, factor, owner = tile[order], factor[order], owner[order]
        starts = np.flatnonzero(np.r_[True, tile[1:] != tile[:-1]])
        first = np.minimum.reduceat(owner, starts)
        count = np.diff(np.r_[starts, len(tile)])  # reads of each tile
        stripe = patches.stripes[owner]  # patches are in stripe order
        first_stripe = np.repeat(patches.stripes[first], count)
        last_stripe = np.repeat(patches.stripes[np.maximum.reduceat(owner, starts)], count)
        forwards, backwards = stripe > first_stripe, stripe < last_stripe
        return cls(np.bincount(first, minlength=n),
                   (_versions(tile[forwards], factor[forwards]),
                    _versions(tile[backwards], factor[backwards])))
