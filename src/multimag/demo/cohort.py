"""Write the synthetic demo cohort: 14 small H&E-like SVS slides from 10 patients, their
tumour annotations in three formats, ``samples.tsv`` and a README (see docs/demo.md).

Slide ``k`` draws from ``np.random.SeedSequence([seed, k])`` only, so the output is
deterministic and does not depend on which other slides are made, nor on the threads.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from shapely.geometry import Polygon

from multimag.demo.annotation_files import asap_xml_text, geojson_text, write_mask_tiff
from multimag.demo.cohort_table import write_readme, write_samples_tsv
from multimag.demo.layout import DemoSlide, cohort_spec
from multimag.demo.outlines import tissue_blobs, tumour_regions
from multimag.demo.rasterize import rasterize_polygons, to_pixel_grid
from multimag.demo.render import render_slide
from multimag.demo.svs_writer import write_svs

__all__ = ["make_demo_cohort"]


def _make_slide(outdir: Path, spec: DemoSlide, seed: int) -> None:
    """Render and write one slide, its three annotation files and nothing else."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), spec.index]))
    mpp = spec.mpp
    blobs_um = tissue_blobs(rng, spec.width * mpp, spec.height * mpp)
    regions_um: list[Polygon] = []
    if spec.label == "tumour":
        frac = rng.uniform(0.42, 0.54)
        regions_um = tumour_regions(rng, blobs_um, frac, spec.force_hole)
    blobs = [to_pixel_grid(b, mpp) for b in blobs_um]
    regions = [to_pixel_grid(r, mpp) for r in regions_um]
    shape = (spec.height, spec.width)
    tissue = rasterize_polygons(blobs, shape)
    tumour = rasterize_polygons(regions, shape) & tissue
    image = render_slide(rng, tissue, tumour, mpp)

    write_svs(outdir / "slides" / f"{spec.slide_id}.svs", image,
              mpp=mpp if spec.mpp_in_metadata else None, app_mag=spec.app_mag,
              tile=spec.tile, downsamples=(1, 4, 16), quality=90)
    annotations = outdir / "annotations"
    (annotations / f"{spec.slide_id}.geojson").write_text(geojson_text(regions),
                                                          encoding="utf-8")
    (annotations / f"{spec.slide_id}.xml").write_text(asap_xml_text(regions), encoding="utf-8")
    write_mask_tiff(annotations / f"{spec.slide_id}_mask.tif", tumour)


def _select_slides(slide_ids: Sequence[str] | None) -> list[DemoSlide]:
    """The layout of the slides asked for (all when ``slide_ids`` is None), in cohort order."""
    specs = cohort_spec()
    if slide_ids is None:
        return specs
    known = {s.slide_id for s in specs}
    unknown = sorted(set(slide_ids) - known)
    if unknown:
        raise ValueError(f"unknown demo slide ids {unknown}; known: {sorted(known)}")
    return [s for s in specs if s.slide_id in set(slide_ids)]


def make_demo_cohort(outdir: str | Path, seed: int = 0, *,
                     slide_ids: Sequence[str] | None = None,
                     workers: int | None = None) -> Path:
    """Write the synthetic demo cohort into ``outdir``; return the path of samples.tsv.

    ``slide_ids`` restricts generation to some slides (a subset is identical to
    the same slides of the full cohort); ``workers`` is the number of threads
    rendering slides at once (default: up to 2, one per CPU); the output does
    not depend on it.
    """
    outdir = Path(outdir)
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    specs = _select_slides(slide_ids)
    (outdir / "slides").mkdir(parents=True, exist_ok=True)
    (outdir / "annotations").mkdir(parents=True, exist_ok=True)

    if workers is None:
        workers = min(2, os.cpu_count() or 1, len(specs))
    if workers > 1 and len(specs) > 1:
        # threads, not processes: numpy / scipy / Pillow / JPEG encoding release
        # the GIL, and threads need no picklable state or __main__ guard
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(lambda s: _make_slide(outdir, s, seed), specs):
                pass
    else:
        for s in specs:
            _make_slide(outdir, s, seed)

    samples = outdir / "samples.tsv"
    write_samples_tsv(samples, specs)
    write_readme(outdir / "README.md", specs, seed)
    return samples
