"""Per-patch labels of one patch store, from its annotation or its slide label.

For every patch and every magnification of the store, the tumour area fraction
inside that magnification's field of view (the footprint of side
``extent_level0`` around the patch centre). The label reads one magnification
(config ``labels.rule_magnification``, default the finest):

* ``1`` tumour when the tumour fraction is at least ``labels.tumour_min``,
* ``0`` normal when it is at most ``labels.normal_max``,
* ``-1`` ambiguous otherwise (kept in the table, left out of training).

A slide without annotation but with a ``slide_label`` (BreakHis style) gives
that label to every patch, with NaN fractions and source ``slide_label``.

Table (one row per patch, in store order), written as Parquet with the
metadata as JSON under the schema metadata key ``b"multimag"``:

``slide_id`` (str), ``patch`` (int64 store index), ``label`` (int8),
``tumour_fraction_{M}x`` (float32, one per magnification, finest first),
``source`` (str: ``geojson``, ``asap_xml``, ``raster`` or ``slide_label``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from multimag import __version__
from multimag.atomic import atomic_path
from multimag.dataset.annotations import load_annotation
from multimag.errors import ConfigError, SamplesError
from multimag.wsi.geometry import MPP_RTOL, footprints, mag_label
from multimag.wsi.store import open_store

__all__ = [
    "LABEL_AMBIGUOUS",
    "LABEL_NORMAL",
    "LABEL_TUMOUR",
    "SLIDE_LABELS",
    "fraction_column",
    "label_store",
    "read_labels",
    "write_labels",
]

LABEL_TUMOUR, LABEL_NORMAL, LABEL_AMBIGUOUS = 1, 0, -1
SLIDE_LABELS = {"tumour": LABEL_TUMOUR, "normal": LABEL_NORMAL}
METADATA_KEY = b"multimag"


def fraction_column(magnification: float) -> str:
    """``20 -> 'tumour_fraction_20x'``."""
    return f"tumour_fraction_{mag_label(magnification)}"


def _labels_config(labels_config: Mapping[str, Any] | None) -> dict:
    from multimag.config import load_config

    cfg = dict(load_config()["labels"])
    cfg.update(labels_config or {})
    tmin, nmax = float(cfg["tumour_min"]), float(cfg["normal_max"])
    if not (0 <= nmax < tmin <= 1):
        raise ConfigError(f"labels.normal_max ({nmax:g}) must be below labels.tumour_min "
                          f"({tmin:g}), both in 0..1",
                          fix="e.g. tumour_min: 0.8, normal_max: 0.0")
    return cfg


def _rule_level(mags: list[float], rule: float | None, store: Path, slide_id: str) -> int:
    if not mags:
        raise ConfigError("the store has no magnification", slide=slide_id, path=store,
                          fix="re-run the tile step")
    if rule is None:
        return int(np.argmax(mags))
    for i, m in enumerate(mags):
        if abs(m - float(rule)) <= MPP_RTOL * float(rule):
            return i
    raise ConfigError(f"labels.rule_magnification {mag_label(rule)} is not one of the "
                      f"store's magnifications ({', '.join(mag_label(m) for m in mags)})",
                      slide=slide_id, path=store,
                      fix="set labels.rule_magnification to one of them, or null (the finest)")


def apply_rule(fraction: np.ndarray, tumour_min: float, normal_max: float) -> np.ndarray:
    """int8 labels from tumour fractions (1 tumour, 0 normal, -1 ambiguous)."""
    f = np.asarray(fraction, np.float64)
    out = np.full(f.shape, LABEL_AMBIGUOUS, np.int8)
    out[f <= normal_max] = LABEL_NORMAL
    out[f >= tumour_min] = LABEL_TUMOUR
    return out


def label_store(store_path: str | Path, *, annotation: str | Path | None = None,
                slide_label: str | None = None,
                labels_config: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """The label table of one store (see the module docstring).

    ``labels_config`` is the config's ``labels`` section (missing keys take the
    schema defaults). A summary (slide, rule, annotation counts, repairs) is in
    ``table.attrs["multimag"]``; :func:`write_labels` stores it with the table.
    """
    store_path = Path(store_path)
    cfg = _labels_config(labels_config)
    group = open_store(store_path)
    attrs = dict(group.attrs)
    slide_id = str(attrs.get("slide_id") or store_path.stem)
    levels = list(attrs.get("levels") or [])
    mags = [float(lv["magnification"]) for lv in levels]
    rule_i = _rule_level(mags, cfg.get("rule_magnification"), store_path, slide_id)
    centers = np.asarray(group["centers"][:], np.int64).reshape(-1, 2)
    n = len(centers)
    if annotation is not None and str(annotation).strip() == "":
        annotation = None
    if slide_label is not None and str(slide_label).strip() == "":
        slide_label = None

    summary: dict[str, Any] = {
        "slide_id": slide_id, "store": str(store_path), "patches": n,
        "magnifications": mags, "rule_magnification": mags[rule_i],
        "tumour_min": float(cfg["tumour_min"]), "normal_max": float(cfg["normal_max"]),
        "class_map": cfg["class_map"], "multimag_version": __version__,
    }
    fractions: dict[str, np.ndarray] = {}
    if annotation is not None:
        size = attrs.get("level_dimensions", [None])[0]
        ann = load_annotation(annotation, cfg["class_map"], slide_id=slide_id,
                              slide_size=tuple(size) if size else None)
        for lv, m in zip(levels, mags, strict=True):
            boxes = footprints(centers, float(lv["extent_level0"]))
            fractions[fraction_column(m)] = ann.fractions(boxes, classes=("tumour",))["tumour"]
        label = apply_rule(fractions[fraction_column(mags[rule_i])], float(cfg["tumour_min"]),
                           float(cfg["normal_max"]))
        source = ann.format
        summary.update(annotation=str(annotation), repaired=ann.repaired,
                       ignored=ann.ignored, unknown_classes=ann.unknown_classes,
                       class_counts=ann.class_counts)
    elif slide_label is not None:
        key = str(slide_label).strip().lower().replace("tumor", "tumour")
        if key not in SLIDE_LABELS:
            raise SamplesError(f"slide_label {slide_label!r} is not tumour or normal",
                               slide=slide_id, path=store_path,
                               fix="use tumour, normal, or leave it empty and give an "
                               "annotation")
        label = np.full(n, SLIDE_LABELS[key], np.int8)
        fractions = {fraction_column(m): np.full(n, np.nan) for m in mags}
        source = "slide_label"
        summary.update(annotation=None, slide_label=key)
    else:
        raise SamplesError("the slide has neither an annotation nor a slide_label, so its "
                           "patches cannot be labelled", slide=slide_id, path=store_path,
                           fix="add an annotation path or a slide_label (tumour/normal) for "
                           "this slide in samples.tsv")

    table = pd.DataFrame({
        "slide_id": pd.Series([slide_id] * n, dtype=str),
        "patch": np.arange(n, dtype=np.int64),
        "label": label.astype(np.int8),
        **{col: np.asarray(v, np.float32) for col, v in fractions.items()},
        "source": pd.Series([source] * n, dtype=str),
    })
    counts = {name: int((label == v).sum()) for name, v in
              (("tumour", LABEL_TUMOUR), ("normal", LABEL_NORMAL),
               ("ambiguous", LABEL_AMBIGUOUS))}
    summary.update(source=source, counts=counts)
    table.attrs["multimag"] = summary
    return table


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return None if not math.isfinite(obj) else float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def write_labels(table: pd.DataFrame, out_path: str | Path,
                 metadata: Mapping[str, Any] | None = None) -> Path:
    """Write ``table`` as Parquet, atomically (temporary sibling, then rename).

    The schema metadata key ``b"multimag"`` holds JSON of ``table.attrs["multimag"]``
    updated with ``metadata``.
    """
    out_path = Path(out_path)
    meta = {**table.attrs.get("multimag", {}), **(metadata or {})}
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    schema_meta = dict(arrow.schema.metadata or {})
    schema_meta[METADATA_KEY] = json.dumps(meta, default=_json_default).encode()
    arrow = arrow.replace_schema_metadata(schema_meta)
    with atomic_path(out_path) as tmp:
        pq.write_table(arrow, tmp)
    return out_path


def read_labels(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """A label table and its ``multimag`` metadata."""
    arrow = pq.read_table(path)
    raw = (arrow.schema.metadata or {}).get(METADATA_KEY)
    table = arrow.to_pandas()
    meta = json.loads(raw) if raw else {}
    table.attrs["multimag"] = meta
    return table, meta
