"""Write Aperio-style pyramidal SVS files with tifffile.

The layout follows what an Aperio ScanScope writes, so that both openslide
(vendor ``aperio``) and tiffslide read the file as a real SVS:

====  ==========================================  ===========================
page  content                                     ImageDescription
====  ==========================================  ===========================
0     level 0, tiled JPEG                         ``Aperio Image Library ...
                                                  WxH [0,0 WxH] (TxT) JPEG/RGB
                                                  Q=90|AppMag = 40|MPP = 0.25``
1     thumbnail, stripped JPEG (<= 1024 px)       ``... WxH -> wxh - ``
2..   lower levels (downsample 4, 16), tiled JPEG ``... WxH [0,0 WxH] (TxT) ->
                                                  wxh JPEG/RGB Q=90``
====  ==========================================  ===========================

Level ``i`` has ``floor(W / ds_i) x floor(H / ds_i)`` pixels (as Aperio) and is
the area average (box filter) of the level above by the integer factor
``ds_i / ds_{i-1}``. Because ``floor(floor(W/a)/f) == floor(W/(a*f))`` every
output pixel's block lies inside the level above, so no padding is ever read;
the trailing ``W mod f`` columns / rows of the level above are dropped, as
Aperio does.

JPEG tiles are YCbCr with 4:2:0 subsampling (tifffile's default for RGB JPEG,
``PhotometricInterpretation = YCbCr``), which openslide and tiffslide both
decode. ``mpp=None`` writes no ``MPP`` field and no physical resolution (the
baseline XResolution/YResolution tags that tifffile always writes are 1/1 with
``ResolutionUnit = NONE``), so neither reader finds a pixel size. With an mpp,
the resolution tags carry it too (pixels per centimetre), as a fallback.

Both readers report ``level_downsamples`` as the mean of the two axes' ratios,
so odd sizes give e.g. (1, 4.0029, 16.062) for 3003 x 2201, and up to ~1 %
off for small levels (1501 x 1101 -> 93 x 68: 16.165); compare with a tolerance.

``level0`` may be an ``(H, W, 3)`` uint8 array or, for slides too big for
memory, any object with ``.shape == (H, W, 3)`` and a method
``tile(level_index, y0, x0, h, w) -> (h, w, 3) uint8``; then level 0 is read
once, tile row by tile row, through ``tile(0, ...)`` and the lower levels are
built from those strips into disk-backed buffers, so memory stays at a few tile
rows plus the (small) lowest levels. Both paths give byte-identical files.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import tifffile
from PIL import Image

__all__ = ["TileSource", "write_svs", "box_downsample", "aperio_description"]

APERIO_HEADER = "Aperio Image Library v12.0.0 "
THUMBNAIL_MAX = 1024
# Lower levels bigger than this many bytes are buffered in a temporary file.
_IN_MEMORY_LIMIT = 64 * 2**20
_BIGTIFF_LIMIT = 2**31 - 2**25  # ~2 GB of uncompressed pixels, with headroom


@runtime_checkable
class TileSource(Protocol):
    """A level-0 image read tile by tile (for slides too big for memory)."""

    shape: tuple[int, ...]

    def tile(self, level_index: int, y0: int, x0: int, h: int, w: int) -> np.ndarray: ...


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


def _fmt_number(value: float) -> str:
    """40.0 -> '40', 0.25 -> '0.25' (what Aperio writes, parsed by both readers)."""
    value = float(value)
    if value.is_integer():
        return str(int(value))
    return f"{value:.6g}"


def aperio_description(width: int, height: int, tile: int, quality: int, *,
                       mpp: float | None, app_mag: float | None) -> str:
    """The ImageDescription of page 0 (the one both readers parse)."""
    desc = (f"{APERIO_HEADER}\r\n{width}x{height} [0,0 {width}x{height}] "
            f"({tile}x{tile}) JPEG/RGB Q={quality}")
    if app_mag is not None:
        desc += f"|AppMag = {_fmt_number(app_mag)}"
    if mpp is not None:
        desc += f"|MPP = {_fmt_number(mpp)}"
    return desc


def _check_args(shape: Sequence[int], mpp: float | None, app_mag: float | None, tile: int,
                downsamples: Sequence[int], quality: int) -> tuple[int, int, list[int]]:
    if len(shape) != 3 or shape[2] != 3:
        raise ValueError(f"level0 must have shape (H, W, 3), got {tuple(shape)}")
    height, width = int(shape[0]), int(shape[1])
    if height < 1 or width < 1:
        raise ValueError(f"level0 is empty: {tuple(shape)}")
    if tile <= 0 or tile % 16:
        raise ValueError(f"tile must be a positive multiple of 16 (e.g. 240 or 256), got {tile}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    if mpp is not None and not (math.isfinite(mpp) and mpp > 0):
        raise ValueError(f"mpp must be a positive number or None, got {mpp!r}")
    if app_mag is not None and not (math.isfinite(app_mag) and app_mag > 0):
        raise ValueError(f"app_mag must be a positive number or None, got {app_mag!r}")
    ds = [int(d) for d in downsamples]
    if not ds or ds[0] != 1 or any(float(d) != int(d) for d in downsamples):
        raise ValueError(f"downsamples must be integers starting with 1, got {downsamples!r}")
    factors = []
    for prev, cur in zip(ds, ds[1:], strict=False):
        if cur <= prev or cur % prev:
            raise ValueError(f"each downsample must be an integer multiple (>1) of the previous "
                             f"one, got {downsamples!r}")
        factors.append(cur // prev)
    if width // ds[-1] < 1 or height // ds[-1] < 1:
        raise ValueError(f"level0 {width}x{height} is too small for downsample {ds[-1]}")
    return height, width, factors


class _Level:
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


class _RowDownsampler:
    """Box-downsample an image fed as horizontal strips into a _Level."""

    def __init__(self, out: _Level, factor: int) -> None:
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


def _downsample_level(src: _Level, out: _Level, factor: int, rows: int = 1024) -> None:
    """Fill ``out`` with ``box_downsample(src, factor)``, reading src in strips."""
    sink = _RowDownsampler(out, factor)
    step = max(factor, (rows // factor) * factor)
    for y0 in range(0, out.shape[0] * factor, step):
        sink.feed(src.read(y0, min(y0 + step, out.shape[0] * factor)))
    out.check_done()


def _level_tiles(level: _Level, tile: int) -> Iterator[np.ndarray]:
    """Row-major tiles of a level (edge tiles smaller; tifffile pads them)."""
    h, w = level.shape[:2]
    for y0 in range(0, h, tile):
        strip = level.read(y0, y0 + tile)
        for x0 in range(0, w, tile):
            yield np.ascontiguousarray(strip[:, x0: x0 + tile])


def _stream_level0(source: Any, height: int, width: int, tile: int,
                   sink: _RowDownsampler | None) -> Iterator[np.ndarray]:
    """Read level 0 tile row by tile row through ``source.tile(0, ...)``.

    Each tile row is read completely and fed to the next level *before* its
    tiles are yielded, because tifffile stops pulling after the last tile.
    """
    for y0 in range(0, height, tile):
        h = min(tile, height - y0)
        strip = np.empty((h, width, 3), np.uint8)
        for x0 in range(0, width, tile):
            w = min(tile, width - x0)
            t = np.asarray(source.tile(0, y0, x0, h, w))
            if t.shape != (h, w, 3) or t.dtype != np.uint8:
                raise ValueError(f"tile(0, {y0}, {x0}, {h}, {w}) returned {t.dtype} {t.shape}, "
                                 f"expected uint8 {(h, w, 3)}")
            strip[:, x0: x0 + w] = t
        if sink is not None:
            sink.feed(strip)
        for x0 in range(0, width, tile):
            yield np.ascontiguousarray(strip[:, x0: x0 + tile])


def _thumbnail(levels: list[_Level]) -> np.ndarray:
    """The finest lower level that fits in THUMBNAIL_MAX, else the coarsest one shrunk."""
    for lvl in levels:
        if max(lvl.shape[:2]) <= THUMBNAIL_MAX:
            return np.array(lvl.read(0, lvl.shape[0]))
    last = levels[-1]
    factor = math.ceil(max(last.shape[:2]) / THUMBNAIL_MAX)
    out = _Level((last.shape[0] // factor, last.shape[1] // factor, 3), None)
    _downsample_level(last, out, factor)
    assert out.arr is not None
    return out.arr


def _level_description(width: int, height: int, tile: int, quality: int, lw: int, lh: int) -> str:
    return (f"{APERIO_HEADER}\r\n{width}x{height} [0,0 {width}x{height}] "
            f"({tile}x{tile}) -> {lw}x{lh} JPEG/RGB Q={quality}")


def _res_kw(mpp: float | None, downsample: int) -> dict[str, Any]:
    """TIFF resolution tags (pixels per cm) of a level; none asked for when mpp is None.

    (tifffile then writes the baseline-required XResolution = YResolution = 1 with
    ResolutionUnit = NONE, which carries no physical size.)
    """
    if mpp is None:
        return {}
    res = 1e4 / (float(mpp) * downsample)
    return dict(resolution=(res, res), resolutionunit="CENTIMETER")


def write_svs(path: str | Path, level0: Any, *, mpp: float | None, app_mag: float | None,
              tile: int = 256, downsamples: Sequence[int] = (1, 4, 16),
              quality: int = 90) -> None:
    """Write an Aperio SVS pyramid (tiled JPEG levels + stripped thumbnail).

    Parameters
    ----------
    path: output file; written to a temporary sibling and renamed into place.
    level0: (H, W, 3) uint8 array, or an object with ``.shape`` (H, W, 3) and
        ``tile(level_index, y0, x0, h, w)`` returning (h, w, 3) uint8.
    mpp: level-0 microns per pixel, or None to write no pixel size at all.
    app_mag: objective power (``AppMag``), or None to leave it out.
    tile: tile side in pixels (Aperio uses 240 or 256); multiple of 16.
    downsamples: level downsample factors, 1 first, each an integer multiple
        of the previous one.
    quality: JPEG quality.
    """
    path = Path(path)
    is_array = isinstance(level0, np.ndarray) or not hasattr(level0, "tile")
    if is_array:
        level0 = np.asarray(level0)
        if level0.dtype != np.uint8:
            raise ValueError(f"level0 must be uint8, got {level0.dtype}")
    height, width, factors = _check_args(tuple(level0.shape), mpp, app_mag, tile, downsamples,
                                         quality)
    ds = [int(d) for d in downsamples]
    level_shapes = [(height // d, width // d, 3) for d in ds]
    bigtiff = sum(h * w * 3 for h, w, _ in level_shapes) > _BIGTIFF_LIMIT
    workers = max(1, min(4, os.cpu_count() or 1))
    common: dict[str, Any] = dict(
        photometric="rgb", compression="jpeg", compressionargs={"level": int(quality)},
        metadata=None, software=False, maxworkers=workers, buffersize=16 * 2**20,
    )
    desc0 = aperio_description(width, height, tile, quality, mpp=mpp, app_mag=app_mag)
    tmp_path = path.with_name(f".{path.name}.tmp{os.getpid()}")
    levels: list[_Level] = []
    try:
        with tempfile.TemporaryDirectory(prefix="multimag_svs_") as tmpdir, \
                tifffile.TiffWriter(tmp_path, bigtiff=bigtiff) as tif:
            # page 0: level 0; lower levels are built on the way (from the array,
            # or from the level-0 strips as they stream past)
            if is_array:
                prev = level0
                for f, shp in zip(factors, level_shapes[1:], strict=True):
                    lvl = _Level(shp, None)
                    lvl.append(box_downsample(prev, f))
                    lvl.check_done()
                    levels.append(lvl)
                    prev = lvl.arr
                tif.write(level0, tile=(tile, tile), description=desc0, **_res_kw(mpp, 1),
                          **common)
            else:
                sink = None
                if factors:
                    levels.append(_Level(level_shapes[1], tmpdir))
                    sink = _RowDownsampler(levels[0], factors[0])
                tif.write(_stream_level0(level0, height, width, tile, sink),
                          shape=(height, width, 3), dtype=np.uint8, tile=(tile, tile),
                          description=desc0, **_res_kw(mpp, 1), **common)
                if levels:
                    levels[0].check_done()
                for f, shp in zip(factors[1:], level_shapes[2:], strict=True):
                    lvl = _Level(shp, tmpdir)
                    _downsample_level(levels[-1], lvl, f)
                    levels.append(lvl)

            # page 1: thumbnail, stripped, as Aperio writes it
            if levels:
                thumb = _thumbnail(levels)
            else:
                whole = level0 if is_array else np.concatenate(
                    list(_stream_level0(level0, height, width, max(height, width), None)))
                thumb = box_downsample(whole, max(1, math.ceil(max(height, width)
                                                               / THUMBNAIL_MAX)))
            th, tw = thumb.shape[:2]
            tif.write(thumb, rowsperstrip=16,
                      description=f"{APERIO_HEADER}\r\n{width}x{height} -> {tw}x{th} - ",
                      **common)

            # pages 2..: the lower pyramid levels, tiled
            for d, lvl in zip(ds[1:], levels, strict=True):
                lh, lw = lvl.shape[:2]
                tif.write(_level_tiles(lvl, tile), shape=lvl.shape, dtype=np.uint8,
                          tile=(tile, tile),
                          description=_level_description(width, height, tile, quality, lw, lh),
                          **_res_kw(mpp, d), **common)
            for lvl in levels:
                lvl.close()
        os.replace(tmp_path, path)
    finally:
        for lvl in levels:
            lvl.close()
        if tmp_path.exists():
            tmp_path.unlink()
