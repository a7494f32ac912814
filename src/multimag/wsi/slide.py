"""One reader interface over openslide and tiffslide.

Every read is addressed on a pyramid level's own pixel grid and returns RGB
uint8 pixels, white outside the slide (openslide's transparent pixels are
composited onto white, tiffslide's zero padding is replaced by white).

* ``tiffslide`` (default): metadata from tiffslide; pixels by reading each
  TIFF tile's bytes at its offset and decoding it with imagecodecs (JPEG tiles
  straight into a caller's buffer, :meth:`Slide.decode_tile`, which the tiler's
  bands use; other codecs through tifffile). Region reads keep the decoded
  tiles, and each tile reduced by the integer factors asked for, in a
  byte-bounded cache. Exact on every level, whatever the level's downsample.
* ``openslide``: everything through openslide (formats tifffile cannot read:
  MIRAX, DICOM, ...). On a level whose downsample is not an integer, openslide
  interpolates at the fractional position ``x0 / downsample``; the returned
  :class:`Region` says where its first pixel lies so callers resample exactly.

A slide object is for one thread. The tiler parallelises with processes, each
reopening the slide from :meth:`Slide.source`.
"""

from __future__ import annotations

import logging
import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import cv2
import imagecodecs
import numpy as np
from PIL import Image

from multimag.errors import ResolutionError, SlideFormatError, SlideNotFoundError, SlideReadError
from multimag.wsi.geometry import Pyramid

READERS = ("tiffslide", "openslide")
# tifffile logs what it finds wrong in a file; the error we raise says it once
logging.getLogger("tifffile").setLevel(logging.CRITICAL)
WHITE = 255


@dataclass(frozen=True)
class Region:
    """Pixels of one level; ``(ox, oy)`` is the level coordinate of pixel (0, 0)'s corner."""

    pixels: np.ndarray
    ox: float
    oy: float


@dataclass(frozen=True)
class SlideSource:
    """What it takes to open a slide again, in another process, exactly as it is open
    here (same reader, same resolved pixel size, no test read)."""

    path: Path
    slide_id: str
    reader: str
    mpp: float
    cache_mb: int

    def open(self) -> Slide:
        return open_slide(self.path, slide_id=self.slide_id, reader=self.reader, mpp=self.mpp,
                          cache_mb=self.cache_mb, test_read=False)


def _fix_for(path: Path) -> str:
    return (f"check that {path.name} is a complete whole-slide image (re-copy or re-export it), "
            "or remove it from samples.tsv")


class Slide:
    """Base class: metadata, resolution and level reads shared by the backends."""

    reader: str = ""
    cache_mb: int = 0  # of decoded tiles kept by this reader
    tile_cache: TileCache | None = None

    def __init__(self, path: Path, slide_id: str, dimensions: list[tuple[int, int]],
                 metadata_mpp: float | None, objective_power: float | None,
                 mpp_override: float | None) -> None:
        self.path = path
        self.slide_id = slide_id
        self.objective_power = objective_power
        self.metadata_mpp = metadata_mpp
        if mpp_override is not None and not (math.isfinite(mpp_override) and mpp_override > 0):
            raise ResolutionError(f"mpp override {mpp_override!r} is not a positive number",
                                  slide=slide_id, path=path, fix="give mpp in um/px, e.g. 0.25")
        if mpp_override is not None:
            mpp, self.mpp_source = float(mpp_override), "override"
        elif metadata_mpp is not None:
            mpp, self.mpp_source = float(metadata_mpp), "metadata"
        else:
            raise ResolutionError(
                "the slide has no pixel size (mpp) in its metadata and none was given",
                slide=slide_id, path=path,
                fix="add the level-0 um/px in the mpp column of samples.tsv (or pass --mpp)",
            )
        self.pyramid = Pyramid.from_dimensions(dimensions, mpp)

    # -- to implement -----------------------------------------------------------------
    def _read(self, level: int, x: int, y: int, w: int, h: int) -> Region:
        """Level pixels ``[x, x+w) x [y, y+h)``, clipped to the level (caller pads)."""
        raise NotImplementedError

    def read_reduced(self, level: int, factor: int, x: int, y: int, w: int, h: int
                     ) -> np.ndarray | None:
        """Pixels of ``level`` area-reduced by integer ``factor``, exactly on that grid
        (pixel ``i`` averages level pixels ``[factor*i, factor*(i+1))``), or ``None``
        when this backend cannot deliver them exactly."""
        region = self.read(level, x * factor, y * factor, w * factor, h * factor)
        if region.ox != x * factor or region.oy != y * factor:
            return None
        return reduce_pixels(region.pixels, factor)

    def tile_size(self, level: int) -> tuple[int, int] | None:
        """(tile height, tile width) of a level when reads are tile-based, else None."""
        return None

    def keep(self, tiles: set[tuple[int, int, int, int]]) -> None:
        """Tiles ``(level, factor, tile row, tile column)``, reduced by ``factor``, that
        will be read again long after their neighbours: a reader with a cache sets
        them aside rather than dropping them when it is full."""

    def decode_tile(self, level: int, ty: int, tx: int, out: np.ndarray | None = None
                    ) -> np.ndarray:
        """Tile ``(ty, tx)`` of a tile-based level (:meth:`tile_size`), decoded and not
        cached: RGB uint8 ``(h, w, 3)``, clipped to the level. With ``out`` (a
        contiguous ``(tile height, tile width, 3)`` uint8 array) the decoder writes
        into it where it can, and the result may be a view of it."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    # -- shared -----------------------------------------------------------------------
    @property
    def mpp(self) -> float:
        return self.pyramid.mpp

    def source(self) -> SlideSource:
        return SlideSource(self.path, self.slide_id, self.reader, self.mpp, self.cache_mb)

    def read(self, level: int, x: int, y: int, w: int, h: int) -> Region:
        """Level pixels ``[x, x+w) x [y, y+h)``; white where that lies outside the slide."""
        lv = self.pyramid.levels[level]
        cx0, cy0 = max(0, x), max(0, y)
        cx1, cy1 = min(lv.width, x + w), min(lv.height, y + h)
        if cx0 >= cx1 or cy0 >= cy1:
            return Region(np.full((h, w, 3), WHITE, np.uint8), x, y)
        inner = self._read(level, cx0, cy0, cx1 - cx0, cy1 - cy0)
        if (cx0, cy0, cx1, cy1) == (x, y, x + w, y + h):
            return inner
        out = np.full((h, w, 3), WHITE, np.uint8)
        ih, iw = inner.pixels.shape[:2]
        out[cy0 - y:cy0 - y + ih, cx0 - x:cx0 - x + iw] = inner.pixels
        return Region(out, inner.ox - (cx0 - x), inner.oy - (cy0 - y))

    def _damaged(self, what: str, exc: Exception) -> SlideReadError:
        return SlideReadError(f"{what} cannot be decoded ({type(exc).__name__}: {exc})",
                              slide=self.slide_id, path=self.path, fix=_fix_for(self.path))

    def test_read(self) -> None:
        """Decode a little of every level, so a slide that opens but cannot be
        decoded fails before any output is written."""
        for lv in self.pyramid.levels:
            w, h = min(lv.width, 64), min(lv.height, 64)
            try:
                self.read(lv.index, (lv.width - w) // 2, (lv.height - h) // 2, w, h)
            except SlideReadError:
                raise
            except Exception as exc:
                raise self._damaged(f"level {lv.index}", exc) from exc

    def describe(self) -> dict:
        return {
            "reader": self.reader,
            "mpp": self.mpp,
            "mpp_source": self.mpp_source,
            "metadata_mpp": self.metadata_mpp,
            "objective_power": self.objective_power,
            "level_dimensions": [[lv.width, lv.height] for lv in self.pyramid.levels],
            "level_scales": [[lv.scale_x, lv.scale_y] for lv in self.pyramid.levels],
        }

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def reduce_pixels(pixels: np.ndarray, factor: int) -> np.ndarray:
    """Area-average by an integer factor (rounded); a partial block at the
    right or bottom edge is the mean of the pixels it has.

    OpenCV's INTER_AREA computes exactly this for whole blocks, about 8x faster
    than Pillow's ``reduce`` (which the tiler's budget notices); Pillow handles
    the rare partial edge tile.
    """
    if factor == 1:
        return pixels
    h, w = pixels.shape[:2]
    if h % factor == 0 and w % factor == 0:
        return cv2.resize(pixels, (w // factor, h // factor), interpolation=cv2.INTER_AREA)
    return np.asarray(Image.fromarray(np.ascontiguousarray(pixels)).reduce(factor))


def decode_buffer(height: int, width: int) -> np.ndarray:
    """A ``(height, width, 3)`` uint8 array to decode tiles into, one after another,
    each read at once (:meth:`Slide.decode_tile`). Its rows start 8 bytes past a
    16-byte boundary: libjpeg-turbo's SIMD colour conversion writes a row that starts
    on a 16- or 32-byte boundary with non-temporal stores, which bypass the CPU
    cache. That suits output read much later, not a buffer read straight away: a
    tile decodes 30-40% slower into such a buffer (benchmarks/README.md), and where
    numpy puts a new array decides it by chance."""
    nbytes = height * width * 3
    raw = np.empty(nbytes + 16, np.uint8)
    start = (8 - raw.ctypes.data) % 16
    return raw[start:start + nbytes].reshape(height, width, 3)


def _positive_float(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


# -- tiffslide: tifffile tiles, decoded once ------------------------------------------------

class TileCache:
    """Byte-bounded LRU of decoded (and reduced) tiles. Tiles in ``keep`` that fall
    out of it are set aside until they are next read, up to half as many bytes again
    (beyond that, the longest set aside are dropped)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self.keep: set[tuple] = set()
        self._aside: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self.aside_bytes = 0

    def get(self, key: tuple) -> np.ndarray | None:
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
        elif self._aside and (item := self._aside.pop(key, None)) is not None:
            self.aside_bytes -= item.nbytes
            self.keep.discard(key)  # back in use: the LRU keeps it from here on
            self.put(key, item)
        return item

    def put(self, key: tuple, value: np.ndarray) -> None:
        if key in self._items:
            return
        self._items[key] = value
        self.bytes += value.nbytes
        while self.bytes > self.max_bytes and len(self._items) > 1:
            old_key, old = self._items.popitem(last=False)
            self.bytes -= old.nbytes
            if old_key in self.keep:
                self._aside[old_key] = old
                self.aside_bytes += old.nbytes
                while self.aside_bytes > self.max_bytes // 2:
                    self.aside_bytes -= self._aside.popitem(last=False)[1].nbytes


class TiffSlideSlide(Slide):
    reader = "tiffslide"

    def __init__(self, path: Path, slide_id: str, mpp_override: float | None,
                 cache_mb: int = 128) -> None:
        import tifffile
        import tiffslide

        try:
            self._ts = tiffslide.TiffSlide(str(path))
            dims = [tuple(map(int, d)) for d in self._ts.level_dimensions]
            props = self._ts.properties
        except Exception as exc:
            raise SlideFormatError(f"tiffslide cannot open it ({type(exc).__name__}: {exc})",
                                   slide=slide_id, path=path, fix=_fix_for(path)) from exc
        try:
            tf: tifffile.TiffFile = self._ts.ts_tifffile
            series = tf.series[int(props.get("tiffslide.series-index") or 0)]
            self._pages = [lvl.keyframe for lvl in series.levels]
        except Exception as exc:
            self._ts.close()
            raise SlideFormatError(f"no pyramid series ({exc})", slide=slide_id, path=path,
                                   fix=_fix_for(path)) from exc
        try:
            super().__init__(path, slide_id, dims,
                             _positive_float(props.get("tiffslide.mpp-x")),
                             _positive_float(props.get("tiffslide.objective-power")),
                             mpp_override)
            for page, (w, h) in zip(self._pages, dims, strict=True):
                if (page.imagewidth, page.imagelength) != (w, h) or page.dtype != np.uint8:
                    raise SlideFormatError(
                        f"unsupported level layout {page.shape} {page.dtype}", slide=slide_id,
                        path=path, fix="use reader: openslide for this slide")
            self._check_offsets(path)
        except BaseException:
            self._ts.close()
            raise
        self._fd = os.open(path, os.O_RDONLY)
        self.cache_mb = cache_mb
        self.tile_cache = TileCache(cache_mb * 2**20)
        self._into: dict[int, dict | None] = {}  # per level: see _jpeg_into
        # per level: the reduction factors asked for so far; a tile is reduced by
        # them as soon as it is decoded, while its pixels are still in the CPU cache
        self._factors: list[set[int]] = [set() for _ in self._pages]

    def _check_offsets(self, path: Path) -> None:
        size = path.stat().st_size
        for page in self._pages:
            ends = np.asarray(page.dataoffsets, np.int64) + np.asarray(page.databytecounts,
                                                                      np.int64)
            if len(ends) and ends.max() > size:
                raise SlideFormatError(
                    f"truncated: level {self._pages.index(page)} needs {int(ends.max())} bytes "
                    f"but the file has {size}", slide=self.slide_id, path=path,
                    fix=_fix_for(path))

    def keep(self, tiles: set[tuple[int, int, int, int]]) -> None:
        self.tile_cache.keep = set(tiles)

    def tile_size(self, level: int) -> tuple[int, int] | None:
        page = self._pages[level]
        if page.is_tiled:
            return page.tilelength, page.tilewidth
        return page.rowsperstrip or page.imagelength, page.imagewidth

    def _jpeg_into(self, level: int, data: bytes, out: np.ndarray) -> dict | None:
        """The arguments with which imagecodecs decodes this level's JPEG tiles into a
        buffer, as tifffile would decode them; None where that does not apply.
        Checked once per level against tifffile's own decoding of ``data``."""
        if level in self._into:
            return self._into[level]
        page, args = self._pages[level], None
        if page.compression == 7 and page.bitspersample == 8 and page.samplesperpixel == 3 \
                and page.planarconfig == 1 and out.shape == (*self.tile_size(level), 3):
            from tifffile.tifffile import jpeg_decode_colorspace

            colorspace, outcolorspace = jpeg_decode_colorspace(
                page.photometric, page.planarconfig, page.extrasamples, page.is_jfif)
            args = {"bitspersample": 8, "tables": page.jpegtables, "header": page.jpegheader,
                    "colorspace": colorspace, "outcolorspace": outcolorspace,
                    "shape": out.shape[:2]}
            try:
                mine = imagecodecs.jpeg_decode(data, out=out, **args)
                theirs, _, _ = page.decode(data, 0, jpegtables=page.jpegtables,
                                           jpegheader=page.jpegheader)
                if mine is not out or not np.array_equal(theirs.reshape(out.shape), out):
                    args = None
            except Exception:  # tifffile's own decoding reports a damaged tile
                args = None
        self._into[level] = args
        return args

    def decode_tile(self, level: int, ty: int, tx: int, out: np.ndarray | None = None
                    ) -> np.ndarray:
        page = self._pages[level]
        th, tw = self.tile_size(level)
        index = ty * -(-page.imagewidth // tw) + tx
        offset, count = page.dataoffsets[index], page.databytecounts[index]
        h = min(th, page.imagelength - ty * th)
        w = min(tw, page.imagewidth - tx * tw)
        if count == 0:  # sparse tile: nothing stored there
            return np.full((h, w, 3), WHITE, np.uint8)
        try:
            data = os.pread(self._fd, count, offset)
            args = None if out is None else self._jpeg_into(level, data, out)
            if args is not None:
                decoded = imagecodecs.jpeg_decode(data, out=out, **args)
            else:
                decoded, _, _ = page.decode(data, index, jpegtables=page.jpegtables,
                                            jpegheader=page.jpegheader)
                decoded = decoded.reshape(decoded.shape[-3:])
        except Exception as exc:
            raise self._damaged(f"tile {index} of level {level}", exc) from exc
        tile = decoded[:h, :w, :3]
        if tile.shape[2] == 1:
            tile = np.repeat(tile, 3, axis=2)
        return tile if (h, w) == (th, tw) and tile.flags.c_contiguous \
            else np.ascontiguousarray(tile)

    def _decode(self, level: int, ty: int, tx: int) -> np.ndarray:
        key = (level, 1, ty, tx)
        tile = self.tile_cache.get(key)
        if tile is not None:
            return tile
        tile = self.decode_tile(level, ty, tx)
        self.tile_cache.put(key, tile)
        for factor in self._factors[level]:
            self.tile_cache.put((level, factor, ty, tx), reduce_pixels(tile, factor))
        return tile

    def _tile(self, level: int, factor: int, ty: int, tx: int) -> np.ndarray:
        key = (level, factor, ty, tx)
        tile = self.tile_cache.get(key)
        if tile is None:
            if factor > 1:
                self._factors[level].add(factor)
            full = self._decode(level, ty, tx)
            tile = full if factor == 1 else self.tile_cache.get(key)
            if tile is None:  # decoded before this factor was first asked for
                tile = reduce_pixels(full, factor)
                self.tile_cache.put(key, tile)
        return tile

    def _assemble(self, level: int, factor: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        th, tw = self.tile_size(level)
        th, tw = th // factor, tw // factor
        out = np.empty((h, w, 3), np.uint8)
        cached = self.tile_cache.get  # the hot loop of region reads: one lookup per tile
        for ty in range(y // th, (y + h - 1) // th + 1):
            y0 = ty * th
            sy0 = max(y, y0)
            for tx in range(x // tw, (x + w - 1) // tw + 1):
                tile = cached((level, factor, ty, tx))
                if tile is None:
                    tile = self._tile(level, factor, ty, tx)
                x0 = tx * tw
                sx0 = max(x, x0)
                sy1, sx1 = min(y + h, y0 + tile.shape[0]), min(x + w, x0 + tile.shape[1])
                out[sy0 - y:sy1 - y, sx0 - x:sx1 - x] = tile[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0]
        return out

    def _read(self, level: int, x: int, y: int, w: int, h: int) -> Region:
        return Region(self._assemble(level, 1, x, y, w, h), x, y)

    def read_reduced(self, level: int, factor: int, x: int, y: int, w: int, h: int
                     ) -> np.ndarray | None:
        th, tw = self.tile_size(level)
        if th % factor or tw % factor:
            return super().read_reduced(level, factor, x, y, w, h)
        lv = self.pyramid.levels[level]
        rw, rh = -(-lv.width // factor), -(-lv.height // factor)
        if x >= 0 and y >= 0 and x + w <= rw and y + h <= rh:
            return self._assemble(level, factor, x, y, w, h)
        out = np.full((h, w, 3), WHITE, np.uint8)
        cx0, cy0, cx1, cy1 = max(0, x), max(0, y), min(rw, x + w), min(rh, y + h)
        if cx0 < cx1 and cy0 < cy1:
            out[cy0 - y:cy1 - y, cx0 - x:cx1 - x] = self._assemble(
                level, factor, cx0, cy0, cx1 - cx0, cy1 - cy0)
        return out

    def close(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None
        self._ts.close()


# -- openslide ----------------------------------------------------------------------------

class OpenSlideSlide(Slide):
    reader = "openslide"

    def __init__(self, path: Path, slide_id: str, mpp_override: float | None) -> None:
        import openslide

        try:
            self._os = openslide.OpenSlide(str(path))
        except Exception as exc:
            raise SlideFormatError(f"openslide cannot open it ({type(exc).__name__}: {exc})",
                                   slide=slide_id, path=path, fix=_fix_for(path)) from exc
        props = self._os.properties
        super().__init__(path, slide_id, [tuple(map(int, d)) for d in self._os.level_dimensions],
                         _positive_float(props.get("openslide.mpp-x")),
                         _positive_float(props.get("openslide.objective-power")), mpp_override)
        self._downsamples = list(self._os.level_downsamples)

    def _read(self, level: int, x: int, y: int, w: int, h: int) -> Region:
        ds = self._downsamples[level]
        x0, y0 = round(x * ds), round(y * ds)
        try:
            rgba = np.asarray(self._os.read_region((x0, y0), level, (w, h)))
        except Exception as exc:
            raise self._damaged(f"level {level} at ({x}, {y})", exc) from exc
        alpha = rgba[..., 3:4].astype(np.uint16)
        rgb = (rgba[..., :3] * alpha + WHITE * (255 - alpha) + 127) // 255
        return Region(rgb.astype(np.uint8), x0 / ds if level else x0, y0 / ds if level else y0)

    def close(self) -> None:
        self._os.close()


def open_slide(path: str | Path, *, slide_id: str | None = None, reader: str = "tiffslide",
               mpp: float | None = None, cache_mb: int = 128, test_read: bool = True) -> Slide:
    """Open a slide with the chosen reader, resolve its pixel size, and (by default)
    decode a little of every level so that broken files fail here, clearly."""
    path = Path(path)
    slide_id = slide_id or path.stem
    if reader not in READERS:
        raise SlideFormatError(f"unknown reader {reader!r}", slide=slide_id, path=path,
                               fix=f"set reader to one of {', '.join(READERS)}")
    if not path.exists():
        raise SlideNotFoundError("the slide file does not exist", slide=slide_id, path=path,
                                 fix="correct the path in samples.tsv (relative paths are "
                                 "resolved against the directory of samples.tsv)")
    if not path.is_file():
        raise SlideNotFoundError("the slide path is not a file", slide=slide_id, path=path,
                                 fix="point samples.tsv at the slide file itself")
    if path.stat().st_size == 0:
        raise SlideFormatError("the file is empty (0 bytes)", slide=slide_id, path=path,
                               fix=_fix_for(path))
    if reader == "tiffslide":
        slide: Slide = TiffSlideSlide(path, slide_id, mpp, cache_mb=cache_mb)
    else:
        slide = OpenSlideSlide(path, slide_id, mpp)
    if test_read:
        try:
            slide.test_read()
        except BaseException:
            slide.close()
            raise
    return slide
