"""Labelled pairs and triplets of training patches (SMSE Algorithms 1 and 2).

Both are drawn per anchor, vectorised, with the positives and negatives taken
from a :class:`ClassIndex`; the sampling rules are in docs/dataset.md.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from multimag.dataset.patch_refs import ClassIndex, Patches, reference_columns


def draw_pairs(train: Patches, by_class: ClassIndex, anchors: np.ndarray, per_anchor: int,
               mags: np.ndarray, rng: np.random.Generator, dictionary: pa.Array) -> pa.Table:
    """Same-class and different-class pairs, half and half in expectation."""
    a = np.repeat(anchors, per_anchor)
    same = rng.random(len(a)) < 0.5
    positive = by_class.same_class(a, rng)
    negative = by_class.other_class(a, rng)
    b = np.where(same, positive, negative)
    mag_a = mags[rng.integers(0, len(mags), size=len(a))]
    mag_b = mags[rng.integers(0, len(mags), size=len(a))]
    cols = reference_columns(dictionary, train, a, "", "_a", mag_a)
    cols.update(reference_columns(dictionary, train, b, "", "_b", mag_b))
    cols["same"] = pa.array((train.label[a] == train.label[b]).astype(np.int8), pa.int8())
    return pa.table(cols)


def draw_triplets(train: Patches, by_class: ClassIndex, anchors: np.ndarray, per_anchor: int,
                  mags: np.ndarray, rng: np.random.Generator, dictionary: pa.Array
                  ) -> pa.Table:
    """Anchor, positive (same class) and negative (other class) triplets."""
    a = np.repeat(anchors, per_anchor)
    positive = by_class.same_class(a, rng)
    negative = by_class.other_class(a, rng)
    cols: dict[str, pa.Array] = {}
    for role, rows in (("anchor", a), ("positive", positive), ("negative", negative)):
        mag = mags[rng.integers(0, len(mags), size=len(a))]
        cols.update(reference_columns(dictionary, train, rows, f"{role}_", "", mag))
    return pa.table(cols)
