"""Figures for the evaluation step and the Snakemake report.

Every ``plot_*`` function takes prediction tables (the predictions contract,
``notes/predictions_schema.md``: one row per patch and view, one ``"fused"`` row
per patch) and writes one PNG atomically (:func:`multimag.atomic.atomic_path`):

- :func:`plot_roc`: one ROC curve per fold (fused view, labelled patches) and the
  mean curve (TPR interpolated on a common FPR grid) with its AUC and a +-1 std band;
- :func:`plot_confusion`: confusion matrix of the fused predictions, counts and
  row-normalised;
- :func:`plot_tsne`: t-SNE of the per-magnification embeddings of labelled
  patches, coloured by class and by magnification (view);
- :func:`plot_heatmap`: per slide, the tissue thumbnail with the annotation
  outline beside the thumbnail painted with each patch's fused P(tumour) over the
  finest magnification's field.

The tiling QC thumbnails are drawn by :func:`multimag.wsi.tissue.draw_qc` (rule
``tissue`` / ``tile``); they go into the report as they are.

The numbers behind the pictures are public functions of their own
(:func:`roc_summary`, :func:`confusion_counts`, :func:`tsne_points`,
:func:`heatmap_array`) so that they are tested directly. Figures are built with
:class:`matplotlib.figure.Figure`, never pyplot: ``savefig(format="png")`` renders
with the Agg canvas whatever backend is configured, so there is no global figure
registry, no display needed, no backend switch and nothing left open.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import shapely
from matplotlib.figure import Figure
from sklearn.manifold import TSNE
from sklearn.metrics import auc, confusion_matrix, roc_curve

from multimag.atomic import atomic_path
from multimag.dataset.annotations import Annotation, load_annotation
from multimag.errors import PlotError
from multimag.evaluate.aggregate import FUSED, METADATA_KEY
from multimag.wsi.tissue import TissueMask

__all__ = [
    "CLASS_COLORS",
    "FUSED",
    "PlotError",
    "RocCurve",
    "RocSummary",
    "confusion_counts",
    "finest_extent",
    "fused_rows",
    "heatmap_array",
    "plot_confusion",
    "plot_heatmap",
    "plot_roc",
    "plot_tsne",
    "predictions_by_fold",
    "read_predictions",
    "roc_summary",
    "tsne_points",
    "view_magnification",
]

#: RGB 0..255 per class (tumour as QuPath's default "Tumor" class)
CLASS_COLORS: dict[int, tuple[int, int, int]] = {1: (200, 0, 0), 0: (30, 100, 200)}
CLASS_NAMES = {0: "normal", 1: "tumour"}
DPI = 120
HEATMAP_CMAP = "RdYlBu_r"
REQUIRED = ("patch", "x", "y", "label", "view", "prob_tumour")


# ---------------------------------------------------------------------------- tables


def read_predictions(path: str | Path) -> pd.DataFrame:
    """One predictions Parquet file as a DataFrame; its ``multimag`` schema metadata
    (method, fold, magnifications, extent_level0, ...) is in ``df.attrs["multimag"]``."""
    try:
        arrow = pq.read_table(path)
    except (OSError, ValueError) as exc:
        raise PlotError(f"cannot read the predictions file ({exc})", path=path,
                        fix="re-run `multimag predict` for this slide") from exc
    raw = (arrow.schema.metadata or {}).get(METADATA_KEY)
    df = arrow.to_pandas()
    df.attrs["multimag"] = json.loads(raw) if raw else {}
    return df


def _check_columns(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise PlotError(f"{what}: the prediction table lacks columns {missing}",
                        fix="pass a table in the predictions schema (read_predictions)")


def fused_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The ``"fused"`` rows: one per patch, the patch's prediction."""
    _check_columns(df, ("view",), "fused view")
    return df[df["view"] == FUSED]


def predictions_by_fold(df: pd.DataFrame) -> dict[int, pd.DataFrame]:
    """Split a concatenation of prediction tables by their ``fold`` column."""
    _check_columns(df, ("fold",), "folds")
    return {int(k): g for k, g in df.groupby("fold", sort=True)}


def view_magnification(view: str) -> float:
    """``"20x" -> 20.0``, ``"2.5x" -> 2.5`` (``nan`` for anything else, e.g. fused)."""
    try:
        return float(str(view).removesuffix("x"))
    except ValueError:
        return math.nan


def finest_extent(extent_level0: float | Mapping[str, float] | None,
                  df: pd.DataFrame | None = None) -> float:
    """Side (level-0 px) of the finest magnification's patch field.

    ``extent_level0``: a number, a ``{"20x": 128.0, ...}`` mapping (the finest is the
    largest magnification), or ``None`` to take the mapping from
    ``df.attrs["multimag"]["extent_level0"]`` (as set by :func:`read_predictions`).
    """
    if extent_level0 is None and df is not None:
        extent_level0 = df.attrs.get("multimag", {}).get("extent_level0")
    if extent_level0 is None:
        raise PlotError("the patch extent is unknown",
                        fix="pass extent_level0 (the predictions file's metadata "
                        "'extent_level0') or read the table with read_predictions")
    if isinstance(extent_level0, Mapping):
        if not extent_level0:
            raise PlotError("extent_level0 is empty", fix="pass {'20x': side_px, ...}")
        finest = max(extent_level0, key=view_magnification)
        if math.isnan(view_magnification(finest)):
            raise PlotError(f"extent_level0 keys {sorted(extent_level0)} are not "
                            "magnifications", fix="key it by view, e.g. '20x'")
        value = float(extent_level0[finest])
    else:
        value = float(extent_level0)
    if not (math.isfinite(value) and value > 0):
        raise PlotError(f"extent_level0 {value} is not a positive size",
                        fix="pass the patch side in level-0 pixels")
    return value


def _labelled(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["label"].isin((0, 1))]


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    finally:
        fig.clear()
    return path


def _rgb(cls: int) -> tuple[float, float, float]:
    r, g, b = CLASS_COLORS[cls]
    return (r / 255, g / 255, b / 255)


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
        _check_columns(df, REQUIRED, f"ROC of fold {fold}")
        rows = _labelled(fused_rows(df))
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
    return _save(fig, path)


# ---------------------------------------------------------------------------- confusion


def confusion_counts(df: pd.DataFrame) -> np.ndarray:
    """2 x 2 counts of the fused predictions of labelled patches: rows true
    (normal, tumour), columns predicted (normal, tumour)."""
    _check_columns(df, (*REQUIRED, "pred"), "confusion matrix")
    rows = _labelled(fused_rows(df))
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
    return _save(fig, path)


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
    _check_columns(df, ("label", "view", "embedding"), "t-SNE")
    rows = _labelled(df[df["view"] != FUSED])
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
                       color=_rgb(cls), lw=0, label=f"{CLASS_NAMES[cls]} ({int(sel.sum())})")
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
    return _save(fig, path)


# ---------------------------------------------------------------------------- heatmap


def heatmap_array(pred_df: pd.DataFrame, shape: tuple[int, int],
                  scale: float | tuple[float, float], extent: float) -> np.ndarray:
    """Fused P(tumour) painted on a ``shape = (h, w)`` thumbnail grid.

    Each patch covers the level-0 square ``centre +- extent / 2``; thumbnail pixel
    ``(i, j)`` covers level-0 ``[j * sx, (j + 1) * sx) x [i * sy, (i + 1) * sy)``
    (``scale = (sx, sy)``, level-0 px per thumbnail px) and takes the mean
    probability of the patches whose square holds its centre (at least the pixel
    under the patch centre). Pixels outside every patch are NaN. Ambiguous
    patches (label -1) are painted too.
    """
    _check_columns(pred_df, REQUIRED, "heatmap")
    sx, sy = (float(scale), float(scale)) if np.isscalar(scale) else map(float, scale)
    h, w = int(shape[0]), int(shape[1])
    rows = fused_rows(pred_df)
    x = rows["x"].to_numpy(np.float64)
    y = rows["y"].to_numpy(np.float64)
    p = rows["prob_tumour"].to_numpy(np.float64)
    half = float(extent) / 2

    def span(c: np.ndarray, s: float, n: int) -> tuple[np.ndarray, np.ndarray]:
        lo = np.ceil((c - half) / s - 0.5 - 1e-9).astype(np.int64)
        hi = np.ceil((c + half) / s - 0.5 - 1e-9).astype(np.int64)
        under = np.floor(c / s).astype(np.int64)
        empty = hi <= lo
        lo, hi = np.where(empty, under, lo), np.where(empty, under + 1, hi)
        return np.clip(lo, 0, n), np.clip(hi, 0, n)

    j0, j1 = span(x, sx, w)
    i0, i1 = span(y, sy, h)
    total = np.zeros((h + 1, w + 1))
    count = np.zeros((h + 1, w + 1))
    for grid, v in ((total, p), (count, np.ones_like(p))):
        np.add.at(grid, (i0, j0), v)
        np.add.at(grid, (i0, j1), -v)
        np.add.at(grid, (i1, j0), -v)
        np.add.at(grid, (i1, j1), v)
    total = total.cumsum(0).cumsum(1)[:h, :w]
    count = np.rint(count.cumsum(0).cumsum(1)[:h, :w])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _draw_annotation(ax: Any, annotation: Annotation, sx: float, sy: float) -> list[str]:
    """Tumour (solid) and normal (dashed) outlines in imshow coordinates; returns what
    was drawn (for the legend / a note)."""
    drawn = []
    if annotation.raster is not None:
        r = annotation.raster
        for cls, style in (("tumour", "solid"), ("normal", "dashed")):
            values = r.class_values(cls)
            if not values:
                continue
            k = max(1, int(min(sx / r.scale_x, sy / r.scale_y)))
            sub = np.isin(r.mask[::k, ::k], values)
            if not sub.any() or sub.all():
                continue
            cx = ((np.arange(sub.shape[1]) + 0.5) * k * r.scale_x) / sx - 0.5
            cy = ((np.arange(sub.shape[0]) + 0.5) * k * r.scale_y) / sy - 0.5
            ax.contour(cx, cy, sub.astype(np.float32), levels=[0.5],
                       colors=[_rgb(1 if cls == "tumour" else 0)], linewidths=1.2,
                       linestyles=style)
            drawn.append(f"{cls} (raster)")
        return drawn
    for cls, style in (("tumour", "-"), ("normal", "--")):
        geom = annotation.geometries.get(cls)
        if geom is None or geom.is_empty:
            continue
        color = _rgb(1 if cls == "tumour" else 0)
        first = True
        for poly in shapely.get_parts(geom):
            if not isinstance(poly, shapely.Polygon):
                continue
            for ring in (poly.exterior, *poly.interiors):
                xy = np.asarray(ring.coords)
                ax.plot(xy[:, 0] / sx - 0.5, xy[:, 1] / sy - 0.5, ls=style, lw=1.2,
                        color=color, label=cls if first else None)
                first = False
        drawn.append(cls)
    return drawn


def plot_heatmap(pred_df: pd.DataFrame, tissue_npz: str | Path, path: str | Path,
                 annotation: Annotation | str | Path | None = None,
                 extent_level0: float | Mapping[str, float] | None = None, *,
                 class_map: Mapping[str, Sequence[Any]] | None = None,
                 title: str | None = None) -> Path:
    """Left: the tissue thumbnail with the annotation outline (tumour solid, normal
    dashed); right: the thumbnail under each patch's fused P(tumour), painted over
    the finest magnification's field, with a colourbar.

    ``annotation``: an :class:`~multimag.dataset.annotations.Annotation`, a path (read with
    ``class_map``, default: the config's default ``labels.class_map``) or None.
    ``extent_level0``: see :func:`finest_extent` (None: from ``pred_df.attrs``).
    """
    _check_columns(pred_df, REQUIRED, "heatmap")
    extent = finest_extent(extent_level0, pred_df)
    slides = sorted(map(str, pred_df["slide_id"].unique())) if "slide_id" in pred_df else []
    if len(slides) > 1:
        raise PlotError(f"a heatmap shows one slide, the table holds {len(slides)}",
                        fix="pass one slide's predictions")
    slide_id = slides[0] if slides else None
    tissue = TissueMask.load(tissue_npz)
    thumb = tissue.thumbnail
    sx, sy = tissue.scale_x, tissue.scale_y
    if annotation is not None and not isinstance(annotation, Annotation):
        if class_map is None:
            from multimag.config import load_config

            class_map = load_config()["labels"]["class_map"]
        annotation = load_annotation(annotation, class_map, slide_id=slide_id)
    heat = heatmap_array(pred_df, thumb.shape[:2], (sx, sy), extent)
    fused = fused_rows(pred_df)

    fig = Figure(figsize=(12.0, 5.5))
    ax_ann, ax_heat = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    ax_ann.imshow(thumb, interpolation="nearest")
    drawn = _draw_annotation(ax_ann, annotation, sx, sy) if annotation is not None else []
    if annotation is None:
        note = "no annotation"
    elif not drawn:
        note = f"no tumour or normal region in the {annotation.format} annotation"
    else:
        note = ""
    if note:
        ax_ann.text(0.02, 0.98, note, ha="left", va="top", fontsize=8,
                    transform=ax_ann.transAxes, bbox={"fc": "white", "alpha": 0.7, "lw": 0})
    elif annotation is not None and annotation.raster is None:
        ax_ann.legend(loc="lower right", fontsize=8)
    ax_ann.set_title("annotation" + (f" ({', '.join(drawn)})" if drawn else ""))

    ax_heat.imshow(thumb, interpolation="nearest")
    cmap = matplotlib.colormaps[HEATMAP_CMAP].with_extremes(bad=(0, 0, 0, 0))
    im = ax_heat.imshow(np.ma.masked_invalid(heat), cmap=cmap, vmin=0.0, vmax=1.0,
                        alpha=0.8, interpolation="nearest")
    fig.colorbar(im, ax=ax_heat, fraction=0.046, pad=0.04, label="P(tumour), fused")
    ax_heat.set_title(f"fused P(tumour), {len(fused)} patches "
                      f"({int((fused['label'] == -1).sum())} ambiguous)")
    for ax in (ax_ann, ax_heat):
        ax.set(xticks=[], yticks=[], xlim=(-0.5, thumb.shape[1] - 0.5),
               ylim=(thumb.shape[0] - 0.5, -0.5))
    fig.suptitle(title if title is not None else f"slide {slide_id or '?'}")
    return _save(fig, path)
