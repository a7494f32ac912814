"""Image pyramids by box filter: area-average downsampling, and level buffers filled
strip by strip (in memory when small, else in a temporary file) for images too big
for memory.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["LevelBuffer", "RowDownsampler", "box_downsample", "downsample_level", "level_tiles",
           "strip_tiles"]

# Levels bigger than this many bytes are buffered in a temporary file.
_IN_MEMORY_LIMIT = 64 * 2**20


def box_downsample(arr: np.ndarray, factor: int) -> np.ndarray:
    """Area-average an (h, w, c) uint8 image by an integer factor (box filter).

    Output size is ``floor(h / factor) x floor(w / factor)``; each output pixel
    is the mean of its ``factor x factor`` block, rounded half up. Power-of-two
    factors go through Pillow's ``Image.reduce`` (exact for them, and ~3x
    faster than numpy); other factors use integer sums of strided views.
    """
    if factor == 1:
        return np.ascontiguousarray(arr)
    h, w = arr.shape[0] // factor, arr.shape[1] // factor
    c = arr.shape[2]
    if h == 0 or w == 0:
        return np.zeros((h, w, c), np.uint8)
    a = arr[: h * factor, : w * factor]
    if factor & (factor - 1) == 0 and c in (3, 4):
        return np.asarray(Image.fromarray(np.ascontiguousarray(a)).reduce(factor))
    dt = np.uint16 if factor * factor * 255 + factor * factor // 2 < 2**16 else np.uint32
    cols = a[:, 0::factor].astype(dt)
    for k in range(1, factor):
        cols += a[:, k::factor]
    rows = cols[0::factor].copy()
    for k in range(1, factor):
        rows += cols[k::factor]
    n = factor * factor
    rows += n // 2
    rows //= n
    return rows.astype(np.uint8)


class LevelBuffer:
    """A pyramid level filled row by row: in memory when small, else a raw file.

    The file is written sequentially and read back in strips with plain file
    I/O (not a memmap), so the level never counts towards resident memory.
    """

    def __init__(self, shape: tuple[int, int, int], tmpdir: str | None) -> None:
        self.shape = shape
        self.row = 0
        self.rowbytes = shape[1] * shape[2]
        self.arr: np.ndarray | None = None
        self.fh: Any = None
        if tmpdir is None or shape[0] * self.rowbytes <= _IN_MEMORY_LIMIT:
            self.arr = np.zeros(shape, np.uint8)
        else:
            self.fh = tempfile.TemporaryFile(dir=tmpdir)

    def append(self, rows: np.ndarray) -> None:
        n = min(rows.shape[0], self.shape[0] - self.row)
        if n <= 0:
            return
        if self.arr is not None:
            self.arr[self.row: self.row + n] = rows[:n]
        else:
            self.fh.write(np.ascontiguousarray(rows[:n]).tobytes())
        self.row += n

    def read(self, y0: int, y1: int) -> np.ndarray:
        y1 = min(y1, self.shape[0])
        if self.arr is not None:
            return self.arr[y0:y1]
        self.fh.seek(y0 * self.rowbytes)
        data = np.fromfile(self.fh, np.uint8, (y1 - y0) * self.rowbytes)
        return data.reshape(y1 - y0, self.shape[1], self.shape[2])

    def check_done(self) -> None:
        if self.row != self.shape[0]:
            raise RuntimeError(f"pyramid level incomplete: {self.row}/{self.shape[0]} rows")

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
        self.arr = None


class RowDownsampler:
    """Box-downsample an image fed as horizontal strips into a LevelBuffer."""

    def __init__(self, out: LevelBuffer, factor: int) -> None:
        self.out = out
        self.factor = factor
        self.carry: np.ndarray | None = None

    def feed(self, strip: np.ndarray) -> None:
        if self.carry is not None and len(self.carry):
            strip = np.concatenate([self.carry, strip], axis=0)
        usable = (strip.shape[0] // self.factor) * self.factor
        if usable:
            self.out.append(box_downsample(strip[:usable], self.factor))
        self.carry = strip[usable:].copy()


def downsample_level(src: LevelBuffer, out: LevelBuffer, factor: int, rows: int = 1024) -> None:
    """Fill ``out`` with ``box_downsample(src, factor)``, reading src in strips."""
    sink = RowDownsampler(out, factor)
    step = max(factor, (rows // factor) * factor)
    for y0 in range(0, out.shape[0] * factor, step):
        sink.feed(src.read(y0, min(y0 + step, out.shape[0] * factor)))
    out.check_done()


def strip_tiles(strip: np.ndarray, tile: int) -> Iterator[np.ndarray]:
    """The tiles of one tile row, left to right (the last one narrower)."""
    for x0 in range(0, strip.shape[1], tile):
        yield np.ascontiguousarray(strip[:, x0: x0 + tile])


def level_tiles(level: LevelBuffer, tile: int) -> Iterator[np.ndarray]:
    """Row-major tiles of a level (edge tiles smaller; tifffile pads them)."""
    for y0 in range(0, level.shape[0], tile):
        yield from strip_tiles(level.read(y0, y0 + tile), tile)
