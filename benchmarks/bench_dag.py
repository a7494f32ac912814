"""How long `snakemake -n all` takes to build the DAG of a large cohort.

    /work/venv/bin/python benchmarks/bench_dag.py [--slides 2000] [--reps 3]

Writes a cohort of SLIDES slides (2 per patient; empty .svs files, since a dry
run reads no pixels; a third of the slides with a GeoJSON annotation, the rest
with a slide label) under benchmarks/work/dag-SLIDES/, then times
`python -m snakemake -n all` on it with the embedded config (every method of
config.yaml: 3 folds), REPS times, each in a fresh process. Reports the wall
time (median, min to max), the number of jobs and the table of jobs per rule,
and writes benchmarks/results/dag-<date>.md. Target: under 60 s for 2,000 slides.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / "work"
RESULTS = REPO / "benchmarks" / "results"
TARGET_S = 60.0


def write_cohort(root: Path, n_slides: int) -> Path:
    """samples.tsv of n_slides empty slides, two per patient; returns its path."""
    slides = root / "slides"
    slides.mkdir(parents=True, exist_ok=True)
    rows = ["slide_id\tpatient_id\tpath\tannotation\tmpp\tslide_label"]
    for i in range(n_slides):
        slide, patient = f"S{i:05d}", f"P{i // 2:05d}"
        (slides / f"{slide}.svs").touch()
        if i % 3 == 0:
            (slides / f"{slide}.geojson").touch()
            rows.append(f"{slide}\t{patient}\tslides/{slide}.svs\tslides/{slide}.geojson\t0.25\t")
        else:
            label = "tumour" if (i // 2) % 3 == 0 else "normal"
            rows.append(f"{slide}\t{patient}\tslides/{slide}.svs\t\t0.25\t{label}")
    samples = root / "samples.tsv"
    samples.write_text("\n".join(rows) + "\n")
    return samples


def dry_run(root: Path, samples: Path) -> tuple[float, str]:
    override = root / "override.yaml"
    override.write_text(yaml.safe_dump({"samples": str(samples), "outdir": str(root / "results")}))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
           "--configfile", str(REPO / "config.yaml"), str(override),
           "--directory", str(root), "--cores", "2", "-n", "all"]
    env = {**os.environ,
           "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"snakemake -n failed:\n{res.stderr[-3000:]}")
    return wall, res.stdout + res.stderr


def job_stats(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run: rule -> count (and 'total')."""
    table = output.split("Job stats:", 1)[1]
    return {m.group(1): int(m.group(2))
            for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    root = WORK / f"dag-{args.slides}"
    samples = write_cohort(root, args.slides)
    walls, stats = [], {}
    for rep in range(args.reps):
        wall, output = dry_run(root, samples)
        walls.append(wall)
        stats = job_stats(output)
        print(f"rep {rep + 1}: {wall:.1f} s, {stats.get('total')} jobs", flush=True)
    median = statistics.median(walls)
    date = datetime.date.today().isoformat()
    lines = [
        f"# `snakemake -n all`, {args.slides:,} slides ({date})",
        "",
        f"- command: `{Path(sys.executable)} benchmarks/bench_dag.py --slides {args.slides} "
        f"--reps {args.reps}`",
        f"- machine: {os.cpu_count()} CPUs; load average at the end "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}",
        f"- wall time, median of {args.reps}: **{median:.1f} s** "
        f"[{min(walls):.1f}-{max(walls):.1f}] (target < {TARGET_S:.0f} s: "
        f"{'met' if median < TARGET_S else 'MISSED'})",
        "",
        "| rule | jobs |",
        "|---|---:|",
        *[f"| {rule} | {count:,} |" for rule, count in stats.items()],
        "",
    ]
    report = "\n".join(lines)
    print(report)
    out = args.out or RESULTS / f"dag-{date}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)


if __name__ == "__main__":
    main()
