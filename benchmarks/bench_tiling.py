"""Tiling benchmark: multimag against per-patch reads, side by side, on one slide.

Five measurements of the same job (4 magnifications 40/20/10/5x, 224 px,
same_center, box filter), each repeated ``--reps`` times in interleaved order
(a b c d e, a b c d e, ...) so that a noisy neighbour hits all of them alike;
the table reports medians.

a. baseline 1: per patch and magnification, openslide ``read_region`` of the
   whole level-0 footprint + PIL ``Image.BOX`` resize to 224 px (random sample
   of kept patch centres, visited in grid order), in 2 processes like c and e,
   each reading one half of the sample;
b. baseline 2: the same from the best pyramid level of each magnification
   (the level ``multimag`` itself reads: largest pixel size not exceeding the
   target), ``read_region`` at that level + resize, in 2 processes;
c. multimag extraction before storage: ``BlockCutter`` (what ``multimag tile``
   runs: one block of patches per worker process, 2 processes) over all kept
   patches (or the first ``--limit``), the patch sets dropped instead of stored;
d. the JPEG-decode bound of (c): every source tile under the footprints of (c)'s
   patches (from the plans: ``MagPlan.level_box``), decoded once with multimag's
   own tile decoder (``decode_tile``: imagecodecs, into a buffer used again for
   the next tile, as the tiler does), shared between 2 processes started and
   warmed up before the clock starts; expressed as patch sets per second of
   decode time; d_t is the same in 2 threads of one process. The target c / d is
   judged against the faster of d and d_t;
e. end to end: ``multimag tile SLIDE OUT.zarr --threads 2`` as a subprocess
   (tissue detection, planning, cutting, JPEG encoding, shard writes), all kept
   patches, under ``/usr/bin/time -v`` for peak RSS and CPU time.

a, b, c, d and e all run in 2 processes (d_t: 2 threads), so their ratios
compare like with like on a machine with at least 2 free cores.

Every measurement starts from a freshly opened slide (cold reader caches); the
slide file itself is in the OS page cache after the first pass (warm disk), for
all of them alike.

    /work/venv/bin/python benchmarks/bench_tiling.py [--slide S] [--reps 3] [--sample 200]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import multiprocessing
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
WORK = HERE / "work"
RESULTS = HERE / "results"
MAGS = (40.0, 20.0, 10.0, 5.0)
PATCH = 224
THREADS = 2
TARGETS = {"e_over_b": 10.0, "c_over_d": 0.60, "rss_mb": 500.0}


# -- setup ---------------------------------------------------------------------------------

def plan(slide_path: Path):
    """Tissue mask and kept patches, exactly as ``multimag tile`` computes them."""
    from multimag.wsi.patch_plan import TilingConfig, plan_patches
    from multimag.wsi.slide import open_slide
    from multimag.wsi.tissue import detect_tissue

    config = TilingConfig(magnifications=MAGS, patch_px=PATCH, threads=THREADS)
    with open_slide(slide_path) as slide:
        t0 = time.perf_counter()
        tissue = detect_tissue(slide, config.tissue)
        patches = plan_patches(slide, tissue, config)
        t_plan = time.perf_counter() - t0
        levels = [(lv.width, lv.height) for lv in slide.pyramid.levels]
    return config, tissue, patches, t_plan, levels


def _busy_seconds() -> float:
    """CPU seconds used by everything on the machine so far (/proc/stat), or nan."""
    try:
        with open("/proc/stat") as fh:
            f = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    # user nice system idle iowait irq softirq steal ...: busy = all but idle and iowait
    return (sum(f[:8]) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class Timer:
    """Wall time, CPU time of this process (and its waited-for children), and the CPU
    that the rest of the machine used meanwhile (``others``, in cores)."""

    def __enter__(self) -> Timer:
        self.t0 = time.perf_counter()
        self.own0, self.busy0 = _own_seconds(), _busy_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.t0
        own = _own_seconds() - self.own0  # with the worker processes it waited for
        self.cpu = own
        self.others = max(0.0, (_busy_seconds() - self.busy0 - own) / self.wall)


# -- a, b: per-patch openslide baselines ---------------------------------------------------

def _to_rgb(region):
    """openslide's RGBA (opaque inside the slide) -> RGB, as a pipeline would."""
    return region.convert("RGB")


def _read_patches(slide_path: Path, plans, centers: np.ndarray, best_level: bool) -> int:
    """One process's share of a baseline: each patch and magnification read on its own
    with openslide ``read_region`` (from level 0, the whole footprint, or from the best
    pyramid level), then resized with PIL's BOX filter. Returns a checksum."""
    import openslide
    from PIL import Image

    checksum = 0
    osr = openslide.OpenSlide(str(slide_path))
    for cx, cy in centers:
        for p in plans:
            level = p.level.index if best_level else 0
            sx, sy = (p.level.scale_x, p.level.scale_y) if best_level else (1.0, 1.0)
            x0, y0, x1, y1 = p.footprint(cx, cy)
            bx0, by0, bx1, by1 = x0 / sx, y0 / sy, x1 / sx, y1 / sy
            lx, ly = math.floor(bx0), math.floor(by0)
            size = (math.ceil(bx1) - lx, math.ceil(by1) - ly)
            # read_region takes the level-0 position of the region's first pixel
            loc = (round(lx * sx), round(ly * sy))
            img = _to_rgb(osr.read_region(loc, level, size))
            if img.size != (p.side, p.side):
                img = img.resize((p.side, p.side), Image.Resampling.BOX,
                                 box=(bx0 - lx, by0 - ly, bx1 - lx, by1 - ly))
            checksum += int(np.asarray(img)[0, 0, 0])  # the arrays a pipeline needs
    osr.close()
    return checksum


def per_patch_baseline(slide_path: Path, plans, centers: np.ndarray, best_level: bool
                       ) -> tuple[Timer, int]:
    """The per-patch baseline in THREADS processes, as many as c and e use: each
    process opens the slide itself and reads one contiguous share of the sampled
    centres (grid order). Forking the processes is inside the clock, as in c; the
    pool is shut down inside it too, so their CPU counts as this process's children."""
    import openslide  # noqa: F401  (imported here, before the clock: the forks inherit it)
    import PIL.Image  # noqa: F401

    shares = np.array_split(centers, THREADS)
    with Timer() as t:
        with ProcessPoolExecutor(THREADS, mp_context=multiprocessing.get_context("fork")) as pool:
            checksum = sum(pool.map(_read_patches, [slide_path] * THREADS, [plans] * THREADS,
                                    shares, [best_level] * THREADS))
    return t, checksum


# -- c: multimag extraction before storage -------------------------------------------------

def _discard(first: int, sets) -> None:
    """c's sink: the patch sets were cut; nothing is stored."""


def multimag_extract(slide_path: Path, patches) -> tuple[Timer, int]:
    from multimag.wsi.slide import open_slide
    from multimag.wsi.workers import BlockCutter

    with Timer() as t, open_slide(slide_path) as slide, BlockCutter(
            slide, patches, workers=THREADS) as cutter:
        n = cutter.run(_discard)
    if n != len(patches.centers):
        raise RuntimeError(f"BlockCutter gave {n} sets for {len(patches.centers)} centres")
    return t, n


# -- d: the JPEG-decode bound --------------------------------------------------------------

def source_tiles(slide_path: Path, patches) -> dict[tuple[int, int], np.ndarray]:
    """Per (level, integer reduction factor), the unique (tile_row, tile_col) under
    any patch footprint of that magnification (from ``MagPlan.level_box``)."""
    import tiffslide

    with tiffslide.TiffSlide(str(slide_path)) as ts:
        pages = [lvl.keyframe for lvl in ts.ts_tifffile.series[0].levels]
        shapes = [(pg.tilelength, pg.tilewidth, pg.imagelength, pg.imagewidth) for pg in pages]
    c = patches.centers.astype(np.float64)
    out: dict[tuple[int, int], set] = {}
    for p in patches.plans:
        th, tw, ih, iw = shapes[p.level.index]
        half = p.extent / 2
        bx0 = np.clip((c[:, 0] - half) / p.level.scale_x, 0, iw)
        by0 = np.clip((c[:, 1] - half) / p.level.scale_y, 0, ih)
        bx1 = np.clip((c[:, 0] + half) / p.level.scale_x, 0, iw)
        by1 = np.clip((c[:, 1] + half) / p.level.scale_y, 0, ih)
        tx0, ty0 = np.floor(bx0).astype(int) // tw, np.floor(by0).astype(int) // th
        tx1, ty1 = (np.ceil(bx1).astype(int) - 1) // tw, (np.ceil(by1).astype(int) - 1) // th
        tiles = out.setdefault((p.level.index, max(1, round(p.factor_x))), set())
        for dy in range(int((ty1 - ty0).max()) + 1):
            for dx in range(int((tx1 - tx0).max()) + 1):
                ok = (ty0 + dy <= ty1) & (tx0 + dx <= tx1)
                tiles.update(zip((ty0 + dy)[ok].tolist(), (tx0 + dx)[ok].tolist(), strict=True))
    return {k: np.array(sorted(t), np.int64).reshape(-1, 2) for k, t in sorted(out.items())}


def unique_tiles(tiles: dict[tuple[int, int], np.ndarray]) -> dict[tuple[int, int], tuple]:
    """(level, tile_row, tile_col) -> the reduction factors > 1 it is needed at."""
    out: dict[tuple[int, int, int], list] = {}
    for (lv, f), rc in tiles.items():
        for ty, tx in rc.tolist():
            factors = out.setdefault((lv, ty, tx), [])
            if f > 1:
                factors.append(f)
    return {k: tuple(v) for k, v in out.items()}


def _decode_tiles(slide_path: Path, tiles: list, reduce: bool) -> tuple[int, float]:
    """Decode these ``((level, tile_row, tile_col), factors)`` with multimag's own tile
    decoder (``decode_tile``: pread, then imagecodecs into one buffer per level that
    is used again for the next tile, as the tiler does); with ``reduce`` also
    area-reduce each decoded tile by the factors it is needed at (``reduce_pixels``,
    as the tiler does)."""
    from multimag.wsi.slide import open_slide
    from multimag.wsi.tile_decoding import decode_buffer, reduce_pixels

    cpu0 = time.thread_time()
    with open_slide(slide_path, reader="tiffslide", test_read=False) as slide:
        buffers = {}
        for (lv, ty, tx), factors in tiles:
            if lv not in buffers:
                buffers[lv] = decode_buffer(*slide.tile_size(lv))
            pixels = slide.decode_tile(lv, ty, tx, out=buffers[lv])
            for f in factors if reduce else ():
                reduce_pixels(pixels, f)
    return len(tiles), time.thread_time() - cpu0  # tiles decoded, CPU seconds it took


def decode_bound(slide_path: Path, tiles: dict, reduce: bool = False,
                 threads: bool = False) -> tuple[Timer, int]:
    """Every listed tile decoded once, in THREADS processes (each takes every
    THREADS-th tile), or with ``threads`` in THREADS threads of this process.

    The processes are forked and warmed up (each decodes a few of its tiles) before
    the clock starts, so d is decoding alone: the forks' start-up and their first
    touches of memory shared with this process made d vary by 15% between
    repetitions of one run (2026-11-28)."""
    items = sorted(tiles.items())
    shares = [items[i::THREADS] for i in range(THREADS)]
    if threads:
        pool = ThreadPoolExecutor(THREADS)
    else:
        pool = ProcessPoolExecutor(THREADS, mp_context=multiprocessing.get_context("fork"))
        list(pool.map(_decode_tiles, [slide_path] * THREADS, [share[:16] for share in shares],
                      [reduce] * THREADS))
    with pool, Timer() as t:
        done = list(pool.map(_decode_tiles, [slide_path] * len(shares), shares,
                             [reduce] * len(shares)))
    if not threads:  # the workers' CPU is neither this process's nor a reaped child's
        cpu = sum(c for _, c in done)
        t.cpu += cpu
        t.others = max(0.0, t.others - cpu / t.wall)
    return t, sum(n for n, _ in done)


# -- e: end to end -------------------------------------------------------------------------

def end_to_end(slide_path: Path, out: Path) -> dict:
    if out.exists():
        shutil.rmtree(out)
    cli = Path(sys.executable).with_name("multimag")
    cmd = [str(cli), "tile", str(slide_path), str(out), "--magnifications",
           *[f"{m:g}" for m in MAGS], "--patch-px", str(PATCH), "--threads", str(THREADS),
           "--no-progress"]
    timev = shutil.which("time") or ("/usr/bin/time" if os.path.exists("/usr/bin/time") else None)
    if timev:
        cmd = [timev, "-v", *cmd]
    t0 = time.perf_counter()
    if timev:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        err = proc.stderr
        if proc.returncode:
            raise RuntimeError(f"multimag tile failed ({proc.returncode}):\n{err[-3000:]}")

        def field(name: str) -> float:
            m = re.search(rf"{re.escape(name)}: ([0-9.]+)", err)
            return float(m.group(1)) if m else float("nan")

        rss_mb = field("Maximum resident set size (kbytes)") / 1024
        cpu = field("User time (seconds)") + field("System time (seconds)")
    else:  # psutil polling of the child
        import psutil

        child = psutil.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        peak, cpu = 0, 0.0
        while child.poll() is None:
            try:
                peak = max(peak, child.memory_info().rss)
                ct = child.cpu_times()
                cpu = ct.user + ct.system
            except psutil.Error:
                pass
            time.sleep(0.05)
        wall = time.perf_counter() - t0
        outp, err = child.communicate()
        proc = subprocess.CompletedProcess(cmd, child.returncode, outp, err)
        if proc.returncode:
            raise RuntimeError(f"multimag tile failed ({proc.returncode}):\n{err[-3000:]}")
        rss_mb = peak / 2**20
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    store_mb = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20
    # the store is 1.1 GB of dirty page cache that the kernel writes out about 30 s
    # later, i.e. during the next repetition's a, b and c; removed now, it never is
    shutil.rmtree(out)
    return {"wall": wall, "cpu": cpu, "rss_mb": rss_mb, "patches": summary["patches"],
            "store_mb": store_mb}


# -- report --------------------------------------------------------------------------------

def machine() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        mem = f"{kb / 2**20:.0f} GiB"
    except (OSError, AttributeError):
        pass
    return {"nproc": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
            "cpu": model or platform.processor(), "mem": mem,
            "python": platform.python_version()}


def versions() -> str:
    from importlib.metadata import version

    out = []
    for pkg in ("multimag", "openslide-python", "openslide-bin", "tiffslide", "tifffile",
                "imagecodecs", "pillow", "numpy", "zarr"):
        try:
            out.append(f"{pkg} {version(pkg)}")
        except Exception:
            pass
    return ", ".join(out)


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def rng_str(xs: list[float], fmt: str = "{:.1f}") -> str:
    return f"{fmt.format(min(xs))}-{fmt.format(max(xs))}" if len(xs) > 1 else fmt.format(xs[0])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slide", type=Path, default=WORK / "bench_40k.svs",
                    help="default: benchmarks/work/bench_40k.svs (made by make_slide.py "
                    "when missing)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--sample", type=int, default=200,
                    help="patch centres for the per-patch baselines a and b")
    ap.add_argument("--limit", type=int, default=None,
                    help="c and d: only the first N kept patches (default: all)")
    ap.add_argument("--skip-e2e", action="store_true", help="leave out e (quick runs)")
    ap.add_argument("--out", type=Path, default=None,
                    help="markdown results (default: benchmarks/results/tiling-<date>.md)")
    args = ap.parse_args(argv)

    if not args.slide.exists():
        if args.slide.resolve() != (WORK / "bench_40k.svs").resolve():
            ap.error(f"{args.slide} does not exist")
        sys.path.insert(0, str(HERE))
        from make_slide import make_slide

        make_slide(args.slide)
    t_start = time.perf_counter()
    config, tissue, patches, t_plan, levels = plan(args.slide)
    n_all = len(patches.centers)
    print(f"slide {args.slide} ({args.slide.stat().st_size / 2**20:.0f} MiB), levels {levels}; "
          f"tissue {tissue.fraction:.1%}; {n_all} of {patches.candidates} grid patches kept "
          f"(tissue + planning {t_plan:.1f} s)", flush=True)
    for p in patches.plans:
        print(f"  {p.label}: level {p.level.index}, factor {p.factor_x:g}, "
              f"footprint {p.extent:g} level-0 px", flush=True)

    # c/d: all kept patches, or a prefix in grid order
    limit = n_all if args.limit is None else min(args.limit, n_all)
    sub = patches.select(0, limit)
    per_factor = source_tiles(args.slide, sub)
    tiles = unique_tiles(per_factor)
    n_tiles = len(tiles)
    n_reduce = sum(len(f) for f in tiles.values())
    print(f"decode bound: {n_tiles} source tiles ("
          + ", ".join(f"level {lv} / {f}: {len(v)}" for (lv, f), v in per_factor.items())
          + f"); {n_reduce} reductions", flush=True)

    rng = np.random.default_rng(0)
    pick = np.sort(rng.choice(n_all, size=min(args.sample, n_all), replace=False))
    sample = patches.centers[pick]

    keys = ("a", "b", "c", "d", "dt", "d2", "e")
    res: dict[str, list] = {k: [] for k in keys}
    cpu: dict[str, list] = {k: [] for k in keys}
    others: dict[str, list] = {k: [] for k in keys}
    e_info: list[dict] = []
    out_store = WORK / "bench_e2e.zarr"
    for rep in range(args.reps):
        t, _ = per_patch_baseline(args.slide, patches.plans, sample, best_level=False)
        res["a"].append(len(sample) / t.wall)
        cpu["a"].append(t.cpu / t.wall)
        others["a"].append(t.others)
        print(f"rep {rep + 1}: a {res['a'][-1]:8.1f} sets/s", end="", flush=True)
        t, _ = per_patch_baseline(args.slide, patches.plans, sample, best_level=True)
        res["b"].append(len(sample) / t.wall)
        cpu["b"].append(t.cpu / t.wall)
        others["b"].append(t.others)
        print(f" | b {res['b'][-1]:7.1f}", end="", flush=True)
        t, n = multimag_extract(args.slide, sub)
        res["c"].append(n / t.wall)
        cpu["c"].append(t.cpu / t.wall)
        others["c"].append(t.others)
        print(f" | c {res['c'][-1]:7.1f} ({t.wall:.1f} s)", end="", flush=True)
        t, _ = decode_bound(args.slide, tiles)
        res["d"].append(limit / t.wall)
        cpu["d"].append(t.cpu / t.wall)
        others["d"].append(t.others)
        print(f" | d {res['d'][-1]:7.1f} ({t.wall:.1f} s)", end="", flush=True)
        t, _ = decode_bound(args.slide, tiles, threads=True)
        res["dt"].append(limit / t.wall)
        cpu["dt"].append(t.cpu / t.wall)
        others["dt"].append(t.others)
        print(f" | d_t {res['dt'][-1]:7.1f}", end="", flush=True)
        t, _ = decode_bound(args.slide, tiles, reduce=True)
        res["d2"].append(limit / t.wall)
        cpu["d2"].append(t.cpu / t.wall)
        others["d2"].append(t.others)
        print(f" | d' {res['d2'][-1]:7.1f} ({t.wall:.1f} s)", end="", flush=True)
        if not args.skip_e2e:
            with Timer() as t:
                e = end_to_end(args.slide, out_store)
            e_info.append(e)
            others["e"].append(t.others)
            res["e"].append(e["patches"] / e["wall"])
            cpu["e"].append(e["cpu"] / e["wall"])
            print(f" | e {res['e'][-1]:7.1f} ({e['wall']:.1f} s, {e['rss_mb']:.0f} MB, "
                  f"cpu {cpu['e'][-1]:.2f})", end="", flush=True)
        print(flush=True)

    # -- the table
    today = dt.date.today().isoformat()
    m = machine()
    n_sample = len(sample)
    rows = [
        ("a", "baseline 1: openslide read_region, level 0, whole footprint + PIL BOX resize, "
         f"{THREADS} processes", f"{n_sample} (random sample)"),
        ("b", "baseline 2: openslide read_region at the best level + PIL BOX resize, "
         f"{THREADS} processes", f"{n_sample} (random sample)"),
        ("c", f"multimag extraction (`BlockCutter`, tiffslide reader, {THREADS} worker "
         "processes), no storage",
         f"{limit}" + (" (all kept)" if limit == n_all else " (grid-order prefix)")),
        ("d", f"JPEG-decode bound of c: {n_tiles} source tiles decoded once, {THREADS} "
         "processes", f"{limit}"),
        ("dt", f"d_t: d in {THREADS} threads of one process", f"{limit}"),
        ("d2", f"d' (for information): d + the {n_reduce} integer box reductions of those "
         "tiles that c also does (`reduce_pixels`)", f"{limit}"),
        ("e", f"end to end: `multimag tile --threads {THREADS}` into Zarr (subprocess, incl. "
         "startup + tissue)",
         f"{n_all} (all kept)"),
    ]
    command = " ".join(["/work/venv/bin/python", "benchmarks/bench_tiling.py",
                        *(argv if argv is not None else sys.argv[1:])])
    lines = [
        f"# Tiling benchmark, {today}",
        "",
        f"- command: `{command}`",
        f"- machine: {m['nproc']} CPUs (affinity {m['affinity']}), {m['cpu']}, {m['mem']} RAM; "
        f"Python {m['python']}",
        f"- versions: {versions()}",
        f"- slide: `{args.slide.name}`, {levels[0][0]} x {levels[0][1]} px, 0.25 um/px, "
        f"levels {levels}, JPEG q90 256-px tiles, {args.slide.stat().st_size / 2**20:.0f} MiB; "
        f"tissue {tissue.fraction:.1%}, {n_all} of {patches.candidates} grid patches kept",
        f"- job: magnifications {', '.join(f'{x:g}x' for x in MAGS)}, {PATCH} px, same_center, "
        f"box filter; levels read: "
        + ", ".join(f"{p.label} <- level {p.level.index} / {p.factor_x:g}" for p in patches.plans),
        f"- {args.reps} interleaved repetitions; medians (min-max in brackets); "
        "warm OS page cache, cold reader caches",
        f"- a, b, c, d, d' and e run in {THREADS} processes, d_t in {THREADS} threads",
        "- CPU: (user+sys)/wall of the measured process with its worker processes (e: of the "
        "`multimag tile` child), in cores; other load: CPU the rest of the machine used "
        "meanwhile (/proc/stat), in cores: the noise from other users of this shared box",
        "",
        "| | measurement | patch sets | sets/s median [min-max] | CPU (user+sys)/wall "
        "| other load |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for key, what, count in rows:
        label = key.replace("d2", "d'").replace("dt", "d_t")
        if not res[key]:
            lines.append(f"| {label} | {what} | {count} | (skipped) | | |")
            continue
        lines.append(f"| {label} | {what} | {count} | **{med(res[key]):.1f}** "
                     f"[{rng_str(res[key])}] | {med(cpu[key]):.2f} | {med(others[key]):.2f} |")
    lines += ["", "| ratio / target | measured | target | |", "|---|---:|---:|---|"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "**MISSED**"

    if res["e"]:
        eb = med(res["e"]) / med(res["b"])
        lines.append(f"| e / b: end to end vs best-level per-patch reads (both in {THREADS} "
                     f"processes) | {eb:.1f}x | "
                     f">= {TARGETS['e_over_b']:g}x | {verdict(eb >= TARGETS['e_over_b'])} |")
        ea = med(res["e"]) / med(res["a"])
        lines.append(f"| e / a: end to end vs level-0 per-patch reads | {ea:.1f}x | | |")
    cb = med(res["c"]) / med(res["b"])
    lines.append(f"| c / b: extraction vs best-level per-patch reads | {cb:.1f}x | | |")
    cd = med(res["c"]) / max(med(res["d"]), med(res["dt"]))  # the tighter bound
    lines.append(f"| c / d: extraction vs JPEG-decode bound (the faster of d and d_t) "
                 f"| {cd:.0%} | >= {TARGETS['c_over_d']:.0%} "
                 f"| {verdict(cd >= TARGETS['c_over_d'])} |")
    per_rep = [c / max(d, dt) for c, d, dt in zip(res["c"], res["d"], res["dt"], strict=True)]
    lines.append(f"| c / d of each repetition (c against the faster of d and d_t of the same "
                 f"repetition), min-max | {rng_str(per_rep, '{:.0%}')} | | |")
    lines.append(f"| c / d': extraction vs decode + reduce bound | "
                 f"{med(res['c']) / med(res['d2']):.0%} | | |")
    lines.append(f"| c / d (processes), c / d_t (threads) | {med(res['c']) / med(res['d']):.0%}, "
                 f"{med(res['c']) / med(res['dt']):.0%} | | |")
    if e_info:
        rss = med([e["rss_mb"] for e in e_info])
        lines.append(f"| e: peak RSS (`/usr/bin/time -v`), median [min-max] | {rss:.0f} MB "
                     f"[{rng_str([e['rss_mb'] for e in e_info], '{:.0f}')}] | "
                     f"< {TARGETS['rss_mb']:g} MB | {verdict(rss < TARGETS['rss_mb'])} |")
        lines.append(f"| e: wall time, median | {med([e['wall'] for e in e_info]):.1f} s | | |")
        lines.append(f"| e: CPU utilisation (user+sys)/wall, median | {med(cpu['e']):.2f} "
                     f"(of {m['affinity']}) | | |")
        lines.append(f"| e: store size | {e_info[-1]['store_mb']:.0f} MiB | | |")
    total = time.perf_counter() - t_start
    lines += ["", f"Benchmark wall time: {total / 60:.1f} min.", ""]
    text = "\n".join(lines)
    print()
    print(text)
    out = args.out or RESULTS / f"tiling-{today}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
