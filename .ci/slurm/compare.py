"""Compare the outputs of two runs of the workflow (a local run and a Slurm run).

    python .ci/slurm/compare.py LOCAL_WORKDIR SLURM_WORKDIR

Each workdir holds `demo/` and `results/`. Patch stores are compared by
content (every array: shape, dtype, values; the attributes, with the source
slide's absolute path taken relative to each workdir); tissue masks by
their arrays; everything else (labels, folds, indices, QC pictures, the
resolved config, the demo cohort) byte for byte, except that JSON, CSV and
torch .pt files (models) may differ in wall-clock timings only (TIMING_KEYS)
and .pt files are compared by their tensors. Logs and the jobs' benchmark
tables (`results/benchmarks/`, wall-clock timings) are not compared. Exits 1
and lists every difference if there is one.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import zarr

import multimag  # noqa: F401  (registers the store's JPEG codec)

# logs, and the benchmark: directive's per-job timings (never equal between two runs)
SKIP_DIRS = {"logs", "benchmarks"}
# Wall-clock measurements that training records beside its results: never equal
# between two runs, so left out of the comparison of JSON, CSV and .pt files.
TIMING_KEYS = {"seconds", "elapsed", "elapsed_s", "wall_s", "time_s", "timestamp"}

# Snakemake marks directory outputs with a .snakemake_timestamp file, which
# zarr notices and warns about.
warnings.filterwarnings("ignore", message=".*snakemake_timestamp.*")


def relative_source(attrs: dict, root: Path) -> dict:
    """The attributes with the source slide's path made relative to the run's
    workdir: the two runs read the same slides from different directories."""
    source = dict(attrs.get("source") or {})
    path = source.get("path")
    if isinstance(path, str) and Path(path).is_absolute():
        try:
            source["path"] = Path(path).resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            pass
    return {**attrs, "source": source} if "source" in attrs else attrs


def files(root: Path) -> dict[str, Path]:
    """Relative path -> path for every file to compare; a .zarr store is one entry."""
    out: dict[str, Path] = {}
    stack = [root]
    while stack:
        d = stack.pop()
        for p in sorted(d.iterdir()):
            rel = p.relative_to(root).as_posix()
            if p.is_dir():
                if p.suffix == ".zarr":
                    out[rel] = p
                elif p.name not in SKIP_DIRS and not p.name.startswith("."):
                    stack.append(p)
            elif not p.name.startswith("."):
                out[rel] = p
    return out


def compare_store(a: Path, b: Path, root_a: Path, root_b: Path) -> list[str]:
    ga, gb = zarr.open_group(a, mode="r"), zarr.open_group(b, mode="r")
    diffs = []
    ka, kb = relative_source(dict(ga.attrs), root_a), relative_source(dict(gb.attrs), root_b)
    if ka != kb:
        keys = sorted(k for k in set(ka) | set(kb) if ka.get(k) != kb.get(k))
        diffs.append(f"attrs differ: {', '.join(keys)}: "
                     f"{json.dumps({k: ka.get(k) for k in keys})[:300]} vs "
                     f"{json.dumps({k: kb.get(k) for k in keys})[:300]}")
    names_a, names_b = sorted(ga.array_keys()), sorted(gb.array_keys())
    if names_a != names_b:
        return [*diffs, f"arrays {names_a} vs {names_b}"]
    for name in names_a:
        xa, xb = ga[name], gb[name]
        if (xa.shape, xa.dtype) != (xb.shape, xb.dtype):
            diffs.append(f"{name}: {xa.shape} {xa.dtype} vs {xb.shape} {xb.dtype}")
        elif not np.array_equal(xa[...], xb[...]):
            diffs.append(f"{name}: values differ")
    return diffs


def compare_npz(a: Path, b: Path) -> list[str]:
    with np.load(a) as za, np.load(b) as zb:
        if sorted(za.files) != sorted(zb.files):
            return [f"arrays {sorted(za.files)} vs {sorted(zb.files)}"]
        return [f"{k}: values differ" for k in za.files if not np.array_equal(za[k], zb[k])]


def drop_timings(value):
    if isinstance(value, dict):
        return {k: drop_timings(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list | tuple):
        return [drop_timings(v) for v in value]
    return value


def same_values(a, b) -> bool:
    """Nested dicts/lists of tensors, arrays and plain values, equal exactly."""
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        keys = set(a) - TIMING_KEYS
        return keys == set(b) - TIMING_KEYS and all(same_values(a[k], b[k]) for k in keys)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same_values(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def compare_file(a: Path, b: Path) -> list[str]:
    """Byte for byte, except for what carries wall-clock timings."""
    if a.read_bytes() == b.read_bytes():
        return []
    if a.suffix == ".json":
        same = drop_timings(json.loads(a.read_text())) == drop_timings(json.loads(b.read_text()))
    elif a.suffix == ".csv":
        def rows(p: Path) -> list[dict]:
            return [drop_timings(r) for r in csv.DictReader(io.StringIO(p.read_text()))]
        same = rows(a) == rows(b)
    elif a.suffix == ".pt":
        import torch

        same = same_values(torch.load(a, map_location="cpu", weights_only=False),
                           torch.load(b, map_location="cpu", weights_only=False))
    else:
        same = False
    return [] if same else ["differ" if a.suffix in (".json", ".csv", ".pt") else "bytes differ"]


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    root_a, root_b = map(Path, argv)
    problems: list[str] = []
    counts = {"stores": 0, "arrays": 0, "bytes": 0}
    for sub in ("demo", "results"):
        fa, fb = files(root_a / sub), files(root_b / sub)
        for rel in sorted(set(fa) ^ set(fb)):
            problems.append(f"{sub}/{rel}: only in {root_a if rel in fa else root_b}")
        for rel in sorted(set(fa) & set(fb)):
            a, b = fa[rel], fb[rel]
            if a.suffix == ".zarr":
                diffs, counts["stores"] = compare_store(a, b, root_a, root_b), counts["stores"] + 1
            elif a.suffix == ".npz":
                diffs, counts["arrays"] = compare_npz(a, b), counts["arrays"] + 1
            else:
                diffs = compare_file(a, b)
                counts["bytes"] += 1
            problems += [f"{sub}/{rel}: {d}" for d in diffs]
    if problems:
        print(f"{len(problems)} difference(s) between {root_a} and {root_b}:")
        print("\n".join(f"  {p}" for p in problems))
        return 1
    print(f"same outputs: {counts['stores']} stores by content, {counts['arrays']} masks by "
          f"array, {counts['bytes']} other files equal (byte for byte, models less timings)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
