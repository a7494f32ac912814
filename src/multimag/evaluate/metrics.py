"""Patch metrics and the quality of embeddings, with scikit-learn.

``docs/evaluate.md`` defines every metric.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from multimag.errors import MultimagError

__all__ = [
    "PATCH_METRICS",
    "EMBEDDING_METRICS",
    "embedding_metrics",
    "patch_metrics",
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
