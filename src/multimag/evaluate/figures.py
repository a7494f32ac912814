"""Every picture of one method for the report: ROC curves per fold with their
mean, the confusion matrix and the t-SNE of the test embeddings over all slides,
and per slide the tumour-probability heatmap beside the annotation and the
QuPath GeoJSON of its patch predictions.

The predictions are read through :func:`multimag.learn.predictions.read_predictions`, so
the checks of the aggregation step hold here too (every slide of the splits
predicted, by its own fold's model, with one configuration).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from multimag.atomic import atomic_dir
from multimag.errors import AnnotationWarning
from multimag.evaluate.heatmaps import plot_heatmap
from multimag.evaluate.patch_plots import (
    plot_confusion,
    plot_roc,
    plot_tsne,
    predictions_by_fold,
)
from multimag.evaluate.qupath import export_geojson
from multimag.learn.predictions import read_predictions as read_method_predictions
from multimag.learn.predictions import read_slide_predictions

__all__ = ["method_figures"]


def method_figures(pred_dir: str | Path, splits: str | Path, out_dir: str | Path,
                   tissue_dir: str | Path, *, annotations: Mapping[str, str | None] | None = None,
                   class_map: Mapping[str, Sequence[Any]] | None = None,
                   tsne_max_points: int = 2000, seed: int = 0,
                   progress: bool = False) -> dict[str, Path]:
    """Write ``roc.png``, ``confusion.png``, ``tsne.png`` and the folders
    ``heatmaps/{slide}.png`` and ``qupath/{slide}.geojson`` under ``out_dir``.

    ``tissue_dir`` holds each slide's ``{slide}.npz`` tissue mask (its thumbnail is
    the heatmap's background); ``annotations`` maps slide ids to annotation files
    (None or missing: no outline), read with ``class_map``.
    """
    pred_dir, out_dir, tissue_dir = Path(pred_dir), Path(out_dir), Path(tissue_dir)
    method = pred_dir.name
    table = read_method_predictions(pred_dir, splits)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {
        "roc": plot_roc(predictions_by_fold(table), out_dir / "roc.png",
                        title=f"{method}: ROC per fold (fused, labelled patches)"),
        "confusion": plot_confusion(table, out_dir / "confusion.png",
                                    title=f"{method}: confusion (fused, labelled)"),
        "tsne": plot_tsne(table, out_dir / "tsne.png", max_points=tsne_max_points,
                          seed=seed, title=f"{method}: t-SNE of test embeddings"),
    }
    slides = pd.unique(table["slide_id"].astype(str))
    annotations = annotations or {}
    with atomic_dir(out_dir / "heatmaps") as heat_dir, \
            atomic_dir(out_dir / "qupath") as qupath_dir, warnings.catch_warnings():
        # the label step already warned about annotations without a tumour region
        warnings.simplefilter("ignore", AnnotationWarning)
        for slide_id in tqdm(slides, desc=f"{method} heatmaps", disable=not progress):
            frame = read_slide_predictions(pred_dir / f"{slide_id}.parquet")
            plot_heatmap(frame, tissue_dir / f"{slide_id}.npz", heat_dir / f"{slide_id}.png",
                         annotation=annotations.get(slide_id), class_map=class_map,
                         title=f"{method}: slide {slide_id} "
                         f"(fold {int(frame['fold'].iloc[0])})" if len(frame) else None)
            export_geojson(frame, qupath_dir / f"{slide_id}.geojson", None, slide_id)
    written["heatmaps"] = out_dir / "heatmaps"
    written["qupath"] = out_dir / "qupath"
    return written
