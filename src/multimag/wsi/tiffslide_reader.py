"""The tiffslide reader: tifffile's tiles, each decoded once.

Region reads keep the decoded tiles, and each tile reduced by the integer factors
asked for, in a byte-bounded cache. Exact on every level, whatever the level's
downsample.
"""

from __future__ import annotations

import os
from pathlib import Path

import imagecodecs
import numpy as np

from multimag.errors import SlideFormatError
from multimag.wsi.slide import WHITE, Region, Slide, damaged_file_fix, positive_number
from multimag.wsi.tile_decoding import TileCache, jpeg_into_args, reduce_pixels


class TiffSlideReader(Slide):
    """Metadata from tiffslide; pixels from each TIFF tile's bytes, decoded with
    imagecodecs (JPEG straight into a caller's buffer) or tifffile, kept in a
    :class:`TileCache` together with the reductions asked for."""

    reader = "tiffslide"

    def __init__(self, path: Path, slide_id: str, mpp_override: float | None,
                 cache_mb: int = 128) -> None:
        import tifffile
        import tiffslide

        try:
            self._tiffslide = tiffslide.TiffSlide(str(path))
            dims = [tuple(map(int, d)) for d in self._tiffslide.level_dimensions]
            props = self._tiffslide.properties
        except Exception as exc:
            raise SlideFormatError(f"tiffslide cannot open it ({type(exc).__name__}: {exc})",
                                   slide=slide_id, path=path, fix=damaged_file_fix(path)) from exc
        try:
            tiff: tifffile.TiffFile = self._tiffslide.ts_tifffile
            series = tiff.series[int(props.get("tiffslide.series-index") or 0)]
            self._pages = [lvl.keyframe for lvl in series.levels]
        except Exception as exc:
            self._tiffslide.close()
            raise SlideFormatError(f"no pyramid series ({exc})", slide=slide_id, path=path,
                                   fix=damaged_file_fix(path)) from exc
        try:
            super().__init__(path, slide_id, dims,
                             positive_number(props.get("tiffslide.mpp-x")),
                             positive_number(props.get("tiffslide.objective-power")),
                             mpp_override)
            for page, (w, h) in zip(self._pages, dims, strict=True):
                if (page.imagewidth, page.imagelength) != (w, h) or page.dtype != np.uint8:
                    raise SlideFormatError(
                        f"unsupported level layout {page.shape} {page.dtype}", slide=slide_id,
                        path=path, fix="use reader: openslide for this slide")
            self._check_offsets(path)
        except BaseException:
            self._tiffslide.close()
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
                    fix=damaged_file_fix(path))

    def keep(self, tiles: set[tuple[int, int, int, int]]) -> None:
        self.tile_cache.keep = set(tiles)

    def tile_size(self, level: int) -> tuple[int, int] | None:
        page = self._pages[level]
        if page.is_tiled:
            return page.tilelength, page.tilewidth
        return page.rowsperstrip or page.imagelength, page.imagewidth

    def _jpeg_into(self, level: int, data: bytes, out: np.ndarray) -> dict | None:
        """How imagecodecs decodes this level's JPEG tiles into a buffer like ``out``
        (:func:`jpeg_into_args`), worked out once per level."""
        if level not in self._into:
            self._into[level] = jpeg_into_args(self._pages[level], data, out) \
                if out.shape == (*self.tile_size(level), 3) else None
        return self._into[level]

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
            raise self._decode_error(f"tile {index} of level {level}", exc) from exc
        tile = decoded[:h, :w, :3]
        if tile.shape[2] == 1:
            tile = np.repeat(tile, 3, axis=2)
        return tile if (h, w) == (th, tw) and tile.flags.c_contiguous \
            else np.ascontiguousarray(tile)

    def _decode_cached(self, level: int, ty: int, tx: int) -> np.ndarray:
        key = (level, 1, ty, tx)
        tile = self.tile_cache.get(key)
        if tile is not None:
            return tile
        tile = self.decode_tile(level, ty, tx)
        self.tile_cache.put(key, tile)
        for factor in self._factors[level]:
            self.tile_cache.put((level, factor, ty, tx), reduce_pixels(tile, factor))
        return tile

    def _cached_tile(self, level: int, factor: int, ty: int, tx: int) -> np.ndarray:
        key = (level, factor, ty, tx)
        tile = self.tile_cache.get(key)
        if tile is None:
            if factor > 1:
                self._factors[level].add(factor)
            full = self._decode_cached(level, ty, tx)
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
                    tile = self._cached_tile(level, factor, ty, tx)
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
        self._tiffslide.close()
