"""Helpers for decoded tiles: integer area reduction, the buffer tiles are decoded
into, the byte-bounded cache that keeps them, and JPEG decoding straight into a
buffer exactly as tifffile decodes the tile."""

from __future__ import annotations

from collections import OrderedDict

import cv2
import imagecodecs
import numpy as np
from PIL import Image


def reduce_pixels(pixels: np.ndarray, factor: int) -> np.ndarray:
    """Area-average by an integer factor (rounded); a partial block at the
    right or bottom edge is the mean of the pixels it has.

    OpenCV's INTER_AREA computes exactly this for whole blocks, several times
    faster than Pillow's ``reduce``; Pillow handles the rare partial edge tile.
    """
    if factor == 1:
        return pixels
    h, w = pixels.shape[:2]
    if h % factor == 0 and w % factor == 0:
        return cv2.resize(pixels, (w // factor, h // factor), interpolation=cv2.INTER_AREA)
    return np.asarray(Image.fromarray(np.ascontiguousarray(pixels)).reduce(factor))


def decode_buffer(height: int, width: int) -> np.ndarray:
    """A ``(height, width, 3)`` uint8 array to decode tiles into, one after another,
    each read at once (:meth:`~multimag.wsi.slide.Slide.decode_tile`). Its rows start
    8 bytes past a 16-byte boundary: libjpeg-turbo writes a row that starts on a 16-
    or 32-byte boundary with non-temporal stores, which bypass the CPU cache and slow
    down a buffer that is read straight away (see docs/wsi.md)."""
    nbytes = height * width * 3
    raw = np.empty(nbytes + 16, np.uint8)
    start = (8 - raw.ctypes.data) % 16
    return raw[start:start + nbytes].reshape(height, width, 3)


def jpeg_into_args(page, data: bytes, out: np.ndarray) -> dict | None:
    """The arguments with which imagecodecs decodes the JPEG tiles of a tifffile
    ``page`` into ``out`` as tifffile would decode them, or None where that does not
    apply; checked against tifffile's own decoding of the tile ``data``."""
    if not (page.compression == 7 and page.bitspersample == 8 and page.samplesperpixel == 3
            and page.planarconfig == 1):
        return None
    from tifffile.tifffile import jpeg_decode_colorspace

    colorspace, outcolorspace = jpeg_decode_colorspace(
        page.photometric, page.planarconfig, page.extrasamples, page.is_jfif)
    args = {"bitspersample": 8, "tables": page.jpegtables, "header": page.jpegheader,
            "colorspace": colorspace, "outcolorspace": outcolorspace, "shape": out.shape[:2]}
    try:
        mine = imagecodecs.jpeg_decode(data, out=out, **args)
        theirs, _, _ = page.decode(data, 0, jpegtables=page.jpegtables,
                                   jpegheader=page.jpegheader)
        if mine is not out or not np.array_equal(theirs.reshape(out.shape), out):
            return None
    except Exception:  # tifffile's own decoding reports a damaged tile
        return None
    return args


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
