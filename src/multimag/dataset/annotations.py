"""Read one slide's annotation file into an :class:`Annotation` of our classes.

Maps the file's class names (or mask values) through the class map, repairs
invalid polygons, subtracts ``exclude`` from tumour and normal, places raster
masks on the slide, and warns about what it dropped or finds suspicious.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from multimag.dataset.annotation_formats import PolygonReader, read_mask, sniff_format
from multimag.dataset.class_map import CLASSES, ClassMap
from multimag.dataset.piece_index import polygonal
from multimag.dataset.regions import Annotation, RasterMask
from multimag.errors import AnnotationError, AnnotationWarning
from multimag.wsi.geometry import level_scale

#: raster masks whose x and y scales differ by more than this (relative) are refused
ASPECT_RTOL = 0.02


def _names_with_counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k!r} ({v})" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


def _warn(what: str, slide_id: str | None, path: Path, fix: str) -> None:
    """Warn, pointing at the caller of :func:`load_annotation`."""
    head = f"[slide {slide_id!r}, file {path}] " if slide_id else f"[file {path}] "
    warnings.warn(f"{head}{what}. Fix: {fix}", AnnotationWarning, stacklevel=4)


def _geometries_by_class(reader: PolygonReader, class_map: ClassMap
                         ) -> tuple[dict[str, list[BaseGeometry]], Counter[str], int]:
    """The reader's polygons per class (repaired when invalid), unknown names, repairs."""
    unknown: Counter[str] = Counter()
    per_class: dict[str, list[BaseGeometry]] = {c: [] for c in CLASSES}
    repaired = 0
    for name, geom in reader.items:
        cls = class_map.lookup(name)
        if cls is None:
            unknown[name] += 1
            continue
        if not geom.is_valid:
            geom = polygonal(shapely.make_valid(geom))
            repaired += 1
        if geom.is_empty:
            reader.ignored["empty after repair"] += 1
            continue
        per_class[cls].append(geom)
    return per_class, unknown, repaired


def _count_outside(per_class: dict[str, list[BaseGeometry]], slide_size: tuple[int, int]
                   ) -> tuple[int, int]:
    """How many polygons lie entirely outside the slide, of how many."""
    w, h = slide_size
    known = [g for gs in per_class.values() for g in gs]
    if not known:
        return 0, 0
    b = shapely.bounds(np.array(known, dtype=object))
    outside = (b[:, 2] <= 0) | (b[:, 3] <= 0) | (b[:, 0] >= w) | (b[:, 1] >= h)
    return int(outside.sum()), len(known)


def _merge_classes(per_class: dict[str, list[BaseGeometry]]) -> dict[str, BaseGeometry]:
    """One geometry per class present, with ``exclude`` cut out of tumour and normal."""
    geometries: dict[str, BaseGeometry] = {}
    for cls in CLASSES:
        geoms = per_class[cls]
        if geoms:
            geometries[cls] = polygonal(shapely.union_all(np.array(geoms, dtype=object)))
    exclude = geometries.get("exclude")
    if exclude is not None and not exclude.is_empty:
        for cls in ("tumour", "normal"):
            if cls in geometries:
                geometries[cls] = polygonal(shapely.difference(geometries[cls], exclude))
    return geometries


def _load_vector(path: Path, fmt: str, class_map: ClassMap, slide_id: str | None,
                 slide_size: tuple[int, int] | None) -> Annotation:
    reader = PolygonReader(path, slide_id)
    data = path.read_bytes()
    if fmt == "geojson":
        reader.read_geojson(data)
    else:
        reader.read_asap_xml(data)
    class_counts: Counter[str] = Counter(name for name, _ in reader.items)
    per_class, unknown, repaired = _geometries_by_class(reader, class_map)
    if unknown:
        _warn(f"unknown annotation classes {_names_with_counts(unknown)} were dropped",
              slide_id, path, "add them to labels.class_map (tumour, normal or exclude) in "
              "the config, or rename them in the annotation")
    if repaired:
        _warn(f"repaired {repaired} invalid (self-intersecting) polygon(s) with "
              "shapely.make_valid", slide_id, path,
              "check those polygons in the annotation tool")
    if slide_size is not None:
        outside, known = _count_outside(per_class, slide_size)
        if outside:
            w, h = slide_size
            _warn(f"{outside} of {known} annotation polygons lie entirely "
                  f"outside the slide (0..{w} x 0..{h} level-0 px)", slide_id, path,
                  "check that the annotation belongs to this slide and is in level-0 "
                  "pixel coordinates")
    geometries = _merge_classes(per_class)
    if not any(not geometries.get(c, shapely.Polygon()).is_empty for c in ("tumour", "normal")):
        _warn("no tumour or normal polygon in the annotation: every patch will count as "
              "tumour-free", slide_id, path,
              "check labels.class_map against the class names in the file")
    return Annotation(fmt, path, geometries, None, repaired, dict(reader.ignored),
                      dict(unknown), dict(class_counts), slide_id)


def _mask_scales(shape: tuple[int, int], slide_size: tuple[int, int],
                 error: Callable[[str, str], AnnotationError]) -> tuple[float, float]:
    """Level-0 px per mask pixel in x and y; refuses a mask of another aspect ratio."""
    h, w = shape
    slide_w, slide_h = slide_size
    scale_x, scale_y = level_scale(int(slide_w), w), level_scale(int(slide_h), h)
    rel = abs(scale_x - scale_y) / max(scale_x, scale_y)
    off_px = max(abs(slide_h / scale_x - h), abs(slide_w / scale_y - w))
    if rel > ASPECT_RTOL and off_px > 1:
        raise error(f"the mask ({w} x {h} px) does not have the slide's aspect ratio "
                    f"({slide_w} x {slide_h} px): scales {scale_x:.4g} (x) and "
                    f"{scale_y:.4g} (y) differ by {100 * rel:.1f} %",
                    "give the mask of this slide, covering the whole slide at one "
                    "downsample factor")
    return scale_x, scale_y


def _pixel_counts(mask: np.ndarray) -> dict[int, int]:
    """Pixel count of every value present in the mask."""
    if mask.dtype.kind == "u" and mask.dtype.itemsize <= 2:
        counts = np.bincount(mask.ravel())
        return {int(v): int(n) for v, n in enumerate(counts) if n}
    vals, counts = np.unique(mask, return_counts=True)
    return {int(v): int(n) for v, n in zip(vals, counts, strict=True)}


def _load_raster(path: Path, class_map: ClassMap, slide_id: str | None,
                 slide_size: tuple[int, int] | None) -> Annotation:
    def error(what: str, fix: str) -> AnnotationError:
        return AnnotationError(what, slide=slide_id, path=path, fix=fix)

    if slide_size is None:
        raise error("a raster mask needs the slide's level-0 size to be placed",
                    "pass slide_size (the store's level_dimensions[0])")
    mask = read_mask(path, error)
    scale_x, scale_y = _mask_scales(mask.shape, slide_size, error)
    present = _pixel_counts(mask)
    values = {v: class_map.values[v] for v in present if v in class_map.values}
    unknown = {str(v): n for v, n in present.items() if v not in class_map.values and v != 0}
    if unknown:
        _warn(f"unknown mask values {_names_with_counts(unknown)} (pixel counts) were ignored",
              slide_id, path, "add those integers to labels.class_map (tumour, normal or "
              "exclude) in the config")
    if not any(c in ("tumour", "normal") for c in values.values()):
        _warn("no tumour or normal pixel in the mask: every patch will count as tumour-free",
              slide_id, path, "check labels.class_map against the mask's values")
    raster = RasterMask(mask, scale_x, scale_y, values)
    return Annotation("raster", path, {}, raster, 0, {}, unknown,
                      {str(v): n for v, n in present.items()}, slide_id)


def load_annotation(path: str | Path, class_map: Mapping[str, Sequence[Any]], *,
                    slide_id: str | None = None,
                    slide_size: tuple[int, int] | None = None) -> Annotation:
    """Read a QuPath GeoJSON, ASAP / CAMELYON XML or TIFF raster mask (detected from
    the content) into per-class geometry in level-0 pixels.

    ``class_map``: ``{"tumour": [...], "normal": [...], "exclude": [...]}`` of class
    names and raster values; ``slide_size``: level-0 ``(W, H)`` of the slide
    (needed for raster masks; used to warn about annotations outside the slide).
    """
    path = Path(path)
    parsed_map = ClassMap.parse(class_map)
    fmt = sniff_format(path, slide_id=slide_id)
    if slide_size is not None:
        slide_size = (int(slide_size[0]), int(slide_size[1]))
    if fmt == "raster":
        return _load_raster(path, parsed_map, slide_id, slide_size)
    return _load_vector(path, fmt, parsed_map, slide_id, slide_size)
