"""Tissue mask on a low-resolution rendering of the slide, and the QC picture.

Otsu on HSV saturation (stained tissue is saturated, glass and background are
not), never below a floor so that an empty slide stays empty, then closing,
removal of small objects and filling of small holes, all sized in micrometres.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from skimage import filters, morphology, segmentation

from multimag.atomic import atomic_path
from multimag.errors import StoreError
from multimag.wsi.geometry import mask_fractions
from multimag.wsi.slide import Slide
from multimag.wsi.tile_decoding import reduce_pixels


@dataclass(frozen=True)
class TissueParams:
    mpp: float = 4.0  # pixel size of the mask (um/px)
    min_saturation: float = 0.05  # floor for the Otsu threshold
    closing_um: float = 16.0
    min_area_um2: float = 20000.0
    max_hole_um2: float = 5000.0


@dataclass
class TissueMask:
    mask: np.ndarray  # (h, w) bool
    thumbnail: np.ndarray  # (h, w, 3) uint8
    scale_x: float  # level-0 pixels per mask pixel
    scale_y: float
    threshold: float
    params: TissueParams

    @property
    def fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0

    def save(self, path: str | Path) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, mask=self.mask, thumbnail=self.thumbnail,
                                scale=np.array([self.scale_x, self.scale_y]),
                                threshold=np.array(self.threshold),
                                params=np.array(json.dumps(asdict(self.params))))

    @classmethod
    def load(cls, path: str | Path) -> TissueMask:
        try:
            with np.load(path) as data:
                return cls(data["mask"].astype(bool), data["thumbnail"],
                           float(data["scale"][0]), float(data["scale"][1]),
                           float(data["threshold"]),
                           TissueParams(**json.loads(str(data["params"]))))
        except (OSError, KeyError, ValueError) as exc:
            raise StoreError(f"not a tissue mask file ({exc})", path=path,
                             fix="re-run `multimag tissue` for this slide") from exc

    def fractions(self, boxes: np.ndarray) -> np.ndarray:
        """Tissue fraction of each level-0 box ``(x0, y0, x1, y1)``, area-exact."""
        return mask_fractions(self.mask, self.scale_x, self.scale_y, boxes)


def render_thumbnail(slide: Slide, target_mpp: float, band_rows: int = 2048
                     ) -> tuple[np.ndarray, float, float]:
    """The slide area-reduced to about ``target_mpp``, read band by band.

    Returns the image and its exact scale (level-0 pixels per thumbnail pixel).
    """
    pyramid = slide.pyramid
    level = pyramid.level_for(target_mpp)
    factor = max(1, math.floor(target_mpp / pyramid.level_mpp(level) + 1e-6))
    band = max(factor, band_rows - band_rows % factor)
    parts = [reduce_pixels(slide.read(level.index, 0, y, level.width,
                                      min(band, level.height - y)).pixels, factor)
             for y in range(0, level.height, band)]
    thumb = np.concatenate(parts, axis=0)
    return thumb, level.scale_x * factor, level.scale_y * factor


def hsv_saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation ``(max - min) / max`` in float32 (rgb2hsv's float64 hue and
    value temporaries cost ~70 bytes per pixel on a whole-slide thumbnail)."""
    high = rgb.max(axis=2)
    spread = (high - rgb.min(axis=2)).astype(np.float32)
    return spread / np.maximum(high, 1).astype(np.float32)


def detect_tissue(slide: Slide, params: TissueParams = TissueParams()) -> TissueMask:
    thumb, sx, sy = render_thumbnail(slide, params.mpp)
    saturation = hsv_saturation(thumb)
    try:
        otsu = float(filters.threshold_otsu(saturation))
    except ValueError:  # a constant image
        otsu = 1.0
    threshold = max(otsu, params.min_saturation)
    mask = saturation > threshold
    mpp = slide.mpp * math.sqrt(sx * sy)
    radius = round(params.closing_um / mpp)
    if radius >= 1:
        mask = morphology.closing(mask, morphology.disk(radius))
    mask = morphology.remove_small_objects(mask, max_size=max(0, round(
        params.min_area_um2 / mpp**2) - 1))
    mask = morphology.remove_small_holes(mask, max_size=max(0, round(
        params.max_hole_um2 / mpp**2)))
    return TissueMask(mask.astype(bool), thumb, sx, sy, threshold, params)


def draw_qc(tissue: TissueMask, boxes: np.ndarray, path: str | Path, title: str = "") -> None:
    """Thumbnail with the tissue outline (green) and the kept patches (blue)."""
    image = tissue.thumbnail.copy()
    outline = segmentation.find_boundaries(tissue.mask, mode="inner")
    image[outline] = (0, 170, 0)
    pil = Image.fromarray(image)
    draw = ImageDraw.Draw(pil)
    for x0, y0, x1, y1 in np.asarray(boxes, float):
        draw.rectangle((x0 / tissue.scale_x, y0 / tissue.scale_y,
                        x1 / tissue.scale_x - 1, y1 / tissue.scale_y - 1), outline=(30, 60, 220))
    if title:
        draw.text((4, 4), title, fill=(0, 0, 0))
    with atomic_path(path, suffix=".png") as tmp:
        pil.save(tmp)
