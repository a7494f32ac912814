"""Metrics: equal to scikit-learn computed independently, per-fold tables, the summary
across methods (mean/std against numpy) and its TSV/Markdown files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import fake_model_index
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    davies_bouldin_score,
    f1_score,
    roc_auc_score,
    silhouette_score,
)
from sklearn.neighbors import KNeighborsClassifier

from multimag.evaluate.aggregate import aggregate
from multimag.evaluate.evaluation import (
    evaluate,
    evaluate_method,
    markdown_table,
    summarise,
    write_summary,
)
from multimag.evaluate.metrics import embedding_metrics, patch_metrics

SCHEMA = pa.schema([
    ("slide_id", pa.string()), ("patient_id", pa.string()), ("fold", pa.int16()),
    ("patch", pa.int64()), ("x", pa.int64()), ("y", pa.int64()), ("label", pa.int8()),
    ("view", pa.string()), ("prob_tumour", pa.float32()), ("pred", pa.int8()),
    ("embedding", pa.list_(pa.float32())),
])


def write_pred(pred_dir: Path, slide_id: str, patient_id: str, fold: int,
               labels: np.ndarray, probs: dict[str, np.ndarray], emb: dict[str, np.ndarray],
               method: str = "smse") -> None:
    """A predictions file of the schema; ``probs`` has 'fused' and one key per view."""
    rows = []
    for i, label in enumerate(labels):
        for view, p in probs.items():
            rows.append({"slide_id": slide_id, "patient_id": patient_id, "fold": fold,
                         "patch": i, "x": 100 * i, "y": 0, "label": int(label), "view": view,
                         "prob_tumour": float(p[i]), "pred": int(np.float32(p[i]) >= 0.5),
                         "embedding": None if view == "fused" else emb[view][i].tolist()})
    meta = {"method": method, "fold": fold, "slide_id": slide_id,
            "magnifications": [20.0, 5.0], "patch_px": 64,
            "extent_level0": {"20x": 128.0, "5x": 512.0}, "store_schema_version": 1,
            "model": f"models/{method}/fold{fold}", "config_sha256": "ab" * 32,
            **fake_model_index(pred_dir.parent / "indices", slide_id, fold)}
    table = pa.Table.from_pylist(rows, schema=SCHEMA).replace_schema_metadata(
        {b"multimag": json.dumps(meta).encode()})
    pred_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, pred_dir / f"{slide_id}.parquet")


# -- patch metrics -----------------------------------------------------------------------


def test_patch_metrics_equal_sklearn_on_labelled_patches():
    rng = np.random.default_rng(0)
    labels = rng.choice([-1, 0, 1], size=300, p=[0.1, 0.6, 0.3])
    probs = np.clip(0.35 * labels + rng.normal(0.35, 0.25, size=300), 0, 1)
    got = patch_metrics(labels, probs)
    keep = labels >= 0
    y, p = labels[keep], probs[keep]
    yhat = (p >= 0.5).astype(int)
    assert got["n_patches"] == keep.sum()
    assert got["acc"] == pytest.approx(accuracy_score(y, yhat))
    assert got["balanced_acc"] == pytest.approx(balanced_accuracy_score(y, yhat))
    assert got["f1_tumour"] == pytest.approx(f1_score(y, yhat, pos_label=1))
    assert got["f1_normal"] == pytest.approx(f1_score(y, yhat, pos_label=0))
    assert got["roc_auc"] == pytest.approx(roc_auc_score(y, p))
    # explicit predictions win over the threshold
    flipped = patch_metrics(labels, probs, preds=1 - (probs >= 0.5))
    assert flipped["acc"] == pytest.approx(1 - got["acc"])


def test_patch_metrics_one_class_and_none():
    one = patch_metrics([1, 1, 1, -1], [0.9, 0.2, 0.8, 0.5])
    assert math.isnan(one["roc_auc"])
    assert one["acc"] == pytest.approx(2 / 3)
    assert one["f1_normal"] == 0.0
    none = patch_metrics([-1, -1], [0.1, 0.9])
    assert none["n_patches"] == 0 and math.isnan(none["acc"]) and math.isnan(none["roc_auc"])


# -- embedding metrics -------------------------------------------------------------------


def _knn_by_hand(emb, labels, groups, k, n_splits):
    """Leave-groups-out kNN written with an explicit loop over patient folds."""
    from sklearn.model_selection import GroupKFold

    pred = np.empty_like(labels)
    for train, test in GroupKFold(n_splits=n_splits).split(emb, labels, groups):
        knn = KNeighborsClassifier(n_neighbors=k).fit(emb[train], labels[train])
        pred[test] = knn.predict(emb[test])
    return balanced_accuracy_score(labels, pred)


def test_embedding_metrics_equal_sklearn():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, size=240)
    groups = rng.integers(0, 8, size=240).astype(str)
    emb = rng.normal(size=(240, 6)) + 1.2 * labels[:, None]
    got = embedding_metrics(emb, labels, groups, k=5)
    assert got["n_points"] == 240
    assert got["silhouette"] == pytest.approx(silhouette_score(emb, labels))
    assert got["davies_bouldin"] == pytest.approx(davies_bouldin_score(emb, labels))
    assert got["knn_balanced_acc"] == pytest.approx(_knn_by_hand(emb, labels, groups, 5, 5))
    assert got["knn_balanced_acc"] > 0.7  # the classes are separated


def test_knn_never_uses_a_neighbour_from_the_same_patient():
    # each patient is a tight blob; the nearest OTHER patient always has the other label
    centres = {"P0": (0.0, 1), "P1": (0.1, 0), "P2": (10.0, 1), "P3": (10.1, 0)}
    rng = np.random.default_rng(2)
    emb, labels, groups = [], [], []
    for patient, (x, label) in centres.items():
        for _ in range(10):
            emb.append([x + rng.normal(0, 1e-3), rng.normal(0, 1e-3)])
            labels.append(label)
            groups.append(patient)
    got = embedding_metrics(np.array(emb), labels, groups, k=1, n_splits=4)
    assert got["knn_balanced_acc"] == pytest.approx(0.0)  # with same-patient neighbours: 1.0


def test_embedding_metrics_degenerate_and_subsampled():
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(50, 4))
    labels = np.array([0, 1] * 25)
    one_patient = embedding_metrics(emb, labels, ["P"] * 50)
    assert math.isnan(one_patient["knn_balanced_acc"])
    assert not math.isnan(one_patient["silhouette"])
    one_class = embedding_metrics(emb, np.ones(50, int), np.arange(50) % 5)
    assert all(math.isnan(one_class[m])
               for m in ("knn_balanced_acc", "silhouette", "davies_bouldin"))
    big = rng.normal(size=(400, 3))
    big_labels = rng.integers(0, 2, size=400)
    big_groups = np.arange(400) % 7
    a = embedding_metrics(big, big_labels, big_groups, max_points=100, seed=5)
    b = embedding_metrics(big, big_labels, big_groups, max_points=100, seed=5)
    assert a["n_points"] == 100 and a == b
    pick = np.sort(np.random.default_rng(5).choice(400, 100, replace=False))
    assert a["silhouette"] == pytest.approx(silhouette_score(big[pick], big_labels[pick]))
    # ambiguous rows are not points
    assert embedding_metrics(emb, np.r_[labels[:-5], [-1] * 5], np.arange(50) % 5)[
        "n_points"] == 45


# -- per method and fold -----------------------------------------------------------------


def _cohort(tmp_path: Path, method: str = "smse", shift: float = 0.0, seed: int = 0):
    """3 folds, 6 patients, 1-2 slides each, 2 magnification views; returns the
    prediction directory, the splits path and the raw data per slide."""
    rng = np.random.default_rng(seed)
    pred = tmp_path / "pred" / method
    rows, data = [], {}
    for p in range(6):
        for s in range(1 + p % 2):
            slide, fold = f"S{p}{s}", p % 3
            n = int(rng.integers(6, 15))
            labels = rng.choice([-1, 0, 1], size=n, p=[0.15, 0.45, 0.4])
            base = np.clip(0.6 * (labels == 1) + 0.2 + rng.normal(shift, 0.25, size=n), 0, 1)
            probs = {"fused": base.astype(np.float32),
                     "20x": np.clip(base + rng.normal(0, 0.1, n), 0, 1).astype(np.float32),
                     "5x": np.clip(base + rng.normal(0, 0.2, n), 0, 1).astype(np.float32)}
            emb = {v: (rng.normal(size=(n, 4)) + (labels == 1)[:, None]).astype(np.float32)
                   for v in ("20x", "5x")}
            write_pred(pred, slide, f"P{p}", fold, labels, probs, emb, method)
            rows.append((slide, f"P{p}", fold, "tumour" if p % 2 else "normal"))
            data[slide] = (f"P{p}", fold, labels, probs, emb)
    splits = tmp_path / "splits.tsv"
    pd.DataFrame(rows, columns=["slide_id", "patient_id", "fold", "diagnosis"]).to_csv(
        splits, sep="\t", index=False)
    return pred, splits, data


def test_evaluate_method_per_fold_equals_sklearn(tmp_path):
    pred, splits, data = _cohort(tmp_path)
    table = evaluate_method(pred, splits, tmp_path / "out", k=3)
    assert table["fold"].tolist() == [0, 1, 2]
    assert (table["method"] == "smse").all()
    written = pd.read_csv(tmp_path / "out" / "metrics.tsv", sep="\t")
    assert written["acc"].tolist() == pytest.approx(table["acc"].tolist())
    for fold, row in table.set_index("fold").iterrows():
        mine = [v for v in data.values() if v[1] == fold]
        assert row["n_slides"] == len(mine)
        labels = np.concatenate([v[2] for v in mine])
        keep = labels >= 0
        for view, prefix in (("fused", ""), ("20x", "20x_"), ("5x", "5x_")):
            probs = np.concatenate([v[3][view] for v in mine])
            y, p = labels[keep], probs[keep]
            yhat = (p >= 0.5).astype(int)
            assert row[f"{prefix}acc"] == pytest.approx(accuracy_score(y, yhat))
            assert row[f"{prefix}balanced_acc"] == pytest.approx(
                balanced_accuracy_score(y, yhat))
            assert row[f"{prefix}f1_tumour"] == pytest.approx(f1_score(y, yhat))
            assert row[f"{prefix}roc_auc"] == pytest.approx(roc_auc_score(y, p))
        # pooled embeddings of both magnifications, labelled patches only
        emb = np.concatenate([v[4][view][v[2] >= 0] for view in ("20x", "5x") for v in mine])
        lab = np.concatenate([v[2][v[2] >= 0] for view in ("20x", "5x") for v in mine])
        assert row["n_points"] == len(lab)
        assert row["silhouette"] == pytest.approx(silhouette_score(emb, lab), rel=1e-5)
        assert row["davies_bouldin"] == pytest.approx(davies_bouldin_score(emb, lab),
                                                      rel=1e-5)
        emb20 = np.concatenate([v[4]["20x"][v[2] >= 0] for v in mine])
        lab20 = np.concatenate([v[2][v[2] >= 0] for v in mine])
        assert row["20x_silhouette"] == pytest.approx(silhouette_score(emb20, lab20),
                                                      rel=1e-5)
    # slide / patient levels are aggregate's, fold by fold
    slides, patients, _ = aggregate(pred, splits)
    for fold, row in table.set_index("fold").iterrows():
        s = slides[(slides["fold"] == fold) & slides["correct"].notna()]
        assert row["slide_accuracy"] == pytest.approx(s["correct"].astype(float).mean())
        p = patients[patients["fold"] == fold]
        assert row["recognition_rate"] == pytest.approx(p["recognition_rate"].mean())


def test_summarise_mean_std_against_numpy():
    rng = np.random.default_rng(4)
    a = pd.DataFrame({"fold": [0, 1, 2, 3, 4], "method": "a",
                      "acc": rng.random(5), "roc_auc": [0.8, np.nan, 0.7, 0.9, 0.6],
                      "n_slides": [3, 4, 3, 5, 4]})
    b = pd.DataFrame({"fold": [0, 1, 2, 3, 4], "method": "b",
                      "acc": rng.random(5), "roc_auc": rng.random(5),
                      "n_slides": [3, 4, 3, 5, 4]})
    out = summarise({"a": a, "b": b}).set_index("method")
    assert out.loc["a", "folds"] == 5
    for name, frame in (("a", a), ("b", b)):
        for metric in ("acc", "roc_auc", "n_slides"):
            values = frame[metric].to_numpy(dtype=float)
            assert out.loc[name, f"{metric}_mean"] == pytest.approx(np.nanmean(values))
            assert out.loc[name, f"{metric}_std"] == pytest.approx(np.nanstd(values, ddof=1))
    assert "fold_mean" not in out.columns and "method_mean" not in out.columns
    single = summarise({"c": a.iloc[:1]}).iloc[0]
    assert single["acc_mean"] == pytest.approx(a["acc"].iloc[0])
    assert math.isnan(single["acc_std"])


def _parse_markdown(text: str) -> tuple[list[str], dict[str, list[str]]]:
    lines = [line.strip() for line in text.strip().splitlines()]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    header, rule, body = cells[0], cells[1], cells[2:]
    assert header[0] == "metric" and all(set(r) <= set("-:") for r in rule)
    return header[1:], {row[0]: row[1:] for row in body}


def test_write_summary_tsv_and_markdown_round_trip(tmp_path):
    table = pd.DataFrame({"method": ["smse", "dsml"], "folds": [5, 5],
                          "acc_mean": [0.91234, 0.8], "acc_std": [0.01236, np.nan],
                          "roc_auc_mean": [np.nan, 0.95], "roc_auc_std": [np.nan, 0.0004]})
    write_summary(table, tmp_path / "r" / "summary.tsv", tmp_path / "r" / "summary.md")
    back = pd.read_csv(tmp_path / "r" / "summary.tsv", sep="\t")
    pd.testing.assert_frame_equal(back, table, check_dtype=False)
    text = (tmp_path / "r" / "summary.md").read_text(encoding="utf-8")
    assert text == markdown_table(table)
    methods, rows = _parse_markdown(text)
    assert methods == ["smse", "dsml"]
    assert rows["folds"] == ["5", "5"]
    assert rows["acc"] == ["0.912 ± 0.012", "0.800"]
    assert rows["roc_auc"] == ["n/a", "0.950 ± 0.000"]
    for cell, mean, std in zip(rows["acc"][:1], [0.91234], [0.01236], strict=True):
        m, s = (float(v) for v in cell.split("±"))
        assert abs(m - mean) <= 5e-4 and abs(s - std) <= 5e-4


def test_evaluate_several_methods_writes_the_results_table(tmp_path):
    pred_a, splits, _ = _cohort(tmp_path, "smse", seed=1)
    pred_b, _, _ = _cohort(tmp_path, "dsml", shift=0.1, seed=1)
    summary = evaluate([pred_a, pred_b], splits, tmp_path / "results", k=3)
    assert summary["method"].tolist() == ["smse", "dsml"]
    for method in ("smse", "dsml"):
        per_fold = pd.read_csv(tmp_path / "results" / method / "metrics.tsv", sep="\t")
        row = summary.set_index("method").loc[method]
        assert row["acc_mean"] == pytest.approx(per_fold["acc"].mean())
        assert row["acc_std"] == pytest.approx(np.std(per_fold["acc"], ddof=1))
    methods, rows = _parse_markdown((tmp_path / "results" / "summary.md").read_text())
    assert methods == ["smse", "dsml"]
    assert {"acc", "20x_acc", "5x_acc", "slide_accuracy", "recognition_rate",
            "knn_balanced_acc", "silhouette", "davies_bouldin"} <= set(rows)
    assert (tmp_path / "results" / "summary.tsv").exists()
