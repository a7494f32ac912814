"""Patient-level cross-validation folds (rule ``split``) and the roles of a fold.

Every patient lies in exactly one of ``k`` folds, stratified by patient label,
so no patient is ever on both sides of a split; for test fold ``F`` the next
fold is the validation set and the rest train. Each slide's diagnosis (the
truth of slide-level verdicts) rides along. The stratification, fold roles and
splits.tsv schema are in docs/dataset.md.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from multimag.atomic import atomic_path
from multimag.dataset.diagnosis import DIAGNOSES, SOURCES, slide_diagnoses
from multimag.errors import LeakError, SplitError

FOLD_COLUMNS = ("slide_id", "patient_id", "fold")
DIAGNOSIS_COLUMNS = ("diagnosis", "diagnosis_source")
COLUMNS = (*FOLD_COLUMNS, *DIAGNOSIS_COLUMNS)
ROLES = ("train", "val", "test")
MIN_FOLDS = 3


def patient_labels(samples: pd.DataFrame, diagnoses: pd.Series | None = None) -> pd.Series:
    """``tumour`` / ``normal`` / ``unknown`` per patient_id (sorted index): the strata.

    ``diagnoses`` is the diagnosis of each row of ``samples`` (default: from
    :func:`multimag.dataset.diagnosis.slide_diagnoses`).
    """
    if diagnoses is None:
        diagnoses = slide_diagnoses(samples)["diagnosis"]
    frame = pd.DataFrame({"patient_id": samples["patient_id"].astype(str).to_numpy(),
                          "label": np.asarray(diagnoses, dtype=object).astype(str)})
    grouped = frame.groupby("patient_id", sort=True)["label"]
    any_tumour = grouped.agg(lambda s: bool((s == "tumour").any()))
    all_normal = grouped.agg(lambda s: bool((s == "normal").all()))
    out = pd.Series("unknown", index=any_tumour.index, name="patient_label")
    out[all_normal] = "normal"
    out[any_tumour] = "tumour"
    return out


def _check_samples(samples: pd.DataFrame, source: str) -> pd.Series:
    """The slide ids of a samples table, refusing missing, empty and duplicate ids."""
    missing = [c for c in ("slide_id", "patient_id") if c not in samples.columns]
    if missing:
        raise SplitError(f"missing column(s) {', '.join(missing)} in the samples table",
                         path=source, fix="samples.tsv needs slide_id and patient_id")
    ids = samples["slide_id"].astype(str)
    dupes = sorted(ids[ids.duplicated()].unique())
    if dupes:
        raise SplitError(f"duplicate slide_id {', '.join(dupes[:5])}", path=source,
                         fix="give every slide a unique slide_id")
    empty = ids[(ids == "") | (samples["patient_id"].astype(str) == "")]
    if len(empty):
        raise SplitError(f"{len(empty)} row(s) with an empty slide_id or patient_id",
                         path=source, fix="fill in slide_id and patient_id for every slide")
    return ids


def make_splits(samples: pd.DataFrame, folds: int = 5, seed: int = 0, *,
                source: str | Path | None = None,
                class_map: Mapping[str, Sequence[Any]] | None = None) -> pd.DataFrame:
    """One row per slide: ``slide_id, patient_id, fold, diagnosis, diagnosis_source``
    (k-fold by patient).

    ``samples`` is the table of ``multimag.dataset.samples.load_samples`` (or any frame
    with ``slide_id`` and ``patient_id`` columns, ``slide_label`` and ``annotation``
    optional); ``class_map`` is the config's ``labels.class_map``, for reading the
    annotations; ``source`` names the file it came from in error messages.
    """
    source = str(source) if source is not None else "samples.tsv"
    samples = _with_slide_id_column(samples)
    ids = _check_samples(samples, source)
    folds = int(folds)
    if folds < MIN_FOLDS:
        raise SplitError(f"split.folds = {folds}: with fewer than {MIN_FOLDS} folds no "
                         "training patients remain once one fold is test and the next "
                         "one validation", path=source,
                         fix=f"set split.folds to {MIN_FOLDS} or more")
    diagnoses = slide_diagnoses(samples, class_map, source=source)
    patient_label = patient_labels(samples, diagnoses["diagnosis"])
    n_patients = len(patient_label)
    if n_patients < folds:
        raise SplitError(f"{n_patients} patient(s) for {folds} folds: every fold needs at "
                         "least one patient", path=source,
                         fix=f"set split.folds to at most {n_patients} (and at least "
                         f"{MIN_FOLDS}), or add patients")
    fold_of = _assign_patient_folds(patient_label, folds, int(seed))
    counts = np.bincount(fold_of, minlength=folds)
    if (counts == 0).any():  # not expected from scikit-learn; never write such a split
        raise SplitError(f"fold(s) {np.flatnonzero(counts == 0).tolist()} got no patient",
                         path=source, fix="use fewer folds or another split.seed")
    patient_fold = pd.Series(fold_of, index=patient_label.index)
    out = pd.DataFrame({"slide_id": ids.to_numpy(),
                        "patient_id": samples["patient_id"].astype(str).to_numpy()})
    out["fold"] = patient_fold.loc[out["patient_id"]].to_numpy().astype(np.int64)
    for column in DIAGNOSIS_COLUMNS:
        out[column] = diagnoses[column].to_numpy()
    out = out.sort_values("slide_id", kind="stable").reset_index(drop=True)
    check_no_leak(out, source=source)
    return out


def _assign_patient_folds(patient_label: pd.Series, folds: int, seed: int) -> np.ndarray:
    """Fold of each patient (in the order of ``patient_label``) via scikit-learn."""
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    n = len(patient_label)
    groups = np.arange(n)  # one row per patient: its own group
    x = np.zeros((n, 1))
    y = patient_label.to_numpy().astype(str)
    _, per_stratum = np.unique(y, return_counts=True)
    # stratify where possible: two strata or more, one of them at least `folds` strong
    # (scikit-learn refuses when every stratum is smaller than the number of folds)
    if len(per_stratum) >= 2 and per_stratum.max() >= folds:
        stratified = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        fold_of = _fold_of_each_group(stratified, x, y, groups)
        if (np.bincount(fold_of, minlength=folds) > 0).all():
            return fold_of
    return _fold_of_each_group(GroupKFold(n_splits=folds, shuffle=True, random_state=seed),
                               x, y, groups)


def _fold_of_each_group(splitter, x: np.ndarray, y: np.ndarray, groups: np.ndarray
                        ) -> np.ndarray:
    """The index of the test fold in which each row lies."""
    fold_of = np.full(len(groups), -1, dtype=np.int64)
    with warnings.catch_warnings():
        # "The least populated class in y has only k members": expected, not an error
        warnings.filterwarnings("ignore", message=".*least populated class.*")
        for f, (_, test) in enumerate(splitter.split(x, y, groups)):
            fold_of[test] = f
    return fold_of


def n_folds(splits: pd.DataFrame) -> int:
    """Number of folds ``k`` (folds are numbered 0 .. k-1)."""
    return int(splits["fold"].max()) + 1 if len(splits) else 0


def check_no_leak(splits: pd.DataFrame, *, source: str | Path | None = None) -> None:
    """Raise ``LeakError`` when a patient lies in more than one fold.

    Every fold ``F`` is a test set, so a patient in two folds would be on both
    sides of at least one split (test and train or validation).
    """
    source = str(source) if source is not None else "splits"
    per_patient = splits.groupby(splits["patient_id"].astype(str))["fold"].nunique()
    leaked = per_patient[per_patient > 1]
    if len(leaked):
        first = leaked.index[0]
        where = sorted(splits.loc[splits["patient_id"].astype(str) == first, "fold"]
                       .unique().tolist())
        raise LeakError(f"{len(leaked)} patient(s) in more than one fold, e.g. patient "
                        f"{first!r} in folds {where}", path=source,
                        fix="split by patient: all slides of a patient must share one "
                        "fold (re-run the split rule)")


def fold_roles(splits: pd.DataFrame, fold: int) -> dict[str, set[str]]:
    """Slide ids per role for test fold ``fold``: keys ``train``, ``val``, ``test``."""
    k = n_folds(splits)
    if k < MIN_FOLDS:
        raise SplitError(f"the splits have {k} fold(s); train/val/test roles need at least "
                         f"{MIN_FOLDS}", fix=f"re-run the split rule with split.folds >= "
                         f"{MIN_FOLDS}")
    fold = int(fold)
    if not 0 <= fold < k:
        raise SplitError(f"fold {fold} does not exist (the splits have folds 0..{k - 1})",
                         fix=f"choose a fold between 0 and {k - 1}")
    check_no_leak(splits)
    val = (fold + 1) % k
    f = splits["fold"].to_numpy()
    ids = splits["slide_id"].astype(str).to_numpy()
    return {"train": set(ids[(f != fold) & (f != val)]),
            "val": set(ids[f == val]),
            "test": set(ids[f == fold])}


def write_splits(df: pd.DataFrame, path: str | Path) -> Path:
    """Write the splits TSV atomically (temporary sibling, then rename)."""
    path = Path(path)
    df = _with_slide_id_column(df)
    _check_splits_table(df, path, COLUMNS)
    table = df.loc[:, list(COLUMNS)].copy()
    table["fold"] = table["fold"].astype(np.int64)
    table = table.sort_values("slide_id", kind="stable")
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        table.to_csv(handle, sep="\t", index=False, lineterminator="\n")
    return path


def read_splits(path: str | Path) -> pd.DataFrame:
    """Read and validate a splits TSV (columns, fold numbers, diagnoses, no patient leak).

    The diagnosis columns are kept when present; a file written before they
    existed still gives the folds (its verdicts cannot be scored).
    """
    path = Path(path)
    try:
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except FileNotFoundError as exc:
        raise SplitError("the splits file does not exist", path=path,
                         fix="run the split rule (multimag split) first") from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise SplitError(f"not a tab-separated table ({exc})", path=path,
                         fix="re-run the split rule") from exc
    df.columns = [c.strip() for c in df.columns]
    _check_columns(df, path, FOLD_COLUMNS)
    folds = pd.to_numeric(df["fold"], errors="coerce")
    if folds.isna().any() or (folds % 1 != 0).any() or (folds < 0).any():
        raise SplitError("column fold must hold non-negative integers", path=path,
                         fix="re-run the split rule")
    df = df.loc[:, [c for c in COLUMNS if c in df.columns]].copy()
    df["fold"] = folds.astype(np.int64)
    _check_splits_table(df, path, FOLD_COLUMNS)
    return df.reset_index(drop=True)


def _check_columns(df: pd.DataFrame, path: str | Path, required: Sequence[str]) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise SplitError(f"missing column(s) {', '.join(missing)}", path=path,
                         fix=f"a splits table has the columns {', '.join(COLUMNS)}; "
                         "re-run the split rule")


def _check_diagnoses(df: pd.DataFrame, path: str | Path) -> None:
    for column, allowed in (("diagnosis", DIAGNOSES), ("diagnosis_source", SOURCES)):
        if column not in df.columns:
            continue
        bad = sorted(set(df[column].astype(str)) - set(allowed))
        if bad:
            raise SplitError(f"column {column} holds {', '.join(map(repr, bad[:5]))}, not "
                             f"one of {', '.join(map(repr, allowed))}", path=path,
                             fix="re-run the split rule")


def _check_splits_table(df: pd.DataFrame, path: str | Path, required: Sequence[str]) -> None:
    _check_columns(df, path, required)
    if not len(df):
        raise SplitError("the splits table is empty", path=path, fix="re-run the split rule")
    ids = df["slide_id"].astype(str)
    dupes = sorted(ids[ids.duplicated()].unique())
    if dupes:
        raise SplitError(f"duplicate slide_id {', '.join(dupes[:5])}", path=path,
                         fix="one row per slide; re-run the split rule")
    if ((ids == "") | (df["patient_id"].astype(str) == "")).any():
        raise SplitError("empty slide_id or patient_id", path=path, fix="re-run the split rule")
    present = set(df["fold"].astype(np.int64).unique().tolist())
    k = max(present) + 1
    if min(present) < 0 or present != set(range(k)):
        raise SplitError(f"folds must be numbered 0..k-1 without gaps, found "
                         f"{sorted(present)}", path=path, fix="re-run the split rule")
    _check_diagnoses(df, path)
    check_no_leak(df, source=path)


def _with_slide_id_column(df: pd.DataFrame) -> pd.DataFrame:
    """``slide_id`` as a column even when it is only the index (load_samples keeps both)."""
    if "slide_id" not in df.columns and df.index.name == "slide_id":
        return df.reset_index()
    return df.reset_index(drop=True)


def splits_frame(splits: pd.DataFrame | str | Path) -> pd.DataFrame:
    """A splits table, read from its file when given a path."""
    if isinstance(splits, (str, Path)):
        return read_splits(splits)
    return splits.reset_index(drop=True)
