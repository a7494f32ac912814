"""Training-loader throughput: four-magnification patch sets per second from JPEG
stores in shuffled order, as `multimag train` reads them.

    python benchmarks/bench_loader.py [--reps 5] [--patch-px 224] [--batch 64]

Builds (once, cached in benchmarks/work/loader/) the demo cohort tiled at
``--patch-px`` px at 20x/10x/5x/2.5x with a quarter-patch stride, then measures
side by side, interleaved ``--reps`` times, on the same shuffled sample of
(slide, patch) rows:

a. zarr-python, one ``array[i]`` per patch (the naive loader);
b. ``PatchDataset.__getitems__`` (``PatchReader``: cached shard index, ``pread``,
   JPEG decode into the batch), one process, one core;
c. the same through ``make_loader`` with 2 worker processes (both cores);
d. the JPEG-decode bound: decoding the same patches' bytes, already in memory.

a, b and d run in one process, c in 2 workers: the table compares them per core
("vs a" is per core too), not by their totals.

Writes a markdown table to benchmarks/results/loader-<date>.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import imagecodecs
import numpy as np
import pandas as pd
import torch
import zarr

HERE = Path(__file__).resolve().parent
WORK = HERE / "work" / "loader"
MAGS = (20.0, 10.0, 5.0, 2.5)


def build_stores(patch_px: int) -> Path:
    """The demo cohort's slides tiled at ``patch_px`` with a stride of a quarter
    patch (cached)."""
    from multimag.dataset.samples import load_samples
    from multimag.demo.cohort import make_demo_cohort

    stores = WORK / f"stores_{patch_px}"
    if stores.is_dir() and any(stores.glob("*.zarr")):
        return stores
    samples = load_samples(make_demo_cohort(WORK / "demo"))
    stores.mkdir(parents=True, exist_ok=True)
    config = WORK / "config.yaml"  # a quarter-patch stride: 16x the patches of the demo
    config.write_text(f"stride_px: {patch_px // 4}\n")
    for slide_id, row in samples.iterrows():
        cmd = [sys.executable, "-m", "multimag.cli", "tile", row["path"],
               str(stores / f"{slide_id}.zarr"), "--slide-id", slide_id,
               "--patch-px", str(patch_px), "--magnifications", *map(str, MAGS),
               "--config", str(config), "--no-progress"]
        if pd.notna(row["mpp"]):
            cmd += ["--mpp", str(row["mpp"])]
        subprocess.run(cmd, check=True, capture_output=True)
    return stores


def sample_rows(stores: Path, n: int, seed: int) -> pd.DataFrame:
    counts = {p.stem: zarr.open_group(p, mode="r")["centers"].shape[0]
              for p in sorted(stores.glob("*.zarr"))}
    table = pd.DataFrame([(s, i) for s, c in counts.items() for i in range(c)],
                         columns=["slide_id", "patch"])
    return table.sample(n=min(n, len(table)), random_state=seed).reset_index(drop=True)


def bench_zarr(stores: Path, rows: pd.DataFrame) -> float:
    groups = {s: zarr.open_group(stores / f"{s}.zarr", mode="r") for s in rows["slide_id"].unique()}
    start = time.perf_counter()
    for slide, patch in zip(rows["slide_id"], rows["patch"], strict=True):
        for m in MAGS:
            groups[slide][f"mag_{m:g}x"][int(patch)]
    return len(rows) / (time.perf_counter() - start)


def _dataset(stores: Path, rows: pd.DataFrame):
    from multimag.learn.data import PatchDataset, View

    return PatchDataset(rows, [View(magnification=m) for m in MAGS], stores)


def bench_reader(stores: Path, rows: pd.DataFrame, batch: int) -> float:
    dataset = _dataset(stores, rows)  # opens the stores: not timed, as a worker does once
    start = time.perf_counter()
    for lo in range(0, len(rows), batch):
        dataset.__getitems__(list(range(lo, min(lo + batch, len(rows)))))
    return len(rows) / (time.perf_counter() - start)


def bench_loader(stores: Path, rows: pd.DataFrame, batch: int, workers: int) -> float:
    from multimag.learn.data import EpochSampler, make_loader

    loader = make_loader(_dataset(stores, rows),
                         EpochSampler(len(rows), batch, shuffle=False), workers)
    iterator = iter(loader)
    next(iterator)  # workers started and warm: the steady state of an epoch
    start = time.perf_counter()
    n = 0
    for item in iterator:
        n += len(item["views"][0])
    rate = n / (time.perf_counter() - start)
    del iterator, loader
    return rate


def bench_decode(stores: Path, rows: pd.DataFrame) -> float:
    from multimag.wsi.store import PatchReader

    blobs = []
    for slide, patch in zip(rows["slide_id"], rows["patch"], strict=True):
        reader = PatchReader(stores / f"{slide}.zarr")
        for m in MAGS:
            name = f"mag_{m:g}x"
            blobs.append((reader.encoded(name, patch), reader.side(name)))
    out = {side: np.empty((side, side, 3), np.uint8) for _, side in blobs}
    start = time.perf_counter()
    for data, side in blobs:
        imagecodecs.jpeg8_decode(data, out=out[side])
    return len(rows) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--patch-px", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--sets", type=int, default=2048, help="patch sets per measurement")
    parser.add_argument("--zarr-sets", type=int, default=256, help="sets for the slow baseline a")
    args = parser.parse_args()
    torch.set_num_threads(1)
    stores = build_stores(args.patch_px)
    results: dict[str, list[float]] = {k: [] for k in "abcd"}
    for rep in range(args.reps):
        rows = sample_rows(stores, args.sets, seed=rep)
        results["a"].append(bench_zarr(stores, rows.head(args.zarr_sets)))
        results["b"].append(bench_reader(stores, rows, args.batch))
        results["c"].append(bench_loader(stores, rows, args.batch, workers=2))
        results["d"].append(bench_decode(stores, rows))
        print(f"rep {rep}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in results.items()),
              flush=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    n_patches = sum(zarr.open_group(p, mode="r")["centers"].shape[0]
                    for p in stores.glob("*.zarr"))
    names = {"a": "zarr-python, one `array[i]` per patch, 1 process",
             "b": "`PatchDataset.__getitems__` (PatchReader), 1 process",
             "c": "`make_loader`, 2 worker processes",
             "d": "JPEG decode only (bytes in memory), 1 process"}
    cores = {"a": 1, "b": 1, "c": 2, "d": 1}
    today = datetime.date.today().isoformat()
    lines = [f"# Loader benchmark, {today}", "",
             f"Command: `python benchmarks/bench_loader.py --reps {args.reps} --patch-px "
             f"{args.patch_px} --batch {args.batch} --sets {args.sets}`", "",
             f"Machine: {platform.processor() or platform.machine()}, nproc {os.cpu_count()}; "
             f"torch {torch.__version__}, zarr {zarr.__version__}, imagecodecs "
             f"{imagecodecs.__version__}.", "",
             f"Stores: the demo cohort at {args.patch_px} px, {', '.join(f'{m:g}x' for m in MAGS)}"
             f", JPEG q90, {n_patches} patch sets in {len(list(stores.glob('*.zarr')))} stores; "
             f"{args.sets} random sets per measurement (a: {args.zarr_sets}), {args.reps} "
             "interleaved repetitions, medians (min-max).", "",
             "| | reader | 4-mag sets/s | per core | vs a (per core) | vs d (per core) |",
             "|---|---|---:|---:|---:|---:|"]
    for k in "abcd":
        per_core = med[k] / cores[k]
        lines.append(f"| {k} | {names[k]} | {med[k]:.0f} ({min(results[k]):.0f}-"
                     f"{max(results[k]):.0f}) | {per_core:.0f} | "
                     f"{per_core / (med['a'] / cores['a']):.1f}x | "
                     f"{per_core / med['d']:.0%} |")
    text = "\n".join(lines) + "\n"
    out = HERE / "results" / f"loader-{today}.md"
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
