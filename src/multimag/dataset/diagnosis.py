"""The diagnosis of each slide and patient: the truth slide-level verdicts are judged by.

A pathologist's ``slide_label`` where samples.tsv gives one, else what the
slide's annotation holds; patch labels never decide it. The rule is in
docs/dataset.md (Folds, "The diagnosis").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from multimag.dataset.annotation_formats import read_mask, sniff_format
from multimag.dataset.annotations import load_annotation
from multimag.dataset.class_map import ClassMap
from multimag.errors import AnnotationError, SamplesError

TUMOUR, NORMAL, UNKNOWN = "tumour", "normal", ""
DIAGNOSES = (TUMOUR, NORMAL, UNKNOWN)
SOURCES = ("slide_label", "annotation", "none")


def annotation_has_tumour(path: str | Path, class_map: Mapping[str, Sequence[Any]], *,
                          slide_id: str | None = None) -> bool:
    """Whether the annotation holds a tumour region (after ``exclude`` is cut out)."""
    path = Path(path)
    if sniff_format(path, slide_id=slide_id) == "raster":
        def error(what: str, fix: str) -> AnnotationError:
            return AnnotationError(what, slide=slide_id, path=path, fix=fix)

        values = ClassMap.parse(class_map).values
        tumour = [v for v, cls in values.items() if cls == TUMOUR]
        return bool(tumour) and bool(np.isin(read_mask(path, error), tumour).any())
    region = load_annotation(path, class_map, slide_id=slide_id).geometries.get(TUMOUR)
    return region is not None and not region.is_empty and region.area > 0


def _slide_label(value: Any, slide_id: str, source: str) -> str:
    key = "" if value is None or pd.isna(value) else str(value).strip().lower()
    key = key.replace("tumor", TUMOUR)
    if key not in DIAGNOSES:
        raise SamplesError(f"slide_label {value!r} is not tumour, normal or empty",
                           slide=slide_id, path=source, fix="use tumour, normal, or leave "
                           "it empty")
    return key


def slide_diagnoses(samples: pd.DataFrame,
                    class_map: Mapping[str, Sequence[Any]] | None = None, *,
                    source: str | Path = "samples.tsv") -> pd.DataFrame:
    """``diagnosis`` and ``diagnosis_source`` of every row of ``samples`` (same index).

    ``samples`` holds ``slide_id`` and optionally ``slide_label`` and ``annotation``;
    ``class_map`` is the config's ``labels.class_map`` (default: the schema's).
    """
    rows = []
    for _, row in samples.iterrows():
        slide_id = str(row["slide_id"])
        label = _slide_label(row.get("slide_label"), slide_id, str(source))
        annotation = row.get("annotation")
        has_annotation = annotation is not None and not pd.isna(annotation) \
            and str(annotation).strip() != ""
        if label:
            rows.append((label, "slide_label"))
        elif has_annotation:
            if class_map is None:
                from multimag.config import load_config

                class_map = load_config()["labels"]["class_map"]
            tumour = annotation_has_tumour(str(annotation).strip(), class_map,
                                           slide_id=slide_id)
            rows.append((TUMOUR if tumour else NORMAL, "annotation"))
        else:
            rows.append((UNKNOWN, "none"))
    return pd.DataFrame(rows, columns=["diagnosis", "diagnosis_source"], index=samples.index,
                        dtype=str)


def patient_diagnoses(patient_ids: Sequence[str] | pd.Series,
                      diagnoses: Sequence[str] | pd.Series) -> pd.Series:
    """Per patient (sorted index): ``tumour`` when any slide is, ``normal`` when its
    diagnosed slides all are, ``""`` when none is diagnosed."""
    frame = pd.DataFrame({"patient_id": np.asarray(patient_ids, dtype=object).astype(str),
                          "diagnosis": np.asarray(diagnoses, dtype=object).astype(str)})
    grouped = frame.groupby("patient_id", sort=True)["diagnosis"]
    any_tumour = grouped.agg(lambda s: bool((s == TUMOUR).any()))
    any_normal = grouped.agg(lambda s: bool((s == NORMAL).any()))
    out = pd.Series(UNKNOWN, index=any_tumour.index, name="diagnosis", dtype=object)
    out[any_normal] = NORMAL
    out[any_tumour] = TUMOUR
    return out
