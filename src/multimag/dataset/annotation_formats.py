"""Annotation file formats: QuPath GeoJSON, ASAP / CAMELYON XML, TIFF raster masks.

:func:`sniff_format` tells them apart by content; :class:`PolygonReader` turns
the vector formats into (class name, polygon) items and counts what it drops;
:func:`read_mask` reads a raster mask's class values. What each format may
hold is in docs/dataset.md.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import shapely
import tifffile
from shapely.geometry.base import BaseGeometry

from multimag.errors import AnnotationError

FORMATS = ("geojson", "asap_xml", "raster")
#: class name of GeoJSON features with neither a classification nor a name
UNCLASSIFIED = "(unclassified)"

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_FIX_FORMAT = ("give a QuPath GeoJSON (.geojson), an ASAP / CAMELYON XML (.xml) or a TIFF "
               "raster mask of integer class values")
_FIX_EXPORT = "export the annotation again"
_FIX_GEOJSON = "export the annotation again (QuPath: File > Export objects as GeoJSON)"
_XML_POLYGON_TYPES = ("polygon", "spline", "rectangle")


def _whitespace_only(path: Path) -> bool:
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            if chunk.strip():
                return False
    return True


def sniff_format(path: str | Path, *, slide_id: str | None = None) -> str:
    """``"geojson"``, ``"asap_xml"`` or ``"raster"`` from the file's first bytes."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError("the annotation file does not exist", slide=slide_id, path=path,
                              fix="correct the annotation column of samples.tsv")
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if head[:4] in _TIFF_MAGIC:
        return "raster"
    if head[:2] in _UTF16_BOMS:
        text = head.decode("utf-16", errors="ignore").lstrip("\ufeff \t\r\n")[:1].encode()
    else:
        text = head.removeprefix(b"\xef\xbb\xbf").lstrip()[:1]
    if not text:
        if not head or _whitespace_only(path):
            raise AnnotationError("the annotation file is empty", slide=slide_id, path=path,
                                  fix="export the annotation again, or remove it from "
                                  "samples.tsv and give a slide_label")
    if text in (b"{", b"["):
        return "geojson"
    if text == b"<":
        return "asap_xml"
    what = "a PNG image" if head.startswith(b"\x89PNG") else f"it starts with {head[:8]!r}"
    raise AnnotationError(f"unrecognised annotation format ({what})", slide=slide_id,
                          path=path, fix=_FIX_FORMAT)


def _geojson_class(props: Any) -> str:
    """The class name of a GeoJSON feature: its classification, else its name."""
    if not isinstance(props, dict):
        return UNCLASSIFIED
    c = props.get("classification")
    name = None
    if isinstance(c, dict):
        name = c.get("name")
        if not name and isinstance(c.get("names"), list):
            name = ": ".join(str(n) for n in c["names"])
    elif isinstance(c, str):
        name = c
    if not name:
        name = props.get("name")
    return str(name) if name else UNCLASSIFIED


def _geojson_features(doc: Any, error: Callable[[str, str], AnnotationError]) -> list:
    """The features of a FeatureCollection, a single Feature or a list of Features."""
    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        features = doc.get("features")
    elif isinstance(doc, dict) and doc.get("type") == "Feature":
        features = [doc]
    elif isinstance(doc, list):
        features = doc
    else:
        kind = doc.get("type") if isinstance(doc, dict) else type(doc).__name__
        raise error(f"JSON of type {kind!r} is not a GeoJSON FeatureCollection, "
                    "Feature or list of Features",
                    "export the annotation as GeoJSON features (QuPath: File > "
                    "Export objects as GeoJSON)")
    if not isinstance(features, list):
        raise error("'features' is not a list", _FIX_EXPORT)
    return features


class PolygonReader:
    """Collects (class name, polygonal geometry) items and counts what was dropped."""

    def __init__(self, path: Path, slide_id: str | None) -> None:
        self.path = path
        self.slide_id = slide_id
        self.items: list[tuple[str, BaseGeometry]] = []
        self.ignored: Counter[str] = Counter()

    def error(self, what: str, fix: str) -> AnnotationError:
        return AnnotationError(what, slide=self.slide_id, path=self.path, fix=fix)

    def ring(self, coords: Any, where: str) -> np.ndarray | None:
        """An (n, 2) ring, or None when it has fewer than three distinct points."""
        try:
            xy = np.asarray(coords, np.float64)
        except (TypeError, ValueError) as exc:
            raise self.error(f"{where}: coordinates are not numbers ({exc})",
                             _FIX_EXPORT) from exc
        if xy.ndim != 2 or xy.shape[1] < 2:
            raise self.error(f"{where}: a ring is not a list of [x, y] points", _FIX_EXPORT)
        xy = xy[:, :2]
        if not np.isfinite(xy).all():
            raise self.error(f"{where}: non-finite coordinates", _FIX_EXPORT)
        if len(np.unique(xy, axis=0)) < 3:
            return None
        return xy

    def polygon(self, rings: Sequence[Any], where: str) -> BaseGeometry | None:
        if not rings:
            return None
        shell = self.ring(rings[0], where)
        if shell is None:
            self.ignored["degenerate polygon"] += 1
            return None
        holes = [h for h in (self.ring(r, where) for r in rings[1:]) if h is not None]
        return shapely.Polygon(shell, holes)

    def read_geojson(self, data: bytes) -> None:
        try:
            doc = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise self.error(f"invalid JSON ({exc})", _FIX_GEOJSON) from exc
        for k, feature in enumerate(_geojson_features(doc, self.error)):
            if not isinstance(feature, dict) or feature.get("type", "Feature") != "Feature":
                raise self.error(f"feature {k} is not a GeoJSON Feature", _FIX_EXPORT)
            name = _geojson_class(feature.get("properties"))
            self._geojson_geometry(name, feature.get("geometry"), f"feature {k}")

    def _geojson_geometry(self, name: str, geometry: Any, where: str) -> None:
        if not geometry:
            self.ignored["no geometry"] += 1
            return
        if not isinstance(geometry, dict):
            raise self.error(f"{where}: geometry is not an object", _FIX_EXPORT)
        kind = geometry.get("type")
        if kind == "Polygon":
            poly = self.polygon(geometry.get("coordinates") or [], where)
            if poly is not None:
                self.items.append((name, poly))
        elif kind == "MultiPolygon":
            parts = [self.polygon(p, where) for p in geometry.get("coordinates") or []]
            parts = [p for p in parts if p is not None]
            if parts:
                self.items.append((name, shapely.MultiPolygon(parts)))
        elif kind == "GeometryCollection":
            for sub in geometry.get("geometries") or []:
                self._geojson_geometry(name, sub, where)
        else:
            self.ignored[str(kind)] += 1

    def read_asap_xml(self, data: bytes) -> None:
        if not data.startswith(_UTF16_BOMS):
            data = data.removeprefix(b"\xef\xbb\xbf").lstrip()  # tolerate a BOM + blank lines
        try:
            root = ET.fromstring(data)
        except ET.ParseError as exc:
            raise self.error(f"invalid XML ({exc})", "export the annotation again from ASAP"
                             ) from exc
        annotations = list(root.iter("Annotation"))
        if root.tag != "ASAP_Annotations" and not any(
                a.find("Coordinates") is not None for a in annotations):
            kind = ("Aperio ImageScope XML" if root.find(".//Regions") is not None
                    else f"XML with root <{root.tag}>")
            raise self.error(f"{kind} is not ASAP / CAMELYON annotation XML",
                             "convert it to ASAP XML or QuPath GeoJSON")
        for k, ann in enumerate(annotations):
            kind = ann.get("Type", "Polygon")
            if kind.lower() not in _XML_POLYGON_TYPES:
                self.ignored[kind] += 1
                continue
            xy = self._xml_points(ann, k)
            if kind.lower() == "rectangle" and len(xy) == 2:
                (ax, ay), (bx, by) = xy
                xy = [(ax, ay), (bx, ay), (bx, by), (ax, by)]
            poly = self.polygon([xy] if xy else [], f"annotation {ann.get('Name', k)!r}")
            if poly is None:
                if not xy:  # with points, polygon() has counted it as degenerate
                    self.ignored["degenerate polygon"] += 1
                continue
            self.items.append((ann.get("PartOfGroup") or "None", poly))

    def _xml_points(self, ann: ET.Element, k: int) -> list[tuple[float, float]]:
        """The (x, y) points of one ASAP annotation, in their ``Order``."""
        points = []
        for c in ann.iter("Coordinate"):
            try:
                order = float(c.get("Order", len(points)))
                x = float(str(c.get("X")).replace(",", "."))
                y = float(str(c.get("Y")).replace(",", "."))
            except ValueError as exc:
                raise self.error(f"annotation {ann.get('Name', k)!r}: bad coordinate "
                                 f"({exc})", _FIX_EXPORT) from exc
            points.append((order, x, y))
        points.sort(key=lambda p: p[0])
        return [(x, y) for _, x, y in points]


def read_mask(path: Path, error: Callable[[str, str], AnnotationError]) -> np.ndarray:
    """The 2-D integer class values of a (pyramidal) TIFF mask's full-resolution level."""
    try:
        with tifffile.TiffFile(path) as tif:
            mask = tif.series[0].levels[0].asarray()
    except Exception as exc:
        raise error(f"cannot read the TIFF mask ({exc})",
                    "write the mask as a (pyramidal) TIFF of integer class values") from exc
    mask = np.asarray(mask)
    if mask.ndim > 2:
        mask = mask.squeeze()
    if mask.ndim != 2:
        raise error(f"the mask has shape {mask.shape}, not one channel of class values",
                    "save a single-channel mask (one integer class value per pixel)")
    if mask.dtype == bool:
        mask = mask.astype(np.uint8)
    elif mask.dtype.kind == "f":
        if not np.array_equal(mask, np.round(mask)):
            raise error("the mask holds non-integer values",
                        "save integer class values (e.g. uint8: 0 background, 1 tumour)")
        mask = mask.astype(np.int64)
    elif mask.dtype.kind not in "iu":
        raise error(f"the mask has dtype {mask.dtype}", "save integer class values")
    if mask.shape[0] == 0 or mask.shape[1] == 0:
        raise error("the mask is empty (0 pixels)", "export the mask again")
    return mask
