"""torch datasets over the per-slide patch stores, and their batch samplers.

A dataset is a table of references into the stores (an index of
``multimag.dataset.indices``) plus the *views* one sample is made of; the
loader hands whole batches to ``__getitems__``, which reads them store by store.
Samples come out as uint8 ``(B, 3, H, W)``; ``augment`` works on them on the device.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from multimag.errors import IndexReferenceError
from multimag.wsi.geometry import mag_label
from multimag.wsi.store import PatchReader


@dataclass(frozen=True)
class View:
    """Where one image of a sample comes from: columns of the table, or a fixed
    magnification. ``field`` (a magnification) crops the patch to the field of
    view of that magnification's patch (DSML in ``same_center`` stores)."""

    slide: str = "slide_id"
    patch: str = "patch"
    magnification: str | float = "magnification"
    field: float | None = None


class StoreCache:
    """Readers of the stores in ``stores_dir``, opened on first use."""

    def __init__(self, stores_dir: str | Path) -> None:
        self.stores_dir = Path(stores_dir)
        self._readers: dict[str, PatchReader] = {}

    def __getitem__(self, slide_id: str) -> PatchReader:
        reader = self._readers.get(slide_id)
        if reader is None:
            reader = PatchReader(self.stores_dir / f"{slide_id}.zarr")
            self._readers[slide_id] = reader
        return reader

    def __getstate__(self) -> dict:  # workers open their own readers
        return {"stores_dir": self.stores_dir, "_readers": {}}


def crop_side(side: int, extent: float, field: float) -> int:
    """Side in pixels of the centred crop of a patch of ``side`` px spanning
    ``extent`` level-0 px that spans ``field`` level-0 px."""
    if field >= extent:
        return side
    return max(1, round(side * field / extent))


def resize_patches(pixels: np.ndarray, side: int) -> np.ndarray:
    """(n, h, w, 3) uint8 patches resampled to ``side`` px (antialiased bilinear)."""
    x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float()
    x = torch.nn.functional.interpolate(x, size=(side, side), mode="bilinear",
                                        antialias=True, align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


class PatchDataset(Dataset):
    """Samples of one or more views from a table of store references.

    ``__getitems__`` returns the whole batch: ``{"views": [uint8 (B, 3, H, W)
    per view], "labels": int64 (B, len(label_columns))}``.
    """

    def __init__(self, table: pd.DataFrame, views: Sequence[View], stores_dir: str | Path,
                 label_columns: Sequence[str] = ()) -> None:
        self.table = table.reset_index(drop=True)
        self.views = tuple(views)
        self.label_columns = tuple(label_columns)
        self.stores = StoreCache(stores_dir)
        missing = [c for v in self.views for c in (v.slide, v.patch, v.magnification)
                   if isinstance(c, str) and c not in self.table.columns]
        missing += [c for c in self.label_columns if c not in self.table.columns]
        if missing:
            raise IndexReferenceError(f"the index table has no column(s) {sorted(set(missing))}",
                              fix="rebuild the indices with this version of multimag")
        self._labels = (self.table[list(self.label_columns)].to_numpy(np.int64)
                        if self.label_columns else np.zeros((len(self.table), 0), np.int64))
        self._check_stores()

    def _check_stores(self) -> None:
        slides = set()
        for view in self.views:
            slides.update(self.table[view.slide].unique())
        absent = sorted(s for s in slides
                        if not (self.stores.stores_dir / f"{s}.zarr").exists())
        if absent:
            raise IndexReferenceError(f"the index references {len(absent)} missing store(s): "
                              f"{', '.join(absent[:5])}", slide=absent[0],
                              path=self.stores.stores_dir / f"{absent[0]}.zarr",
                              fix="run the tile step for these slides, or rebuild the "
                              "indices from the current samples")
        for view in self.views:  # every referenced patch exists (before any training)
            span = self.table.groupby(view.slide, sort=True)[view.patch].agg(["min", "max"])
            for slide, (low, high) in span.iterrows():
                reader = self.stores[slide]
                if low < 0 or high >= reader.n:
                    bad = high if high >= reader.n else low
                    raise IndexReferenceError(f"the index references patch {bad} of a store with "
                                      f"{reader.n} patches", slide=slide,
                                      path=reader.path, fix="rebuild the indices from the "
                                      "current stores and labels")

    def __len__(self) -> int:
        return len(self.table)

    def _magnifications(self, view: View, rows: np.ndarray) -> np.ndarray:
        if isinstance(view.magnification, str):
            return self.table[view.magnification].to_numpy(np.float64)[rows]
        return np.full(len(rows), float(view.magnification))

    def _read_view(self, view: View, rows: np.ndarray) -> torch.Tensor:
        slides = self.table[view.slide].to_numpy()[rows]
        patches = self.table[view.patch].to_numpy(np.int64)[rows]
        mags = self._magnifications(view, rows)
        out: np.ndarray | None = None
        for slide, mag in sorted(set(zip(slides, mags, strict=True))):
            sel = np.flatnonzero((slides == slide) & (mags == mag))
            reader = self.stores[slide]
            array = f"mag_{mag_label(mag)}"
            pixels = reader.read(array, patches[sel])
            if view.field is not None:
                side = crop_side(pixels.shape[1], reader.extent(array),
                                 reader.extent(f"mag_{mag_label(view.field)}"))
                start = (pixels.shape[1] - side) // 2
                pixels = pixels[:, start:start + side, start:start + side]
            elif pixels.shape[1] != reader.attrs["patch_px"]:
                # same_field stores: coarser magnifications have fewer pixels; one view
                # mixing magnifications brings every patch to the store's patch_px
                pixels = resize_patches(pixels, int(reader.attrs["patch_px"]))
            if out is None:
                out = np.empty((len(rows), *pixels.shape[1:]), np.uint8)
            elif out.shape[1:] != pixels.shape[1:]:
                raise IndexReferenceError(f"patches of one view differ in size ({out.shape[1:]} vs "
                                  f"{pixels.shape[1:]} at {mag_label(mag)})", slide=slide,
                                  path=reader.path, fix="tile every slide with the same "
                                  "patch_px, mode and magnifications")
            out[sel] = pixels
        assert out is not None
        return torch.from_numpy(out).permute(0, 3, 1, 2)

    def __getitems__(self, rows: Sequence[int]) -> dict:
        rows = np.asarray(rows, dtype=np.int64)
        return {"views": [self._read_view(v, rows) for v in self.views],
                "labels": torch.from_numpy(self._labels[rows])}

    def __getitem__(self, row: int) -> dict:
        batch = self.__getitems__([row])
        return {"views": [v[0] for v in batch["views"]], "labels": batch["labels"][0]}


def _pass_through(batch: dict) -> dict:
    return batch


class EpochSampler(Sampler[list[int]]):
    """Batches of row indices: a fresh seeded permutation per epoch (so a resumed
    run sees the same order as an uninterrupted one), split across ranks.

    With ``classes`` (one value per row), each class fills an equal share of the
    epoch: its rows in a fresh permutation, repeated if it has too few.
    """

    def __init__(self, n: int, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False, rank: int = 0, world: int = 1,
                 max_samples: int | None = None, classes: np.ndarray | None = None) -> None:
        self.n, self.batch_size, self.shuffle = n, batch_size, shuffle
        self.seed, self.drop_last, self.rank, self.world = seed, drop_last, rank, world
        self.max_samples = max_samples
        self.classes = None if classes is None else np.asarray(classes)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> np.ndarray:
        if not self.shuffle:
            order = np.arange(self.n)
        elif self.classes is not None:
            order = self._balanced(np.random.default_rng([self.seed, self.epoch]))
        else:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        if self.max_samples:
            order = order[:self.max_samples]
        return order[self.rank::self.world]

    def _balanced(self, rng: np.random.Generator) -> np.ndarray:
        total = self.max_samples or self.n
        members = [np.flatnonzero(self.classes == c) for c in np.unique(self.classes)]
        share = math.ceil(total / len(members))
        parts = [np.concatenate([rng.permutation(rows)
                                 for _ in range(math.ceil(share / len(rows)))])[:share]
                 for rows in members]
        return rng.permutation(np.concatenate(parts))[:total]

    def __iter__(self) -> Iterator[list[int]]:
        order = self._order()
        stop = len(order) - len(order) % self.batch_size if self.drop_last else len(order)
        for start in range(0, stop, self.batch_size):
            yield order[start:start + self.batch_size].tolist()

    def __len__(self) -> int:
        n = len(self._order())
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)


class GroupSampler(EpochSampler):
    """Fixed batches (e.g. class-balanced constellation batches) in a seeded
    order per epoch."""

    def __init__(self, groups: list[np.ndarray], seed: int = 0, rank: int = 0,
                 world: int = 1, max_samples: int | None = None) -> None:
        super().__init__(len(groups), 1, seed=seed, rank=rank, world=world,
                         max_samples=max_samples)
        self.groups = groups

    def __iter__(self):
        for (g,) in super().__iter__():
            yield self.groups[g].tolist()


def make_loader(dataset: PatchDataset, sampler: EpochSampler, workers: int = 0
                ) -> DataLoader:
    """A DataLoader that reads whole batches at once (``__getitems__``)."""
    return DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                      collate_fn=_pass_through, persistent_workers=workers > 0,
                      prefetch_factor=4 if workers > 0 else None, pin_memory=False)


# -- the sample tables of each sampling -------------------------------------------

def single_patches(table: pd.DataFrame, magnifications: Sequence[float]) -> pd.DataFrame:
    """Every patch of ``table`` at every magnification (one row each)."""
    mags = pd.DataFrame({"magnification": [float(m) for m in magnifications]})
    return table.merge(mags, how="cross")


def single_view() -> list[View]:
    return [View()]


def pair_views() -> list[View]:
    return [View(f"slide_id_{s}", f"patch_{s}", f"magnification_{s}") for s in "ab"]


def triplet_views() -> list[View]:
    return [View(f"{r}_slide_id", f"{r}_patch", f"{r}_magnification")
            for r in ("anchor", "positive", "negative")]


def magnification_pair_views() -> list[View]:
    return [View(magnification=f"magnification_{s}") for s in "ab"]


def field_views(magnifications: Sequence[float]) -> list[View]:
    """One view per magnification, each cropped to the field of the finest one."""
    finest = max(float(m) for m in magnifications)
    return [View(magnification=float(m), field=finest) for m in magnifications]
