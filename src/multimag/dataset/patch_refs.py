"""Patch references read from the per-slide label tables, grouped by class.

The index builder draws every table from these columnar (slide, patch, label)
references and writes them back as reference columns; no pixels are read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from multimag.errors import LabelTableError

LABEL_COLUMNS = ("slide_id", "patch", "label")
LABEL_NAMES = {-1: "ambiguous", 0: "normal", 1: "tumour"}
_FIX_RELABEL = "re-run the label rule for this slide"


@dataclass(frozen=True)
class Patches:
    """Columnar patch references, sorted by (slide, patch)."""

    slide: np.ndarray  # int32 code into the sorted slide-id dictionary
    patch: np.ndarray  # int64
    label: np.ndarray  # int8

    def __len__(self) -> int:
        return len(self.patch)

    def take(self, rows: np.ndarray) -> Patches:
        return Patches(self.slide[rows], self.patch[rows], self.label[rows])


class ClassIndex:
    """Rows grouped by class, for vectorised draws within / across classes."""

    def __init__(self, labels: np.ndarray) -> None:
        self.classes, self.ci = np.unique(labels, return_inverse=True)
        self.order = np.argsort(self.ci, kind="stable")
        self.counts = np.bincount(self.ci, minlength=len(self.classes))
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]])
        self.rank = np.empty(len(labels), dtype=np.int64)
        self.rank[self.order] = np.arange(len(labels)) - self.starts[self.ci[self.order]]

    def members(self, k: int) -> np.ndarray:
        return self.order[self.starts[k]:self.starts[k] + self.counts[k]]

    def same_class(self, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """For each row, a uniformly drawn OTHER row of its class (needs 2 per class)."""
        k = self.ci[rows]
        j = rng.integers(0, self.counts[k] - 1)
        j += j >= self.rank[rows]
        return self.order[self.starts[k] + j]

    def other_class(self, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """For each row, a uniformly drawn other class, then a uniform row of it."""
        k = self.ci[rows]
        other = rng.integers(0, len(self.classes) - 1, size=len(rows))
        other += other >= k
        j = rng.integers(0, self.counts[other])
        return self.order[self.starts[other] + j]


def label_path(labels_dir: Path, slide_id: str) -> Path:
    return labels_dir / f"{slide_id}.parquet"


def require_label_files(labels_dir: Path, slide_ids: np.ndarray) -> None:
    """Refuse to start when the label table of any slide is missing."""
    missing = [s for s in slide_ids if not label_path(labels_dir, s).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more slide(s))" if len(missing) > 1 else ""
        raise LabelTableError(f"the label table of a slide in the splits is missing{more}",
                              slide=missing[0], path=label_path(labels_dir, missing[0]),
                              fix="run the label rule (multimag label) for every slide of "
                              "the splits, or re-run the split rule without that slide")


def _read_label_table(path: Path, slide_id: str) -> tuple[np.ndarray, np.ndarray]:
    """One slide's checked ``patch`` (int64) and ``label`` (int8), sorted by patch."""
    try:
        parquet = pq.ParquetFile(path)
        missing = [c for c in LABEL_COLUMNS if c not in parquet.schema_arrow.names]
        if missing:
            raise LabelTableError(f"missing column(s) {', '.join(missing)}", slide=slide_id,
                                  path=path, fix=_FIX_RELABEL)
        table = parquet.read(columns=list(LABEL_COLUMNS))
    except (pa.ArrowException, OSError) as exc:
        raise LabelTableError(f"not a readable parquet label table ({exc})", slide=slide_id,
                              path=path, fix=_FIX_RELABEL) from exc
    for col in ("patch", "label"):
        if table.column(col).null_count:
            raise LabelTableError(f"column {col} has empty values", slide=slide_id, path=path,
                                  fix=_FIX_RELABEL)
    if table.num_rows and not pc.all(pc.fill_null(
            pc.equal(table.column("slide_id").cast(pa.string()), slide_id), False)).as_py():
        raise LabelTableError("column slide_id does not match the file name", slide=slide_id,
                              path=path, fix=f"name the file after its slide ({slide_id})")
    patch = table.column("patch").to_numpy().astype(np.int64)
    label = table.column("label").to_numpy()
    if not np.isin(label, (-1, 0, 1)).all():
        raise LabelTableError("labels must be 1 (tumour), 0 (normal) or -1 (ambiguous)",
                              slide=slide_id, path=path, fix="re-run the label rule")
    order = np.argsort(patch, kind="stable")
    patch, label = patch[order], label[order].astype(np.int8)
    if len(patch) > 1 and (np.diff(patch) == 0).any():
        raise LabelTableError("a patch is labelled twice", slide=slide_id, path=path,
                              fix="one row per patch; re-run the label rule")
    return patch, label


def read_patches(labels_dir: Path, slide_ids: np.ndarray, codes: np.ndarray) -> Patches:
    """Every patch of the slides ``slide_ids[codes]`` (codes ascending), with its label."""
    slides, patches, labels = [], [], []
    for code in codes:
        slide_id = str(slide_ids[code])
        patch, label = _read_label_table(label_path(labels_dir, slide_id), slide_id)
        slides.append(np.full(len(patch), code, dtype=np.int32))
        patches.append(patch)
        labels.append(label)
    if not slides:
        return Patches(np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, np.int8))
    return Patches(np.concatenate(slides), np.concatenate(patches), np.concatenate(labels))


def reference_columns(dictionary: pa.Array, patches: Patches, rows: np.ndarray | None,
                      prefix: str, suffix: str, magnification: np.ndarray | None,
                      label: bool = True) -> dict[str, pa.Array]:
    """Columns ``{prefix}slide_id{suffix}``, patch, [magnification], [label] of ``rows``."""
    if rows is not None:
        patches = patches.take(rows)
    cols = {f"{prefix}slide_id{suffix}": dictionary.take(pa.array(patches.slide, pa.int32())),
            f"{prefix}patch{suffix}": pa.array(patches.patch, pa.int64())}
    if magnification is not None:
        cols[f"{prefix}magnification{suffix}"] = pa.array(magnification, pa.float64())
    if label:
        cols[f"{prefix}label{suffix}"] = pa.array(patches.label, pa.int8())
    return cols
