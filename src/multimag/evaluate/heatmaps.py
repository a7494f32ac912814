"""Per slide, the tissue thumbnail with the annotation outline beside the same
thumbnail painted with each patch's fused P(tumour) over the finest
magnification's field (``heatmaps/{slide}.png``).

:func:`heatmap_array` is the painted grid, public so that it is tested directly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
import shapely
from matplotlib.figure import Figure

from multimag.dataset.annotations import load_annotation
from multimag.dataset.regions import Annotation
from multimag.errors import PlotError
from multimag.evaluate.classes import class_rgb
from multimag.evaluate.drawing import require_columns, save_png
from multimag.learn.predictions import PATCH_COLUMNS, finest_extent, fused_rows
from multimag.wsi.tissue import TissueMask

__all__ = ["heatmap_array", "plot_heatmap"]

HEATMAP_CMAP = "RdYlBu_r"


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
    require_columns(pred_df, PATCH_COLUMNS, "heatmap")
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


def _draw_raster_outline(ax: Any, annotation: Annotation, sx: float, sy: float) -> list[str]:
    """Tumour (solid) and normal (dashed) contours of a raster annotation."""
    drawn = []
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
                   colors=[class_rgb(1 if cls == "tumour" else 0)], linewidths=1.2,
                   linestyles=style)
        drawn.append(f"{cls} (raster)")
    return drawn


def _draw_polygon_outline(ax: Any, annotation: Annotation, sx: float, sy: float) -> list[str]:
    """Tumour (solid) and normal (dashed) rings of a polygon annotation."""
    drawn = []
    for cls, style in (("tumour", "-"), ("normal", "--")):
        geom = annotation.geometries.get(cls)
        if geom is None or geom.is_empty:
            continue
        color = class_rgb(1 if cls == "tumour" else 0)
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


def _one_slide_id(pred_df: pd.DataFrame) -> str | None:
    slides = sorted(map(str, pred_df["slide_id"].unique())) if "slide_id" in pred_df else []
    if len(slides) > 1:
        raise PlotError(f"a heatmap shows one slide, the table holds {len(slides)}",
                        fix="pass one slide's predictions")
    return slides[0] if slides else None


def _read_annotation(annotation: Annotation | str | Path | None,
                     class_map: Mapping[str, Sequence[Any]] | None,
                     slide_id: str | None) -> Annotation | None:
    """``annotation`` as an Annotation (a path is read with ``class_map``, default:
    the config's default ``labels.class_map``)."""
    if annotation is None or isinstance(annotation, Annotation):
        return annotation
    if class_map is None:
        from multimag.config import load_config

        class_map = load_config()["labels"]["class_map"]
    return load_annotation(annotation, class_map, slide_id=slide_id)


def _annotation_panel(ax: Any, thumb: np.ndarray, annotation: Annotation | None,
                      sx: float, sy: float) -> None:
    """The thumbnail with the annotation outline, or a note saying why there is none."""
    ax.imshow(thumb, interpolation="nearest")
    drawn = []
    if annotation is not None:
        draw = _draw_polygon_outline if annotation.raster is None else _draw_raster_outline
        drawn = draw(ax, annotation, sx, sy)
    if annotation is None:
        note = "no annotation"
    elif not drawn:
        note = f"no tumour or normal region in the {annotation.format} annotation"
    else:
        note = ""
    if note:
        ax.text(0.02, 0.98, note, ha="left", va="top", fontsize=8,
                transform=ax.transAxes, bbox={"fc": "white", "alpha": 0.7, "lw": 0})
    elif annotation is not None and annotation.raster is None:
        ax.legend(loc="lower right", fontsize=8)
    ax.set_title("annotation" + (f" ({', '.join(drawn)})" if drawn else ""))


def _heat_panel(fig: Figure, ax: Any, thumb: np.ndarray, heat: np.ndarray,
                fused: pd.DataFrame) -> None:
    """The thumbnail under the fused P(tumour) of every patch, with a colourbar."""
    ax.imshow(thumb, interpolation="nearest")
    cmap = matplotlib.colormaps[HEATMAP_CMAP].with_extremes(bad=(0, 0, 0, 0))
    im = ax.imshow(np.ma.masked_invalid(heat), cmap=cmap, vmin=0.0, vmax=1.0,
                   alpha=0.8, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="P(tumour), fused")
    ax.set_title(f"fused P(tumour), {len(fused)} patches "
                 f"({int((fused['label'] == -1).sum())} ambiguous)")


def plot_heatmap(pred_df: pd.DataFrame, tissue_npz: str | Path, path: str | Path,
                 annotation: Annotation | str | Path | None = None,
                 extent_level0: float | Mapping[str, float] | None = None, *,
                 class_map: Mapping[str, Sequence[Any]] | None = None,
                 title: str | None = None) -> Path:
    """Left: the tissue thumbnail with the annotation outline (tumour solid, normal
    dashed); right: the thumbnail under each patch's fused P(tumour), painted over
    the finest magnification's field, with a colourbar.

    ``annotation``: an :class:`~multimag.dataset.regions.Annotation`, a path (read with
    ``class_map``, default: the config's default ``labels.class_map``) or None.
    ``extent_level0``: see :func:`~multimag.learn.predictions.finest_extent` (None:
    from ``pred_df.attrs``).
    """
    require_columns(pred_df, PATCH_COLUMNS, "heatmap")
    extent = finest_extent(extent_level0, pred_df)
    slide_id = _one_slide_id(pred_df)
    tissue = TissueMask.load(tissue_npz)
    thumb = tissue.thumbnail
    sx, sy = tissue.scale_x, tissue.scale_y
    annotation = _read_annotation(annotation, class_map, slide_id)
    heat = heatmap_array(pred_df, thumb.shape[:2], (sx, sy), extent)

    fig = Figure(figsize=(12.0, 5.5))
    ax_ann, ax_heat = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    _annotation_panel(ax_ann, thumb, annotation, sx, sy)
    _heat_panel(fig, ax_heat, thumb, heat, fused_rows(pred_df))
    for ax in (ax_ann, ax_heat):
        ax.set(xticks=[], yticks=[], xlim=(-0.5, thumb.shape[1] - 0.5),
               ylim=(thumb.shape[0] - 0.5, -0.5))
    fig.suptitle(title if title is not None else f"slide {slide_id or '?'}")
    return save_png(fig, path)
