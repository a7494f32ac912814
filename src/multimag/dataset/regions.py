"""One slide's annotated regions, and the class area fraction of patch footprints.

:class:`Annotation` holds per-class geometry (vector formats) or a class-value
:class:`RasterMask`, in level-0 pixels; :meth:`Annotation.fractions` gives the
area fraction of every class inside level-0 boxes, which the label rule reads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from multimag.dataset.class_map import CLASSES
from multimag.dataset.piece_index import PieceIndex
from multimag.wsi.geometry import mask_fractions

#: fractions this close to 0 or 1 are snapped (float residue of area sums)
SNAP = 1e-9


@dataclass
class RasterMask:
    """A class-value mask whose pixel ``(i, j)`` covers level-0
    ``[j * scale_x, (j + 1) * scale_x) x [i * scale_y, (i + 1) * scale_y)``."""

    mask: np.ndarray  # (h, w) integer class values
    scale_x: float
    scale_y: float
    values: dict[int, str]  # pixel value -> class (only values present in the mask)

    def class_values(self, cls: str) -> list[int]:
        return sorted(v for v, c in self.values.items() if c == cls)

    def fractions(self, boxes: np.ndarray, cls: str) -> np.ndarray:
        """Area fraction of each box covered by pixels of class ``cls``."""
        values = self.class_values(cls)
        if not values or len(boxes) == 0:
            return np.zeros(len(boxes), np.float64)
        h, w = self.mask.shape
        # crop to the boxes' extent: the summed-area table is built on the crop only
        j0 = int(np.clip(math.floor(boxes[:, 0].min() / self.scale_x), 0, w))
        j1 = int(np.clip(math.ceil(boxes[:, 2].max() / self.scale_x), j0, w))
        i0 = int(np.clip(math.floor(boxes[:, 1].min() / self.scale_y), 0, h))
        i1 = int(np.clip(math.ceil(boxes[:, 3].max() / self.scale_y), i0, h))
        crop = np.isin(self.mask[i0:i1, j0:j1], values)
        shifted = boxes - [j0 * self.scale_x, i0 * self.scale_y,
                           j0 * self.scale_x, i0 * self.scale_y]
        if crop.size == 0:
            return np.zeros(len(boxes), np.float64)
        return mask_fractions(crop, self.scale_x, self.scale_y, shifted).astype(np.float64)


@dataclass
class Annotation:
    """One slide's annotation, in level-0 pixel coordinates."""

    format: str  # "geojson" | "asap_xml" | "raster"
    path: Path
    geometries: dict[str, BaseGeometry] = field(default_factory=dict)  # per class (vector)
    raster: RasterMask | None = None
    repaired: int = 0
    ignored: dict[str, int] = field(default_factory=dict)  # e.g. {"Dot": 3}
    unknown_classes: dict[str, int] = field(default_factory=dict)  # name -> polygons/pixels
    #: what the file holds per class name (vector: polygons; raster: pixels per value)
    class_counts: dict[str, int] = field(default_factory=dict)
    slide_id: str | None = None
    _indices: dict = field(default_factory=dict, repr=False, compare=False)

    def area(self, cls: str) -> float:
        """Level-0 area (px^2) of one class (vector annotations)."""
        geom = self.geometries.get(cls)
        return float(geom.area) if geom is not None else 0.0

    def fractions(self, boxes: np.ndarray, classes: Sequence[str] = CLASSES
                  ) -> dict[str, np.ndarray]:
        """Per class, the area fraction (0..1, float64) of each level-0 box
        ``(x0, y0, x1, y1)`` that the class covers (exclude already subtracted)."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        unknown = [c for c in classes if c not in CLASSES]
        if unknown:
            raise ValueError(f"unknown classes {unknown}; known: {CLASSES}")
        out: dict[str, np.ndarray] = {}
        box_area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        box_geoms = None
        for cls in classes:
            if len(boxes) == 0:
                frac = np.zeros(0, np.float64)
            elif self.raster is not None:
                frac = self.raster.fractions(boxes, cls)
            else:
                geom = self.geometries.get(cls)
                if geom is None or geom.is_empty:
                    frac = np.zeros(len(boxes), np.float64)
                else:
                    if box_geoms is None:
                        box_geoms = shapely.box(*boxes.T)
                    area = self._piece_index(cls).covered_area(boxes, box_geoms)
                    frac = area / np.maximum(box_area, 1e-12)
            frac = np.clip(frac, 0.0, 1.0)
            frac[frac < SNAP] = 0.0
            frac[frac > 1 - SNAP] = 1.0
            out[cls] = frac
        return out

    def _piece_index(self, cls: str) -> PieceIndex:
        if cls not in self._indices:
            self._indices[cls] = PieceIndex(self.geometries[cls])
        return self._indices[cls]
