"""Benchmark: exact vector area fractions of 100,000 patch boxes (one magnification).

100,000 boxes of 224 px at 40x (level 0) on a grid over an 80,000 x 70,000 px
slide, against a synthetic wiggly tumour polygon of ~10,000 vertices with holes
(written as QuPath GeoJSON and read back with ``load_annotation``). Times
``Annotation.fractions`` on a freshly loaded annotation (so the piece index is
built inside the timing), median of 3, on one core (shapely/GEOS are single
threaded). Checks the result against brute-force ``shapely.intersection`` with
the whole polygon on 2,000 boxes.

    python benchmarks/bench_labels.py            # prints a markdown row and writes
                                                 # benchmarks/results/labels-<date>.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import shapely

from multimag.config import load_config
from multimag.dataset.annotations import load_annotation
from multimag.dataset.regions import Annotation

SLIDE_W, SLIDE_H = 80_000, 70_000
PATCH = 224  # level-0 px: 224 px at 40x
N_BOXES = 100_000


def wiggly_ring(cx: float, cy: float, radius: float, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = np.ones(n)
    for k, amp in ((3, 0.12), (7, 0.08), (17, 0.04), (61, 0.015), (233, 0.006)):
        r += amp * np.sin(k * t + rng.uniform(0, 2 * np.pi))
    r += rng.normal(0, 0.002, n)  # vertex-level jitter: a hand-drawn outline
    return np.stack([cx + radius * r * np.cos(t), cy + radius * r * np.sin(t)], axis=1)


def synthetic_polygon() -> shapely.Polygon:
    shell = wiggly_ring(SLIDE_W / 2, SLIDE_H / 2, 30_000, 8_000, 0)
    holes = [wiggly_ring(SLIDE_W / 2 + dx, SLIDE_H / 2 + dy, 5_000, 500, 1 + i)
             for i, (dx, dy) in enumerate(((-12_000, -9_000), (12_000, -9_000),
                                           (-12_000, 9_000), (12_000, 9_000)))]
    poly = shapely.Polygon(shell, holes)
    assert poly.is_valid
    return poly


def grid_boxes() -> np.ndarray:
    cols = SLIDE_W // PATCH
    idx = np.arange(N_BOXES)
    x0 = (idx % cols) * PATCH
    y0 = (idx // cols) * PATCH
    return np.stack([x0, y0, x0 + PATCH, y0 + PATCH], axis=1).astype(np.float64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()

    poly = synthetic_polygon()
    vertices = int(shapely.get_num_coordinates(poly))
    boxes = grid_boxes()
    class_map = load_config()["labels"]["class_map"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "wiggly.geojson"
        path.write_text(json.dumps({"type": "FeatureCollection", "features": [{
            "type": "Feature", "geometry": shapely.geometry.mapping(poly),
            "properties": {"classification": {"name": "Tumor"}}}]}))
        load_times, times = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ann = load_annotation(path, class_map, slide_size=(SLIDE_W, SLIDE_H))
            t1 = time.perf_counter()
            frac = ann.fractions(boxes, classes=("tumour",))["tumour"]
            t2 = time.perf_counter()
            load_times.append(t1 - t0)
            times.append(t2 - t1)
        index = ann._indices["tumour"]

    # for reference: the same centres at coarser magnifications (same_center fields)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    coarse = []
    for mag, ext in ((20, 448), (10, 896), (5, 1792), (2.5, 3584)):
        b = np.concatenate([centres - ext / 2, centres + ext / 2], axis=1)
        reps = []
        for _ in range(args.repeats):
            fresh = Annotation("geojson", path, {"tumour": ann.geometries["tumour"]})
            t0 = time.perf_counter()
            fresh.fractions(b, classes=("tumour",))
            reps.append(time.perf_counter() - t0)
        coarse.append(f"| {mag:g}x | {ext} | {statistics.median(reps):.2f} |")

    rng = np.random.default_rng(0)
    check = rng.choice(N_BOXES, 2_000, replace=False)
    brute = shapely.area(shapely.intersection(poly, shapely.box(*boxes[check].T))) / PATCH**2
    err = float(np.abs(brute - frac[check]).max())
    boundary = int(((frac > 0) & (frac < 1)).sum())
    median = statistics.median(times)
    row = (f"| {dt.date.today().isoformat()} | {platform.node()} | {N_BOXES:,} | {vertices:,} | "
           f"{boundary:,} | {len(index.pieces):,} | {statistics.median(load_times):.2f} | "
           f"**{median:.2f}** | {err:.1e} |")
    header = ("| date | host | boxes | vertices | boundary boxes | pieces | load s | "
              "fractions s (median of 3) | max abs err vs brute force |\n"
              "|---|---|---|---|---|---|---|---|---|")
    print(header)
    print(row)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"labels-{dt.date.today().isoformat()}.md"
    cpu = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    out.write_text(
        "# labels benchmark: vector area fractions, one magnification\n\n"
        f"`python benchmarks/bench_labels.py` - {N_BOXES:,} boxes of {PATCH} px (40x) on a "
        f"grid over a {SLIDE_W:,} x {SLIDE_H:,} slide against a wiggly polygon with 4 holes "
        f"({vertices:,} vertices); `Annotation.fractions` on a freshly loaded annotation "
        f"(index build included), single thread, CPUs allowed: {sorted(cpu) if cpu else '?'}; "
        f"target < 10 s.\n\n{header}\n{row}\n\n"
        "Same 100,000 centres, fields of coarser magnifications (overlapping boxes), "
        "seconds (median):\n\n| magnification | box px | fractions s |\n|---|---|---|\n"
        + "\n".join(coarse) + "\n")
    print("\n".join(coarse))
    print(f"wrote {out}")
    if err > 1e-6:
        raise SystemExit(f"fractions differ from brute force by {err}")


if __name__ == "__main__":
    main()
