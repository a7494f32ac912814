"""Class-balanced batches of training patches for constellation / N-pair losses.

Every batch holds the same number of patches of each class, each patch at most
once; the filling rule is in docs/dataset.md.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

from multimag.dataset.patch_refs import LABEL_NAMES, ClassIndex, Patches, reference_columns
from multimag.errors import ConfigError, IndexBuildError


def _check_batch_config(by_class: ClassIndex, n_classes: int, per_class: int,
                        fold: int) -> None:
    if n_classes != len(by_class.classes):
        raise ConfigError(f"index.batch.classes = {n_classes}, but the training labels of "
                          f"fold {fold} have {len(by_class.classes)} classes",
                          fix=f"set index.batch.classes to {len(by_class.classes)}")
    smallest = int(by_class.counts.min())
    if smallest < per_class:
        name = LABEL_NAMES.get(int(by_class.classes[np.argmin(by_class.counts)]), "a class")
        raise IndexBuildError(f"fold {fold}: only {smallest} labelled {name} training "
                              f"patch(es), fewer than index.batch.samples_per_class = "
                              f"{per_class}, so a balanced batch would repeat a patch",
                              fix=f"set index.batch.samples_per_class to at most {smallest}")


def draw_batches(train: Patches, by_class: ClassIndex, batch_config: dict, mags: np.ndarray,
                 rng: np.random.Generator, dictionary: pa.Array, fold: int
                 ) -> tuple[pa.Table, int]:
    """The batch table (class-major within a batch) and the number of batches."""
    n_classes = int(batch_config["classes"])
    per_class = int(batch_config["samples_per_class"])
    _check_batch_config(by_class, n_classes, per_class, fold)
    n_batches = max(1, math.ceil(int(by_class.counts.min()) / per_class))
    slots = n_batches * per_class
    plan = np.empty((n_batches, n_classes, per_class), dtype=np.int64)
    for k in range(n_classes):
        perm = rng.permutation(by_class.members(k))
        if len(perm) >= slots:
            chosen = perm[:slots]
        else:  # fill the last batch from the earlier batches' patches of this class
            earlier = (n_batches - 1) * per_class
            fill = rng.choice(perm[:earlier], size=slots - len(perm), replace=False)
            chosen = np.concatenate([perm, fill])
        plan[:, k, :] = chosen.reshape(n_batches, per_class)
    rows = plan.reshape(-1)
    batch = np.repeat(np.arange(n_batches, dtype=np.int64), n_classes * per_class)
    mag = mags[rng.integers(0, len(mags), size=len(rows))]
    cols = {"batch": pa.array(batch, pa.int64())}
    cols.update(reference_columns(dictionary, train, rows, "", "", mag))
    return pa.table(cols), n_batches
