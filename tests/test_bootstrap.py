"""Confidence intervals by resampling patients: the vectorised figures against
scikit-learn on explicit resamples, intervals that hold the point estimate, narrow
with more patients, resample patients (not patches), repeat for a seed, and
reach summary.tsv / summary.md."""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import pytest
from test_metrics import _cohort, _parse_markdown

from multimag.evaluate.aggregate import verdict_summary, verdicts
from multimag.evaluate.bootstrap import (
    INTERVAL_METRICS,
    bootstrap_intervals,
    patient_resamples,
    patient_table,
    resampled_figures,
)
from multimag.evaluate.evaluation import evaluate
from multimag.evaluate.metrics import patch_metrics

PATCH = ("acc", "balanced_acc", "f1_normal", "f1_tumour", "roc_auc")


def synthetic(n_patients: int, n_patches: int, seed: int = 0,
              separation: float = 0.25) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pooled fused predictions of ``n_patients`` patients with two slides each, a
    patient effect on the scores, and their splits (diagnosis per patient)."""
    rng = np.random.default_rng(seed)
    patients = [f"P{p:04d}" for p in range(n_patients)]
    slides = [f"{p}_{s}" for p in patients for s in "AB"]
    diagnosis = {p: "tumour" if i % 3 == 0 else "normal" for i, p in enumerate(patients)}
    splits = pd.DataFrame({"slide_id": slides, "patient_id": [s[:5] for s in slides],
                           "fold": [int(s[1:5]) % 5 for s in slides],
                           "diagnosis": [diagnosis[s[:5]] for s in slides]})
    slide = rng.integers(0, len(slides), n_patches)
    tumour_share = np.where(splits["diagnosis"].to_numpy()[slide] == "tumour", 0.5, 0.05)
    label = np.where(rng.random(n_patches) < tumour_share, 1, 0)
    label[rng.random(n_patches) < 0.1] = -1
    patient_effect = rng.normal(0, 0.15, len(slides))[slide]
    prob = np.clip(0.5 + separation * np.where(label == 1, 1, -1) + patient_effect
                   + rng.normal(0, 0.2, n_patches), 0, 1).round(3)
    fused = pd.DataFrame({"slide_id": np.array(slides)[slide], "label": label,
                          "prob_tumour": prob, "pred": (prob >= 0.5).astype(np.int64)})
    return fused, splits


def _point(fused: pd.DataFrame, splits: pd.DataFrame) -> dict[str, float]:
    """The figures of the pooled set, computed the ordinary way."""
    levels = verdict_summary(*verdicts(fused, splits))
    return {**patch_metrics(fused["label"], fused["prob_tumour"], fused["pred"]),
            **{k: levels[k] for k in ("slide_accuracy", "patient_accuracy", "recognition_rate")}}


def test_resampled_figures_equal_sklearn_on_the_resampled_patients():
    fused, splits = synthetic(12, 3000, seed=1)
    table = patient_table(fused, splits)
    ones = resampled_figures(table, np.ones((1, len(table.patients))))
    point = _point(fused, splits)
    for metric in INTERVAL_METRICS:
        assert ones[metric][0] == pytest.approx(point[metric]), metric
    weights = patient_resamples(len(table.patients), 4, seed=3)
    figures = resampled_figures(table, weights)
    patient_of = splits.set_index("slide_id")["patient_id"]
    by_patient = dict(list(fused.groupby(fused["slide_id"].map(patient_of))))
    for b, row in enumerate(weights):
        drawn = [by_patient[p] for p, n in zip(table.patients, row, strict=True)
                 for _ in range(int(n))]
        rows = pd.concat(drawn)
        want = patch_metrics(rows["label"], rows["prob_tumour"], rows["pred"])
        for metric in PATCH:
            assert figures[metric][b] == pytest.approx(want[metric]), (b, metric)
        # each drawn copy of a patient is one more patient with that verdict
        patients = [p for p, n in zip(table.patients, row, strict=True) for _ in range(int(n))]
        _, per_patient = verdicts(fused, splits)
        verdict = per_patient.set_index("patient_id")["correct"].astype(float)
        assert figures["patient_accuracy"][b] == pytest.approx(verdict[patients].mean())


def test_the_interval_holds_the_point_estimate():
    fused, splits = synthetic(60, 20_000)
    point = _point(fused, splits)
    intervals = bootstrap_intervals(patient_table(fused, splits), resamples=500, seed=0)
    assert set(intervals) == set(INTERVAL_METRICS)
    for metric, (low, high) in intervals.items():
        assert low < high, metric
        assert low <= point[metric] <= high, (metric, low, point[metric], high)


def test_the_interval_narrows_with_more_patients():
    widths = {}
    for n in (20, 320):
        fused, splits = synthetic(n, 100 * n, seed=2)
        intervals = bootstrap_intervals(patient_table(fused, splits), resamples=400, seed=0)
        widths[n] = {m: high - low for m, (low, high) in intervals.items()}
    for metric in INTERVAL_METRICS:  # 16 times the patients: about a quarter of the width
        assert widths[320][metric] < 0.5 * widths[20][metric], metric


def test_patients_are_resampled_not_patches():
    """Every patch of a patient right or every one wrong: the patch accuracy's
    interval is that of the per-patient table (one patch per patient), for a seed."""
    n_patients, per_patient = 40, 50
    rng = np.random.default_rng(4)
    right = rng.random(n_patients) < 0.7
    splits = pd.DataFrame({"slide_id": [f"S{p}" for p in range(n_patients)],
                           "patient_id": [f"P{p:02d}" for p in range(n_patients)],
                           "fold": np.arange(n_patients) % 5, "diagnosis": "normal"})

    def fused(copies: int) -> pd.DataFrame:
        return pd.DataFrame({"slide_id": np.repeat(splits["slide_id"], copies),
                             "label": 0, "prob_tumour": np.repeat(np.where(right, 0.2, 0.8),
                                                                  copies),
                             "pred": np.repeat(np.where(right, 0, 1), copies)})

    patches = bootstrap_intervals(patient_table(fused(per_patient), splits), seed=7)
    patients = bootstrap_intervals(patient_table(fused(1), splits), seed=7)
    assert patches["acc"] == patients["acc"]
    # resampling the 2000 patches instead would give an interval about 7 times narrower
    low, high = patches["acc"]
    assert high - low > 4 * 1.96 * math.sqrt(0.7 * 0.3 / (n_patients * per_patient))


def test_the_intervals_repeat_for_a_seed():
    fused, splits = synthetic(30, 6000, seed=5)
    table = patient_table(fused, splits)
    first = bootstrap_intervals(table, resamples=300, seed=11)
    assert bootstrap_intervals(table, resamples=300, seed=11) == first
    assert bootstrap_intervals(table, resamples=300, seed=12) != first
    none = bootstrap_intervals(table, resamples=0)
    assert all(math.isnan(low) and math.isnan(high) for low, high in none.values())


def test_a_large_cohort_takes_well_under_a_second_per_method():
    fused, splits = synthetic(50, 200_000, seed=6)
    started = time.perf_counter()
    intervals = bootstrap_intervals(patient_table(fused, splits), resamples=1000, seed=0)
    assert time.perf_counter() - started < 10  # about 1 s on 2 shared cores
    assert all(np.isfinite(v).all() for v in intervals.values())


def test_summary_tsv_and_markdown_carry_the_intervals(tmp_path):
    pred_a, splits, _ = _cohort(tmp_path, "smse", seed=1)
    pred_b, _, _ = _cohort(tmp_path, "dsml", shift=0.1, seed=1)
    out = tmp_path / "results"
    summary = evaluate([pred_a, pred_b], splits, out, bootstrap={"resamples": 200, "seed": 3},
                       k=3)
    written = pd.read_csv(out / "summary.tsv", sep="\t").set_index("method")
    columns = list(written.columns)
    for metric in INTERVAL_METRICS:
        at = columns.index(f"{metric}_std")
        assert columns[at + 1: at + 3] == [f"{metric}_ci_low", f"{metric}_ci_high"]
        assert (written[f"{metric}_ci_low"] <= written[f"{metric}_ci_high"]).all()
    assert "n_patches_ci_low" not in columns and "20x_acc_ci_low" not in columns
    pooled = pd.concat([pd.read_parquet(pred_a / f) for f in sorted(
        p.name for p in pred_a.glob("*.parquet"))])
    fused = pooled[pooled["view"] == "fused"]
    want = bootstrap_intervals(patient_table(fused, pd.read_csv(splits, sep="\t")),
                               resamples=200, seed=3)
    assert written.loc["smse", "acc_ci_low"] == pytest.approx(want["acc"][0])
    assert written.loc["smse", "acc_ci_high"] == pytest.approx(want["acc"][1])
    assert summary.set_index("method").loc["smse", "roc_auc_ci_high"] == pytest.approx(
        want["roc_auc"][1])

    _, rows = _parse_markdown((out / "summary.md").read_text(encoding="utf-8"))
    row = written.loc["smse"]
    assert rows["acc"][0] == (f"{row['acc_mean']:.3f} ± {row['acc_std']:.3f} "
                              f"[{row['acc_ci_low']:.3f}, {row['acc_ci_high']:.3f}]")
    assert "[" not in rows["n_patches"][0]
    html = (out / "summary.html").read_text(encoding="utf-8")
    assert rows["acc"][0] in html and "<table" in html
