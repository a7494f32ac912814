"""Write Aperio-style pyramidal SVS files with tifffile, read as real SVS by openslide
(vendor ``aperio``) and tiffslide (page layout: docs/demo.md).

Level 0 is an array, or a tile source read tile row by tile row for slides too big for
memory; both give byte-identical files.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import tifffile

from multimag.demo.pyramid import (
    LevelBuffer,
    RowDownsampler,
    box_downsample,
    downsample_level,
    level_tiles,
    strip_tiles,
)

__all__ = ["TileSource", "aperio_description", "write_svs"]

APERIO_HEADER = "Aperio Image Library v12.0.0 "
THUMBNAIL_MAX = 1024
_BIGTIFF_LIMIT = 2**31 - 2**25  # ~2 GB of uncompressed pixels, with headroom


@runtime_checkable
class TileSource(Protocol):
    """A level-0 image read tile by tile (for slides too big for memory)."""

    shape: tuple[int, ...]

    def tile(self, level_index: int, y0: int, x0: int, h: int, w: int) -> np.ndarray: ...


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


def _level_description(width: int, height: int, tile: int, quality: int, lw: int, lh: int) -> str:
    return (f"{APERIO_HEADER}\r\n{width}x{height} [0,0 {width}x{height}] "
            f"({tile}x{tile}) -> {lw}x{lh} JPEG/RGB Q={quality}")


def _resolution_tags(mpp: float | None, downsample: int) -> dict[str, Any]:
    """TIFF resolution tags (pixels per cm) of a level; none asked for when mpp is None.

    (tifffile then writes the baseline-required XResolution = YResolution = 1 with
    ResolutionUnit = NONE, which carries no physical size.)
    """
    if mpp is None:
        return {}
    res = 1e4 / (float(mpp) * downsample)
    return dict(resolution=(res, res), resolutionunit="CENTIMETER")


def _jpeg_page_options(quality: int) -> dict[str, Any]:
    """The tifffile options that every page shares: RGB JPEG, no extra metadata."""
    workers = max(1, min(4, os.cpu_count() or 1))
    return dict(photometric="rgb", compression="jpeg", compressionargs={"level": int(quality)},
                metadata=None, software=False, maxworkers=workers, buffersize=16 * 2**20)


def _check_args(shape: Sequence[int], mpp: float | None, app_mag: float | None, tile: int,
                downsamples: Sequence[int], quality: int) -> tuple[int, int, list[int]]:
    """Height, width and the level-to-level factors; ValueError on a bad argument."""
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


def _stream_level0(source: Any, height: int, width: int, tile: int,
                   sink: RowDownsampler | None) -> Iterator[np.ndarray]:
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
        yield from strip_tiles(strip, tile)


def _thumbnail(levels: list[LevelBuffer]) -> np.ndarray:
    """The finest lower level that fits in THUMBNAIL_MAX, else the coarsest one shrunk."""
    for lvl in levels:
        if max(lvl.shape[:2]) <= THUMBNAIL_MAX:
            return np.array(lvl.read(0, lvl.shape[0]))
    last = levels[-1]
    factor = math.ceil(max(last.shape[:2]) / THUMBNAIL_MAX)
    out = LevelBuffer((last.shape[0] // factor, last.shape[1] // factor, 3), None)
    downsample_level(last, out, factor)
    assert out.arr is not None
    return out.arr


@dataclass(frozen=True)
class _SvsPlan:
    """The checked arguments of ``write_svs``: sizes, tiles and metadata of every level."""

    height: int
    width: int
    tile: int
    quality: int
    mpp: float | None
    app_mag: float | None
    downsamples: list[int]
    factors: list[int]       # each lower level's downsample from the level above

    @property
    def level_shapes(self) -> list[tuple[int, int, int]]:
        return [(self.height // d, self.width // d, 3) for d in self.downsamples]


def _build_levels_from_array(level0: np.ndarray, plan: _SvsPlan,
                             levels: list[LevelBuffer]) -> None:
    """Append the lower levels, each box-downsampled from the one above, in memory."""
    prev = level0
    for factor, shape in zip(plan.factors, plan.level_shapes[1:], strict=True):
        lvl = LevelBuffer(shape, None)
        lvl.append(box_downsample(prev, factor))
        lvl.check_done()
        levels.append(lvl)
        prev = lvl.arr


def _write_level0(tif: tifffile.TiffWriter, level0: Any, is_array: bool, plan: _SvsPlan,
                  levels: list[LevelBuffer], tmpdir: str, page_options: dict[str, Any]) -> None:
    """Page 0 (level 0, tiled); the lower levels are built into ``levels`` on the way.

    From an array they are built first; from a tile source the first lower level is
    fed by the level-0 strips as they stream past, the others are built after it.
    """
    page0 = dict(tile=(plan.tile, plan.tile),
                 description=aperio_description(plan.width, plan.height, plan.tile,
                                                plan.quality, mpp=plan.mpp,
                                                app_mag=plan.app_mag),
                 **_resolution_tags(plan.mpp, 1), **page_options)
    if is_array:
        _build_levels_from_array(level0, plan, levels)
        tif.write(level0, **page0)
        return
    sink = None
    if plan.factors:
        levels.append(LevelBuffer(plan.level_shapes[1], tmpdir))
        sink = RowDownsampler(levels[0], plan.factors[0])
    tif.write(_stream_level0(level0, plan.height, plan.width, plan.tile, sink),
              shape=(plan.height, plan.width, 3), dtype=np.uint8, **page0)
    if levels:
        levels[0].check_done()
    for factor, shape in zip(plan.factors[1:], plan.level_shapes[2:], strict=True):
        lvl = LevelBuffer(shape, tmpdir)
        downsample_level(levels[-1], lvl, factor)
        levels.append(lvl)


def _write_thumbnail(tif: tifffile.TiffWriter, level0: Any, is_array: bool, plan: _SvsPlan,
                     levels: list[LevelBuffer], page_options: dict[str, Any]) -> None:
    """Page 1: the thumbnail, stripped, as Aperio writes it."""
    height, width = plan.height, plan.width
    if levels:
        thumb = _thumbnail(levels)
    else:
        whole = level0 if is_array else np.concatenate(
            list(_stream_level0(level0, height, width, max(height, width), None)))
        thumb = box_downsample(whole, max(1, math.ceil(max(height, width) / THUMBNAIL_MAX)))
    th, tw = thumb.shape[:2]
    tif.write(thumb, rowsperstrip=16,
              description=f"{APERIO_HEADER}\r\n{width}x{height} -> {tw}x{th} - ",
              **page_options)


def _write_lower_levels(tif: tifffile.TiffWriter, plan: _SvsPlan, levels: list[LevelBuffer],
                        page_options: dict[str, Any]) -> None:
    """Pages 2..: the lower pyramid levels, tiled."""
    for downsample, lvl in zip(plan.downsamples[1:], levels, strict=True):
        lh, lw = lvl.shape[:2]
        tif.write(level_tiles(lvl, plan.tile), shape=lvl.shape, dtype=np.uint8,
                  tile=(plan.tile, plan.tile),
                  description=_level_description(plan.width, plan.height, plan.tile,
                                                 plan.quality, lw, lh),
                  **_resolution_tags(plan.mpp, downsample), **page_options)


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
    plan = _SvsPlan(height, width, tile, quality, mpp, app_mag,
                    [int(d) for d in downsamples], factors)
    bigtiff = sum(h * w * 3 for h, w, _ in plan.level_shapes) > _BIGTIFF_LIMIT
    page_options = _jpeg_page_options(quality)
    tmp_path = path.with_name(f".{path.name}.tmp{os.getpid()}")
    levels: list[LevelBuffer] = []
    try:
        with tempfile.TemporaryDirectory(prefix="multimag_svs_") as tmpdir, \
                tifffile.TiffWriter(tmp_path, bigtiff=bigtiff) as tif:
            _write_level0(tif, level0, is_array, plan, levels, tmpdir, page_options)
            _write_thumbnail(tif, level0, is_array, plan, levels, page_options)
            _write_lower_levels(tif, plan, levels, page_options)
            for lvl in levels:
                lvl.close()
        os.replace(tmp_path, path)
    finally:
        for lvl in levels:
            lvl.close()
        if tmp_path.exists():
            tmp_path.unlink()
