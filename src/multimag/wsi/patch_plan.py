"""The tiling parameters and the plan they give for one slide: which patches are
kept, where each lies, and in which order they are cut (docs/wsi.md)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from multimag.wsi.geometry import (
    MagPlan,
    Resolution,
    footprints,
    grid_centers,
    plan_magnifications,
    stripe_order,
)
from multimag.wsi.slide import Slide
from multimag.wsi.tissue import TissueMask, TissueParams

# a patch needs some tissue, even with min_fraction 0
_LEAST_TISSUE = 1e-6


@dataclass(frozen=True)
class TilingConfig:
    """The ``tile`` step's parameters (the config's magnifications, patch, tissue and
    store sections)."""

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
        tissue, store = dict(config["tissue"]), config["store"]
        min_tissue = tissue.pop("min_fraction")
        return cls(tuple(float(m) for m in config["magnifications"]), config["patch_px"],
                   config["mode"], config["stride_px"], config["allow_upsample"],
                   config["resample"], Resolution(**config["resolution"]),
                   TissueParams(**tissue), min_tissue, store["compression"],
                   store["jpeg_quality"], store["zstd_level"], store["shard_patches"],
                   store["stripe_columns"], config["threads"])

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

    def select(self, start: int, end: int) -> PatchPlan:
        """Patches ``[start, end)``, in the same order."""
        part = slice(start, end)
        return replace(self, centers=self.centers[part], tissue=self.tissue[part],
                       rows=self.rows[part], cols=self.cols[part],
                       stripes=self.stripes[part])


def plan_patches(slide: Slide, tissue: TissueMask, config: TilingConfig) -> PatchPlan:
    """The grid cells whose finest-magnification patch holds at least
    ``config.min_tissue`` tissue, in grid order."""
    plans = config.plans(slide)
    grid = grid_centers(slide.pyramid, plans[0], config.stride_px)
    fractions = tissue.fractions(footprints(grid.centers, plans[0].extent))
    keep = fractions >= max(config.min_tissue, _LEAST_TISSUE)
    order = stripe_order(grid.cols[keep], grid.rows[keep], config.stripe_columns)
    cols = grid.cols[keep][order]
    return PatchPlan(plans, grid.centers[keep][order], fractions[keep][order],
                     grid.rows[keep][order], cols, cols // config.stripe_columns,
                     len(grid.centers))
