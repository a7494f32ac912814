"""The patch-level figures of one method: ROC curves per fold with their mean, the
confusion matrix and the t-SNE of the test embeddings.

Each ``plot_*`` writes one PNG from prediction tables (one row per patch and view);
the numbers behind each picture are public functions of their own
(:func:`roc_summary`, :func:`confusion_counts`, :func:`tsne_points`) so that
they are tested directly. ``docs/evaluate.md`` describes the figures.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.manifold import TSNE
from sklearn.metrics import auc, confusion_matrix, roc_curve

from multimag.errors import PlotError
from multimag.evaluate.classes import CLASS_NAMES, class_rgb
from multimag.evaluate.drawing import require_columns, save_png
from multimag.learn.predictions import FUSED, PATCH_COLUMNS, fused_rows, view_magnification

__all__ = [
    "RocCurve",
    "RocSummary",
    "confusion_counts",
    "plot_confusion",
    "plot_roc",
    "plot_tsne",
    "predictions_by_fold",
    "roc_summary",
    "tsne_points",
]


def predictions_by_fold(df: pd.DataFrame) -> dict[int, pd.DataFrame]:
    """Split a concatenation of prediction tables by their ``fold`` column."""
    require_columns(df, ("fold",), "folds")
    return {int(k): g for k, g in df.groupby("fold", sort=True)}


def _labelled_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["label"].isin((0, 1))]


# ---------------------------------------------------------------------------- ROC


@dataclass
class RocCurve:
    fold: int
    fpr: np.ndarray
    tpr: np.ndarray
    auc: float
    n_tumour: int
    n_normal: int


@dataclass
class RocSummary:
    """Per-fold ROC curves and their mean on a common FPR grid."""

    curves: list[RocCurve]
    skipped: list[int] = field(default_factory=list)  # folds with one class only
    grid: np.ndarray = field(default_factory=lambda: np.zeros(0))
    mean_tpr: np.ndarray = field(default_factory=lambda: np.zeros(0))
    std_tpr: np.ndarray = field(default_factory=lambda: np.zeros(0))
    mean_auc: float = math.nan  # AUC of the mean curve
    std_auc: float = math.nan  # standard deviation of the per-fold AUCs


def roc_summary(pred_by_fold: Mapping[int, pd.DataFrame], grid_points: int = 1001
                ) -> RocSummary:
    """ROC of the fused view per fold (labelled patches only) and the mean curve.

    Each fold's TPR is interpolated on ``grid_points`` FPR values in [0, 1] (TPR 0 at
    FPR 0); the mean curve is their mean, its AUC the trapezoid area under it, the
    spread the standard deviation of the per-fold AUCs. Folds whose labelled
    patches hold one class only have no ROC and are listed in ``skipped``.
    """
    grid = np.linspace(0.0, 1.0, grid_points)
    curves, skipped, interp = [], [], []
    for fold in sorted(pred_by_fold):
        df = pred_by_fold[fold]
        require_columns(df, PATCH_COLUMNS, f"ROC of fold {fold}")
        rows = _labelled_rows(fused_rows(df))
        y = rows["label"].to_numpy(np.int64)
        n_tumour, n_normal = int((y == 1).sum()), int((y == 0).sum())
        if n_tumour == 0 or n_normal == 0:
            skipped.append(int(fold))
            continue
        fpr, tpr, _ = roc_curve(y, rows["prob_tumour"].to_numpy(np.float64))
        curves.append(RocCurve(int(fold), fpr, tpr, float(auc(fpr, tpr)), n_tumour, n_normal))
        t = np.interp(grid, fpr, tpr)
        t[0] = 0.0
        interp.append(t)
    summary = RocSummary(curves, skipped, grid)
    if interp:
        stack = np.stack(interp)
        summary.mean_tpr = stack.mean(axis=0)
        summary.mean_tpr[-1] = 1.0
        summary.std_tpr = stack.std(axis=0)
        summary.mean_auc = float(auc(grid, summary.mean_tpr))
        summary.std_auc = float(np.std([c.auc for c in curves]))
    return summary


def plot_roc(pred_by_fold: Mapping[int, pd.DataFrame], path: str | Path,
             title: str = "ROC (fused, labelled patches)") -> Path:
    """One ROC curve per fold plus the mean curve with its AUC and a +-1 std band."""
    s = roc_summary(pred_by_fold)
    fig = Figure(figsize=(5.5, 5.0))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1, label="chance")
    palette = matplotlib.colormaps["tab10"]
    for k, c in enumerate(s.curves):
        ax.plot(c.fpr, c.tpr, lw=1, alpha=0.6, color=palette(k % 10),
                label=f"fold {c.fold} (AUC {c.auc:.3f}, n={c.n_tumour}+{c.n_normal})")
    if s.curves:
        ax.plot(s.grid, s.mean_tpr, color="k", lw=2.2,
                label=f"mean (AUC {s.mean_auc:.3f} \u00b1 {s.std_auc:.3f})")
        if len(s.curves) > 1:
            ax.fill_between(s.grid, np.clip(s.mean_tpr - s.std_tpr, 0, 1),
                            np.clip(s.mean_tpr + s.std_tpr, 0, 1), color="0.5", alpha=0.25,
                            lw=0, label="\u00b1 1 std")
    else:
        ax.text(0.5, 0.5, "no fold with both classes", ha="center", va="center",
                transform=ax.transAxes)
    if s.skipped:
        ax.text(0.98, 0.02, f"no ROC (one class): folds {s.skipped}", ha="right",
                va="bottom", fontsize=7, transform=ax.transAxes)
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="false positive rate",
           ylabel="true positive rate", title=title, aspect="equal")
    ax.legend(loc="lower right", fontsize=7, bbox_to_anchor=(1.0, 0.06))
    return save_png(fig, path)


# ---------------------------------------------------------------------------- confusion


def confusion_counts(df: pd.DataFrame) -> np.ndarray:
    """2 x 2 counts of the fused predictions of labelled patches: rows true
    (normal, tumour), columns predicted (normal, tumour)."""
    require_columns(df, (*PATCH_COLUMNS, "pred"), "confusion matrix")
    rows = _labelled_rows(fused_rows(df))
    return confusion_matrix(rows["label"].to_numpy(np.int64), rows["pred"].to_numpy(np.int64),
                            labels=[0, 1])


def plot_confusion(df: pd.DataFrame, path: str | Path,
                   title: str = "Confusion (fused, labelled patches)") -> Path:
    """Confusion matrix of the fused patch predictions: counts and row-normalised."""
    counts = confusion_counts(df)
    rowsum = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(rowsum > 0, counts / np.maximum(rowsum, 1), np.nan)
    total = int(counts.sum())
    acc = np.trace(counts) / total if total else math.nan
    fig = Figure(figsize=(9.0, 4.0))
    names = [CLASS_NAMES[0], CLASS_NAMES[1]]
    for k, (values, sub, vmax) in enumerate(
            ((counts, "counts", max(1, int(counts.max()))), (norm, "row-normalised", 1.0))):
        ax = fig.add_subplot(1, 2, k + 1)
        im = ax.imshow(np.nan_to_num(values.astype(float)), cmap="Blues", vmin=0, vmax=vmax)
        for i in range(2):
            for j in range(2):
                v = values[i, j]
                text = ("n/a" if np.isnan(v) else f"{v:.2f}") if k else f"{int(v)}"
                shade = 0.0 if np.isnan(v) else float(v) / vmax
                ax.text(j, i, text, ha="center", va="center",
                        color="white" if shade > 0.5 else "black")
        ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=names, yticklabels=names,
               xlabel="predicted", ylabel="true", title=sub)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(f"{title}\nn = {total}, accuracy = {acc:.3f}")
    return save_png(fig, path)


# ---------------------------------------------------------------------------- t-SNE


def tsne_points(df: pd.DataFrame, max_points: int = 2000, seed: int = 0) -> pd.DataFrame:
    """2-D t-SNE coordinates of the per-magnification embeddings of labelled patches.

    Rows: views other than ``"fused"`` with label 0/1 and an embedding; at most
    ``max_points`` of them, drawn without replacement by ``numpy`` with ``seed``
    (kept in table order). Embeddings of dimension <= 2 are shown as they are (no
    t-SNE), as are fewer than 3 points; otherwise the perplexity is
    ``min(30, max(1, (n - 1) / 3))`` so that it stays below ``n``.
    Returns columns ``tx, ty, label, view`` (and ``slide_id``, ``patch`` when present).
    """
    require_columns(df, ("label", "view", "embedding"), "t-SNE")
    rows = _labelled_rows(df[df["view"] != FUSED])
    rows = rows[rows["embedding"].notna()]
    if len(rows) > max_points:
        pick = np.sort(np.random.default_rng(seed).choice(len(rows), max_points,
                                                          replace=False))
        rows = rows.iloc[pick]
    keep = [c for c in ("slide_id", "patch", "label", "view") if c in rows.columns]
    out = rows[keep].reset_index(drop=True)
    if len(rows) == 0:
        out["tx"], out["ty"] = np.zeros(0), np.zeros(0)
        return out
    dims = {len(e) for e in rows["embedding"]}
    if len(dims) != 1:
        raise PlotError(f"embeddings of different dimensions {sorted(dims)} cannot share "
                        "one t-SNE", fix="plot each method's predictions separately")
    x = np.stack([np.asarray(e, np.float64) for e in rows["embedding"]])
    n, d = x.shape
    if d <= 2 or n < 3:
        xy = np.zeros((n, 2))
        xy[:, :min(d, 2)] = x[:, :2]
    else:
        perplexity = min(30.0, max(1.0, (n - 1) / 3))
        xy = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                  random_state=seed).fit_transform(x)
    out["tx"], out["ty"] = xy[:, 0], xy[:, 1]
    return out


def plot_tsne(df: pd.DataFrame, path: str | Path, title: str = "t-SNE of test embeddings",
              max_points: int = 2000, seed: int = 0) -> Path:
    """Two panels of the same t-SNE: coloured by class and by magnification (view)."""
    pts = tsne_points(df, max_points=max_points, seed=seed)
    fig = Figure(figsize=(11.0, 5.0))
    ax_cls, ax_mag = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    size = 8 if len(pts) > 500 else 16
    for cls in (0, 1):
        sel = pts["label"] == cls
        ax_cls.scatter(pts.loc[sel, "tx"], pts.loc[sel, "ty"], s=size, alpha=0.7,
                       color=class_rgb(cls), lw=0, label=f"{CLASS_NAMES[cls]} ({int(sel.sum())})")
    views = sorted(pts["view"].unique(), key=view_magnification, reverse=True)
    palette = matplotlib.colormaps["viridis"]
    for k, view in enumerate(views):
        sel = pts["view"] == view
        ax_mag.scatter(pts.loc[sel, "tx"], pts.loc[sel, "ty"], s=size, alpha=0.7, lw=0,
                       color=palette(k / max(1, len(views) - 1)),
                       label=f"{view} ({int(sel.sum())})")
    for ax, sub in ((ax_cls, "by class"), (ax_mag, "by magnification")):
        ax.set(title=sub, xticks=[], yticks=[])
        if len(pts):
            ax.legend(fontsize=8, markerscale=1.5, loc="best")
        else:
            ax.text(0.5, 0.5, "no labelled embeddings", ha="center", va="center",
                    transform=ax.transAxes)
    fig.suptitle(f"{title} (n = {len(pts)})")
    return save_png(fig, path)
