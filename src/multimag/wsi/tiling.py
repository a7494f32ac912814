"""The ``tile`` step: plan a slide's patches, cut them at every magnification in
worker processes and stream them into the slide's patch store."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

from tqdm import tqdm

from multimag.wsi.patch_plan import TilingConfig, plan_patches
from multimag.wsi.slide import Slide
from multimag.wsi.store import StoreWriter, store_attrs
from multimag.wsi.tissue import TissueMask, detect_tissue, draw_qc
from multimag.wsi.workers import BlockCutter


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
    attrs = store_attrs(slide, patches, config, tissue, patient_id)
    with BlockCutter(slide, patches, resample=config.resample, workers=config.threads,
                     chunk=config.shard_patches) as cutter, StoreWriter(
            out, centers=patches.centers, tissue=patches.tissue, plans=patches.plans,
            attrs=attrs, compression=config.compression, quality=config.jpeg_quality,
            zstd_level=config.zstd_level, shard_patches=config.shard_patches) as writer, tqdm(
            total=n, unit="patch", desc=slide.slide_id, file=sys.stderr,
            disable=(not sys.stderr.isatty()) if progress is None else not progress) as bar:
        writer.commit(cutter.run(writer.shards, bar.update))
    return {"slide_id": slide.slide_id, "store": str(out), "patches": n,
            "candidates": patches.candidates, "magnifications": [p.label for p in patches.plans]}
