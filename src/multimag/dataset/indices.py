"""Per-fold indices (rule ``index``): the patches, pairs, triplets and batches
that every method trains, validates and tests on.

``build_indices`` reads the label tables of the slides in the splits and writes
parquet tables of (slide_id, patch, magnification) references and index.json
into the fold's folder. Training tables come only from the fold's training
patients and are re-checked for that before they are written. The tables'
schemas and sampling rules are in docs/dataset.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from multimag.atomic import atomic_path
from multimag.config import validate_config
from multimag.dataset.class_batches import draw_batches
from multimag.dataset.magnification_pairs import (
    MPCS_STRATEGIES,
    draw_cross_mag_pairs,
    draw_mpcs_pairs,
    fixed_pair,
)
from multimag.dataset.pairs_triplets import draw_pairs, draw_triplets
from multimag.dataset.patch_refs import (
    LABEL_NAMES,
    ClassIndex,
    Patches,
    read_patches,
    reference_columns,
    require_label_files,
)
from multimag.dataset.splits import check_no_leak, fold_roles, n_folds
from multimag.errors import ConfigError, IndexBuildError, LeakError

CLASSES = (0, 1)
TABLES = ("patches_train", "patches_val", "patches_test", "pairs", "triplets",
          "cross_mag_pairs", "mpcs_fixed", "mpcs_ordered", "mpcs_random", "batches")
# one independent random stream per table (appending new streams keeps old ones)
_STREAMS = {"anchors": 0, "pairs": 1, "triplets": 2, "cross_mag_pairs": 3,
            "mpcs_ordered": 4, "mpcs_random": 5, "batches": 6}


@dataclass(frozen=True)
class _FoldPatches:
    """The patches of one fold's roles, and the sorted slide-id dictionary."""

    dictionary: pa.Array
    train_all: Patches  # every training patch, ambiguous ones included
    train: Patches  # labelled training patches
    val: Patches  # labelled validation patches
    test: Patches  # every test patch


def build_indices(splits: pd.DataFrame, labels_dir: str | Path, out_dir: str | Path,
                  fold: int, config: dict) -> dict:
    """Write the indices of test fold ``fold`` into ``out_dir``; return the summary.

    The summary is also written as ``out_dir/index.json`` (last, atomically).
    """
    labels_dir, out_dir = Path(labels_dir), Path(out_dir)
    config = validate_config(config)
    index_config = config["index"]
    seed, fold = int(index_config["seed"]), int(fold)
    mags = _magnifications(config)
    fixed = fixed_pair(index_config["mpcs"]["fixed_pair"], mags)
    splits = _checked_splits(splits)
    roles, patients = _patient_disjoint_roles(splits, fold)
    patches = _read_fold_patches(labels_dir, splits, roles)
    _require_both_classes(patches.train, fold, labels_dir)
    anchors = np.arange(len(patches.train))
    cap = index_config["max_anchors"]
    if cap is not None and cap < len(patches.train):
        anchors = np.sort(_stream(seed, fold, "anchors").choice(
            len(patches.train), size=int(cap), replace=False))
    tables, n_batches = _draw_tables(patches, anchors, index_config, mags, fixed, seed, fold)
    for name, table in tables.items():
        if name not in ("patches_val", "patches_test"):
            _check_training(name, table, roles["train"], fold)
    summary = {
        "fold": fold, "n_folds": n_folds(splits), "seed": seed,
        "magnifications": [float(m) for m in mags],
        "parameters": _parameters(index_config, fixed, mags),
        "slides": {role: sorted(ids) for role, ids in roles.items()},
        "patients": patients,
        "anchors": int(len(anchors)),
        "training_patches": {"all": int(len(patches.train_all)),
                             "by_label": _count_by_label(patches.train_all.label)},
        "counts": _table_counts(tables, n_batches),
        "files": [f"{name}.parquet" for name in TABLES] + ["index.json"],
        "warnings": _fold_warnings(patches.val, patches.test, mags),
    }
    _write_indices(tables, summary, out_dir)
    return summary


# -- inputs --------------------------------------------------------------------------------

def _magnifications(config: dict) -> np.ndarray:
    mags = np.array(sorted(float(m) for m in config["magnifications"]), dtype=np.float64)
    if len(np.unique(mags)) != len(mags):
        raise ConfigError(f"magnifications {mags.tolist()} repeat a value",
                          fix="list each magnification once")
    return mags  # ascending: the next finer magnification of mags[i] is mags[i + 1]


def _checked_splits(splits: pd.DataFrame) -> pd.DataFrame:
    """The splits' slide_id, patient_id and fold columns, one row per slide."""
    missing = [c for c in ("slide_id", "patient_id", "fold") if c not in splits.columns]
    if missing:
        raise IndexBuildError(f"the splits lack column(s) {', '.join(missing)}",
                              fix="read them with multimag.dataset.splits.read_splits")
    splits = splits.loc[:, ["slide_id", "patient_id", "fold"]].astype(
        {"slide_id": str, "patient_id": str, "fold": np.int64}).reset_index(drop=True)
    dupes = sorted(splits.loc[splits["slide_id"].duplicated(), "slide_id"].unique())
    if dupes:
        raise IndexBuildError(f"duplicate slide_id {', '.join(dupes[:5])} in the splits",
                              fix="one row per slide; re-run the split rule")
    check_no_leak(splits)
    return splits


def _patient_disjoint_roles(splits: pd.DataFrame, fold: int
                            ) -> tuple[dict[str, set[str]], dict[str, list[str]]]:
    """Slide ids and sorted patient ids per role; a patient in two roles is an error."""
    roles = fold_roles(splits, fold)
    patient_of = dict(zip(splits["slide_id"], splits["patient_id"], strict=True))
    patients = {role: sorted({patient_of[s] for s in ids}) for role, ids in roles.items()}
    shared = set(patients["train"]) & (set(patients["val"]) | set(patients["test"]))
    if shared or set(patients["val"]) & set(patients["test"]):
        raise LeakError(f"fold {fold}: patient(s) {sorted(shared)[:5]} on both sides of "
                        "the split", fix="re-run the split rule")
    return roles, patients


def _read_fold_patches(labels_dir: Path, splits: pd.DataFrame,
                       roles: dict[str, set[str]]) -> _FoldPatches:
    slide_ids = np.array(sorted(splits["slide_id"]), dtype=object)

    def codes(role: str) -> np.ndarray:
        return np.flatnonzero(np.isin(slide_ids, sorted(roles[role])))

    require_label_files(labels_dir, slide_ids)
    train_all = read_patches(labels_dir, slide_ids, codes("train"))
    val_all = read_patches(labels_dir, slide_ids, codes("val"))
    test_all = read_patches(labels_dir, slide_ids, codes("test"))
    return _FoldPatches(pa.array(slide_ids.tolist(), type=pa.string()), train_all,
                        train_all.take(np.flatnonzero(train_all.label >= 0)),
                        val_all.take(np.flatnonzero(val_all.label >= 0)), test_all)


def _require_both_classes(train: Patches, fold: int, labels_dir: Path) -> None:
    """Pairs and triplets need at least two labelled training patches of each class."""
    for c in CLASSES:
        n = int((train.label == c).sum())
        if n == 0:
            raise IndexBuildError(f"fold {fold}: the training patients have no "
                                  f"{LABEL_NAMES[c]} patch", path=labels_dir,
                                  fix="add annotated slides of that class, or use fewer "
                                  "folds so each training set holds both classes")
        if n < 2:
            raise IndexBuildError(f"fold {fold}: the training patients have only one "
                                  f"{LABEL_NAMES[c]} patch; positives need two",
                                  path=labels_dir, fix="add annotated slides of that class")


# -- tables --------------------------------------------------------------------------------

def _stream(seed: int, fold: int, name: str) -> np.random.Generator:
    """The independent random stream of one table."""
    return np.random.default_rng(np.random.SeedSequence([seed, fold, _STREAMS[name]]))


def _draw_tables(patches: _FoldPatches, anchors: np.ndarray, index_config: dict,
                 mags: np.ndarray, fixed: tuple[float, float], seed: int, fold: int
                 ) -> tuple[dict[str, pa.Table], int]:
    """Every table of :data:`TABLES`, and the number of batches."""
    train, dictionary = patches.train, patches.dictionary
    by_class = ClassIndex(train.label)
    per_anchor = int(index_config["pairs_per_anchor"])
    tables: dict[str, pa.Table] = {}
    for name, role_patches in (("patches_train", train), ("patches_val", patches.val),
                               ("patches_test", patches.test)):
        tables[name] = pa.table(reference_columns(dictionary, role_patches, None, "", "",
                                                  None))
    tables["pairs"] = draw_pairs(train, by_class, anchors, per_anchor, mags,
                                 _stream(seed, fold, "pairs"), dictionary)
    tables["triplets"] = draw_triplets(train, by_class, anchors,
                                       int(index_config["triplets_per_anchor"]), mags,
                                       _stream(seed, fold, "triplets"), dictionary)
    tables["cross_mag_pairs"] = draw_cross_mag_pairs(
        train, anchors, per_anchor, mags, _stream(seed, fold, "cross_mag_pairs"), dictionary)
    per_patch = int(index_config["mpcs"]["pairs_per_patch"])
    for strategy in MPCS_STRATEGIES:
        name = f"mpcs_{strategy}"
        rng = None if strategy == "fixed" else _stream(seed, fold, name)
        tables[name] = draw_mpcs_pairs(patches.train_all, per_patch, strategy, mags, rng,
                                       dictionary, fixed)
    tables["batches"], n_batches = draw_batches(train, by_class, index_config["batch"], mags,
                                                _stream(seed, fold, "batches"), dictionary,
                                                fold)
    return tables, n_batches


# -- checks, summary, output ---------------------------------------------------------------

def _check_training(name: str, table: pa.Table, train_slides: set[str], fold: int) -> None:
    """Every slide a training table references belongs to a training patient."""
    for col in (c for c in table.column_names if "slide_id" in c):
        used = set(pc.unique(table.column(col)).to_pylist())
        outside = sorted(used - train_slides)
        if outside:
            raise LeakError(f"fold {fold}: {name}.{col} references slide(s) "
                            f"{', '.join(outside[:5])} of non-training patients",
                            fix="this is a bug in multimag.dataset.indices; please report it")


def _parameters(index_config: dict, fixed: tuple[float, float], mags: np.ndarray) -> dict:
    """The sampling parameters as index.json records them."""
    cap = index_config["max_anchors"]
    return {
        "pairs_per_anchor": int(index_config["pairs_per_anchor"]),
        "triplets_per_anchor": int(index_config["triplets_per_anchor"]),
        "max_anchors": None if cap is None else int(cap),
        "mpcs": {"fixed_pair": [float(m) for m in fixed],
                 "pairs_per_patch": int(index_config["mpcs"]["pairs_per_patch"]),
                 "ordered_pairs": [[float(a), float(b)]
                                   for a, b in zip(mags[:-1], mags[1:], strict=True)]},
        "batch": {"classes": int(index_config["batch"]["classes"]),
                  "samples_per_class": int(index_config["batch"]["samples_per_class"])},
    }


def _count_by_label(labels: np.ndarray) -> dict[str, int]:
    values, counts = np.unique(labels, return_counts=True)
    return {LABEL_NAMES.get(int(v), str(int(v))): int(c)
            for v, c in zip(values, counts, strict=True)}


def _table_counts(tables: dict[str, pa.Table], n_batches: int) -> dict:
    out: dict[str, dict] = {}
    for name, table in tables.items():
        entry: dict = {"rows": table.num_rows}
        for col in ("label", "label_a", "anchor_label"):
            if col in table.column_names:
                entry[f"by_{col}"] = _count_by_label(table.column(col).to_numpy())
        if name == "pairs":
            same = int(pc.sum(table.column("same")).as_py() or 0)
            entry["same"], entry["different"] = same, table.num_rows - same
        if name == "batches":
            entry["batches"] = n_batches
        out[name] = entry
    return out


def _fold_warnings(val: Patches, test: Patches, mags: np.ndarray) -> list[str]:
    notes = []
    if len(val) == 0:
        notes.append("the validation patients have no labelled patch")
    if len(test) == 0:
        notes.append("the test slides have no patch")
    if len(mags) < 2:
        notes.append("one magnification only: cross-magnification and MPCS ordered/random "
                     "tables are empty")
    return notes


def _write_indices(tables: dict[str, pa.Table], summary: dict, out_dir: Path) -> None:
    """Every table, then index.json (its presence marks a complete folder)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in TABLES:
        with atomic_path(out_dir / f"{name}.parquet") as tmp:
            pq.write_table(tables[name], tmp, compression="zstd")
    with atomic_path(out_dir / "index.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
