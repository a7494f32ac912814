"""A Zarr v3 array-to-bytes codec that stores each RGB patch as one JPEG.

Registered under the name ``multimag.jpeg`` twice: here, when the module is
imported, and through the ``zarr.codecs`` entry point in ``pyproject.toml``, so
that any process with multimag installed reopens a store with plain
``zarr.open`` without importing multimag first. Encoding and decoding run in
threads (imagecodecs releases the GIL), as zarr's own zstd codec does.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

import imagecodecs
import numpy as np
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.common import JSON, parse_named_configuration
from zarr.registry import register_codec

if TYPE_CHECKING:
    from typing import Self

    from zarr.core.array_spec import ArraySpec
    from zarr.core.buffer import Buffer, NDBuffer

CODEC_NAME = "multimag.jpeg"


@dataclass(frozen=True)
class JpegCodec(ArrayBytesCodec):
    """JPEG for chunks of shape ``(1, H, W, 3)`` uint8 (one patch per chunk)."""

    is_fixed_size = False
    quality: int = 90

    def __init__(self, *, quality: int = 90) -> None:
        if not 1 <= int(quality) <= 100:
            raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
        object.__setattr__(self, "quality", int(quality))

    @classmethod
    def from_dict(cls, data: dict[str, JSON]) -> Self:
        _, configuration = parse_named_configuration(data, CODEC_NAME,
                                                     require_configuration=False)
        return cls(**(configuration or {}))  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, JSON]:
        return {"name": CODEC_NAME, "configuration": {"quality": self.quality}}

    def validate(self, *, shape, dtype, chunk_grid) -> None:  # type: ignore[override]
        native = dtype.to_native_dtype()
        if native != np.uint8 or len(shape) != 4 or shape[-1] != 3:
            raise ValueError(f"{CODEC_NAME} stores (N, H, W, 3) uint8 arrays, "
                             f"not {shape} {native}")

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        image = imagecodecs.jpeg8_decode(chunk_bytes.as_numpy_array())
        return chunk_spec.prototype.nd_buffer.from_numpy_array(
            image.reshape(chunk_spec.shape))

    def _encode_sync(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        patches = chunk_array.as_numpy_array()
        if patches.shape[0] != 1:
            raise ValueError(f"{CODEC_NAME} needs one patch per chunk, got {patches.shape}")
        encoded = imagecodecs.jpeg8_encode(np.ascontiguousarray(patches[0]),
                                           level=self.quality)
        return chunk_spec.prototype.buffer.from_bytes(encoded)

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        return await asyncio.to_thread(self._decode_sync, chunk_bytes, chunk_spec)

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec
                             ) -> Buffer | None:
        return await asyncio.to_thread(self._encode_sync, chunk_array, chunk_spec)

    def compute_encoded_size(self, input_byte_length: int, chunk_spec: ArraySpec) -> int:
        raise NotImplementedError  # variable size


register_codec(CODEC_NAME, JpegCodec)
