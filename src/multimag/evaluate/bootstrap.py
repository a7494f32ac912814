"""Confidence intervals of a method's pooled test figures by resampling patients.

Each patient is tested in exactly one fold, so the test predictions of all folds
pooled hold every patient once; a resample draws the patients with replacement
and takes all their patches and slides. Per-patient counts make every resample
a weighted sum (a matrix product over the resamples), the ROC AUC included, so
thousands of resamples take well under a second. ``docs/evaluate.md`` has the
formulas.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from multimag.dataset.splits import splits_frame
from multimag.evaluate.aggregate import verdicts
from multimag.evaluate.metrics import NAN
from multimag.evaluate.voting_table import VOTING_OPTIONS
from multimag.learn.predictions import FUSED

__all__ = ["INTERVAL_METRICS", "PatientTable", "add_intervals", "bootstrap_intervals",
           "method_intervals", "patient_resamples", "patient_table", "resampled_figures"]

PATCH_FIGURES = ("acc", "balanced_acc", "f1_normal", "f1_tumour", "roc_auc")
VERDICT_FIGURES = ("slide_accuracy", "patient_accuracy", "recognition_rate")
#: the figures that get an interval (columns of metrics.tsv)
INTERVAL_METRICS = PATCH_FIGURES + VERDICT_FIGURES


@dataclass(frozen=True)
class PatientTable:
    """What each patient adds to the figures: ``counts`` (P, 4) labelled patches
    (true normal, false tumour, false normal, true tumour); ``pairs`` (P, P) the
    Mann-Whitney count of (tumour patch of row patient, normal patch of column
    patient) pairs ranked right (ties 1/2); ``verdicts`` (P, 6) the numerators
    and denominators of the slide accuracy, patient accuracy and recognition rate."""

    patients: np.ndarray
    counts: np.ndarray
    pairs: np.ndarray
    verdicts: np.ndarray


def _pair_counts(prob: np.ndarray, label: np.ndarray, patient: np.ndarray,
                 n_patients: int) -> np.ndarray:
    """(P, P) Mann-Whitney counts of labelled patches by (tumour, normal) patient."""
    tumour, normal = label == 1, label == 0
    pos_prob, pos_patient = prob[tumour], patient[tumour]
    pairs = np.zeros((n_patients, n_patients))
    for q in np.unique(patient[normal]):
        neg = np.sort(prob[normal & (patient == q)])
        below = np.searchsorted(neg, pos_prob, side="left")
        upto = np.searchsorted(neg, pos_prob, side="right")
        pairs[:, q] = np.bincount(pos_patient, weights=(below + upto) / 2, minlength=n_patients)
    return pairs


def _verdict_counts(fused: pd.DataFrame, splits: pd.DataFrame, patients: pd.Index,
                    voting: Mapping[str, Any]) -> np.ndarray:
    """(P, 6): correct and scored slides, correct and scored patient verdict, the
    patient's recognition rate and whether it has one."""
    slides, per_patient = verdicts(fused, splits, **voting)
    scored = slides["correct"].notna()
    correct = slides["correct"].astype("Float64").fillna(0).astype(np.float64)
    by_slide = pd.DataFrame({"patient_id": slides["patient_id"].astype(str),
                             "correct": correct, "scored": scored.astype(np.float64)})
    slide_sums = by_slide.groupby("patient_id").sum().reindex(patients, fill_value=0.0)
    per_patient = per_patient.set_index(per_patient["patient_id"].astype(str)).reindex(patients)
    rate = pd.to_numeric(per_patient["recognition_rate"], errors="coerce")
    verdict = per_patient["correct"]
    return np.column_stack([
        slide_sums["correct"], slide_sums["scored"],
        verdict.astype("Float64").fillna(0).astype(np.float64), verdict.notna(),
        rate.fillna(0.0), rate.notna()]).astype(np.float64)


def patient_table(fused: pd.DataFrame, splits: pd.DataFrame | str | Path,
                  **voting: Any) -> PatientTable:
    """The per-patient counts of one method's pooled ``fused`` rows (slide_id,
    label, prob_tumour, pred; other views are dropped when a ``view`` column is
    present) over the patients of ``splits``; ``voting`` as in
    :func:`multimag.evaluate.aggregate.verdicts`."""
    splits = splits_frame(splits)
    if "view" in fused.columns:
        fused = fused[fused["view"] == FUSED]
    patients = pd.Index(sorted(splits["patient_id"].astype(str).unique()))
    patient_of = dict(zip(splits["slide_id"].astype(str), splits["patient_id"].astype(str),
                          strict=True))
    code = patients.get_indexer(fused["slide_id"].astype(str).map(patient_of))
    label = fused["label"].to_numpy(np.int64)
    pred = fused["pred"].to_numpy(np.int64)
    prob = fused["prob_tumour"].to_numpy(np.float64)
    labelled = ((label == 0) | (label == 1)) & (code >= 0)
    cell = label[labelled] * 2 + pred[labelled]  # 0 TN, 1 FP, 2 FN, 3 TP
    counts = np.bincount(code[labelled] * 4 + cell, minlength=len(patients) * 4)
    return PatientTable(
        patients=patients.to_numpy(), counts=counts.reshape(len(patients), 4).astype(np.float64),
        pairs=_pair_counts(prob[labelled], label[labelled], code[labelled], len(patients)),
        verdicts=_verdict_counts(fused, splits, patients, voting))


def patient_resamples(n_patients: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n_patients): how often each patient is drawn in each resample."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_patients, np.full(n_patients, 1.0 / n_patients),
                           size=resamples).astype(np.float64)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), NAN)


def _f1(hits: np.ndarray, errors: np.ndarray, n: np.ndarray) -> np.ndarray:
    """F1 of one class, 0 when it is neither predicted nor present, NaN without patches."""
    return np.where(n > 0, np.where(hits + errors > 0, _ratio(2 * hits, 2 * hits + errors), 0.0),
                    NAN)


def resampled_figures(table: PatientTable, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Every figure of INTERVAL_METRICS per row of ``weights`` (resamples x patients);
    a row of ones gives the figures of the pooled set itself."""
    tn, fp, fn, tp = (weights @ table.counts).T
    n = tn + fp + fn + tp
    with np.errstate(invalid="ignore", divide="ignore"):
        recalls = np.stack([_ratio(tn, tn + fp), _ratio(tp, tp + fn)])
        balanced = np.where(np.isnan(recalls).all(0), NAN, np.nanmean(recalls, axis=0))
    pairs = np.einsum("bp,pq,bq->b", weights, table.pairs, weights)
    has_both = ((tp + fn) > 0) & ((tn + fp) > 0)
    v = weights @ table.verdicts
    return {"acc": _ratio(tp + tn, n), "balanced_acc": np.where(n > 0, balanced, NAN),
            "f1_normal": _f1(tn, fn + fp, n), "f1_tumour": _f1(tp, fn + fp, n),
            "roc_auc": np.where(has_both, _ratio(pairs, (tp + fn) * (tn + fp)), NAN),
            "slide_accuracy": _ratio(v[:, 0], v[:, 1]),
            "patient_accuracy": _ratio(v[:, 2], v[:, 3]),
            "recognition_rate": _ratio(v[:, 4], v[:, 5])}


def bootstrap_intervals(table: PatientTable, *, resamples: int = 1000, seed: int = 0,
                        level: float = 0.95) -> dict[str, tuple[float, float]]:
    """The percentile interval of each figure: ``{metric: (low, high)}`` over the
    resamples where it is defined (NaN, NaN without any, or with 0 resamples)."""
    if resamples <= 0 or len(table.patients) == 0:
        return {m: (NAN, NAN) for m in INTERVAL_METRICS}
    figures = resampled_figures(table, patient_resamples(len(table.patients), resamples, seed))
    tail = 100 * (1 - level) / 2
    out = {}
    for metric, values in figures.items():
        values = values[np.isfinite(values)]
        low, high = np.percentile(values, [tail, 100 - tail]) if len(values) else (NAN, NAN)
        out[metric] = (float(low), float(high))
    return out


def method_intervals(fused: pd.DataFrame, splits: pd.DataFrame | str | Path,
                     bootstrap: Mapping[str, Any], **options: Any
                     ) -> dict[str, tuple[float, float]]:
    """The intervals of one method's fused predictions (``read_predictions(...,
    fused=True)``); ``bootstrap``: the keyword arguments of :func:`bootstrap_intervals`
    (the config's ``evaluate.bootstrap``); ``options``: the voting parameters of
    ``evaluate_method`` (others are ignored)."""
    splits = splits_frame(splits)
    voting = {k: v for k, v in options.items() if k in VOTING_OPTIONS}
    return bootstrap_intervals(patient_table(fused, splits, **voting), **bootstrap)


def add_intervals(summary: pd.DataFrame,
                  intervals: Mapping[str, Mapping[str, tuple[float, float]]]) -> pd.DataFrame:
    """``summary`` (one row per method) with ``{metric}_ci_low`` and ``{metric}_ci_high``
    right after ``{metric}_std`` for every metric of INTERVAL_METRICS."""
    out = summary.copy()
    columns = list(out.columns)
    for metric in INTERVAL_METRICS:
        for end, position in (("low", 0), ("high", 1)):
            name = f"{metric}_ci_{end}"
            out[name] = [intervals.get(str(m), {}).get(metric, (NAN, NAN))[position]
                         for m in out["method"]]
            anchor = f"{metric}_std" if end == "low" else f"{metric}_ci_low"
            columns.insert(columns.index(anchor) + 1 if anchor in columns else len(columns),
                           name)
    return out[columns]
