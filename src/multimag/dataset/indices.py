"""Pair, triplet, magnification-pair and batch indices per fold (rule ``index``).

``build_indices`` reads the per-slide label tables ``LABELS_DIR/{slide_id}.parquet``
(columns ``slide_id``, ``patch``, ``label`` with 1 tumour, 0 normal, -1 ambiguous)
of every slide in the splits, and writes into ``out_dir`` tables of references
``(slide_id, patch, magnification)`` into the patch stores; no pixels are read.

Every training table (pairs, triplets, cross-magnification pairs, MPCS pairs,
batches, ``patches_train``) is drawn ONLY from the training patients of the fold
(see ``multimag.dataset.splits``: test = fold F, validation = fold (F+1) % k, training =
the rest) and re-checked for that before it is written. Ambiguous (-1) patches
are never used as labelled samples; the self-supervised MPCS pairs use every
training patch, ambiguous ones included, because they need no label.

Randomness: one ``numpy`` generator per table, seeded by
``SeedSequence([index.seed, fold, table])``, over inputs read in sorted
(slide_id, patch) order, so two runs write byte-identical files and changing the
size of one table leaves the others as they were. Everything is vectorised:
no Python loop runs over patches or anchors.

Output files (parquet; ``slide_id`` string, ``patch`` int64, ``magnification*``
float64 such as 20.0 or 2.5, ``label*`` int8, ``same`` int8, ``batch`` int64):

=====================  ==============================================================
``patches_train``      slide_id, patch, label: labelled (0/1) training patches
``patches_val``        slide_id, patch, label: labelled validation patches
``patches_test``       slide_id, patch, label: all test patches (label may be -1)
``pairs``              SMSE Alg. 1: {slide_id, patch, magnification, label}_{a,b}, same
``triplets``           SMSE Alg. 2: {anchor, positive, negative}_{slide_id, patch,
                       magnification, label}
``cross_mag_pairs``    slide_id, patch, magnification_a, magnification_b, label
``mpcs_fixed``         slide_id, patch, magnification_a, magnification_b
``mpcs_ordered``       slide_id, patch, magnification_a, magnification_b
``mpcs_random``        slide_id, patch, magnification_a, magnification_b
``batches``            batch, slide_id, patch, magnification, label
``index.json``         fold, seed, magnifications, parameters, counts, slide and
                       patient lists per role (written last: marks completion)
=====================  ==============================================================

Sampling rules:

* anchors: every labelled training patch, or ``index.max_anchors`` of them drawn
  without replacement (then kept in sorted order);
* pairs (SMSE Algorithm 1): ``index.pairs_per_anchor`` per anchor; with
  probability 1/2 the partner is a uniformly drawn OTHER patch of the same class,
  else a patch of a different class (a uniformly drawn other class, then a
  uniformly drawn patch of it), so pairs are balanced whatever the class
  imbalance; each side's magnification is uniform over ``magnifications``;
* triplets (SMSE Algorithm 2): ``index.triplets_per_anchor`` per anchor; positive =
  another patch of the anchor's class, negative = a patch of another class; three
  independent uniform magnifications;
* cross-magnification pairs: ``index.pairs_per_anchor`` per anchor, the same
  patch (location) at two different magnifications, uniform over ordered pairs;
* MPCS (Chhipa et al.), ``index.mpcs.pairs_per_patch`` per training patch:
  fixed = ``index.mpcs.fixed_pair`` as given; ordered = a magnification drawn
  uniformly among those with a next finer one, paired with that next finer one
  through a look-up table, so each of the n-1 ordered pairs has probability
  1/(n-1) (the public MPCS code draws 200x->400x twice as often; not copied);
  random = two different magnifications, uniform over ordered pairs;
* batches (constellation / N-pair losses): ``index.batch.classes`` classes x
  ``index.batch.samples_per_class`` patches per batch, class-major within a
  batch; ``ceil(minority / samples_per_class)`` batches (at least 1); each
  class's patches are shuffled and used at most once, except that a class that
  runs short fills its last batch with patches from its earlier batches (never
  a patch twice in one batch). A class with fewer labelled training patches
  than ``samples_per_class`` is an error.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from multimag.atomic import atomic_path
from multimag.config import validate_config
from multimag.dataset.splits import LeakError, check_no_leak, fold_roles, n_folds
from multimag.errors import ConfigError, IndexBuildError, LabelTableError

LABEL_COLUMNS = ("slide_id", "patch", "label")
LABEL_NAMES = {-1: "ambiguous", 0: "normal", 1: "tumour"}
CLASSES = (0, 1)
TABLES = ("patches_train", "patches_val", "patches_test", "pairs", "triplets",
          "cross_mag_pairs", "mpcs_fixed", "mpcs_ordered", "mpcs_random", "batches")
# one independent random stream per table (appending new streams keeps old ones)
_STREAMS = {"anchors": 0, "pairs": 1, "triplets": 2, "cross_mag_pairs": 3,
            "mpcs_ordered": 4, "mpcs_random": 5, "batches": 6}


@dataclass(frozen=True)
class _Patches:
    """Columnar patch references, sorted by (slide, patch)."""

    slide: np.ndarray  # int32 code into the sorted slide-id dictionary
    patch: np.ndarray  # int64
    label: np.ndarray  # int8

    def __len__(self) -> int:
        return len(self.patch)

    def take(self, rows: np.ndarray) -> _Patches:
        return _Patches(self.slide[rows], self.patch[rows], self.label[rows])


class _ClassIndex:
    """Rows grouped by class, for vectorised draws within / across classes."""

    def __init__(self, labels: np.ndarray) -> None:
        self.classes, self.ci = np.unique(labels, return_inverse=True)
        self.order = np.argsort(self.ci, kind="stable")
        self.counts = np.bincount(self.ci, minlength=len(self.classes))
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]])
        self.rank = np.empty(len(labels), dtype=np.int64)
        self.rank[self.order] = np.arange(len(labels)) - self.starts[self.ci[self.order]]

    def members(self, k: int) -> np.ndarray:
        return self.order[self.starts[k]:self.starts[k] + self.counts[k]]

    def same_class(self, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """For each row, a uniformly drawn OTHER row of its class (needs 2 per class)."""
        k = self.ci[rows]
        j = rng.integers(0, self.counts[k] - 1)
        j += j >= self.rank[rows]
        return self.order[self.starts[k] + j]

    def other_class(self, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """For each row, a uniformly drawn other class, then a uniform row of it."""
        k = self.ci[rows]
        other = rng.integers(0, len(self.classes) - 1, size=len(rows))
        other += other >= k
        j = rng.integers(0, self.counts[other])
        return self.order[self.starts[other] + j]


def build_indices(splits: pd.DataFrame, labels_dir: str | Path, out_dir: str | Path,
                  fold: int, config: dict) -> dict:
    """Write the indices of test fold ``fold`` into ``out_dir``; return the summary.

    The summary is also written as ``out_dir/index.json`` (last, atomically).
    """
    labels_dir, out_dir = Path(labels_dir), Path(out_dir)
    config = validate_config(config)
    icfg = config["index"]
    seed, fold = int(icfg["seed"]), int(fold)
    mags = _magnifications(config)
    fixed = _fixed_pair(icfg["mpcs"]["fixed_pair"], mags)

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
    roles = fold_roles(splits, fold)
    patient_of = dict(zip(splits["slide_id"], splits["patient_id"], strict=True))
    patients = {role: sorted({patient_of[s] for s in ids}) for role, ids in roles.items()}
    shared = set(patients["train"]) & (set(patients["val"]) | set(patients["test"]))
    if shared or set(patients["val"]) & set(patients["test"]):
        raise LeakError(f"fold {fold}: patient(s) {sorted(shared)[:5]} on both sides of "
                        "the split", fix="re-run the split rule")

    slide_ids = np.array(sorted(splits["slide_id"]), dtype=object)
    dictionary = pa.array(slide_ids.tolist(), type=pa.string())
    train_codes = np.flatnonzero(np.isin(slide_ids, sorted(roles["train"])))
    _require_label_files(labels_dir, slide_ids)
    train_all = _read_labels(labels_dir, slide_ids, train_codes)
    val_all = _read_labels(labels_dir, slide_ids,
                           np.flatnonzero(np.isin(slide_ids, sorted(roles["val"]))))
    test_all = _read_labels(labels_dir, slide_ids,
                            np.flatnonzero(np.isin(slide_ids, sorted(roles["test"]))))
    train = train_all.take(np.flatnonzero(train_all.label >= 0))
    val = val_all.take(np.flatnonzero(val_all.label >= 0))

    per_class = np.array([(train.label == c).sum() for c in CLASSES])
    for c, n in zip(CLASSES, per_class, strict=True):
        if n == 0:
            raise IndexBuildError(f"fold {fold}: the training patients have no "
                                  f"{LABEL_NAMES[c]} patch", path=labels_dir,
                                  fix="add annotated slides of that class, or use fewer "
                                  "folds so each training set holds both classes")
        if n < 2:
            raise IndexBuildError(f"fold {fold}: the training patients have only one "
                                  f"{LABEL_NAMES[c]} patch; positives need two",
                                  path=labels_dir, fix="add annotated slides of that class")

    def rng(name: str) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([seed, fold, _STREAMS[name]]))

    cls = _ClassIndex(train.label)
    anchors = np.arange(len(train))
    cap = icfg["max_anchors"]
    if cap is not None and cap < len(train):
        anchors = np.sort(rng("anchors").choice(len(train), size=int(cap), replace=False))

    tables: dict[str, pa.Table] = {}
    for name, patches in (("patches_train", train), ("patches_val", val),
                          ("patches_test", test_all)):
        tables[name] = pa.table(_refs(dictionary, patches, None, "", "", None))
    tables["pairs"] = _pairs(train, cls, anchors, int(icfg["pairs_per_anchor"]), mags,
                             rng("pairs"), dictionary)
    tables["triplets"] = _triplets(train, cls, anchors, int(icfg["triplets_per_anchor"]),
                                   mags, rng("triplets"), dictionary)
    tables["cross_mag_pairs"] = _cross_mag(train, anchors, int(icfg["pairs_per_anchor"]),
                                           mags, rng("cross_mag_pairs"), dictionary)
    q = int(icfg["mpcs"]["pairs_per_patch"])
    tables["mpcs_fixed"] = _mpcs(train_all, q, "fixed", mags, None, dictionary, fixed)
    tables["mpcs_ordered"] = _mpcs(train_all, q, "ordered", mags, rng("mpcs_ordered"),
                                   dictionary)
    tables["mpcs_random"] = _mpcs(train_all, q, "random", mags, rng("mpcs_random"),
                                  dictionary)
    tables["batches"], n_batches = _batches(train, cls, icfg["batch"], mags, rng("batches"),
                                            dictionary, fold)

    train_slides = set(roles["train"])
    for name, table in tables.items():
        if name in ("patches_val", "patches_test"):
            continue
        _check_training(name, table, train_slides, fold)

    summary = {
        "fold": fold,
        "n_folds": n_folds(splits),
        "seed": seed,
        "magnifications": [float(m) for m in mags],
        "parameters": {
            "pairs_per_anchor": int(icfg["pairs_per_anchor"]),
            "triplets_per_anchor": int(icfg["triplets_per_anchor"]),
            "max_anchors": None if cap is None else int(cap),
            "mpcs": {"fixed_pair": [float(m) for m in fixed],
                     "pairs_per_patch": q,
                     "ordered_pairs": [[float(a), float(b)]
                                       for a, b in zip(mags[:-1], mags[1:], strict=True)]},
            "batch": {"classes": int(icfg["batch"]["classes"]),
                      "samples_per_class": int(icfg["batch"]["samples_per_class"])},
        },
        "slides": {role: sorted(ids) for role, ids in roles.items()},
        "patients": patients,
        "anchors": int(len(anchors)),
        "training_patches": {"all": int(len(train_all)),
                             "by_label": _by_label(train_all.label)},
        "counts": _counts(tables, n_batches),
        "files": [f"{name}.parquet" for name in TABLES] + ["index.json"],
        "warnings": _warnings(val, test_all, mags),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in TABLES:
        _write_parquet(tables[name], out_dir / f"{name}.parquet")
    _write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", out_dir / "index.json")
    return summary


# -- inputs --------------------------------------------------------------------------------

def _magnifications(config: dict) -> np.ndarray:
    mags = np.array(sorted(float(m) for m in config["magnifications"]), dtype=np.float64)
    if len(np.unique(mags)) != len(mags):
        raise ConfigError(f"magnifications {mags.tolist()} repeat a value",
                          fix="list each magnification once")
    return mags  # ascending: the next finer magnification of mags[i] is mags[i + 1]


def _fixed_pair(pair: list, mags: np.ndarray) -> tuple[float, float]:
    out = []
    for m in pair:
        hit = np.flatnonzero(np.isclose(mags, float(m)))
        if not len(hit):
            raise ConfigError(f"index.mpcs.fixed_pair {list(pair)} names {m}x, which is not "
                              f"among magnifications {mags.tolist()}",
                              fix="choose two of the configured magnifications")
        out.append(float(mags[hit[0]]))
    return out[0], out[1]


def _label_path(labels_dir: Path, slide_id: str) -> Path:
    return labels_dir / f"{slide_id}.parquet"


def _require_label_files(labels_dir: Path, slide_ids: np.ndarray) -> None:
    missing = [s for s in slide_ids if not _label_path(labels_dir, s).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more slide(s))" if len(missing) > 1 else ""
        raise LabelTableError(f"the label table of a slide in the splits is missing{more}",
                              slide=missing[0], path=_label_path(labels_dir, missing[0]),
                              fix="run the label rule (multimag label) for every slide of "
                              "the splits, or re-run the split rule without that slide")


def _read_labels(labels_dir: Path, slide_ids: np.ndarray, codes: np.ndarray) -> _Patches:
    slides, patches, labels = [], [], []
    for code in codes:
        sid = str(slide_ids[code])
        path = _label_path(labels_dir, sid)
        try:
            parquet = pq.ParquetFile(path)
            missing = [c for c in LABEL_COLUMNS if c not in parquet.schema_arrow.names]
            if missing:
                raise LabelTableError(f"missing column(s) {', '.join(missing)}", slide=sid,
                                      path=path, fix="re-run the label rule for this slide")
            table = parquet.read(columns=list(LABEL_COLUMNS))
        except (pa.ArrowException, OSError) as exc:
            raise LabelTableError(f"not a readable parquet label table ({exc})", slide=sid,
                                  path=path, fix="re-run the label rule for this slide"
                                  ) from exc
        for col in ("patch", "label"):
            if table.column(col).null_count:
                raise LabelTableError(f"column {col} has empty values", slide=sid, path=path,
                                      fix="re-run the label rule for this slide")
        if table.num_rows and not pc.all(pc.fill_null(
                pc.equal(table.column("slide_id").cast(pa.string()), sid), False)).as_py():
            raise LabelTableError("column slide_id does not match the file name", slide=sid,
                                  path=path, fix=f"name the file after its slide ({sid})")
        patch = table.column("patch").to_numpy().astype(np.int64)
        label = table.column("label").to_numpy()
        if not np.isin(label, (-1, 0, 1)).all():
            raise LabelTableError("labels must be 1 (tumour), 0 (normal) or -1 (ambiguous)",
                                  slide=sid, path=path, fix="re-run the label rule")
        order = np.argsort(patch, kind="stable")
        patch, label = patch[order], label[order].astype(np.int8)
        if len(patch) > 1 and (np.diff(patch) == 0).any():
            raise LabelTableError("a patch is labelled twice", slide=sid, path=path,
                                  fix="one row per patch; re-run the label rule")
        slides.append(np.full(len(patch), code, dtype=np.int32))
        patches.append(patch)
        labels.append(label)
    if not slides:
        return _Patches(np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, np.int8))
    return _Patches(np.concatenate(slides), np.concatenate(patches), np.concatenate(labels))


# -- tables --------------------------------------------------------------------------------

def _refs(dictionary: pa.Array, p: _Patches, rows: np.ndarray | None, prefix: str,
          suffix: str, mag: np.ndarray | None, label: bool = True) -> dict[str, pa.Array]:
    """Columns ``{prefix}slide_id{suffix}``, patch, [magnification], [label]."""
    if rows is not None:
        p = p.take(rows)
    cols = {f"{prefix}slide_id{suffix}": dictionary.take(pa.array(p.slide, pa.int32())),
            f"{prefix}patch{suffix}": pa.array(p.patch, pa.int64())}
    if mag is not None:
        cols[f"{prefix}magnification{suffix}"] = pa.array(mag, pa.float64())
    if label:
        cols[f"{prefix}label{suffix}"] = pa.array(p.label, pa.int8())
    return cols


def _pairs(train: _Patches, cls: _ClassIndex, anchors: np.ndarray, per_anchor: int,
           mags: np.ndarray, rng: np.random.Generator, dictionary: pa.Array) -> pa.Table:
    a = np.repeat(anchors, per_anchor)
    same = rng.random(len(a)) < 0.5
    positive = cls.same_class(a, rng)
    negative = cls.other_class(a, rng)
    b = np.where(same, positive, negative)
    mag_a = mags[rng.integers(0, len(mags), size=len(a))]
    mag_b = mags[rng.integers(0, len(mags), size=len(a))]
    cols = _refs(dictionary, train, a, "", "_a", mag_a)
    cols.update(_refs(dictionary, train, b, "", "_b", mag_b))
    cols["same"] = pa.array((train.label[a] == train.label[b]).astype(np.int8), pa.int8())
    return pa.table(cols)


def _triplets(train: _Patches, cls: _ClassIndex, anchors: np.ndarray, per_anchor: int,
              mags: np.ndarray, rng: np.random.Generator, dictionary: pa.Array) -> pa.Table:
    a = np.repeat(anchors, per_anchor)
    positive = cls.same_class(a, rng)
    negative = cls.other_class(a, rng)
    cols: dict[str, pa.Array] = {}
    for role, rows in (("anchor", a), ("positive", positive), ("negative", negative)):
        mag = mags[rng.integers(0, len(mags), size=len(a))]
        cols.update(_refs(dictionary, train, rows, f"{role}_", "", mag))
    return pa.table(cols)


def _two_different(n: int, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices (i, j), i != j, uniform over the k*(k-1) ordered pairs."""
    i = rng.integers(0, k, size=n)
    j = rng.integers(0, k - 1, size=n)
    j += j >= i
    return i, j


def _mag_pair_table(dictionary: pa.Array, p: _Patches, rows: np.ndarray, mag_a: np.ndarray,
                    mag_b: np.ndarray, label: bool) -> pa.Table:
    cols = _refs(dictionary, p, rows, "", "", None, label=False)
    cols["magnification_a"] = pa.array(mag_a, pa.float64())
    cols["magnification_b"] = pa.array(mag_b, pa.float64())
    if label:
        cols["label"] = pa.array(p.label[rows], pa.int8())
    return pa.table(cols)


def _cross_mag(train: _Patches, anchors: np.ndarray, per_anchor: int, mags: np.ndarray,
               rng: np.random.Generator, dictionary: pa.Array) -> pa.Table:
    if len(mags) < 2:  # no second magnification: nothing to pair
        return _mag_pair_table(dictionary, train, anchors[:0], np.zeros(0), np.zeros(0),
                               label=True)
    rows = np.repeat(anchors, per_anchor)
    i, j = _two_different(len(rows), len(mags), rng)
    return _mag_pair_table(dictionary, train, rows, mags[i], mags[j], label=True)


def _mpcs(patches: _Patches, per_patch: int, strategy: str, mags: np.ndarray,
          rng: np.random.Generator | None, dictionary: pa.Array,
          fixed: tuple[float, float] | None = None) -> pa.Table:
    rows = np.repeat(np.arange(len(patches)), per_patch)
    n = len(rows)
    if strategy == "fixed":
        mag_a, mag_b = np.full(n, fixed[0]), np.full(n, fixed[1])
    elif len(mags) < 2:  # no second magnification: nothing to pair
        rows = rows[:0]
        mag_a = mag_b = np.zeros(0)
    elif strategy == "ordered":
        # look-up table: each magnification that has a next finer one -> that one
        next_finer = dict(zip(mags[:-1].tolist(), mags[1:].tolist(), strict=True))
        first = np.array(list(next_finer), dtype=np.float64)
        second = np.array([next_finer[m] for m in first], dtype=np.float64)
        pick = rng.integers(0, len(first), size=n)  # uniform over the n-1 ordered pairs
        mag_a, mag_b = first[pick], second[pick]
    elif strategy == "random":
        i, j = _two_different(n, len(mags), rng)
        mag_a, mag_b = mags[i], mags[j]
    else:  # pragma: no cover - internal
        raise ValueError(strategy)
    return _mag_pair_table(dictionary, patches, rows, mag_a, mag_b, label=False)


def _batches(train: _Patches, cls: _ClassIndex, bcfg: dict, mags: np.ndarray,
             rng: np.random.Generator, dictionary: pa.Array, fold: int
             ) -> tuple[pa.Table, int]:
    n_classes, per_class = int(bcfg["classes"]), int(bcfg["samples_per_class"])
    if n_classes != len(cls.classes):
        raise ConfigError(f"index.batch.classes = {n_classes}, but the training labels of "
                          f"fold {fold} have {len(cls.classes)} classes",
                          fix=f"set index.batch.classes to {len(cls.classes)}")
    smallest = int(cls.counts.min())
    if smallest < per_class:
        name = LABEL_NAMES.get(int(cls.classes[np.argmin(cls.counts)]), "a class")
        raise IndexBuildError(f"fold {fold}: only {smallest} labelled {name} training "
                              f"patch(es), fewer than index.batch.samples_per_class = "
                              f"{per_class}, so a balanced batch would repeat a patch",
                              fix=f"set index.batch.samples_per_class to at most {smallest}")
    n_batches = max(1, math.ceil(smallest / per_class))
    slots = n_batches * per_class
    plan = np.empty((n_batches, n_classes, per_class), dtype=np.int64)
    for k in range(n_classes):
        perm = rng.permutation(cls.members(k))
        if len(perm) >= slots:
            chosen = perm[:slots]
        else:  # fill the last batch from the earlier batches' patches of this class
            earlier = (n_batches - 1) * per_class
            fill = rng.choice(perm[:earlier], size=slots - len(perm), replace=False)
            chosen = np.concatenate([perm, fill])
        plan[:, k, :] = chosen.reshape(n_batches, per_class)
    rows = plan.reshape(-1)
    batch = np.repeat(np.arange(n_batches, dtype=np.int64), n_classes * per_class)
    mag = mags[rng.integers(0, len(mags), size=len(rows))]
    cols = {"batch": pa.array(batch, pa.int64())}
    cols.update(_refs(dictionary, train, rows, "", "", mag))
    return pa.table(cols), n_batches


# -- checks, summary, output ---------------------------------------------------------------

def _slide_columns(table: pa.Table) -> list[str]:
    return [c for c in table.column_names if "slide_id" in c]


def _check_training(name: str, table: pa.Table, train_slides: set[str], fold: int) -> None:
    """Every slide a training table references belongs to a training patient."""
    for col in _slide_columns(table):
        used = set(pc.unique(table.column(col)).to_pylist())
        outside = sorted(used - train_slides)
        if outside:
            raise LeakError(f"fold {fold}: {name}.{col} references slide(s) "
                            f"{', '.join(outside[:5])} of non-training patients",
                            fix="this is a bug in multimag.dataset.indices; please report it")


def _by_label(labels: np.ndarray) -> dict[str, int]:
    values, counts = np.unique(labels, return_counts=True)
    return {LABEL_NAMES.get(int(v), str(int(v))): int(c)
            for v, c in zip(values, counts, strict=True)}


def _counts(tables: dict[str, pa.Table], n_batches: int) -> dict:
    out: dict[str, dict] = {}
    for name, table in tables.items():
        entry: dict = {"rows": table.num_rows}
        for col in ("label", "label_a", "anchor_label"):
            if col in table.column_names:
                entry[f"by_{col}"] = _by_label(table.column(col).to_numpy())
        if name == "pairs":
            same = int(pc.sum(table.column("same")).as_py() or 0)
            entry["same"], entry["different"] = same, table.num_rows - same
        if name == "batches":
            entry["batches"] = n_batches
        out[name] = entry
    return out


def _warnings(val: _Patches, test: _Patches, mags: np.ndarray) -> list[str]:
    notes = []
    if len(val) == 0:
        notes.append("the validation patients have no labelled patch")
    if len(test) == 0:
        notes.append("the test slides have no patch")
    if len(mags) < 2:
        notes.append("one magnification only: cross-magnification and MPCS ordered/random "
                     "tables are empty")
    return notes


def _write_parquet(table: pa.Table, path: Path) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def _write_text(text: str, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
