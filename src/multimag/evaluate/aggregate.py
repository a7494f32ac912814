"""Slide and patient verdicts from patch predictions (rule ``aggregate``).

Input: one method's predictions directory, ``{slide_id}.parquet`` per slide (the
contract of ``notes/predictions_schema.md``), and the splits TSV. Every slide of
the splits must have a file; all files must come from one method and one
configuration (metadata ``method`` and ``config_sha256``), and each slide must
have been predicted by the model of its own test fold (anything else means the
model trained or validated on that slide: a leak). Files of slides that are not
in the splits are ignored.

Verdicts use the ``fused`` rows (one per patch). Ambiguous patches (label -1)
are left out by default (``exclude_ambiguous=True``). Three rules:

* ``majority`` (default): tumour when more patches are predicted tumour than
  normal. A tie goes to ``tie`` -- ``"tumour"`` by default, because a tie flags
  the slide for a pathologist's review rather than silently missing a tumour;
  ``tie="normal"`` is the other choice.
* ``mean``: tumour when the mean ``prob_tumour`` is at least ``threshold`` (0.5).
* ``fraction``: tumour when the fraction of patches predicted tumour is at least
  ``fraction_threshold`` (0.5).

The TRUE label of a slide is the same rule applied to the ground-truth patch
labels (labelled patches only): ``majority`` -> more tumour than normal labels,
a tie resolved by ``tie``; ``mean`` -> mean label (0/1) at least ``threshold``;
``fraction`` -> fraction of tumour labels at least ``fraction_threshold``. So
verdict and truth are defined alike. A slide with no usable patch gets the
verdict ``""`` (and a slide with no labelled patch the truth ``""``); it is listed
and counted but not scored (``correct`` empty). The patient verdict and truth are
the same rule over all the patient's patches pooled (SMSE's patient level).

Outputs (``aggregate``), in ``out_dir``:

``slides.tsv``, one row per slide of the splits:

* ``slide_id``, ``patient_id``, ``fold`` (the slide's test fold);
* ``n_patches``: patches the verdict counts (non-ambiguous ones when ambiguous
  patches are excluded, all of them otherwise); ``n_ambiguous``: patches with
  label -1;
* ``n_tumour_pred``: of ``n_patches``, those predicted tumour (``pred == 1``);
  ``mean_prob``: their mean ``prob_tumour``; ``tumour_fraction_pred`` =
  ``n_tumour_pred / n_patches``;
* ``n_labelled``: patches labelled 0 or 1; ``n_tumour_true``: those labelled 1;
  ``tumour_fraction_true`` = ``n_tumour_true / n_labelled``;
* ``n_correct``: labelled patches with ``pred == label``; ``recognition_rate`` =
  ``n_correct / n_labelled`` (empty when no patch is labelled);
* ``verdict`` and ``truth``: ``tumour`` / ``normal`` / empty (see above);
  ``correct``: ``verdict == truth`` (True/False, empty when not scored);
* ``rule``: ``majority``, ``mean`` or ``fraction``.

``patients.tsv``, one row per patient: ``patient_id``, ``fold``, ``n_slides`` (of
the splits), then the same columns as a slide, computed over the patient's
patches pooled. ``recognition_rate`` is the patient's correctly classified
patches over its labelled patches.

``summary.json``: method, config_sha256, the rule and its parameters, counts of
slides/patients (scored and not), the ids of unscored slides, ``slide_accuracy``
(the image-level accuracy over scored slides), ``patient_accuracy``, and
``recognition_rate`` = SMSE's RR, the mean over patients (with a labelled patch)
of their recognition rate. Undefined values are ``null``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from multimag.atomic import atomic_path
from multimag.dataset.splits import read_splits
from multimag.errors import MultimagError, PredictionsError

__all__ = [
    "COLUMNS",
    "FUSED",
    "RULES",
    "TIES",
    "PredictionsError",
    "aggregate",
    "check_predictions",
    "read_predictions",
    "verdict_summary",
    "verdicts",
    "write_verdicts",
]

METADATA_KEY = b"multimag"
FUSED = "fused"
RULES = ("majority", "mean", "fraction")
TIES = ("tumour", "normal")
TUMOUR, NORMAL = "tumour", "normal"

# column -> predicate on its arrow type (the predictions schema)
COLUMNS: dict[str, Any] = {
    "slide_id": pa.types.is_string,
    "patient_id": pa.types.is_string,
    "fold": pa.types.is_integer,
    "patch": pa.types.is_integer,
    "x": pa.types.is_integer,
    "y": pa.types.is_integer,
    "label": pa.types.is_integer,
    "view": pa.types.is_string,
    "prob_tumour": pa.types.is_floating,
    "pred": pa.types.is_integer,
    "embedding": lambda t: pa.types.is_list(t) or pa.types.is_large_list(t)
    or pa.types.is_fixed_size_list(t) or pa.types.is_null(t),
}
COUNT_COLUMNS = ("n_patches", "n_ambiguous", "n_tumour_pred", "n_labelled", "n_tumour_true",
                 "n_correct")
STAT_COLUMNS = ("n_patches", "n_ambiguous", "n_tumour_pred", "mean_prob",
                "tumour_fraction_pred", "n_labelled", "n_tumour_true", "tumour_fraction_true",
                "n_correct", "recognition_rate")
VERDICT_COLUMNS = ("verdict", "truth", "correct", "rule")
SLIDE_COLUMNS = ("slide_id", "patient_id", "fold", *STAT_COLUMNS, *VERDICT_COLUMNS)
PATIENT_COLUMNS = ("patient_id", "fold", "n_slides", *STAT_COLUMNS, *VERDICT_COLUMNS)

_FIX_PREDICT = "re-run the predict step (multimag predict) for the current splits"


# -- reading ---------------------------------------------------------------------------


def _splits_frame(splits: pd.DataFrame | str | Path) -> pd.DataFrame:
    if isinstance(splits, (str, Path)):
        return read_splits(splits)
    return splits.reset_index(drop=True)


def _list(ids: Iterable[str], limit: int = 10) -> str:
    ids = list(ids)
    more = f" and {len(ids) - limit} more" if len(ids) > limit else ""
    return ", ".join(ids[:limit]) + more


def check_predictions(pred_dir: str | Path,
                      splits: pd.DataFrame | str | Path) -> dict[str, dict[str, Any]]:
    """Check one method's predictions directory against the splits, from the files'
    schemas and metadata only (no rows are read); return ``{slide_id: metadata}``.

    Raises ``PredictionsError`` when a slide of the splits has no file, a file
    lacks a column of the schema or its metadata, the files mix methods or
    configurations, or a slide was predicted by the model of another fold.
    """
    pred_dir = Path(pred_dir)
    table = _splits_frame(splits)
    slide_ids = table["slide_id"].astype(str).tolist()
    fold_of = dict(zip(slide_ids, table["fold"].astype(int), strict=True))
    if not pred_dir.is_dir():
        raise PredictionsError("the predictions directory does not exist", path=pred_dir,
                               fix=_FIX_PREDICT)
    missing = [s for s in slide_ids if not (pred_dir / f"{s}.parquet").is_file()]
    if missing:
        raise PredictionsError(f"{len(missing)} slide(s) of the splits have no predictions "
                               f"file: {_list(missing)}", path=pred_dir,
                               fix=f"{_FIX_PREDICT} ({{slide_id}}.parquet for every slide)")
    metas: dict[str, dict[str, Any]] = {}
    for slide_id in slide_ids:
        path = pred_dir / f"{slide_id}.parquet"
        try:
            schema = pq.read_schema(path)
        except (OSError, pa.ArrowException) as exc:
            raise PredictionsError(f"not a readable Parquet file ({exc})", slide=slide_id,
                                   path=path, fix=_FIX_PREDICT) from exc
        absent = [c for c in COLUMNS if c not in schema.names]
        if absent:
            raise PredictionsError(f"missing column(s) {', '.join(absent)}", slide=slide_id,
                                   path=path, fix=_FIX_PREDICT)
        wrong = [f"{c} ({schema.field(c).type})" for c, ok in COLUMNS.items()
                 if not ok(schema.field(c).type)]
        if wrong:
            raise PredictionsError(f"column(s) of the wrong type: {', '.join(wrong)}",
                                   slide=slide_id, path=path, fix=_FIX_PREDICT)
        raw = (schema.metadata or {}).get(METADATA_KEY)
        try:
            meta = json.loads(raw) if raw else None
        except ValueError:
            meta = None
        if not isinstance(meta, dict) or not {"method", "fold", "config_sha256"} <= set(meta):
            raise PredictionsError("no valid 'multimag' metadata (method, fold, config_sha256)",
                                   slide=slide_id, path=path, fix=_FIX_PREDICT)
        metas[slide_id] = meta
    _check_one_configuration(pred_dir, metas)
    for slide_id, meta in metas.items():
        try:
            predicted_by = int(meta["fold"])
        except (TypeError, ValueError):
            predicted_by = None
        if predicted_by != fold_of[slide_id]:
            raise PredictionsError(
                f"predicted by the model of fold {meta['fold']}, but the splits put the slide "
                f"in test fold {fold_of[slide_id]}: that model trained or validated on it "
                "(a leak), or the splits changed after prediction", slide=slide_id,
                path=pred_dir / f"{slide_id}.parquet",
                fix=f"{_FIX_PREDICT} (the model of fold {fold_of[slide_id]} must predict it)")
    return metas


def _check_one_configuration(pred_dir: Path, metas: Mapping[str, Mapping[str, Any]]) -> None:
    groups: dict[tuple[str, str], list[str]] = {}
    for slide_id, meta in metas.items():
        key = (str(meta["method"]), str(meta["config_sha256"]))
        groups.setdefault(key, []).append(f"{slide_id}.parquet")
    if len(groups) <= 1:
        return
    ordered = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    (method, sha), majority = ordered[0]
    odd = "; ".join(f"{_list(files)} (method {m!r}, config_sha256 {s[:12]!r})"
                    for (m, s), files in ordered[1:])
    raise PredictionsError(
        f"predictions from {len(groups)} methods/configurations are mixed: {len(majority)} "
        f"file(s) have method {method!r}, config_sha256 {sha[:12]!r}, but {odd}",
        path=pred_dir,
        fix="delete the stale files and re-run the predict step with one configuration")


def read_predictions(pred_dir: str | Path, splits: pd.DataFrame | str | Path, *,
                     fused: bool | None = None, labelled_only: bool = False,
                     columns: Iterable[str] | None = None,
                     slides: Iterable[str] | None = None) -> pd.DataFrame:
    """All rows of one method's predictions, concatenated in splits order.

    ``check_predictions`` runs first over every slide of the splits. ``fused``:
    ``True`` reads only the ``fused`` rows, ``False`` only the per-magnification
    rows, ``None`` both. ``labelled_only`` drops ambiguous patches; ``columns``
    picks columns (the identifying ones are always read); ``slides`` reads a
    subset of the slides. The frame's ``attrs["multimag"]`` holds ``method``,
    ``config_sha256`` and ``magnifications`` of the files.
    """
    pred_dir = Path(pred_dir)
    table = _splits_frame(splits)
    metas = check_predictions(pred_dir, table)
    patient_of = dict(zip(table["slide_id"].astype(str), table["patient_id"].astype(str),
                          strict=True))
    wanted = list(patient_of) if slides is None else [str(s) for s in slides]
    unknown = [s for s in wanted if s not in patient_of]
    if unknown:
        raise PredictionsError(f"slide(s) {_list(unknown)} are not in the splits",
                               path=pred_dir, fix="ask for slides of the splits only")
    cols = list(COLUMNS) if columns is None else list(dict.fromkeys(
        ["slide_id", "patient_id", "fold", "patch", "label", "view", "prob_tumour", "pred",
         *columns]))
    filters = []
    if fused is True:
        filters.append(("view", "=", FUSED))
    elif fused is False:
        filters.append(("view", "!=", FUSED))
    if labelled_only:
        filters.append(("label", ">=", 0))
    frames = []
    for slide_id in wanted:
        path = pred_dir / f"{slide_id}.parquet"
        arrow = pq.read_table(path, columns=cols, filters=filters or None, partitioning=None)
        frame = arrow.to_pandas()
        _check_rows(frame, slide_id, patient_of[slide_id], metas[slide_id], path,
                    complete=fused is None and not labelled_only)
        frames.append(frame)
    filled = [f for f in frames if len(f)]  # concat warns about empty frames
    out = (pd.concat(filled, ignore_index=True) if filled
           else frames[0] if frames else pd.DataFrame(columns=cols))
    first = next(iter(metas.values()), {})
    out.attrs["multimag"] = {"method": first.get("method"),
                             "config_sha256": first.get("config_sha256"),
                             "magnifications": first.get("magnifications")}
    return out


def _check_rows(frame: pd.DataFrame, slide_id: str, patient_id: str, meta: Mapping[str, Any],
                path: Path, *, complete: bool) -> None:
    def bad(what: str) -> PredictionsError:
        return PredictionsError(what, slide=slide_id, path=path, fix=_FIX_PREDICT)

    if not len(frame):
        return
    if (frame["slide_id"].astype(str) != slide_id).any():
        raise bad(f"rows of another slide ({_list(sorted(set(frame['slide_id']) - {slide_id}))})"
                  f" in the file of slide {slide_id!r}")
    if (frame["patient_id"].astype(str) != patient_id).any():
        raise bad(f"patient_id differs from the splits (expected {patient_id!r})")
    if (frame["fold"].astype(np.int64) != int(meta["fold"])).any():
        raise bad(f"column fold disagrees with the metadata fold {meta['fold']}")
    if not frame["label"].isin([-1, 0, 1]).all():
        raise bad("label must be 1 (tumour), 0 (normal) or -1 (ambiguous)")
    if not frame["pred"].isin([0, 1]).all():
        raise bad("pred must be 0 or 1")
    prob = frame["prob_tumour"].to_numpy(dtype=np.float64)
    if not (np.isfinite(prob) & (prob >= 0) & (prob <= 1)).all():
        raise bad("prob_tumour must lie in [0, 1]")
    if frame.duplicated(["patch", "view"]).any():
        raise bad("more than one row per (patch, view)")
    if complete:
        is_fused = frame["view"] == FUSED
        fused_patches = set(frame.loc[is_fused, "patch"].tolist())
        if not set(frame.loc[~is_fused, "patch"].tolist()) <= fused_patches:
            raise bad("a patch has per-magnification rows but no 'fused' row")


# -- verdicts --------------------------------------------------------------------------


def _check_rule(rule: str, tie: str) -> None:
    if rule not in RULES:
        raise MultimagError(f"unknown aggregation rule {rule!r}",
                            fix=f"choose one of {', '.join(RULES)}")
    if tie not in TIES:
        raise MultimagError(f"unknown tie rule {tie!r}", fix=f"choose one of {', '.join(TIES)}")


def _stats(fused: pd.DataFrame, keys: list[str], exclude_ambiguous: bool) -> pd.DataFrame:
    label = fused["label"].to_numpy(dtype=np.int64)
    pred = fused["pred"].to_numpy(dtype=np.int64)
    prob = fused["prob_tumour"].to_numpy(dtype=np.float64)
    labelled = label >= 0
    used = labelled if exclude_ambiguous else np.ones(len(fused), dtype=bool)
    parts = pd.DataFrame({k: fused[k].to_numpy() for k in keys})
    parts["n_patches"] = used.astype(np.int64)
    parts["n_ambiguous"] = (label < 0).astype(np.int64)
    parts["n_tumour_pred"] = (used & (pred == 1)).astype(np.int64)
    parts["prob_sum"] = np.where(used, prob, 0.0)
    parts["n_labelled"] = labelled.astype(np.int64)
    parts["n_tumour_true"] = (label == 1).astype(np.int64)
    parts["n_correct"] = (labelled & (pred == label)).astype(np.int64)
    return parts.groupby(keys, sort=False).sum()


def _finish(stats: pd.DataFrame, rule: str, tie: str, threshold: float,
            fraction_threshold: float) -> pd.DataFrame:
    out = stats.copy()
    for column in COUNT_COLUMNS:
        out[column] = out[column].fillna(0).astype(np.int64)
    n = out["n_patches"].to_numpy(dtype=np.float64)
    nl = out["n_labelled"].to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["mean_prob"] = out["prob_sum"].fillna(0).to_numpy(dtype=np.float64) / n
        out["tumour_fraction_pred"] = out["n_tumour_pred"].to_numpy(dtype=np.float64) / n
        out["tumour_fraction_true"] = out["n_tumour_true"].to_numpy(dtype=np.float64) / nl
        out["recognition_rate"] = out["n_correct"].to_numpy(dtype=np.float64) / nl
    out["verdict"] = _decide(out["n_tumour_pred"].to_numpy(), n, out["mean_prob"].to_numpy(),
                             rule, tie, threshold, fraction_threshold)
    # the truth: the same rule over the labels (the mean of 0/1 labels is their fraction)
    frac_true = out["tumour_fraction_true"].to_numpy()
    out["truth"] = _decide(out["n_tumour_true"].to_numpy(), nl, frac_true, rule, tie,
                           threshold, fraction_threshold)
    scored = (out["verdict"] != "") & (out["truth"] != "")
    correct = pd.Series(pd.NA, index=out.index, dtype="boolean")
    correct[scored] = (out["verdict"] == out["truth"])[scored]
    out["correct"] = correct
    out["rule"] = rule
    return out.drop(columns="prob_sum")


def _decide(n_tumour: np.ndarray, n: np.ndarray, mean: np.ndarray, rule: str, tie: str,
            threshold: float, fraction_threshold: float) -> np.ndarray:
    """``tumour`` / ``normal`` per row, ``""`` where ``n == 0``."""
    n_tumour = np.asarray(n_tumour, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    mean = np.asarray(mean, dtype=np.float64)
    if rule == "majority":
        n_normal = n - n_tumour
        tumour = (n_tumour > n_normal) | ((n_tumour == n_normal) & (tie == TUMOUR))
    elif rule == "mean":
        tumour = mean >= threshold
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            tumour = (n_tumour / n) >= fraction_threshold
    out = np.where(tumour, TUMOUR, NORMAL).astype(object)
    out[n <= 0] = ""
    return out


def verdicts(fused: pd.DataFrame, splits: pd.DataFrame, rule: str = "majority", *,
             tie: str = "tumour", threshold: float = 0.5, fraction_threshold: float = 0.5,
             exclude_ambiguous: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Slide and patient tables (columns of the module docstring) from ``fused`` rows.

    ``fused`` holds at least ``slide_id, label, prob_tumour, pred`` (other views are
    dropped when a ``view`` column is present). Every slide of ``splits`` gets a row,
    those without a patch included; patient ids and folds come from ``splits``.
    """
    _check_rule(rule, tie)
    table = splits.reset_index(drop=True).loc[:, ["slide_id", "patient_id", "fold"]].copy()
    table["slide_id"] = table["slide_id"].astype(str)
    table["patient_id"] = table["patient_id"].astype(str)
    table["fold"] = table["fold"].astype(np.int64)
    if "view" in fused.columns:
        fused = fused[fused["view"] == FUSED]
    fused = fused.assign(slide_id=fused["slide_id"].astype(str))
    unknown = sorted(set(fused["slide_id"]) - set(table["slide_id"]))
    if unknown:
        raise PredictionsError(f"predictions of slide(s) not in the splits: {_list(unknown)}",
                               fix="aggregate with the splits the predictions were made for")
    fused = fused.merge(table[["slide_id", "patient_id"]].rename(
        columns={"patient_id": "_patient"}), on="slide_id", how="left")
    params = {"rule": rule, "tie": tie, "threshold": float(threshold),
              "fraction_threshold": float(fraction_threshold)}

    per_slide = _stats(fused, ["slide_id"], exclude_ambiguous).reindex(table["slide_id"])
    slides = _finish(per_slide, **params).reset_index()
    slides = table.merge(slides, on="slide_id", how="left")

    per_patient = _stats(fused.assign(patient_id=fused["_patient"]), ["patient_id"],
                         exclude_ambiguous)
    info = table.groupby("patient_id", sort=True).agg(fold=("fold", "first"),
                                                      n_slides=("slide_id", "size"))
    patients = _finish(per_patient.reindex(info.index), **params)
    patients = info.join(patients).reset_index()
    return (slides.loc[:, list(SLIDE_COLUMNS)].reset_index(drop=True),
            patients.loc[:, list(PATIENT_COLUMNS)].reset_index(drop=True))


def _mean_or_none(values: pd.Series) -> float | None:
    values = pd.to_numeric(values, errors="coerce").dropna()
    return float(values.mean()) if len(values) else None


def verdict_summary(slides: pd.DataFrame, patients: pd.DataFrame) -> dict[str, Any]:
    """Counts, image-level (slide) and patient accuracy, and SMSE's RR (the mean of
    the per-patient recognition rates over patients with a labelled patch)."""
    slide_scored = slides["correct"].notna()
    patient_scored = patients["correct"].notna()
    return {
        "n_slides": int(len(slides)),
        "n_slides_scored": int(slide_scored.sum()),
        "n_slides_unscored": int((~slide_scored).sum()),
        "unscored_slides": slides.loc[~slide_scored, "slide_id"].astype(str).tolist(),
        "slide_accuracy": _mean_or_none(slides.loc[slide_scored, "correct"].astype(float)),
        "n_patients": int(len(patients)),
        "n_patients_scored": int(patient_scored.sum()),
        "patient_accuracy": _mean_or_none(
            patients.loc[patient_scored, "correct"].astype(float)),
        "recognition_rate": _mean_or_none(patients["recognition_rate"]),
    }


# -- the rule --------------------------------------------------------------------------


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_verdicts(slides: pd.DataFrame, patients: pd.DataFrame, summary: Mapping[str, Any],
                   out_dir: str | Path) -> dict[str, Path]:
    """Write ``slides.tsv``, ``patients.tsv`` and ``summary.json`` atomically."""
    out_dir = Path(out_dir)
    paths = {"slides": out_dir / "slides.tsv", "patients": out_dir / "patients.tsv",
             "summary": out_dir / "summary.json"}
    for key, frame in (("slides", slides), ("patients", patients)):
        with atomic_path(paths[key]) as tmp, open(tmp, "w", newline="") as handle:
            frame.to_csv(handle, sep="\t", index=False, lineterminator="\n", na_rep="")
    with atomic_path(paths["summary"]) as tmp:
        tmp.write_text(json.dumps(_clean(dict(summary)), indent=2) + "\n")
    return paths


def aggregate(pred_dir: str | Path, splits_path: str | Path | pd.DataFrame,
              out_dir: str | Path | None = None, rule: str = "majority", *,
              tie: str = "tumour", threshold: float = 0.5, fraction_threshold: float = 0.5,
              exclude_ambiguous: bool = True
              ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Slide and patient verdicts of one method; writes ``slides.tsv``,
    ``patients.tsv`` and ``summary.json`` into ``out_dir`` when it is given.

    Returns ``(slides, patients, summary)``.
    """
    _check_rule(rule, tie)
    splits = _splits_frame(splits_path)
    fused = read_predictions(pred_dir, splits, fused=True, columns=[])
    slides, patients = verdicts(fused, splits, rule, tie=tie, threshold=threshold,
                                fraction_threshold=fraction_threshold,
                                exclude_ambiguous=exclude_ambiguous)
    meta = fused.attrs.get("multimag", {})
    summary = {"method": meta.get("method"), "config_sha256": meta.get("config_sha256"),
               "rule": rule, "tie": tie, "threshold": float(threshold),
               "fraction_threshold": float(fraction_threshold),
               "exclude_ambiguous": bool(exclude_ambiguous),
               **verdict_summary(slides, patients)}
    if out_dir is not None:
        write_verdicts(slides, patients, summary, out_dir)
    return slides, patients, _clean(summary)
