"""One patch at two magnifications: cross-magnification pairs and MPCS pairs.

Cross-magnification pairs are labelled (anchors of the labelled training
patches); the MPCS pairs (fixed, ordered, random strategies) need no label and
use every training patch. The strategies are specified in docs/dataset.md.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from multimag.dataset.patch_refs import Patches, reference_columns
from multimag.errors import ConfigError

MPCS_STRATEGIES = ("fixed", "ordered", "random")


def fixed_pair(pair: list, mags: np.ndarray) -> tuple[float, float]:
    """``index.mpcs.fixed_pair`` as two of the configured magnifications."""
    out = []
    for m in pair:
        hit = np.flatnonzero(np.isclose(mags, float(m)))
        if not len(hit):
            raise ConfigError(f"index.mpcs.fixed_pair {list(pair)} names {m}x, which is not "
                              f"among magnifications {mags.tolist()}",
                              fix="choose two of the configured magnifications")
        out.append(float(mags[hit[0]]))
    if out[0] == out[1]:
        raise ConfigError(f"index.mpcs.fixed_pair {list(pair)} names {out[0]:g}x twice: a "
                          "positive pair must show one location at two magnifications",
                          fix="choose two different magnifications")
    return out[0], out[1]


def _two_different(n: int, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices (i, j), i != j, uniform over the k*(k-1) ordered pairs."""
    i = rng.integers(0, k, size=n)
    j = rng.integers(0, k - 1, size=n)
    j += j >= i
    return i, j


def _mag_pair_table(dictionary: pa.Array, patches: Patches, rows: np.ndarray,
                    mag_a: np.ndarray, mag_b: np.ndarray, label: bool) -> pa.Table:
    cols = reference_columns(dictionary, patches, rows, "", "", None, label=False)
    cols["magnification_a"] = pa.array(mag_a, pa.float64())
    cols["magnification_b"] = pa.array(mag_b, pa.float64())
    if label:
        cols["label"] = pa.array(patches.label[rows], pa.int8())
    return pa.table(cols)


def draw_cross_mag_pairs(train: Patches, anchors: np.ndarray, per_anchor: int,
                         mags: np.ndarray, rng: np.random.Generator, dictionary: pa.Array
                         ) -> pa.Table:
    """Each anchor at two different magnifications, uniform over ordered pairs."""
    if len(mags) < 2:  # no second magnification: nothing to pair
        return _mag_pair_table(dictionary, train, anchors[:0], np.zeros(0), np.zeros(0),
                               label=True)
    rows = np.repeat(anchors, per_anchor)
    i, j = _two_different(len(rows), len(mags), rng)
    return _mag_pair_table(dictionary, train, rows, mags[i], mags[j], label=True)


def draw_mpcs_pairs(patches: Patches, per_patch: int, strategy: str, mags: np.ndarray,
                    rng: np.random.Generator | None, dictionary: pa.Array,
                    fixed: tuple[float, float] | None = None) -> pa.Table:
    """``per_patch`` magnification pairs of every patch by one MPCS strategy."""
    rows = np.repeat(np.arange(len(patches)), per_patch)
    n = len(rows)
    if strategy == "fixed":
        mag_a, mag_b = np.full(n, fixed[0]), np.full(n, fixed[1])
    elif len(mags) < 2:  # no second magnification: nothing to pair
        rows = rows[:0]
        mag_a = mag_b = np.zeros(0)
    elif strategy == "ordered":
        # look-up table: each magnification that has a next finer one -> that one
        next_finer = dict(zip(mags[:-1].tolist(), mags[1:].tolist(), strict=True))
        first = np.array(list(next_finer), dtype=np.float64)
        second = np.array([next_finer[m] for m in first], dtype=np.float64)
        pick = rng.integers(0, len(first), size=n)  # uniform over the n-1 ordered pairs
        mag_a, mag_b = first[pick], second[pick]
    elif strategy == "random":
        i, j = _two_different(n, len(mags), rng)
        mag_a, mag_b = mags[i], mags[j]
    else:  # pragma: no cover - internal
        raise ValueError(strategy)
    return _mag_pair_table(dictionary, patches, rows, mag_a, mag_b, label=False)
