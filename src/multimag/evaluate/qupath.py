"""Patch predictions as QuPath tiles (GeoJSON).

:func:`export_geojson` writes one slide's fused patch predictions as a GeoJSON
FeatureCollection that QuPath imports (File > Import objects): one square tile per
patch, classified by its prediction, with ``prob_tumour`` as a measurement.
``docs/evaluate.md`` has the format.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from multimag.atomic import atomic_path
from multimag.errors import PlotError
from multimag.evaluate.classes import CLASS_COLORS
from multimag.learn.predictions import FUSED, PATCH_COLUMNS, finest_extent, fused_rows

__all__ = ["QUPATH_CLASSES", "export_geojson", "tile_features"]

#: prediction -> (QuPath class name, colour)
QUPATH_CLASSES: dict[int, tuple[str, list[int]]] = {
    1: ("Tumor", list(CLASS_COLORS[1])),
    0: ("Normal", list(CLASS_COLORS[0])),
}
_NAMESPACE = uuid.UUID("6f1c7d2e-4b1a-5c55-9a57-6d756c74696d")  # fixed: ids are reproducible


def tile_features(pred_df: pd.DataFrame, extent: float, slide_id: str) -> list[dict[str, Any]]:
    """GeoJSON Features (QuPath tiles) of the fused rows of one slide's predictions."""
    missing = [c for c in (*PATCH_COLUMNS, "pred") if c not in pred_df.columns]
    if missing:
        raise PlotError(f"the prediction table lacks columns {missing}", slide=slide_id,
                        fix="pass a table in the predictions schema (read_slide_predictions)")
    if "slide_id" in pred_df.columns:
        others = sorted(set(map(str, pred_df["slide_id"].unique())) - {slide_id})
        if others:
            raise PlotError(f"the prediction table holds other slides {others[:5]}",
                            slide=slide_id, fix="export one slide's predictions at a time")
    rows = fused_rows(pred_df)
    patch = rows["patch"].to_numpy(np.int64)
    if len(np.unique(patch)) != len(patch):
        raise PlotError("a patch has more than one 'fused' row", slide=slide_id,
                        fix="re-run `multimag predict` for this slide")
    x = rows["x"].to_numpy(np.float64)
    y = rows["y"].to_numpy(np.float64)
    prob = rows["prob_tumour"].to_numpy(np.float64)
    pred = rows["pred"].to_numpy(np.int64)
    label = rows["label"].to_numpy(np.int64)
    if not np.isfinite(prob).all():
        raise PlotError(f"{int((~np.isfinite(prob)).sum())} patches have a non-finite "
                        "prob_tumour", slide=slide_id,
                        fix="re-run `multimag predict` for this slide")
    half = float(extent) / 2
    features = []
    for k in range(len(rows)):
        x0, x1, y0, y1 = x[k] - half, x[k] + half, y[k] - half, y[k] + half
        name, color = QUPATH_CLASSES[1 if pred[k] == 1 else 0]
        features.append({
            "type": "Feature",
            "id": str(uuid.uuid5(_NAMESPACE, f"{slide_id}/{int(patch[k])}")),
            "geometry": {"type": "Polygon",
                         "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]},
            "properties": {
                "objectType": "tile",
                "name": f"patch {int(patch[k])}",
                "classification": {"name": name, "color": list(color)},
                "measurements": {"prob_tumour": float(prob[k]), "label": int(label[k]),
                                 "patch": int(patch[k])},
            },
        })
    return features


def export_geojson(pred_df: pd.DataFrame, path: str | Path,
                   extent_level0: float | Mapping[str, float] | None, slide_id: str) -> Path:
    """Write one slide's fused predictions as a QuPath-importable GeoJSON
    FeatureCollection of square tiles (``docs/evaluate.md``), atomically.

    ``extent_level0``: the finest magnification's patch side in level-0 px, or the
    predictions metadata mapping ``{"20x": 128.0, ...}`` (the largest magnification is
    used), or None to take it from ``pred_df.attrs`` (``read_slide_predictions``).
    """
    extent = finest_extent(extent_level0, pred_df)
    meta = pred_df.attrs.get("multimag", {})
    doc = {
        "type": "FeatureCollection",
        "multimag": {"slide_id": slide_id, "extent_level0": extent,
                     "method": meta.get("method"), "fold": meta.get("fold"),
                     "view": FUSED},
        "features": tile_features(pred_df, extent, slide_id),
    }
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, allow_nan=False, separators=(",", ":"), default=_json_default)
    return path


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating) and math.isfinite(obj):
        return float(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")
