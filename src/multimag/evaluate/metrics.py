"""Metrics per method and fold, and one results table across methods (rule ``evaluate``).

Everything is computed with scikit-learn; the slide and patient levels reuse
:mod:`multimag.evaluate.aggregate` (same rules, same truth).

``evaluate_method`` -> one row per test fold (``{out_dir}/metrics.tsv``):

* ``fold``, ``method``; ``n_slides``, ``n_patients`` of the fold;
* patch level on the ``fused`` rows, labelled patches only: ``n_patches``,
  ``acc`` (accuracy), ``balanced_acc`` (mean recall of the two classes),
  ``f1_normal``, ``f1_tumour`` (per-class F1, 0 where a class is never predicted
  nor present), ``roc_auc`` of ``prob_tumour`` (NaN when only one class occurs);
* the same per magnification, from the rows of that view alone, prefixed with
  the view: ``20x_acc``, ``20x_balanced_acc``, ... (finest magnification first);
* ``slide_accuracy``, ``patient_accuracy``: share of scored slides / patients whose
  verdict equals their truth (see :mod:`multimag.evaluate.aggregate`); ``recognition_rate``:
  SMSE's RR, the mean over patients of correct patches / patches;
  ``n_slides_unscored``: slides without a usable patch;
* test-embedding metrics (the constellation-loss protocol) on the labelled
  per-magnification rows, all magnifications pooled: ``n_points`` (after
  subsampling to ``max_points``), ``knn_balanced_acc`` (balanced accuracy of a
  k-nearest-neighbour classifier, cross-validated with ``GroupKFold`` by patient so
  that no neighbour comes from the query's own patient), ``silhouette``
  (silhouette score of the two classes, Euclidean, in [-1, 1], higher is better)
  and ``davies_bouldin`` (Davies-Bouldin index, >= 0, lower is better); and the
  same per magnification, prefixed with the view (``20x_knn_balanced_acc``, ...).
  NaN where undefined (one class, one patient, no embedding).

``summarise`` -> one row per method: ``method``, ``folds`` (number of folds), then
``{metric}_mean`` and ``{metric}_std`` for every numeric column of the per-fold
tables (mean and sample standard deviation, ``ddof=1``, over the folds where the
metric is defined). ``write_summary`` writes it as ``summary.tsv`` and as a
Markdown table ``summary.md`` with one row per metric and one column per method,
each cell ``mean ± std`` with 3 decimals (``n/a`` where undefined).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from multimag.atomic import atomic_path
from multimag.dataset.splits import read_splits
from multimag.errors import MultimagError
from multimag.evaluate.aggregate import FUSED, read_predictions, verdict_summary, verdicts

__all__ = [
    "PATCH_METRICS",
    "EMBEDDING_METRICS",
    "embedding_metrics",
    "evaluate",
    "evaluate_method",
    "markdown_table",
    "patch_metrics",
    "summarise",
    "write_summary",
]

PATCH_METRICS = ("n_patches", "acc", "balanced_acc", "f1_normal", "f1_tumour", "roc_auc")
EMBEDDING_METRICS = ("n_points", "knn_balanced_acc", "silhouette", "davies_bouldin")
NAN = float("nan")


def patch_metrics(labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray,
                  preds: Sequence[int] | np.ndarray | None = None,
                  threshold: float = 0.5) -> dict[str, float]:
    """Patch-level metrics of the labelled patches (label 0 or 1; -1 is dropped).

    ``preds`` defaults to ``probs >= threshold``. Keys: ``n_patches``, ``acc``,
    ``balanced_acc``, ``f1_normal``, ``f1_tumour``, ``roc_auc`` (NaN with one class
    only); all NaN when no patch is labelled.
    """
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        f1_score,
        roc_auc_score,
    )

    labels = np.asarray(labels, dtype=np.int64).ravel()
    probs = np.asarray(probs, dtype=np.float64).ravel()
    preds = ((probs >= threshold).astype(np.int64) if preds is None
             else np.asarray(preds, dtype=np.int64).ravel())
    if not len(labels) == len(probs) == len(preds):
        raise MultimagError(f"labels, probs and preds differ in length ({len(labels)}, "
                            f"{len(probs)}, {len(preds)})", fix="pass one value per patch")
    keep = (labels == 0) | (labels == 1)
    labels, probs, preds = labels[keep], probs[keep], preds[keep]
    out = {"n_patches": float(len(labels)), "acc": NAN, "balanced_acc": NAN,
           "f1_normal": NAN, "f1_tumour": NAN, "roc_auc": NAN}
    if not len(labels):
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true" etc.
        out["acc"] = float(accuracy_score(labels, preds))
        out["balanced_acc"] = float(balanced_accuracy_score(labels, preds))
        f1 = f1_score(labels, preds, labels=[0, 1], average=None, zero_division=0)
        out["f1_normal"], out["f1_tumour"] = float(f1[0]), float(f1[1])
        if len(np.unique(labels)) == 2:
            out["roc_auc"] = float(roc_auc_score(labels, probs))
    return out


def embedding_metrics(emb: np.ndarray, labels: Sequence[int] | np.ndarray,
                      groups: Sequence[Any] | np.ndarray, k: int = 5, seed: int = 0, *,
                      max_points: int = 5000, n_splits: int = 5) -> dict[str, float]:
    """kNN balanced accuracy, silhouette and Davies-Bouldin of labelled embeddings.

    Rows with a label other than 0/1 or a non-finite value are dropped; then at most
    ``max_points`` rows are drawn without replacement (``seed``). The kNN
    classifier (``k`` neighbours, fewer when a training split is smaller) predicts
    every point out of fold, with ``GroupKFold(min(n_splits, groups))`` over
    ``groups`` (patients), and is scored by the balanced accuracy of those
    predictions pooled. NaN: kNN with fewer than 2 groups or classes; silhouette
    and Davies-Bouldin with fewer than 2 classes (or as many classes as points).
    """
    from sklearn.metrics import balanced_accuracy_score, davies_bouldin_score, silhouette_score
    from sklearn.model_selection import GroupKFold, cross_val_predict
    from sklearn.neighbors import KNeighborsClassifier

    emb = np.asarray(emb, dtype=np.float64)
    if emb.ndim == 1:
        emb = emb[:, None]
    labels = np.asarray(labels, dtype=np.int64).ravel()
    groups = np.asarray(groups).ravel()
    if not len(emb) == len(labels) == len(groups):
        raise MultimagError(f"emb, labels and groups differ in length ({len(emb)}, "
                            f"{len(labels)}, {len(groups)})", fix="pass one row per patch")
    keep = ((labels == 0) | (labels == 1)) & np.isfinite(emb).all(axis=1)
    emb, labels, groups = emb[keep], labels[keep], groups[keep]
    if len(emb) > max_points:
        pick = np.sort(np.random.default_rng(seed).choice(len(emb), int(max_points),
                                                          replace=False))
        emb, labels, groups = emb[pick], labels[pick], groups[pick]
    out = {"n_points": float(len(emb)), "knn_balanced_acc": NAN, "silhouette": NAN,
           "davies_bouldin": NAN}
    n_classes = len(np.unique(labels))
    if n_classes < 2:
        return out
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        if n_classes < len(emb):
            out["silhouette"] = float(silhouette_score(emb, labels))
            out["davies_bouldin"] = float(davies_bouldin_score(emb, labels))
        n_groups = len(np.unique(groups))
        if n_groups >= 2:
            folds = list(GroupKFold(n_splits=min(int(n_splits), n_groups))
                         .split(emb, labels, groups))
            neighbours = max(1, min(int(k), min(len(train) for train, _ in folds)))
            pred = cross_val_predict(KNeighborsClassifier(n_neighbors=neighbours), emb, labels,
                                     cv=folds)
            out["knn_balanced_acc"] = float(balanced_accuracy_score(labels, pred))
    return out


def _view_order(views: Sequence[str]) -> list[str]:
    def key(view: str) -> tuple[int, float, str]:
        try:
            return (0, -float(view.rstrip("x")), view)
        except ValueError:
            return (1, 0.0, view)

    return sorted({str(v) for v in views if str(v) != FUSED}, key=key)


def _stack(embeddings: pd.Series) -> np.ndarray | None:
    """(n, d) float array of a column of per-row vectors, None if empty or ragged."""
    values = [np.asarray(v, dtype=np.float64) for v in embeddings if v is not None]
    if not values or len({v.shape for v in values}) != 1 or values[0].ndim != 1:
        return None
    return np.stack(values)


def _embedding_block(rows: pd.DataFrame, prefix: str, k: int, seed: int,
                     max_points: int) -> dict[str, float]:
    rows = rows[rows["embedding"].notna()]
    emb = _stack(rows["embedding"])
    if emb is None:
        return {f"{prefix}{m}": (0.0 if m == "n_points" else NAN) for m in EMBEDDING_METRICS}
    found = embedding_metrics(emb, rows["label"].to_numpy(), rows["patient_id"].astype(str)
                              .to_numpy(), k=k, seed=seed, max_points=max_points)
    return {f"{prefix}{m}": v for m, v in found.items()}


def evaluate_method(pred_dir: str | Path, splits_path: str | Path | pd.DataFrame,
                    out_dir: str | Path | None = None, *, rule: str = "majority",
                    tie: str = "tumour", threshold: float = 0.5,
                    fraction_threshold: float = 0.5, exclude_ambiguous: bool = True,
                    k: int = 5, max_points: int = 5000, seed: int = 0) -> pd.DataFrame:
    """One row per test fold of one method's predictions (columns in the module
    docstring); writes ``{out_dir}/metrics.tsv`` when ``out_dir`` is given.

    ``rule``, ``tie``, ``threshold``, ``fraction_threshold`` and ``exclude_ambiguous``
    are those of :func:`multimag.evaluate.aggregate.aggregate`; ``k``, ``max_points`` and
    ``seed`` those of :func:`embedding_metrics`.
    """
    splits = (read_splits(splits_path) if isinstance(splits_path, (str, Path))
              else splits_path.reset_index(drop=True))
    fused_all = read_predictions(pred_dir, splits, fused=True, columns=[])
    method = fused_all.attrs.get("multimag", {}).get("method") or Path(pred_dir).name
    rows = []
    for fold in sorted(splits["fold"].astype(int).unique().tolist()):
        fold_splits = splits[splits["fold"].astype(int) == fold].reset_index(drop=True)
        ids = fold_splits["slide_id"].astype(str).tolist()
        fused = fused_all[fused_all["slide_id"].astype(str).isin(ids)]
        per_mag = read_predictions(pred_dir, splits, fused=False, labelled_only=True,
                                   columns=["embedding"], slides=ids)
        row: dict[str, Any] = {"fold": fold, "method": method,
                               "n_slides": len(ids),
                               "n_patients": int(fold_splits["patient_id"].nunique())}
        row.update(patch_metrics(fused["label"], fused["prob_tumour"], fused["pred"]))
        views = _view_order(per_mag["view"].unique().tolist())
        for view in views:
            sub = per_mag[per_mag["view"] == view]
            found = patch_metrics(sub["label"], sub["prob_tumour"], sub["pred"])
            row.update({f"{view}_{m}": v for m, v in found.items()})
        slides, patients = verdicts(fused, fold_splits, rule, tie=tie, threshold=threshold,
                                    fraction_threshold=fraction_threshold,
                                    exclude_ambiguous=exclude_ambiguous)
        levels = verdict_summary(slides, patients)
        for key in ("slide_accuracy", "patient_accuracy", "recognition_rate"):
            row[key] = NAN if levels[key] is None else levels[key]
        row["n_slides_unscored"] = levels["n_slides_unscored"]
        row.update(_embedding_block(per_mag, "", k, seed, max_points))
        for view in views:
            row.update(_embedding_block(per_mag[per_mag["view"] == view], f"{view}_", k, seed,
                                        max_points))
        rows.append(row)
    table = pd.DataFrame(rows)
    if out_dir is not None:
        _write_tsv(table, Path(out_dir) / "metrics.tsv")
    return table


def summarise(per_fold_tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per method: ``method``, ``folds``, ``{metric}_mean``, ``{metric}_std``.

    Every numeric column but ``fold`` is a metric. Mean and sample standard
    deviation (``ddof=1``) skip NaN folds; the std of a single fold is NaN.
    """
    rows = []
    for method, table in per_fold_tables.items():
        row: dict[str, Any] = {"method": str(method), "folds": int(len(table))}
        for column in table.columns:
            if column == "fold" or not pd.api.types.is_numeric_dtype(table[column]) \
                    or pd.api.types.is_bool_dtype(table[column]):
                continue
            values = table[column].astype(np.float64)
            row[f"{column}_mean"] = float(values.mean()) if values.notna().any() else NAN
            row[f"{column}_std"] = (float(values.std(ddof=1)) if values.notna().sum() > 1
                                    else NAN)
        rows.append(row)
    return pd.DataFrame(rows)


def _cell(mean: float, std: float) -> str:
    if mean is None or not math.isfinite(mean):
        return "n/a"
    if std is None or not math.isfinite(std):
        return f"{mean:.3f}"
    return f"{mean:.3f} ± {std:.3f}"


def markdown_table(summary: pd.DataFrame) -> str:
    """``summary`` (of :func:`summarise`) as a Markdown table: one row per metric,
    one column per method, cells ``mean ± std`` (3 decimals)."""
    metrics = [c[: -len("_mean")] for c in summary.columns if c.endswith("_mean")]
    methods = summary["method"].astype(str).tolist()
    lines = ["| metric | " + " | ".join(methods) + " |",
             "|---|" + "---:|" * len(methods),
             "| folds | " + " | ".join(str(int(f)) for f in summary["folds"]) + " |"]
    for metric in metrics:
        std = summary.get(f"{metric}_std", pd.Series(NAN, index=summary.index))
        cells = [_cell(float(m), float(s)) for m, s in zip(summary[f"{metric}_mean"], std,
                                                          strict=True)]
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _write_tsv(table: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        table.to_csv(handle, sep="\t", index=False, lineterminator="\n", na_rep="NaN")


def write_summary(df: pd.DataFrame, tsv_path: str | Path, md_path: str | Path) -> None:
    """Write the summary table as TSV and as Markdown (atomically)."""
    _write_tsv(df, Path(tsv_path))
    with atomic_path(md_path) as tmp:
        tmp.write_text(markdown_table(df), encoding="utf-8")


def evaluate(pred_dirs: Mapping[str, str | Path] | Sequence[str | Path],
             splits_path: str | Path | pd.DataFrame, out_dir: str | Path,
             **options: Any) -> pd.DataFrame:
    """Evaluate several methods and write the results table.

    ``pred_dirs`` maps method -> predictions directory (a plain list is named by
    the methods in the files' metadata). Writes ``{out_dir}/{method}/metrics.tsv``
    per method and ``{out_dir}/summary.tsv`` + ``summary.md``; returns the summary.
    ``options`` go to :func:`evaluate_method`.
    """
    out_dir = Path(out_dir)
    splits = (read_splits(splits_path) if isinstance(splits_path, (str, Path))
              else splits_path)
    tables: dict[str, pd.DataFrame] = {}
    items = (list(pred_dirs.items()) if isinstance(pred_dirs, Mapping)
             else [(None, d) for d in pred_dirs])
    for name, pred_dir in items:
        table = evaluate_method(pred_dir, splits, **options)
        if name is not None:
            method = str(name)
        elif len(table):
            method = str(table["method"].iloc[0])
        else:
            method = Path(pred_dir).name
        if method in tables:
            raise MultimagError(f"method {method!r} is given twice", path=pred_dir,
                                fix="evaluate each method's predictions directory once")
        _write_tsv(table, out_dir / method / "metrics.tsv")
        tables[method] = table
    summary = summarise(tables)
    write_summary(summary, out_dir / "summary.tsv", out_dir / "summary.md")
    return summary
