"""Slide and patient verdicts from patch predictions (rule ``aggregate``).

The patches of a slide (or of all a patient's slides) vote by one rule,
``majority``, ``mean`` or ``fraction``; the truth is the diagnosis of
``splits.tsv``, never a vote of the patch labels. ``docs/evaluate.md`` has the
rules and the columns of ``slides.tsv``, ``patients.tsv`` and ``summary.json``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from multimag.atomic import atomic_path
from multimag.dataset.diagnosis import patient_diagnoses
from multimag.dataset.splits import splits_frame
from multimag.errors import MultimagError, PredictionsError, SplitError, short_list
from multimag.learn.predictions import FUSED, read_predictions

__all__ = [
    "RULES",
    "TIES",
    "aggregate",
    "verdict_summary",
    "verdicts",
    "write_verdicts",
]

RULES = ("majority", "mean", "fraction")
TIES = ("tumour", "normal")
TUMOUR, NORMAL = "tumour", "normal"

COUNT_COLUMNS = ("n_patches", "n_ambiguous", "n_tumour_pred", "n_labelled", "n_tumour_true",
                 "n_correct")
STAT_COLUMNS = ("n_patches", "n_ambiguous", "n_tumour_pred", "mean_prob",
                "tumour_fraction_pred", "n_labelled", "n_tumour_true", "tumour_fraction_true",
                "n_correct", "recognition_rate")
VERDICT_COLUMNS = ("verdict", "truth", "correct", "rule")
SLIDE_COLUMNS = ("slide_id", "patient_id", "fold", *STAT_COLUMNS, *VERDICT_COLUMNS)
PATIENT_COLUMNS = ("patient_id", "fold", "n_slides", *STAT_COLUMNS, *VERDICT_COLUMNS)


# -- verdicts --------------------------------------------------------------------------


def _check_rule(rule: str, tie: str) -> None:
    if rule not in RULES:
        raise MultimagError(f"unknown aggregation rule {rule!r}",
                            fix=f"choose one of {', '.join(RULES)}")
    if tie not in TIES:
        raise MultimagError(f"unknown tie rule {tie!r}", fix=f"choose one of {', '.join(TIES)}")


def _count_patches(fused: pd.DataFrame, keys: list[str],
                   exclude_ambiguous: bool) -> pd.DataFrame:
    """Per group of ``keys``: the patch counts and the sum of P(tumour) of used patches."""
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


def _add_verdicts(stats: pd.DataFrame, truth: pd.Series, rule: str, tie: str,
                  threshold: float, fraction_threshold: float) -> pd.DataFrame:
    """The counts of ``_count_patches`` with the rates, the verdict, the truth (the
    diagnosis, aligned on the index) and whether they agree."""
    out = stats.copy()
    for column in COUNT_COLUMNS:
        out[column] = out[column].fillna(0).astype(np.int64)
    n = out["n_patches"].to_numpy(dtype=np.float64)
    n_labelled = out["n_labelled"].to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["mean_prob"] = out["prob_sum"].fillna(0).to_numpy(dtype=np.float64) / n
        out["tumour_fraction_pred"] = out["n_tumour_pred"].to_numpy(dtype=np.float64) / n
        out["tumour_fraction_true"] = out["n_tumour_true"].to_numpy(dtype=np.float64) / n_labelled
        out["recognition_rate"] = out["n_correct"].to_numpy(dtype=np.float64) / n_labelled
    out["verdict"] = _vote(out["n_tumour_pred"].to_numpy(), n, out["mean_prob"].to_numpy(),
                           rule, tie, threshold, fraction_threshold)
    out["truth"] = truth.reindex(out.index).fillna("").astype(str).to_numpy()
    scored = (out["verdict"] != "") & (out["truth"] != "")
    correct = pd.Series(pd.NA, index=out.index, dtype="boolean")
    correct[scored] = (out["verdict"] == out["truth"])[scored]
    out["correct"] = correct
    out["rule"] = rule
    return out.drop(columns="prob_sum")


def _vote(n_tumour: np.ndarray, n: np.ndarray, mean: np.ndarray, rule: str, tie: str,
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


def _splits_table(splits: pd.DataFrame) -> pd.DataFrame:
    """``slide_id, patient_id, fold, diagnosis`` of the splits, typed."""
    if "diagnosis" not in splits.columns:
        raise SplitError("the splits have no diagnosis column, so no verdict can be scored "
                         "(splits.tsv written before multimag carried the diagnosis)",
                         fix="re-run the split rule (multimag split SAMPLES.tsv OUT.tsv "
                         "--config CONFIG)")
    table = splits.reset_index(drop=True).loc[:, ["slide_id", "patient_id", "fold",
                                                  "diagnosis"]].copy()
    for column in ("slide_id", "patient_id"):
        table[column] = table[column].astype(str)
    table["diagnosis"] = table["diagnosis"].fillna("").astype(str)
    table["fold"] = table["fold"].astype(np.int64)
    return table


def verdicts(fused: pd.DataFrame, splits: pd.DataFrame, rule: str = "majority", *,
             tie: str = "tumour", threshold: float = 0.5, fraction_threshold: float = 0.5,
             exclude_ambiguous: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Slide and patient tables (columns in ``docs/evaluate.md``) from ``fused`` rows.

    ``fused`` holds at least ``slide_id, label, prob_tumour, pred`` (other views are
    dropped when a ``view`` column is present). Every slide of ``splits`` gets a row,
    those without a patch included; patient ids, folds and the diagnosis (the
    truth) come from ``splits``.
    """
    _check_rule(rule, tie)
    table = _splits_table(splits)
    if "view" in fused.columns:
        fused = fused[fused["view"] == FUSED]
    fused = fused.assign(slide_id=fused["slide_id"].astype(str))
    unknown = sorted(set(fused["slide_id"]) - set(table["slide_id"]))
    if unknown:
        raise PredictionsError(f"predictions of slide(s) not in the splits: {short_list(unknown)}",
                               fix="aggregate with the splits the predictions were made for")
    fused = fused.merge(table[["slide_id", "patient_id"]].rename(
        columns={"patient_id": "_patient"}), on="slide_id", how="left")
    params = {"rule": rule, "tie": tie, "threshold": float(threshold),
              "fraction_threshold": float(fraction_threshold)}

    per_slide = _count_patches(fused, ["slide_id"], exclude_ambiguous).reindex(table["slide_id"])
    slides = _add_verdicts(per_slide, table.set_index("slide_id")["diagnosis"],
                           **params).reset_index()
    slides = table.drop(columns="diagnosis").merge(slides, on="slide_id", how="left")

    per_patient = _count_patches(fused.assign(patient_id=fused["_patient"]), ["patient_id"],
                         exclude_ambiguous)
    info = table.groupby("patient_id", sort=True).agg(fold=("fold", "first"),
                                                      n_slides=("slide_id", "size"))
    truth = patient_diagnoses(table["patient_id"], table["diagnosis"])
    patients = _add_verdicts(per_patient.reindex(info.index), truth, **params)
    patients = info.join(patients).reset_index()
    return (slides.loc[:, list(SLIDE_COLUMNS)].reset_index(drop=True),
            patients.loc[:, list(PATIENT_COLUMNS)].reset_index(drop=True))


def _mean_or_none(values: pd.Series) -> float | None:
    values = pd.to_numeric(values, errors="coerce").dropna()
    return float(values.mean()) if len(values) else None


def verdict_summary(slides: pd.DataFrame, patients: pd.DataFrame) -> dict[str, Any]:
    """Counts, image-level (slide) and patient accuracy against the diagnosis, and
    SMSE's RR (the mean of the per-patient recognition rates over patients with a
    labelled patch)."""
    slide_scored = slides["correct"].notna()
    patient_scored = patients["correct"].notna()
    return {
        "n_slides": int(len(slides)),
        "n_slides_scored": int(slide_scored.sum()),
        "n_slides_unscored": int((~slide_scored).sum()),
        "unscored_slides": slides.loc[~slide_scored, "slide_id"].astype(str).tolist(),
        "undiagnosed_slides": slides.loc[slides["truth"] == "", "slide_id"].astype(str).tolist(),
        "slide_accuracy": _mean_or_none(slides.loc[slide_scored, "correct"].astype(float)),
        "n_patients": int(len(patients)),
        "n_patients_scored": int(patient_scored.sum()),
        "patient_accuracy": _mean_or_none(
            patients.loc[patient_scored, "correct"].astype(float)),
        "recognition_rate": _mean_or_none(patients["recognition_rate"]),
    }


# -- the step --------------------------------------------------------------------------


def _json_ready(obj: Any) -> Any:
    """``obj`` with numpy scalars as Python numbers and NaN / infinity as None."""
    if isinstance(obj, dict):
        return {k: _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_ready(v) for v in obj]
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
        tmp.write_text(json.dumps(_json_ready(dict(summary)), indent=2) + "\n")
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
    splits = splits_frame(splits_path)
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
    return slides, patients, _json_ready(summary)
