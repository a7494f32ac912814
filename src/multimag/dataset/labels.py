"""Per-patch labels of one patch store, from its annotation or its slide label.

The tumour area fraction of every patch's field of view at every magnification
of the store, and a label (tumour, normal or ambiguous) from the fraction at one
magnification; a slide label instead labels every patch alike. The label rule
and the table's schema are in docs/dataset.md.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from multimag import __version__
from multimag.dataset.annotations import load_annotation
from multimag.errors import ConfigError, SamplesError
from multimag.tables import METADATA_KEY, read_metadata, write_table
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


def fraction_column(magnification: float) -> str:
    """``20 -> 'tumour_fraction_20x'``."""
    return f"tumour_fraction_{mag_label(magnification)}"


def _labels_config(labels_config: Mapping[str, Any] | None) -> dict:
    from multimag.config import load_config

    config = dict(load_config()["labels"])
    config.update(labels_config or {})
    tumour_min, normal_max = float(config["tumour_min"]), float(config["normal_max"])
    if not (0 <= normal_max < tumour_min <= 1):
        raise ConfigError(f"labels.normal_max ({normal_max:g}) must be below "
                          f"labels.tumour_min ({tumour_min:g}), both in 0..1",
                          fix="e.g. tumour_min: 0.8, normal_max: 0.0")
    return config


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


@dataclass(frozen=True)
class _StoreLayout:
    """What labelling needs from a patch store: its patches and magnifications."""

    slide_id: str
    levels: list[dict]
    magnifications: list[float]
    centers: np.ndarray  # (n, 2) int64 level-0 patch centres
    level_dimensions: list

    @property
    def level0_size(self) -> tuple[int, int] | None:
        size = self.level_dimensions[0]
        return tuple(size) if size else None


def _read_layout(store_path: Path, rule_magnification: float | None
                 ) -> tuple[_StoreLayout, int]:
    """The store's layout and the index of the level the label rule reads."""
    group = open_store(store_path)
    attrs = dict(group.attrs)
    slide_id = str(attrs.get("slide_id") or store_path.stem)
    levels = list(attrs.get("levels") or [])
    mags = [float(lv["magnification"]) for lv in levels]
    rule_level = _rule_level(mags, rule_magnification, store_path, slide_id)
    centers = np.asarray(group["centers"][:], np.int64).reshape(-1, 2)
    dimensions = list(attrs.get("level_dimensions", [None]))
    return _StoreLayout(slide_id, levels, mags, centers, dimensions), rule_level


def _annotation_labels(layout: _StoreLayout, annotation: str | Path, config: dict,
                       rule_level: int) -> tuple[np.ndarray, dict, str, dict]:
    """Labels, tumour fractions per column, source and summary entries of an annotation."""
    ann = load_annotation(annotation, config["class_map"], slide_id=layout.slide_id,
                          slide_size=layout.level0_size)
    fractions: dict[str, np.ndarray] = {}
    for lv, m in zip(layout.levels, layout.magnifications, strict=True):
        boxes = footprints(layout.centers, float(lv["extent_level0"]))
        fractions[fraction_column(m)] = ann.fractions(boxes, classes=("tumour",))["tumour"]
    rule_column = fraction_column(layout.magnifications[rule_level])
    label = apply_rule(fractions[rule_column], float(config["tumour_min"]),
                       float(config["normal_max"]))
    summary = {"annotation": str(annotation), "repaired": ann.repaired,
               "ignored": ann.ignored, "unknown_classes": ann.unknown_classes,
               "class_counts": ann.class_counts}
    return label, fractions, ann.format, summary


def _slide_label_labels(layout: _StoreLayout, slide_label: str, store_path: Path
                        ) -> tuple[np.ndarray, dict, str, dict]:
    """Every patch labelled with the slide label, and NaN fractions."""
    key = str(slide_label).strip().lower().replace("tumor", "tumour")
    if key not in SLIDE_LABELS:
        raise SamplesError(f"slide_label {slide_label!r} is not tumour or normal",
                           slide=layout.slide_id, path=store_path,
                           fix="use tumour, normal, or leave it empty and give an "
                           "annotation")
    n = len(layout.centers)
    label = np.full(n, SLIDE_LABELS[key], np.int8)
    fractions = {fraction_column(m): np.full(n, np.nan) for m in layout.magnifications}
    return label, fractions, "slide_label", {"annotation": None, "slide_label": key}


def _blank_to_none(value: Any) -> Any:
    return None if value is not None and str(value).strip() == "" else value


def label_store(store_path: str | Path, *, annotation: str | Path | None = None,
                slide_label: str | None = None,
                labels_config: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """The label table of one store, from its annotation, else its slide label.

    ``labels_config`` is the config's ``labels`` section (missing keys take the
    schema defaults). A summary (slide, rule, annotation counts, repairs) is in
    ``table.attrs["multimag"]``; :func:`write_labels` stores it with the table.
    """
    store_path = Path(store_path)
    config = _labels_config(labels_config)
    layout, rule_level = _read_layout(store_path, config.get("rule_magnification"))
    annotation, slide_label = _blank_to_none(annotation), _blank_to_none(slide_label)
    n = len(layout.centers)
    summary: dict[str, Any] = {
        "slide_id": layout.slide_id, "store": str(store_path), "patches": n,
        "magnifications": layout.magnifications,
        "rule_magnification": layout.magnifications[rule_level],
        "tumour_min": float(config["tumour_min"]), "normal_max": float(config["normal_max"]),
        "class_map": config["class_map"], "multimag_version": __version__,
    }
    if annotation is not None:
        label, fractions, source, found = _annotation_labels(layout, annotation, config,
                                                             rule_level)
    elif slide_label is not None:
        label, fractions, source, found = _slide_label_labels(layout, slide_label, store_path)
    else:
        raise SamplesError("the slide has neither an annotation nor a slide_label, so its "
                           "patches cannot be labelled", slide=layout.slide_id,
                           path=store_path, fix="add an annotation path or a slide_label "
                           "(tumour/normal) for this slide in samples.tsv")
    table = pd.DataFrame({
        "slide_id": pd.Series([layout.slide_id] * n, dtype=str),
        "patch": np.arange(n, dtype=np.int64),
        "label": label.astype(np.int8),
        **{col: np.asarray(v, np.float32) for col, v in fractions.items()},
        "source": pd.Series([source] * n, dtype=str),
    })
    counts = {name: int((label == v).sum()) for name, v in
              (("tumour", LABEL_TUMOUR), ("normal", LABEL_NORMAL),
               ("ambiguous", LABEL_AMBIGUOUS))}
    table.attrs["multimag"] = {**summary, **found, "source": source, "counts": counts}
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
    meta = {**table.attrs.get("multimag", {}), **(metadata or {})}
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    schema_meta = dict(arrow.schema.metadata or {})
    schema_meta[METADATA_KEY] = json.dumps(meta, default=_json_default).encode()
    return write_table(arrow.replace_schema_metadata(schema_meta), out_path)


def read_labels(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """A label table and its ``multimag`` metadata."""
    arrow = pq.read_table(path)
    table = arrow.to_pandas()
    meta = read_metadata(arrow.schema) or {}
    table.attrs["multimag"] = meta
    return table, meta
