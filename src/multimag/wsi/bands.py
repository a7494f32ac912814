"""The bands the tiler cuts its patches from, filled as each source tile is decoded.

A band is the strip of one level, reduced by an integer factor, under a run of
patches at one magnification; the run's patches are views of it. Each tile is
decoded once into a reused buffer, reduced by every factor the stripe reads its
level at, and copied straight into every open band (or shared canvas of bands)
it overlaps. docs/wsi.md describes the design.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from multimag.wsi.geometry import tiles_under
from multimag.wsi.slide import WHITE, Slide
from multimag.wsi.tile_decoding import decode_buffer, reduce_pixels

try:  # numpy's switch for asking the kernel for huge pages (arrays of 4 MiB or more)
    from numpy._core.multiarray import _set_madvise_hugepage
except ImportError:  # numpy 1.x
    try:
        from numpy.core.multiarray import _set_madvise_hugepage
    except ImportError:
        _set_madvise_hugepage = None

_ROW = 21  # bit offset of the tile row in a tile's key within one version


def _canvas_memory(shape: tuple[int, int, int]) -> np.ndarray:
    """An uninitialised uint8 array on ordinary pages.

    numpy asks the kernel for transparent huge pages for arrays of 4 MiB or more;
    canvases are new memory written at once, and where the host reclaims free
    memory, a huge page faulted in after an idle spell costs several times its
    small pages. The switch is numpy's, process-wide, and only a hint: an array
    another thread allocates meanwhile gets small pages too."""
    if _set_madvise_hugepage is None:
        return np.empty(shape, np.uint8)
    huge = _set_madvise_hugepage(False)
    try:
        return np.empty(shape, np.uint8)
    finally:
        _set_madvise_hugepage(huge)


def _canvases(rects: np.ndarray, rows: np.ndarray, rows_per_canvas: int, lengths: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each run's canvas (-1 for none), each canvas's frame ``y, x, h, w`` (the
    bounding box of its bands) and its number of patches."""
    used = np.flatnonzero(rects[:, 2] > 0)
    canvas = np.full(len(rects), -1, np.int64)
    _, canvas[used] = np.unique(rows[used] // rows_per_canvas, return_inverse=True)
    count, ids = int(canvas.max(initial=-1)) + 1, canvas[used]
    y, x, h, w = rects[used].T
    # each canvas has a band: start from values that any of them overrides
    top, left = np.full(count, y.max(initial=0)), np.full(count, x.max(initial=0))
    bottom, right = np.full(count, (y + h).min(initial=0)), np.full(count, (x + w).min(initial=0))
    np.minimum.at(top, ids, y)
    np.minimum.at(left, ids, x)
    np.maximum.at(bottom, ids, y + h)
    np.maximum.at(right, ids, x + w)
    patches = np.bincount(ids, lengths[used], count).astype(np.int64)
    return canvas, np.c_[top, left, bottom - top, right - left], patches


class StripeBands:
    """The bands of one stripe's runs at the magnifications cut from whole tiles.

    ``versions[m]``: the ``(level, factor)`` magnification ``m`` is cut from (one
    magnification per version); ``rects[m]``: ``(runs, 4)`` int64 ``y, x, h, w`` of
    each run's band on that reduced level (``h = 0``: that run is cut another way
    at that magnification); ``rows``: each run's grid row; ``lengths``: its patches.

    Where the rows of a magnification overlap (its patches are taller than the
    grid's row pitch: 20x, 10x and 5x in ``same_center`` mode), the bands of
    ``rows_per_canvas[m]`` consecutive rows are views of one canvas, their bounding
    box, so a pixel that several rows share is copied once. A canvas is dropped
    once all its patches have been handed out.
    """

    def __init__(self, slide: Slide, versions: Sequence[tuple[int, int]],
                 rects: Sequence[np.ndarray], rows: np.ndarray, lengths: np.ndarray,
                 rows_per_canvas: Sequence[int]) -> None:
        self.slide, self.versions = slide, list(versions)
        if len(set(self.versions)) < len(self.versions):  # a version's users are one list
            raise ValueError(f"two magnifications read the same level version: {versions}")
        self._rects = [r.tolist() for r in rects]
        self._tiles: list[tuple[int, int]] = []  # per magnification: reduced tile size
        self._bounds: list[tuple[int, int]] = []  # per magnification: reduced level size
        self._canvas: list[list[int]] = []  # per magnification: each run's canvas
        self._frames: list[list[list[int]]] = []  # per magnification: canvas y, x, h, w
        self._left: list[list[int]] = []  # per magnification: patches still to hand out
        self._users: dict[tuple[int, int, int, int], tuple[int, list[int]]] = {}
        self._factors: dict[int, list[int]] = {}  # level -> factors read here
        for m, ((level, factor), rect) in enumerate(zip(versions, rects, strict=True)):
            th, tw = slide.tile_size(level)
            lv = slide.pyramid.levels[level]
            self._tiles.append((th // factor, tw // factor))
            self._bounds.append((-(-lv.height // factor), -(-lv.width // factor)))
            self._factors.setdefault(level, []).append(factor)
            canvas, frames, left = _canvases(rect, rows, rows_per_canvas[m], lengths)
            self._canvas.append(canvas.tolist())
            self._frames.append(frames.tolist())
            self._left.append(left.tolist())
            for key, canvases in self._overlaps(m, frames).items():
                self._users[(level, factor, key >> _ROW, key & (2**_ROW - 1))] = (m, canvases)
        self._open: list[dict[int, np.ndarray]] = [{} for _ in versions]
        self._closed: list[set[int]] = [set() for _ in versions]  # all handed out
        self._had: set[tuple[int, int, int, int]] = set()  # tile versions copied in
        self._buffers: dict[int, np.ndarray] = {}  # level -> decode buffer

    def _overlaps(self, m: int, frames: np.ndarray) -> dict[int, list[int]]:
        """Tile key ``row << _ROW | col`` -> the canvases of magnification ``m`` on it."""
        th, tw = self._tiles[m]
        rh, rw = self._bounds[m]
        y, x, h, w = frames.T
        y0, x0 = np.maximum(y, 0), np.maximum(x, 0)
        y1, x1 = np.minimum(y + h, rh), np.minimum(x + w, rw)
        canvas = np.flatnonzero((y0 < y1) & (x0 < x1))
        ty0, tx0 = y0[canvas] // th, x0[canvas] // tw
        ty1, tx1 = (y1[canvas] - 1) // th, (x1[canvas] - 1) // tw
        box, rows, cols = tiles_under(ty0, tx0, ty1, tx1)
        key, owner = (rows << _ROW) + cols, canvas[box]
        if not len(key):
            return {}
        order = np.argsort(key, kind="stable")
        key, owner = key[order], owner[order].tolist()
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]).tolist()
        keys = key.tolist()
        return {keys[a]: owner[a:b] for a, b in zip(starts, [*starts[1:], len(owner)], strict=True)}

    def band(self, m: int, i: int, take: int) -> np.ndarray:
        """The band of run ``i`` at magnification ``m``, for ``take`` of its patches."""
        level, factor = self.versions[m]
        th, tw = self._tiles[m]
        rh, rw = self._bounds[m]
        y, x, h, w = self._rects[m][i]
        y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + h, rh), min(x + w, rw)
        for ty in range(y0 // th, (y1 - 1) // th + 1 if y0 < y1 else 0):
            for tx in range(x0 // tw, (x1 - 1) // tw + 1 if x0 < x1 else 0):
                if (key := (level, factor, ty, tx)) not in self._had:
                    self._fetch(key)
        c = self._canvas[m][i]
        canvas = self._open[m].get(c)
        if canvas is None:  # no tile under it: all outside the level
            canvas = self._open[m][c] = self._new(m, c)
        cy, cx, _, _ = self._frames[m][c]
        self._left[m][c] -= take
        if self._left[m][c] <= 0:
            del self._open[m][c]
            self._closed[m].add(c)
        return canvas[y - cy:y - cy + h, x - cx:x - cx + w]

    def _new(self, m: int, c: int) -> np.ndarray:
        y, x, h, w = self._frames[m][c]
        rh, rw = self._bounds[m]
        canvas = _canvas_memory((h, w, 3))
        if y < 0 or x < 0 or y + h > rh or x + w > rw:
            canvas[...] = WHITE  # where it lies outside the level
        return canvas

    def _fetch(self, key: tuple[int, int, int, int]) -> None:
        """Copy tile version ``key`` into its canvases: from the reader's cache if
        another stripe left it there, else decoded, with the level's other versions
        this stripe (or a later one) reads."""
        cache = self.slide.tile_cache
        pixels = cache.get(key)
        if pixels is not None:
            self._deposit(key, pixels)
            return
        level, _, ty, tx = key
        buffer = self._buffers.get(level)
        if buffer is None:
            buffer = self._buffers[level] = decode_buffer(*self.slide.tile_size(level))
        full = self.slide.decode_tile(level, ty, tx, out=buffer)
        for factor in self._factors[level]:
            version = (level, factor, ty, tx)
            if version in self._had or (version != key and version not in self._users
                                        and version not in cache.keep):
                continue
            pixels = reduce_pixels(full, factor)
            self._deposit(version, pixels)
            if version in cache.keep:  # another stripe reads it: the buffer is reused
                cache.put(version, pixels.copy() if pixels is full else pixels)

    def _deposit(self, key: tuple[int, int, int, int], pixels: np.ndarray) -> None:
        self._had.add(key)
        if key not in self._users:
            return
        m, canvases = self._users[key]
        th, tw = self._tiles[m]
        ty, tx = key[2] * th, key[3] * tw
        ph, pw = pixels.shape[:2]
        frames, opened, closed = self._frames[m], self._open[m], self._closed[m]
        for c in canvases:
            out = opened.get(c)
            if out is None:
                if c in closed:  # its bands are cut; the tile only meets its margin
                    continue
                out = opened[c] = self._new(m, c)
            y, x, h, w = frames[c]
            y0, y1 = max(y, ty), min(y + h, ty + ph)
            x0, x1 = max(x, tx), min(x + w, tx + pw)
            out[y0 - y:y1 - y, x0 - x:x1 - x] = pixels[y0 - ty:y1 - ty, x0 - tx:x1 - tx]
