"""Cutting a slide's planned patches in worker processes, one contiguous block of
whole shards each, every shard handed to a sink that encodes and writes it.

Two blocks make a segment that their two workers cut from both ends until they
meet (:class:`ChunkClaims`), so neither waits for the other (docs/wsi.md).
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import os
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from multimag.errors import MultimagError
from multimag.wsi.cutting import RunCutter
from multimag.wsi.patch_plan import PatchPlan
from multimag.wsi.slide import Slide, SlideSource
from multimag.wsi.tile_use import TileUse

Sink = Callable[[int, Sequence[Sequence[np.ndarray]]], None]
"""Takes patch sets ``first, first + 1, ...`` (at most one chunk, ``first`` a multiple
of the chunk); runs in the worker process, so it must pickle."""

MIN_BLOCK = 1024  # patch sets; fewer are cut in the calling process
# decoding (and reducing) one source tile costs about as much as cutting three
# patch sets (profiled on the tiling benchmark, benchmarks/README.md)
TILE_WEIGHT = 3.0


def plan_blocks(n: int, chunk: int, workers: int, min_block: int | None = None,
                cost: np.ndarray | None = None) -> list[tuple[int, int]]:
    """``[start, end)`` of at most ``workers`` contiguous blocks of whole chunks that
    cover patches ``[0, n)``, none under ``min_block`` patches, of about equal total
    ``cost`` (per patch; default: equal patch counts).

    One block per worker and no more: neighbouring rows share source tiles, so each
    block boundary decodes some tiles twice.
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


def _add_to_shared_count(k: int) -> None:
    with _counter.get_lock():
        _counter.value += k


def _cut_chunks_in_worker(source: SlideSource, patches: PatchPlan, segment: int,
                          backward: bool, sink: Sink, chunk: int, resample: str,
                          keep: set[tuple[int, int, int, int]]) -> int:
    with source.open() as slide:
        return _cut_chunks(slide, patches, _claims, segment, backward, sink, chunk, resample,
                           keep, _add_to_shared_count)


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
