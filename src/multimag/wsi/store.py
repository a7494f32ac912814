"""The per-slide patch store: the only module that knows its Zarr v3 schema.

It assembles the store's attributes, writes the store (the patch shards are
encoded and written by the processes that cut the patches) into a temporary
sibling that is renamed into place when complete, and reads patches back.
The schema and the shard layout are in docs/wsi.md.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import google_crc32c
import imagecodecs
import numpy as np
import zarr
from zarr.codecs import BytesCodec, ZstdCodec

from multimag import __version__
from multimag.errors import StoreError
from multimag.wsi.codecs import JpegCodec
from multimag.wsi.geometry import MagPlan

if TYPE_CHECKING:
    from multimag.wsi.patch_plan import PatchPlan, TilingConfig
    from multimag.wsi.slide import Slide
    from multimag.wsi.tissue import TissueMask

SCHEMA_VERSION = 1
COMPRESSIONS = ("jpeg", "zstd")
_EMPTY = 2**64 - 1


def sha256_first_mib(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read(2**20)).hexdigest()


def _source_attrs(path: Path) -> dict:
    return {"path": str(path.resolve()), "size": path.stat().st_size,
            "sha256_first_mib": sha256_first_mib(path)}


def _reader_attrs(slide: Slide) -> dict:
    levels = slide.pyramid.levels
    return {
        "reader": slide.reader,
        "mpp": slide.mpp,
        "mpp_source": slide.mpp_source,
        "metadata_mpp": slide.metadata_mpp,
        "objective_power": slide.objective_power,
        "level_dimensions": [[lv.width, lv.height] for lv in levels],
        "level_scales": [[lv.scale_x, lv.scale_y] for lv in levels],
    }


def _level_attrs(plan: MagPlan) -> dict:
    return {
        "magnification": plan.magnification,
        "array": plan.array_name,
        "patch_px": plan.side,
        "extent_level0": plan.extent,
        "target_mpp": plan.target_mpp,
        "level": plan.level.index,
        "level_mpp": plan.level_mpp,
        "level_scale": [plan.level.scale_x, plan.level.scale_y],
        "resample_factor": [plan.factor_x, plan.factor_y],
        "upsampled": plan.upsampled,
    }


def store_attrs(slide: Slide, patches: PatchPlan, config: TilingConfig, tissue: TissueMask,
                patient_id: str | None) -> dict:
    """What a slide's store records about its source, reader, plan and parameters
    (:class:`StoreWriter` adds the schema version, compression and package version)."""
    finest = patches.plans[0]
    return {
        "slide_id": slide.slide_id,
        "patient_id": patient_id,
        "source": _source_attrs(slide.path),
        **_reader_attrs(slide),
        "mode": config.mode,
        "patch_px": config.patch_px,
        "magnifications": [p.magnification for p in patches.plans],
        "resolution": {"base_magnification": config.resolution.base_magnification,
                       "base_mpp": config.resolution.base_mpp},
        "resample": config.resample,
        "levels": [_level_attrs(p) for p in patches.plans],
        "grid": {"stride_level0": (config.stride_px or finest.side) * finest.scale,
                 "stripe_columns": config.stripe_columns,
                 "order": "stripes of stripe_columns grid columns left to right; rows top "
                          "to bottom within a stripe; columns left to right within a row",
                 "candidates": patches.candidates},
        "tissue": {**{k: getattr(config.tissue, k) for k in config.tissue.__dataclass_fields__},
                   "min_fraction": config.min_tissue, "threshold": tissue.threshold,
                   "slide_fraction": tissue.fraction},
    }


def _patch_encoder(compression: str, quality: int, zstd_level: int
                   ) -> Callable[[np.ndarray], bytes]:
    if compression == "jpeg":
        return lambda patch: imagecodecs.jpeg8_encode(patch, level=quality)
    if compression == "zstd":
        return lambda patch: imagecodecs.zstd_encode(np.ascontiguousarray(patch).tobytes(),
                                                     level=zstd_level)
    raise StoreError(f"unknown compression {compression!r}",
                     fix=f"set store.compression to one of {', '.join(COMPRESSIONS)}")


def _shard_path(array_dir: Path, shard: int) -> Path:
    """The file of one shard of a patch array (one shard per row of shards)."""
    return array_dir / "c" / str(shard) / "0" / "0" / "0"


def _shard_bytes(chunks: Sequence[bytes], per_shard: int) -> bytes:
    """One shard: chunks back to back, then the (per_shard, 1, 1, 1, 2) index + crc32c."""
    index = np.full((per_shard, 2), _EMPTY, dtype="<u8")
    offset = 0
    for i, chunk in enumerate(chunks):
        index[i] = (offset, len(chunk))
        offset += len(chunk)
    index_bytes = index.tobytes()
    crc = struct.pack("<I", google_crc32c.value(index_bytes))
    return b"".join(chunks) + index_bytes + crc


@dataclass(frozen=True)
class ShardWriter:
    """Encodes runs of consecutive patch sets and writes each run as one shard of every
    patch array of a store being built. Picklable: tiling worker processes write
    their own shards."""

    root: Path
    arrays: tuple[tuple[str, int], ...]  # (array name, patch side), in plan order
    per_shard: int
    compression: str
    quality: int
    zstd_level: int

    def __call__(self, first: int, sets: Sequence[Sequence[np.ndarray]]) -> None:
        """Write patch sets ``first, first + 1, ...``: one whole shard, ``first`` a
        multiple of ``per_shard`` (only the last shard of a store may be short)."""
        if first % self.per_shard or not 0 < len(sets) <= self.per_shard:
            raise StoreError(f"{len(sets)} patch sets from {first} are not one shard of "
                             f"{self.per_shard}", path=self.root)
        encode = _patch_encoder(self.compression, self.quality, self.zstd_level)
        for m, (name, side) in enumerate(self.arrays):
            chunks = []
            for patches in sets:
                patch = patches[m]
                if patch.shape != (side, side, 3) or patch.dtype != np.uint8:
                    raise StoreError(f"{name} patch has shape {patch.shape} {patch.dtype}",
                                     path=self.root)
                chunks.append(encode(patch))
            target = _shard_path(self.root / name, first // self.per_shard)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(_shard_bytes(chunks, self.per_shard))


class StoreWriter:
    """Builds one slide's store: metadata here, patches through :attr:`shards`.

    Use as a context manager: on an exception the temporary store is removed;
    :meth:`commit` checks that every shard was written, marks the store complete
    and renames it into place.
    """

    def __init__(self, path: str | Path, *, centers: np.ndarray, tissue: np.ndarray,
                 plans: Sequence[MagPlan], attrs: dict, compression: str = "jpeg",
                 quality: int = 90, zstd_level: int = 5, shard_patches: int = 64) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self.n = len(centers)
        self.plans = tuple(plans)
        _patch_encoder(compression, quality, zstd_level)  # fail early on a bad name
        self.shards = ShardWriter(self.tmp, tuple((p.array_name, p.side) for p in self.plans),
                                  int(shard_patches), compression, quality, zstd_level)
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        group = zarr.open_group(self.tmp, mode="w", zarr_format=3)
        group.attrs.update({"schema_version": SCHEMA_VERSION, **attrs,
                            "compression": compression, "multimag_version": __version__})
        group.create_array("centers", data=np.asarray(centers, np.int64).reshape(-1, 2),
                           chunks=(max(1, min(self.n, 65536)), 2))
        group.create_array("tissue", data=np.asarray(tissue, np.float32).reshape(-1),
                           chunks=(max(1, min(self.n, 65536)),))
        for plan in self.plans:
            p = plan.side
            if compression == "jpeg":
                codecs = {"serializer": JpegCodec(quality=quality), "compressors": None}
            else:
                codecs = {"serializer": BytesCodec(), "compressors": ZstdCodec(level=zstd_level)}
            group.create_array(plan.array_name, shape=(self.n, p, p, 3), dtype="uint8",
                               chunks=(1, p, p, 3), shards=(self.shards.per_shard, p, p, 3),
                               fill_value=255, dimension_names=("patch", "y", "x", "rgb"),
                               **codecs)

    def commit(self, written: int, extra_attrs: dict | None = None) -> Path:
        """Finish the store; ``written`` is the number of patch sets the shards hold."""
        missing = [str(target.relative_to(self.tmp)) for plan in self.plans
                   for shard in range(-(-self.n // self.shards.per_shard))
                   if not (target := _shard_path(self.tmp / plan.array_name, shard)).exists()]
        if written != self.n or missing:
            raise StoreError(f"only {written} of {self.n} patches were written"
                             + (f"; missing shards {', '.join(missing[:3])}" if missing else ""),
                             path=self.path, fix="re-run the tile step")
        group = zarr.open_group(self.tmp, mode="r+")
        group.attrs.update({**(extra_attrs or {}), "complete": True})
        if self.path.exists():
            shutil.rmtree(self.path)
        os.replace(self.tmp, self.path)
        return self.path

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)


def open_store(path: str | Path) -> zarr.Group:
    """Open a finished store read-only, checking its schema version."""
    path = Path(path)
    if not path.exists():
        raise StoreError("the patch store does not exist", path=path,
                         fix="run `multimag tile` (or the workflow's tile rule) for this slide")
    try:
        group = zarr.open_group(path, mode="r")
    except Exception as exc:
        raise StoreError(f"not a Zarr v3 group ({exc})", path=path,
                         fix="delete it and re-run the tile step") from exc
    version = group.attrs.get("schema_version")
    if version != SCHEMA_VERSION or not group.attrs.get("complete"):
        raise StoreError(f"schema version {version!r} (complete={group.attrs.get('complete')}),"
                         f" this multimag reads version {SCHEMA_VERSION}", path=path,
                         fix="re-run the tile step with this version of multimag")
    return group


class PatchReader:
    """Batched random reads of one finished store's patches.

    The read side of :class:`StoreWriter`'s shards: each shard's index is read
    once and cached, each patch is one ``pread`` of its chunk's bytes and one
    decode into the output array, much cheaper than a zarr read per patch.
    Results equal ``zarr.open(store)[array][i]``. Open one reader per process
    (DataLoader workers open their own).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        group = open_store(self.path)
        self.attrs = dict(group.attrs)
        self.slide_id = str(self.attrs.get("slide_id", self.path.stem))
        self.centers = group["centers"][:]
        self.n = len(self.centers)
        self.compression = self.attrs.get("compression", "jpeg")
        self._arrays = {}
        with warnings.catch_warnings():  # Snakemake's .snakemake_timestamp is not zarr
            warnings.simplefilter("ignore")
            for name, array in group.arrays():
                if name.startswith("mag_"):
                    self._arrays[name] = (array.shape[1], array.shards[0])
        self._index: dict[tuple[str, int], np.ndarray | None] = {}

    @property
    def array_names(self) -> list[str]:
        return sorted(self._arrays)

    def side(self, array_name: str) -> int:
        return self._geometry(array_name)[0]

    def extent(self, array_name: str) -> float:
        """Side of the patches' field of view in level-0 pixels."""
        self._geometry(array_name)
        return next(float(level["extent_level0"]) for level in self.attrs["levels"]
                    if level["array"] == array_name)

    def _geometry(self, array_name: str) -> tuple[int, int]:
        try:
            return self._arrays[array_name]
        except KeyError:
            raise StoreError(f"no array {array_name!r} (it has {', '.join(self.array_names)})",
                             slide=self.slide_id, path=self.path,
                             fix="tile the slide at that magnification or remove it from "
                             "the config's magnifications") from None

    def _shard_index(self, array_name: str, shard: int, per_shard: int) -> np.ndarray | None:
        key = (array_name, shard)
        if key not in self._index:
            try:
                with open(_shard_path(self.path / array_name, shard), "rb") as fh:
                    fh.seek(-(per_shard * 16 + 4), os.SEEK_END)
                    self._index[key] = np.frombuffer(fh.read(per_shard * 16), "<u8"
                                                     ).reshape(per_shard, 2).copy()
            except FileNotFoundError:
                self._index[key] = None  # an unwritten shard: every patch is fill value
        return self._index[key]

    def read(self, array_name: str, patches: Sequence[int] | np.ndarray,
             out: np.ndarray | None = None) -> np.ndarray:
        """Patches ``patches`` of ``array_name`` as an (n, P, P, 3) uint8 array."""
        side = self.side(array_name)
        patches = np.asarray(patches, dtype=np.int64).reshape(-1)
        if len(patches) and (patches.min() < 0 or patches.max() >= self.n):
            bad = patches[(patches < 0) | (patches >= self.n)][0]
            raise StoreError(f"patch {bad} does not exist (the store has {self.n} patches)",
                             slide=self.slide_id, path=self.path,
                             fix="rebuild the indices from the current stores and labels")
        if out is None:
            out = np.empty((len(patches), side, side, 3), np.uint8)
        order = np.argsort(patches, kind="stable")  # shard by shard, file by file
        fd, open_shard = -1, -1
        try:
            for i in order:
                location = self._locate(array_name, int(patches[i]))
                if location is None:
                    out[i] = 255
                    continue
                shard, offset, nbytes = location
                if shard != open_shard:
                    if fd >= 0:
                        os.close(fd)
                    fd = os.open(_shard_path(self.path / array_name, shard), os.O_RDONLY)
                    open_shard = shard
                self._decode(os.pread(fd, nbytes, offset), out[i])
        finally:
            if fd >= 0:
                os.close(fd)
        return out

    def _locate(self, array_name: str, patch: int) -> tuple[int, int, int] | None:
        """(shard, offset, nbytes) of a patch's encoded chunk; None if it was never
        written (the fill value)."""
        per_shard = self._geometry(array_name)[1]
        shard, slot = divmod(patch, per_shard)
        index = self._shard_index(array_name, shard, per_shard)
        if index is None or index[slot, 0] == _EMPTY:
            return None
        return shard, int(index[slot, 0]), int(index[slot, 1])

    def encoded(self, array_name: str, patch: int) -> bytes | None:
        """The encoded bytes of one patch (what :meth:`read` decodes), None if unwritten."""
        location = self._locate(array_name, int(patch))
        if location is None:
            return None
        shard, offset, nbytes = location
        fd = os.open(_shard_path(self.path / array_name, shard), os.O_RDONLY)
        try:
            return os.pread(fd, nbytes, offset)
        finally:
            os.close(fd)

    def _decode(self, data: bytes, out: np.ndarray) -> None:
        if self.compression == "jpeg":
            imagecodecs.jpeg8_decode(data, out=out)
        else:
            out[...] = np.frombuffer(imagecodecs.zstd_decode(data), np.uint8).reshape(out.shape)
