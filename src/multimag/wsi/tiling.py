"""Cut co-registered patches at every magnification and stream them into a store.

Order of work: the kept grid centres are visited in grid order (stripes of grid
columns, rows within a stripe, see :func:`geometry.stripe_order`). Each run of
a row is cut at every magnification as one band of the level, reduced by an
integer factor where needed; the patches are views of the band. With a tiled
reader the bands are filled as each source tile is decoded, once, into a reused
buffer (:class:`~multimag.wsi.bands.StripeBands`); otherwise they are read as level
regions. A patch whose footprint does not fall on its magnification's integer
grid (a 0.499 um/px slide, a non-box filter, upsampling) is resampled from its
own level region with PIL's anti-aliased filter, on the level's own pixel grid.

Parallelism: the patches are split into one contiguous block of whole shards
per worker process (:func:`plan_blocks`); each process reopens the slide, cuts
its share, and hands every shard's worth of patch sets to a sink (the store's
:class:`~multimag.wsi.store.ShardWriter`, which encodes and writes the shard). Two
blocks make a segment that their two workers cut from both ends until they meet
(:class:`ChunkClaims`), so neither waits for the other. Processes, not threads: a
process shares nothing with the others (no hand-offs, no GIL) and encodes and
writes its own shards; on the benchmark slide the thread tiler cut 2,600-3,100
patch sets/s on 2 cores, the process tiler 3,400-3,800 (benchmarks/README.md).

Tiles on the edge between two stripes are read by both, a whole stripe apart:
they are kept in the reader's cache for the second (:class:`TileUse`), so each
source tile is decoded once per worker.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import multiprocessing
import os
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from multimag.errors import MultimagError
from multimag.wsi.bands import StripeBands
from multimag.wsi.geometry import (
    MagPlan,
    Resolution,
    footprints,
    grid_centers,
    plan_magnifications,
    stripe_order,
    tiles_under,
)
from multimag.wsi.slide import Slide, SlideSource
from multimag.wsi.store import StoreWriter, source_attrs
from multimag.wsi.tissue import TissueMask, TissueParams, detect_tissue, draw_qc

FILTERS = {"box": Image.Resampling.BOX, "bilinear": Image.Resampling.BILINEAR,
           "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}
_SUPPORT = {"box": 0.5, "bilinear": 1.0, "bicubic": 2.0, "lanczos": 3.0}
_EPS = 1e-6


@dataclass(frozen=True)
class TilingConfig:
    magnifications: tuple[float, ...] = (40.0, 20.0, 10.0, 5.0)
    patch_px: int = 224
    mode: str = "same_center"
    stride_px: int | None = None
    allow_upsample: bool = False
    resample: str = "box"
    resolution: Resolution = field(default_factory=Resolution)
    tissue: TissueParams = field(default_factory=TissueParams)
    min_tissue: float = 0.5
    compression: str = "jpeg"
    jpeg_quality: int = 90
    zstd_level: int = 5
    shard_patches: int = 64
    stripe_columns: int = 64
    threads: int = 2

    @classmethod
    def from_config(cls, config: dict) -> TilingConfig:
        t, s = dict(config["tissue"]), config["store"]
        min_tissue = t.pop("min_fraction")
        return cls(tuple(float(m) for m in config["magnifications"]), config["patch_px"],
                   config["mode"], config["stride_px"], config["allow_upsample"],
                   config["resample"], Resolution(**config["resolution"]), TissueParams(**t),
                   min_tissue, s["compression"], s["jpeg_quality"], s["zstd_level"],
                   s["shard_patches"], s["stripe_columns"], config["threads"])

    def plans(self, slide: Slide) -> tuple[MagPlan, ...]:
        return plan_magnifications(slide.pyramid, self.magnifications, self.patch_px, self.mode,
                                   self.resolution, self.allow_upsample, slide.slide_id,
                                   str(slide.path))


@dataclass(frozen=True)
class PatchPlan:
    """The kept patches of one slide, in grid order."""

    plans: tuple[MagPlan, ...]
    centers: np.ndarray  # (N, 2) int64
    tissue: np.ndarray  # (N,) float32
    rows: np.ndarray  # (N,) grid row of each patch
    cols: np.ndarray  # (N,) grid column of each patch
    stripes: np.ndarray  # (N,) stripe of each patch
    candidates: int  # grid cells before the tissue filter

    def boxes(self, mag: int = 0) -> np.ndarray:
        """Level-0 footprints ``(x0, y0, x1, y1)`` at one magnification (finest: 0)."""
        return footprints(self.centers, self.plans[mag].extent)

    def select(self, start: int, end: int) -> PatchPlan:
        """Patches ``[start, end)``, in the same order."""
        part = slice(start, end)
        return replace(self, centers=self.centers[part], tissue=self.tissue[part],
                       rows=self.rows[part], cols=self.cols[part],
                       stripes=self.stripes[part])


def plan_patches(slide: Slide, tissue: TissueMask, config: TilingConfig) -> PatchPlan:
    plans = config.plans(slide)
    grid = grid_centers(slide.pyramid, plans[0], config.stride_px)
    fractions = tissue.fractions(footprints(grid.centers, plans[0].extent))
    keep = fractions >= max(config.min_tissue, _EPS)
    order = stripe_order(grid.cols[keep], grid.rows[keep], config.stripe_columns)
    cols = grid.cols[keep][order]
    return PatchPlan(plans, grid.centers[keep][order], fractions[keep][order],
                     grid.rows[keep][order], cols, cols // config.stripe_columns,
                     len(grid.centers))


# -- cutting ------------------------------------------------------------------------------

def _margin(plan: MagPlan, resample: str) -> int:
    """Level pixels the filter reads beyond a patch's footprint."""
    return math.ceil(_SUPPORT[resample] * max(plan.factor_x, plan.factor_y, 1.0)) + 1


def resample_patch(slide: Slide, plan: MagPlan, cx: float, cy: float,
                   resample: str = "box") -> np.ndarray:
    """The exact, general path: read the level region under the patch (plus the
    filter's support) and resample it onto the patch grid with PIL."""
    bx0, by0, bx1, by1 = plan.level_box(cx, cy)
    margin = _margin(plan, resample)
    x, y = math.floor(bx0) - margin, math.floor(by0) - margin
    w, h = math.ceil(bx1) + margin - x, math.ceil(by1) + margin - y
    region = slide.read(plan.level.index, x, y, w, h)
    box = (bx0 - region.ox, by0 - region.oy, bx1 - region.ox, by1 - region.oy)
    image = Image.fromarray(region.pixels)
    return np.asarray(image.resize((plan.side, plan.side), FILTERS[resample], box=box))


@dataclass(frozen=True)
class _Grid:
    """Where a magnification's patches sit on their level reduced by an integer
    ``factor`` (box filter): patch ``i`` is ``[y[i], y[i] + side) x [x[i], x[i] + side)``
    on that grid where ``exact[i]``, i.e. its footprint falls on the grid."""

    factor: int
    x: np.ndarray
    y: np.ndarray
    exact: np.ndarray

    @classmethod
    def of(cls, plan: MagPlan, centers: np.ndarray, resample: str) -> _Grid | None:
        f = round(plan.factor_x)
        if resample != "box" or f < 1 or abs(plan.factor_x - f) > _EPS \
                or abs(plan.factor_y - f) > _EPS:
            return None
        boxes = footprints(centers, plan.extent)
        x = boxes[:, 0] / plan.level.scale_x / f
        y = boxes[:, 1] / plan.level.scale_y / f
        xi, yi = np.rint(x), np.rint(y)
        exact = (np.abs(x - xi) <= _EPS) & (np.abs(y - yi) <= _EPS)
        return cls(f, xi.astype(np.int64), yi.astype(np.int64), exact)


def _cut_run(slide: Slide, plan: MagPlan, grid: _Grid | None, centers: np.ndarray,
             start: int, end: int, resample: str) -> list[np.ndarray]:
    """Patches ``[start, end)`` (one run) at one magnification: views into one band of
    the reduced level when they all lie on its grid in one row."""
    if grid is not None and grid.exact[start:end].all() \
            and (grid.y[start:end] == grid.y[start]).all():
        xs, side = grid.x[start:end], plan.side
        x0 = int(xs.min())
        pixels = slide.read_reduced(plan.level.index, grid.factor, x0, int(grid.y[start]),
                                    int(xs.max()) + side - x0, side)
        if pixels is not None:
            return [pixels[:, x:x + side] for x in (xs - x0).tolist()]
    return [resample_patch(slide, plan, cx, cy, resample) for cx, cy in centers[start:end]]


def _runs(patches: PatchPlan) -> np.ndarray:
    """``[start, end)`` of each run (rows of an ``(runs, 2)`` array): consecutive grid
    columns of one row of one stripe."""
    n = len(patches.centers)
    new = np.r_[True, (patches.stripes[1:] != patches.stripes[:-1])
                | (patches.rows[1:] != patches.rows[:-1])
                | (patches.cols[1:] != patches.cols[:-1] + 1)] if n else np.zeros(0, bool)
    starts = np.flatnonzero(new)
    return np.c_[starts, np.r_[starts[1:], n]].astype(np.int64)


def _rows_per_canvas(rects: np.ndarray, rows: np.ndarray) -> int:
    """How many grid rows share a canvas at one magnification: 1 where rows do not
    overlap, else twice as many as overlap one row (each row's pixels then go to at
    most 2 canvases: 20x, 10x and 5x of a 40x grid copy 1.6, 2.9 and 5.6 times fewer
    bytes than with a band per row)."""
    used = rects[:, 2] > 0
    if used.sum() < 2:
        return 1
    y, r = rects[used, 0], rows[used]
    step = np.diff(r) > 0
    pitch = np.min(np.diff(y)[step] / np.diff(r)[step], initial=np.inf)
    overlap = int(rects[used, 2].max() // pitch) if np.isfinite(pitch) and pitch > 0 else 1
    return 2 * overlap if overlap > 1 else 1


class RunCutter:
    """Cuts a slide's planned patches run by run, any stretch ``[start, end)`` of them.

    A magnification whose patches lie on an integer reduction of a tiled level is cut
    from bands that :class:`~multimag.wsi.bands.StripeBands` fills (one per stripe, the
    current one and the one before, for a cut that goes backwards across a stripe's
    edge); the others through :func:`_cut_run`.
    """

    def __init__(self, slide: Slide, patches: PatchPlan, resample: str = "box") -> None:
        self.slide, self.patches, self.resample = slide, patches, resample
        self.grids = [_Grid.of(plan, patches.centers, resample) for plan in patches.plans]
        self.runs = _runs(patches)
        starts = self.runs[:, 0]
        self.run_stripes = patches.stripes[starts]
        self.run_rows = patches.rows[starts]
        self.versions, self.rects, self.painted = [], [], []  # painted: magnification indices
        self.rows_per_canvas = []
        for m, (plan, grid) in enumerate(zip(patches.plans, self.grids, strict=True)):
            rect = self._rects(plan, grid, starts)
            if rect is not None:
                self.painted.append(m)
                self.versions.append((plan.level.index, grid.factor))
                self.rects.append(rect)
                self.rows_per_canvas.append(_rows_per_canvas(rect, self.run_rows))
        self._stripes: dict[int, tuple[int, StripeBands]] = {}  # stripe -> (first run, bands)
        self._last = -1

    def _rects(self, plan: MagPlan, grid: _Grid | None, starts: np.ndarray) -> np.ndarray | None:
        """Each run's band ``y, x, h, w`` on the reduced level (``h = 0`` where the run is
        not on the grid), or None when this magnification is not cut from bands."""
        size = self.slide.tile_size(plan.level.index)
        if grid is None or self.slide.tile_cache is None or size is None \
                or size[0] % grid.factor or size[1] % grid.factor or not len(starts):
            return None
        side = plan.side
        x0 = np.minimum.reduceat(grid.x, starts)
        on_grid = np.logical_and.reduceat(grid.exact, starts) \
            & (np.minimum.reduceat(grid.y, starts) == np.maximum.reduceat(grid.y, starts))
        w = np.maximum.reduceat(grid.x, starts) + side - x0
        return np.c_[grid.y[starts], x0, np.where(on_grid, side, 0), w].astype(np.int64)

    def _bands(self, stripe: int) -> tuple[int, StripeBands]:
        if stripe not in self._stripes:
            if len(self._stripes) >= 2:  # keep the last stripe used
                self._stripes = {k: v for k, v in self._stripes.items() if k == self._last}
            first, end = np.searchsorted(self.run_stripes, [stripe, stripe + 1])
            lengths = self.runs[first:end, 1] - self.runs[first:end, 0]
            self._stripes[stripe] = (int(first), StripeBands(
                self.slide, self.versions, [r[first:end] for r in self.rects],
                self.run_rows[first:end], lengths, self.rows_per_canvas))
        self._last = stripe
        return self._stripes[stripe]

    def sets(self, start: int, end: int) -> Iterator[list[np.ndarray]]:
        """Patch sets ``[start, end)`` (one array per magnification, finest first)."""
        patches, plans = self.patches, self.patches.plans
        first = int(np.searchsorted(self.runs[:, 1], start, side="right"))
        last = int(np.searchsorted(self.runs[:, 0], end, side="left"))
        for r in range(first, last):
            a, b = max(int(self.runs[r, 0]), start), min(int(self.runs[r, 1]), end)
            per_mag = [None] * len(plans)
            if self.painted:
                offset, bands = self._bands(int(self.run_stripes[r]))
                for v, m in enumerate(self.painted):
                    y, x, h, _ = self.rects[v][r]
                    if h:
                        band = bands.band(v, r - offset, b - a)
                        per_mag[m] = [band[:, i:i + h] for i in (self.grids[m].x[a:b] - x).tolist()]
            for m, (plan, grid) in enumerate(zip(plans, self.grids, strict=True)):
                if per_mag[m] is None:
                    per_mag[m] = _cut_run(self.slide, plan, grid, patches.centers, a, b,
                                          self.resample)
            yield from (list(patch_set) for patch_set in zip(*per_mag, strict=True))


def iter_patch_sets(slide: Slide, patches: PatchPlan, resample: str = "box"
                    ) -> Iterator[list[np.ndarray]]:
    """Patch sets (one array per magnification, finest first) in grid order."""
    return RunCutter(slide, patches, resample).sets(0, len(patches.centers))


# -- blocks of patches in worker processes ---------------------------------------------------

Sink = Callable[[int, Sequence[Sequence[np.ndarray]]], None]
"""Takes patch sets ``first, first + 1, ...`` (at most one chunk, ``first`` a multiple
of the chunk); runs in the worker process, so it must pickle."""

MIN_BLOCK = 1024  # patch sets; fewer are cut in the calling process
# decoding (and reducing) one source tile costs about as much as cutting three patch
# sets (profile of the tiling benchmark: 0.38 ms vs 0.12 ms)
TILE_WEIGHT = 3.0


_ROW, _LEVEL = 21, 42  # bit offsets of a tile's row and level in its id


@dataclass(frozen=True)
class TileUse:
    """How a cut uses the slide's tiles (tile-based readers only).

    ``new[i]``: how many tiles patch ``i`` is the first to read, i.e. the decoding it
    brings to the block that cuts it. ``again[backward]``: ``(level, factor, row,
    col)`` of the tile versions (reduced by ``factor``) that a stripe reads after
    another stripe decoded the tile, when the stripes are cut forwards (``again[0]``)
    or backwards (``again[1]``): a stripe's edge tiles, which the next stripe reads
    a whole stripe later (3.4% more decodes on the benchmark slide if decoded
    again); the cutter keeps them in the reader's cache for it, which sets them
    aside rather than dropping them when it is full
    (:meth:`~multimag.wsi.slide.Slide.keep`).
    """

    new: np.ndarray
    again: tuple[set[tuple[int, int, int, int]], set[tuple[int, int, int, int]]]

    @classmethod
    def of(cls, slide: Slide, patches: PatchPlan, resample: str = "box") -> TileUse | None:
        """None when the reader's reads are not tile-based."""
        n = len(patches.centers)
        tiles, factors, owners = [], [], []
        for plan in patches.plans:
            lv = plan.level
            size = slide.tile_size(lv.index)
            if size is None:
                return None
            th, tw = size
            box = footprints(patches.centers, plan.extent) / ([lv.scale_x, lv.scale_y] * 2)
            grid = _Grid.of(plan, patches.centers, resample)
            exact = np.zeros(n, bool) if grid is None else grid.exact
            factor = np.ones(n, np.int64)  # the reader reduces whole tiles by the factor
            if grid is not None and th % grid.factor == 0 and tw % grid.factor == 0:
                factor[exact] = grid.factor
            margin = _margin(plan, resample)  # what resample_patch reads around a footprint
            box = np.where(exact[:, None], box, np.c_[np.floor(box[:, :2]) - margin,
                                                      np.ceil(box[:, 2:]) + margin])
            x0 = np.clip(np.floor(box[:, 0]), 0, lv.width - 1).astype(np.int64) // tw
            y0 = np.clip(np.floor(box[:, 1]), 0, lv.height - 1).astype(np.int64) // th
            x1 = np.clip(np.ceil(box[:, 2]) - 1, 0, lv.width - 1).astype(np.int64) // tw
            y1 = np.clip(np.ceil(box[:, 3]) - 1, 0, lv.height - 1).astype(np.int64) // th
            box, rows, cols = tiles_under(y0, x0, y1, x1)
            tiles.append((lv.index << _LEVEL) + (rows << _ROW) + cols)
            factors.append(factor[box])
            owners.append(box)
        if n == 0 or not tiles:
            return cls(np.zeros(n, np.int64), (set(), set()))
        tile = np.concatenate(tiles)
        order = np.argsort(tile)
        tile, factor = tile[order], np.concatenate(factors)[order]
        owner = np.concatenate(owners)[order]
        starts = np.flatnonzero(np.r_[True, tile[1:] != tile[:-1]])
        first = np.minimum.reduceat(owner, starts)
        reads = np.diff(np.r_[starts, len(tile)])  # of each tile
        stripe = patches.stripes[owner]  # patches are in stripe order
        first_stripe = np.repeat(patches.stripes[first], reads)
        last_stripe = np.repeat(patches.stripes[np.maximum.reduceat(owner, starts)], reads)
        row_mask = 2**_ROW - 1

        def versions(read: np.ndarray) -> set[tuple[int, int, int, int]]:
            keys = np.unique((tile[read] << 8) + factor[read])  # factor < 256
            return set(zip((keys >> (_LEVEL + 8)).tolist(), (keys & 255).tolist(),
                           ((keys >> (_ROW + 8)) & row_mask).tolist(),
                           ((keys >> 8) & row_mask).tolist(), strict=True))

        return cls(np.bincount(first, minlength=n),
                   (versions(stripe > first_stripe), versions(stripe < last_stripe)))


def plan_blocks(n: int, chunk: int, workers: int, min_block: int | None = None,
                cost: np.ndarray | None = None) -> list[tuple[int, int]]:
    """``[start, end)`` of at most ``workers`` contiguous blocks of whole chunks that
    cover patches ``[0, n)``, none under ``min_block`` patches, of about equal total
    ``cost`` (per patch; default: equal patch counts).

    One block per worker and no more: neighbouring rows share source tiles, so each
    block boundary decodes some tiles twice (on the benchmark slide 3.5% more
    decodes with 2 blocks, 7% with 4).
    """
    chunks = -(-n // chunk)
    if chunks == 0:
        return []
    min_block = MIN_BLOCK if min_block is None else min_block
    blocks = max(1, min(workers, chunks, n // max(1, min_block)))
    weight = np.add.reduceat(np.ones(n) if cost is None else np.asarray(cost, np.float64),
                             np.arange(0, n, chunk))
    middle = np.cumsum(weight) - weight / 2  # cost up to the middle of each chunk
    cuts = np.searchsorted(middle, weight.sum() * np.arange(1, blocks) / blocks)  # nearest edge
    edges = [0, *np.unique(np.clip(cuts, 1, chunks - 1)).tolist(), chunks]
    return [(a * chunk, min(n, b * chunk)) for a, b in zip(edges, edges[1:], strict=False)
            if a < b]


class ChunkClaims:
    """Which chunks of each segment are still to cut. Two workers share a segment,
    one taking runs of chunks from its front (forwards), the other from its back
    (backwards), until they meet: the segment is split where the faster worker got
    to, so neither waits for the other, and it has one edge between them (tiles
    decoded twice) wherever it falls. Each claim is a quarter of what is left (at
    least one chunk), so a worker cuts long runs of rows in one go and the last
    claims are short. Shared between processes when made with a multiprocessing
    ``context``; segments are ``[start, end)`` in chunks."""

    def __init__(self, segments: Sequence[tuple[int, int]], context=None) -> None:
        bounds = [x for segment in segments for x in segment]
        self._bounds = context.Array("q", bounds) if context is not None else bounds

    def take(self, segment: int, backward: bool) -> tuple[int, int] | None:
        """Chunks ``[start, end)`` from the back or front of ``segment``; None when
        none is left."""
        lock = getattr(self._bounds, "get_lock", None)
        with lock() if lock is not None else contextlib.nullcontext():
            front, back = self._bounds[2 * segment], self._bounds[2 * segment + 1]
            if front >= back:
                return None
            size = max(1, (back - front) // 4)
            if backward:
                self._bounds[2 * segment + 1] = back - size
                return back - size, back
            self._bounds[2 * segment] = front + size
            return front, front + size


def _cut_chunks(slide: Slide, patches: PatchPlan, claims: ChunkClaims, segment: int,
                backward: bool, sink: Sink, chunk: int, resample: str,
                keep: set[tuple[int, int, int, int]], done: Callable[[int], None]) -> int:
    """Cut the chunks of ``segment`` this worker claims and pass each one on."""
    slide.keep(keep)
    cutter = RunCutter(slide, patches, resample)
    n = 0
    while (claim := claims.take(segment, backward)) is not None:
        first, end = (min(index * chunk, len(patches.centers)) for index in claim)
        # forwards in one go; backwards chunk by chunk from the last, so that each
        # chunk's tiles are still at hand when the chunk before it is cut
        parts = [(a, min(a + chunk, end)) for a in range(first, end, chunk)][::-1] \
            if backward else [(first, end)]
        for start, stop in parts:
            patch_sets = cutter.sets(start, stop)
            while sets := list(itertools.islice(patch_sets, chunk)):
                sink(start, sets)
                start += len(sets)
                n += len(sets)
                done(len(sets))
    return n


# in a worker process: the shared count of patch sets cut, and the chunks still to cut
_counter = None
_claims: ChunkClaims | None = None


def _init_worker(counter, claims: ChunkClaims) -> None:
    global _counter, _claims
    _counter, _claims = counter, claims


def _count(k: int) -> None:
    with _counter.get_lock():
        _counter.value += k


def _cut_chunks_in_worker(source: SlideSource, patches: PatchPlan, segment: int,
                          backward: bool, sink: Sink, chunk: int, resample: str,
                          keep: set[tuple[int, int, int, int]]) -> int:
    with source.open() as slide:
        return _cut_chunks(slide, patches, _claims, segment, backward, sink, chunk, resample,
                           keep, _count)


def _usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):  # what Slurm or taskset grant this process
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _start_method() -> str:
    """fork when it is safe: instant, and the workers inherit every import. It is not
    safe once another thread runs (a lock it holds stays locked in the child), and
    not offered on every platform; spawn otherwise."""
    if threading.active_count() == 1 and "fork" in multiprocessing.get_all_start_methods() \
            and sys.platform.startswith("linux"):
        return "fork"
    return "spawn"


class BlockCutter:
    """Cuts a slide's planned patches in blocks, one worker process per block (or in
    this process when there is one block), passing every chunk to a sink.

    Blocks are paired into segments (:class:`ChunkClaims`): the worker of a pair's
    first block cuts the segment forwards from its start, the other backwards from
    its end, so a pair finishes together however the cost was misjudged or a
    neighbour slowed one of them down.

    Create it before anything starts a thread (zarr does): its workers are forked
    at once, while that is safe. Use as a context manager; on an error the workers
    are stopped before the caller cleans up what they were writing.
    """

    def __init__(self, slide: Slide, patches: PatchPlan, *, resample: str = "box",
                 workers: int = 1, chunk: int = 64, min_block: int | None = None) -> None:
        self.slide, self.patches, self.resample, self.chunk = slide, patches, resample, chunk
        workers, n = min(workers, _usable_cpus()), len(patches.centers)
        use = TileUse.of(slide, patches, resample)
        self.keep = (set(), set()) if use is None else use.again  # forwards, backwards
        self.blocks = plan_blocks(n, chunk, workers, min_block,
                                  None if use is None else 1 + TILE_WEIGHT * use.new)
        edges = [a // chunk for a, _ in self.blocks] + [-(-n // chunk)]
        self.segments = [(edges[i], edges[min(i + 2, len(self.blocks))])
                         for i in range(0, len(self.blocks), 2)]  # in chunks
        self._pool: ProcessPoolExecutor | None = None
        if len(self.blocks) > 1:
            context = multiprocessing.get_context(_start_method())
            self._counter = context.Value("q", 0)
            self._pool = ProcessPoolExecutor(
                len(self.blocks), mp_context=context, initializer=_init_worker,
                initargs=(self._counter, ChunkClaims(self.segments, context)))
            self._pool.submit(os.getpid).result()  # fork every worker now

    def run(self, sink: Sink, progress: Callable[[int], None] = lambda k: None) -> int:
        """Cut every block; returns the number of patch sets passed to ``sink``.
        ``progress(k)`` is called in this process as ``k`` more sets are done."""
        if self._pool is None:
            return _cut_chunks(self.slide, self.patches, ChunkClaims(self.segments), 0, False,
                               sink, self.chunk, self.resample, self.keep[0], progress
                               ) if self.segments else 0
        source = self.slide.source()
        futures = [self._pool.submit(_cut_chunks_in_worker, source, self.patches, i // 2,
                                     i % 2 == 1, sink, self.chunk, self.resample,
                                     self.keep[i % 2])
                   for i in range(len(self.blocks))]
        reported, pending = 0, set(futures)
        try:
            while pending:
                finished, pending = wait(pending, timeout=0.25, return_when=FIRST_EXCEPTION)
                progress(self._counter.value - reported)
                reported = self._counter.value
                for future in finished:
                    future.result()  # raise a worker's error here
        except BaseException as exc:
            self.close(error=True)  # before the caller removes what the workers write
            if isinstance(exc, BrokenProcessPool):
                raise MultimagError(
                    f"a tiling worker process died ({exc})", slide=self.slide.slide_id,
                    path=self.slide.path, fix="if it was killed for memory, give the tile job "
                    "more (mem_mb) or lower threads or cache_mb") from exc
            raise
        return sum(future.result() for future in futures)

    def close(self, error: bool = False) -> None:
        if self._pool is None:
            return
        if error:  # do not wait for blocks still being cut (the executor has no public
            # way to stop running tasks before Python 3.14's terminate_workers)
            for process in list(getattr(self._pool, "_processes", {}).values()):
                process.terminate()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = None

    def __enter__(self) -> BlockCutter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(error=exc_type is not None)


# -- the tile command ----------------------------------------------------------------------

def tile_slide(slide: Slide, out: str | Path, config: TilingConfig, *,
               patient_id: str | None = None, tissue: TissueMask | None = None,
               qc_path: str | Path | None = None, progress: bool | None = None) -> dict:
    """Build ``out`` (a ``.zarr`` store) for an open slide; returns a summary."""
    if tissue is None:
        tissue = detect_tissue(slide, config.tissue)
    patches = plan_patches(slide, tissue, config)
    n = len(patches.centers)
    if qc_path is not None:
        draw_qc(tissue, patches.boxes(), qc_path, f"{slide.slide_id}: {n} patches")
    if n == 0:
        warnings.warn(f"slide {slide.slide_id!r} ({slide.path}): no tissue patch reaches "
                      f"min_fraction {config.min_tissue}; writing an empty store (N = 0)",
                      stacklevel=2)
    attrs = {
        "slide_id": slide.slide_id,
        "patient_id": patient_id,
        "source": source_attrs(slide.path),
        **slide.describe(),
        "mode": config.mode,
        "patch_px": config.patch_px,
        "magnifications": [p.magnification for p in patches.plans],
        "resolution": {"base_magnification": config.resolution.base_magnification,
                       "base_mpp": config.resolution.base_mpp},
        "resample": config.resample,
        "levels": [p.provenance() for p in patches.plans],
        "grid": {"stride_level0": (config.stride_px or patches.plans[0].side)
                 * patches.plans[0].scale, "stripe_columns": config.stripe_columns,
                 "order": "stripes of stripe_columns grid columns left to right; rows top "
                          "to bottom within a stripe; columns left to right within a row",
                 "candidates": patches.candidates},
        "tissue": {**{k: getattr(config.tissue, k) for k in config.tissue.__dataclass_fields__},
                   "min_fraction": config.min_tissue, "threshold": tissue.threshold,
                   "slide_fraction": tissue.fraction},
    }
    with BlockCutter(slide, patches, resample=config.resample, workers=config.threads,
                     chunk=config.shard_patches) as cutter, StoreWriter(
            out, centers=patches.centers, tissue=patches.tissue, plans=patches.plans,
            attrs=attrs, compression=config.compression, quality=config.jpeg_quality,
            zstd_level=config.zstd_level, shard_patches=config.shard_patches) as writer, tqdm(
            total=n, unit="patch", desc=slide.slide_id, file=sys.stderr,
            disable=(not sys.stderr.isatty()) if progress is None else not progress) as bar:
        writer.commit(cutter.run(writer.shards, bar.update))
    return {"slide_id": slide.slide_id, "store": str(out), "patches": n,
            "candidates": patches.candidates, "magnifications": [p.label for p in patches.plans]}

