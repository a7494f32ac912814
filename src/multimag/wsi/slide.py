"""The reader interface: one slide, whatever library reads it, and how to open it.

Every read is addressed on a pyramid level's own pixel grid and returns RGB uint8
pixels, white outside the slide. Two readers implement it: tiffslide
(:mod:`multimag.wsi.tiffslide_reader`) and openslide
(:mod:`multimag.wsi.openslide_reader`); docs/wsi.md describes both. A slide object
is for one thread; worker processes reopen it from :meth:`Slide.source`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from multimag.errors import ResolutionError, SlideFormatError, SlideNotFoundError, SlideReadError
from multimag.wsi.geometry import Pyramid
from multimag.wsi.tile_decoding import TileCache, reduce_pixels

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


def damaged_file_fix(path: Path) -> str:
    """The fix to suggest for a slide file that cannot be read."""
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

    def _decode_error(self, what: str, exc: Exception) -> SlideReadError:
        return SlideReadError(f"{what} cannot be decoded ({type(exc).__name__}: {exc})",
                              slide=self.slide_id, path=self.path,
                              fix=damaged_file_fix(self.path))

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
                raise self._decode_error(f"level {lv.index}", exc) from exc

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def positive_number(value: object) -> float | None:
    """``value`` as a finite positive float (a metadata field), else None."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


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
                               fix=damaged_file_fix(path))
    if reader == "tiffslide":
        from multimag.wsi.tiffslide_reader import TiffSlideReader

        slide: Slide = TiffSlideReader(path, slide_id, mpp, cache_mb=cache_mb)
    else:
        from multimag.wsi.openslide_reader import OpenSlideReader

        slide = OpenSlideReader(path, slide_id, mpp)
    if test_read:
        try:
            slide.test_read()
        except BaseException:
            slide.close()
            raise
    return slide
