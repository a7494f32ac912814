"""The openslide reader, for formats tifffile cannot read (MIRAX, DICOM, ...).

On a level whose downsample is not an integer, openslide interpolates at the
fractional position ``x0 / downsample``; the returned :class:`Region` says where
its first pixel lies so that callers resample exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from multimag.errors import SlideFormatError
from multimag.wsi.slide import WHITE, Region, Slide, damaged_file_fix, positive_number


class OpenSlideReader(Slide):
    """Everything through openslide, transparent pixels composited onto white."""

    reader = "openslide"

    def __init__(self, path: Path, slide_id: str, mpp_override: float | None) -> None:
        import openslide

        try:
            self._openslide = openslide.OpenSlide(str(path))
        except Exception as exc:
            raise SlideFormatError(f"openslide cannot open it ({type(exc).__name__}: {exc})",
                                   slide=slide_id, path=path, fix=damaged_file_fix(path)) from exc
        props = self._openslide.properties
        dimensions = [tuple(map(int, d)) for d in self._openslide.level_dimensions]
        super().__init__(path, slide_id, dimensions,
                         positive_number(props.get("openslide.mpp-x")),
                         positive_number(props.get("openslide.objective-power")), mpp_override)
        self._downsamples = list(self._openslide.level_downsamples)

    def _read(self, level: int, x: int, y: int, w: int, h: int) -> Region:
        downsample = self._downsamples[level]
        x0, y0 = round(x * downsample), round(y * downsample)
        try:
            rgba = np.asarray(self._openslide.read_region((x0, y0), level, (w, h)))
        except Exception as exc:
            raise self._decode_error(f"level {level} at ({x}, {y})", exc) from exc
        alpha = rgba[..., 3:4].astype(np.uint16)
        rgb = (rgba[..., :3] * alpha + WHITE * (255 - alpha) + 127) // 255
        if level == 0:
            return Region(rgb.astype(np.uint8), x0, y0)
        return Region(rgb.astype(np.uint8), x0 / downsample, y0 / downsample)

    def close(self) -> None:
        self._openslide.close()
