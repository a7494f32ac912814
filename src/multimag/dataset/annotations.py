"""Annotations: QuPath GeoJSON, ASAP / CAMELYON XML and raster masks -> classes.

``load_annotation(path, class_map)`` reads one annotation file into per-class
shapely geometry (vector formats) or a class-value raster, in level-0 pixel
coordinates of the slide, and :meth:`Annotation.fractions` gives the area
fraction of every class inside level-0 boxes (patch footprints).

Classes are ``tumour``, ``normal`` and ``exclude``. The class map (config
``labels.class_map``) lists per class the annotation class names (QuPath
``classification.name``, ASAP ``PartOfGroup``; matched exactly first, then
case-insensitively) and the raster pixel values (integers) that mean it.
``exclude`` regions (ASAP "Exclusion", CAMELYON "_2": holes drawn as separate
polygons) are subtracted from tumour and normal. Raster value 0 is background
unless the class map names it.

Format detection sniffs the content, not the extension: ``{``/``[`` is JSON,
``<`` is XML, ``II*\\0``/``MM\\0*`` (or BigTIFF) is a TIFF mask.

Area fractions are exact for vector annotations, and fast: each class geometry
is cut once into small disjoint pieces by a quadtree (``shapely.clip_by_rect``;
cells wholly inside the geometry stay whole and large, boundary cells are split
until a piece has at most 48 vertices and a side of at most 512 px), indexed by
an STRtree. A box's covered area is the sum over the pieces its bounding box
meets: the rectangle overlap for whole cells, the piece's own area for pieces
inside the box, and for the small pieces that straddle a box edge an exact
strip integral over their edges (vectorised numpy, see :func:`_strip_integrals`).
100,000 boxes against a 10,000-vertex polygon take about 0.3 s on one core
(``benchmarks/bench_labels.py``); tests compare with ``shapely.intersection``.
"""

from __future__ import annotations

import json
import math
import warnings
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely
import tifffile
from shapely.geometry.base import BaseGeometry

from multimag.errors import AnnotationError, AnnotationWarning, ConfigError
from multimag.wsi.geometry import level_scale, mask_fractions

__all__ = [
    "CLASSES",
    "FORMATS",
    "Annotation",
    "AnnotationError",
    "AnnotationWarning",
    "RasterMask",
    "load_annotation",
    "sniff_format",
]

CLASSES = ("tumour", "normal", "exclude")
FORMATS = ("geojson", "asap_xml", "raster")
#: class name of GeoJSON features with neither a classification nor a name
UNCLASSIFIED = "(unclassified)"
#: raster masks whose x and y scales differ by more than this (relative) are refused
ASPECT_RTOL = 0.02
#: fractions this close to 0 or 1 are snapped (float residue of area sums)
SNAP = 1e-9
#: quadtree leaves: at most this side (level-0 px) and this many vertices; measured
#: best for boxes of 224 to 3584 px (benchmarks/bench_labels.py)
CELL_PX = 512.0
MAX_PIECE_VERTICES = 48

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_FIX_FORMAT = ("give a QuPath GeoJSON (.geojson), an ASAP / CAMELYON XML (.xml) or a TIFF "
               "raster mask of integer class values")
_XML_POLYGON_TYPES = ("polygon", "spline", "rectangle")


# ---------------------------------------------------------------------------- class map


@dataclass(frozen=True)
class _ClassMap:
    exact: dict[str, str]
    folded: dict[str, str | None]  # None: the case-folded name is ambiguous
    values: dict[int, str]

    @classmethod
    def parse(cls, class_map: Mapping[str, Sequence[Any]]) -> _ClassMap:
        exact: dict[str, str] = {}
        folded: dict[str, str | None] = {}
        values: dict[int, str] = {}
        for name, entries in (class_map or {}).items():
            if name not in CLASSES:
                raise ConfigError(f"labels.class_map has an unknown class {name!r}",
                                  fix=f"use only {', '.join(CLASSES)}")
            if isinstance(entries, (str, bytes)) or not isinstance(entries, Iterable):
                raise ConfigError(f"labels.class_map.{name} is not a list",
                                  fix=f"write {name}: [name, ...]")
            for entry in entries:
                if isinstance(entry, (bool, np.bool_)):
                    raise ConfigError(f"labels.class_map.{name} contains {entry!r}",
                                      fix="list class names (strings) or pixel values "
                                      "(integers)")
                if isinstance(entry, (int, np.integer)):
                    other = values.setdefault(int(entry), name)
                    if other != name:
                        raise ConfigError(f"labels.class_map gives pixel value {entry} to "
                                          f"both {other} and {name}", fix="list it once")
                elif isinstance(entry, str):
                    other = exact.setdefault(entry, name)
                    if other != name:
                        raise ConfigError(f"labels.class_map gives class {entry!r} to both "
                                          f"{other} and {name}", fix="list it once")
                    key = entry.casefold()
                    if folded.setdefault(key, name) != name:
                        folded[key] = None
                else:
                    raise ConfigError(f"labels.class_map.{name} contains {entry!r}",
                                      fix="list class names (strings) or pixel values "
                                      "(integers)")
        return cls(exact, folded, values)

    def lookup(self, name: str) -> str | None:
        if name in self.exact:
            return self.exact[name]
        return self.folded.get(name.casefold())


# ---------------------------------------------------------------------------- raster


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


# ---------------------------------------------------------------------------- vector index


class _PieceIndex:
    """One class geometry cut into small disjoint pieces, in an STRtree (see module doc)."""

    def __init__(self, geometry: BaseGeometry, cell: float = CELL_PX,
                 max_vertices: int = MAX_PIECE_VERTICES) -> None:
        minx, miny, maxx, maxy = geometry.bounds
        side = max(maxx - minx, maxy - miny, 1.0)
        pieces = np.array([geometry], dtype=object)
        cells = np.array([[minx, miny, minx + side, miny + side]], np.float64)
        out_geoms, out_full = [], []
        while len(pieces):
            side = cells[0, 2] - cells[0, 0]
            cell_area = side * side
            area = shapely.area(pieces)
            nonempty = area > 0
            full = area >= cell_area * (1 - 1e-12)
            small = ((shapely.get_num_coordinates(pieces) <= max_vertices) & (side <= cell)
                     ) | (side <= 1.0)
            done = nonempty & (full | small)
            keep_full = done & full
            out_geoms.append(shapely.box(*cells[keep_full].T))
            out_full.append(np.ones(int(keep_full.sum()), bool))
            keep_part = done & ~full
            out_geoms.append(pieces[keep_part])
            out_full.append(np.zeros(int(keep_part.sum()), bool))
            split = nonempty & ~done
            pieces, cells = pieces[split], cells[split]
            if not len(pieces):
                break
            half = side / 2
            x0, y0 = cells[:, 0], cells[:, 1]
            children = np.concatenate([
                np.stack([x0 + dx, y0 + dy, x0 + dx + half, y0 + dy + half], axis=1)
                for dx in (0.0, half) for dy in (0.0, half)])
            parents = np.concatenate([pieces] * 4)
            # rectangle clipping: ~10x faster than a general overlay; its output may be
            # "dirty" (rings touching the cell edge) but the areas are exact, and areas
            # are all that is used (tests compare with shapely.intersection)
            pieces = np.array([shapely.clip_by_rect(g, *c) for g, c in zip(parents, children,
                                                                           strict=True)],
                              dtype=object)
            mixed = shapely.get_type_id(pieces) == 7  # GeometryCollection: keep polygons
            if mixed.any():
                pieces[mixed] = [_polygonal(g) for g in pieces[mixed]]
            cells = children
        self.pieces = np.concatenate(out_geoms) if out_geoms else np.array([], object)
        self.full = np.concatenate(out_full) if out_full else np.zeros(0, bool)
        self.bounds = shapely.bounds(self.pieces).reshape(-1, 4)
        self.areas = shapely.area(self.pieces)
        self.tree = shapely.STRtree(self.pieces)
        self._edges()

    def _edges(self) -> None:
        """The partial pieces' ring edges, grouped by piece, each with a weight that
        turns its strip integral into +area for shells and -area for holes."""
        partial = np.flatnonzero(~self.full)
        parts, part_piece = shapely.get_parts(self.pieces[partial], return_index=True)
        polys = shapely.get_type_id(parts) == 3
        parts, part_piece = parts[polys], part_piece[polys]
        rings, ring_part = shapely.get_rings(parts, return_index=True)
        shell = np.ones(len(rings), bool)
        shell[1:] = ring_part[1:] != ring_part[:-1]
        xy, ring_of = shapely.get_coordinates(rings, return_index=True)
        same = ring_of[1:] == ring_of[:-1]  # rings are closed: consecutive points are edges
        a, b, e_ring = xy[:-1][same], xy[1:][same], ring_of[:-1][same]
        signed = np.bincount(e_ring, weights=a[:, 0] * b[:, 1] - b[:, 0] * a[:, 1],
                             minlength=len(rings))
        weight = np.where(shell, 1.0, -1.0) * -np.sign(signed)
        keep = (a[:, 0] != b[:, 0]) & (weight[e_ring] != 0)  # vertical edges add nothing
        self.edges = np.concatenate([a[keep], b[keep]], axis=1)  # (E, 4) ax, ay, bx, by
        self.edge_weight = weight[e_ring[keep]]
        edge_piece = partial[part_piece[ring_part[e_ring[keep]]]]  # non-decreasing
        n = len(self.pieces)
        self.edge_start = np.searchsorted(edge_piece, np.arange(n))
        self.edge_count = np.searchsorted(edge_piece, np.arange(n), side="right") - self.edge_start

    def clipped_area(self, piece: np.ndarray, boxes: np.ndarray,
                     max_edges: int = 2_000_000) -> np.ndarray:
        """Exact area of partial piece ``piece[k]`` inside ``boxes[k]`` (numpy, no GEOS)."""
        out = np.zeros(len(piece), np.float64)
        counts = self.edge_count[piece]
        ends = np.cumsum(counts)
        start = 0
        while start < len(piece):
            # a chunk of pairs holding at most max_edges edges (at least one pair)
            base = ends[start - 1] if start else 0
            stop = max(start + 1, int(np.searchsorted(ends, base + max_edges, side="right")))
            cnt = counts[start:stop]
            pair = np.repeat(np.arange(start, stop), cnt)
            first = np.repeat(self.edge_start[piece[start:stop]] - (np.cumsum(cnt) - cnt), cnt)
            edge = first + np.arange(len(pair))
            integral = _strip_integrals(self.edges[edge], boxes[pair])
            out[start:stop] = np.bincount(pair - start, weights=integral * self.edge_weight[edge],
                                          minlength=stop - start)
            start = stop
        return out

    def covered_area(self, boxes: np.ndarray, box_geoms: np.ndarray) -> np.ndarray:
        """Exact area of the geometry inside each box."""
        bi, pi = self.tree.query(box_geoms)
        if len(bi) == 0:
            return np.zeros(len(boxes), np.float64)
        b, pb = boxes[bi], self.bounds[pi]
        ox = np.clip(np.minimum(b[:, 2], pb[:, 2]) - np.maximum(b[:, 0], pb[:, 0]), 0, None)
        oy = np.clip(np.minimum(b[:, 3], pb[:, 3]) - np.maximum(b[:, 1], pb[:, 1]), 0, None)
        full = self.full[pi]
        area = np.where(full, ox * oy, 0.0)
        inside = ((b[:, 0] <= pb[:, 0]) & (b[:, 1] <= pb[:, 1])
                  & (b[:, 2] >= pb[:, 2]) & (b[:, 3] >= pb[:, 3]))
        whole = ~full & inside
        area[whole] = self.areas[pi[whole]]
        cut = ~full & ~inside & (ox > 0) & (oy > 0)
        if cut.any():
            area[cut] = self.clipped_area(pi[cut], b[cut])
        return np.bincount(bi, weights=area, minlength=len(boxes))


def _strip_integrals(edges: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Per directed edge ``(ax, ay, bx, by)`` and box ``(x0, y0, x1, y1)``: the integral
    of ``clamp(y, y0, y1) - y0`` along the edge over ``x`` in ``[x0, x1]``, signed by
    the edge's x direction.

    Summed over a closed ring this is ``-area(ring interior & box)`` for a
    counter-clockwise ring (+ for clockwise): at every ``x`` the edges crossing the
    vertical line count the interior's length inside ``[y0, y1]`` with their signs.
    The clamp is piecewise linear, so the edge is split where it crosses ``y0`` and
    ``y1`` and each sub-interval is integrated exactly by the trapezoid rule.
    """
    ax, ay, bx, by = edges.T
    x0, y0, x1, y1 = boxes.T
    lo = np.maximum(np.minimum(ax, bx), x0)
    hi = np.minimum(np.maximum(ax, bx), x1)
    width = np.clip(hi - lo, 0, None)
    dx = bx - ax
    ylo = ay + (by - ay) * ((lo - ax) / dx)
    yhi = ay + (by - ay) * ((hi - ax) / dx)
    dy = yhi - ylo
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.stack([np.zeros_like(dy), (y0 - ylo) / dy, (y1 - ylo) / dy, np.ones_like(dy)],
                     axis=1)
    t = np.sort(np.clip(np.nan_to_num(t, nan=0.0), 0.0, 1.0), axis=1)
    g = np.clip(ylo[:, None] + dy[:, None] * t, y0[:, None], y1[:, None]) - y0[:, None]
    mean = ((t[:, 1:] - t[:, :-1]) * (g[:, 1:] + g[:, :-1])).sum(axis=1) / 2
    return np.sign(dx) * width * mean


# ---------------------------------------------------------------------------- Annotation


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
                    area = self._index(cls).covered_area(boxes, box_geoms)
                    frac = area / np.maximum(box_area, 1e-12)
            frac = np.clip(frac, 0.0, 1.0)
            frac[frac < SNAP] = 0.0
            frac[frac > 1 - SNAP] = 1.0
            out[cls] = frac
        return out

    def _index(self, cls: str) -> _PieceIndex:
        if cls not in self._indices:
            self._indices[cls] = _PieceIndex(self.geometries[cls])
        return self._indices[cls]


# ---------------------------------------------------------------------------- detection


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
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
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


# ---------------------------------------------------------------------------- readers


class _Reader:
    """Collects (class name, polygonal geometry) items and what was dropped."""

    def __init__(self, path: Path, slide_id: str | None) -> None:
        self.path = path
        self.slide_id = slide_id
        self.items: list[tuple[str, BaseGeometry]] = []
        self.ignored: Counter[str] = Counter()

    def error(self, what: str, fix: str) -> AnnotationError:
        return AnnotationError(what, slide=self.slide_id, path=self.path, fix=fix)

    def ring(self, coords: Any, where: str) -> np.ndarray | None:
        try:
            xy = np.asarray(coords, np.float64)
        except (TypeError, ValueError) as exc:
            raise self.error(f"{where}: coordinates are not numbers ({exc})",
                             "export the annotation again") from exc
        if xy.ndim != 2 or xy.shape[1] < 2:
            raise self.error(f"{where}: a ring is not a list of [x, y] points",
                             "export the annotation again")
        xy = xy[:, :2]
        if not np.isfinite(xy).all():
            raise self.error(f"{where}: non-finite coordinates", "export the annotation again")
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

    # -- GeoJSON -----------------------------------------------------------------------

    def geojson(self, data: bytes) -> None:
        try:
            doc = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise self.error(f"invalid JSON ({exc})",
                             "export the annotation again (QuPath: File > Export objects "
                             "as GeoJSON)") from exc
        if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
            features = doc.get("features")
        elif isinstance(doc, dict) and doc.get("type") == "Feature":
            features = [doc]
        elif isinstance(doc, list):
            features = doc
        else:
            kind = doc.get("type") if isinstance(doc, dict) else type(doc).__name__
            raise self.error(f"JSON of type {kind!r} is not a GeoJSON FeatureCollection, "
                             "Feature or list of Features",
                             "export the annotation as GeoJSON features (QuPath: File > "
                             "Export objects as GeoJSON)")
        if not isinstance(features, list):
            raise self.error("'features' is not a list", "export the annotation again")
        for k, feature in enumerate(features):
            if not isinstance(feature, dict) or feature.get("type", "Feature") != "Feature":
                raise self.error(f"feature {k} is not a GeoJSON Feature",
                                 "export the annotation again")
            name = _geojson_class(feature.get("properties"))
            geometry = feature.get("geometry")
            self.geojson_geometry(name, geometry, f"feature {k}")

    def geojson_geometry(self, name: str, geometry: Any, where: str) -> None:
        if not geometry:
            self.ignored["no geometry"] += 1
            return
        if not isinstance(geometry, dict):
            raise self.error(f"{where}: geometry is not an object", "export the annotation again")
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
                self.geojson_geometry(name, sub, where)
        else:
            self.ignored[str(kind)] += 1

    # -- ASAP XML ----------------------------------------------------------------------

    def asap_xml(self, data: bytes) -> None:
        if not data.startswith((b"\xff\xfe", b"\xfe\xff")):
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
            group = ann.get("PartOfGroup") or "None"
            if kind.lower() not in _XML_POLYGON_TYPES:
                self.ignored[kind] += 1
                continue
            points = []
            for c in ann.iter("Coordinate"):
                try:
                    order = float(c.get("Order", len(points)))
                    x = float(str(c.get("X")).replace(",", "."))
                    y = float(str(c.get("Y")).replace(",", "."))
                except ValueError as exc:
                    raise self.error(f"annotation {ann.get('Name', k)!r}: bad coordinate "
                                     f"({exc})", "export the annotation again") from exc
                points.append((order, x, y))
            points.sort(key=lambda p: p[0])
            xy = [(x, y) for _, x, y in points]
            if kind.lower() == "rectangle" and len(xy) == 2:
                (ax, ay), (bx, by) = xy
                xy = [(ax, ay), (bx, ay), (bx, by), (ax, by)]
            poly = self.polygon([xy] if xy else [], f"annotation {ann.get('Name', k)!r}")
            if poly is None:
                if xy:
                    continue  # counted as degenerate
                self.ignored["degenerate polygon"] += 1
                continue
            self.items.append((group, poly))


def _geojson_class(props: Any) -> str:
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


def _polygonal(geom: BaseGeometry) -> BaseGeometry:
    """The polygonal part of a geometry (make_valid may return collections)."""
    if isinstance(geom, (shapely.Polygon, shapely.MultiPolygon)):
        return geom
    parts = shapely.get_parts(geom)
    polys = [p for p in parts if isinstance(p, (shapely.Polygon, shapely.MultiPolygon))]
    return shapely.union_all(polys) if polys else shapely.Polygon()


def _describe(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k!r} ({v})" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


def _warn(what: str, slide_id: str | None, path: Path, fix: str) -> None:
    head = f"[slide {slide_id!r}, file {path}] " if slide_id else f"[file {path}] "
    warnings.warn(f"{head}{what}. Fix: {fix}", AnnotationWarning, stacklevel=4)


def _load_vector(path: Path, fmt: str, cmap: _ClassMap, slide_id: str | None,
                 slide_size: tuple[int, int] | None) -> Annotation:
    reader = _Reader(path, slide_id)
    data = path.read_bytes()
    if fmt == "geojson":
        reader.geojson(data)
    else:
        reader.asap_xml(data)

    class_counts: Counter[str] = Counter(name for name, _ in reader.items)
    unknown: Counter[str] = Counter()
    per_class: dict[str, list[BaseGeometry]] = {c: [] for c in CLASSES}
    repaired = 0
    for name, geom in reader.items:
        cls = cmap.lookup(name)
        if cls is None:
            unknown[name] += 1
            continue
        if not geom.is_valid:
            geom = _polygonal(shapely.make_valid(geom))
            repaired += 1
        if geom.is_empty:
            reader.ignored["empty after repair"] += 1
            continue
        per_class[cls].append(geom)

    if unknown:
        _warn(f"unknown annotation classes {_describe(unknown)} were dropped", slide_id, path,
              "add them to labels.class_map (tumour, normal or exclude) in the config, or "
              "rename them in the annotation")
    if repaired:
        _warn(f"repaired {repaired} invalid (self-intersecting) polygon(s) with "
              "shapely.make_valid", slide_id, path,
              "check those polygons in the annotation tool")
    if slide_size is not None:
        w, h = slide_size
        known = [g for gs in per_class.values() for g in gs]
        if known:
            b = shapely.bounds(np.array(known, dtype=object))
            outside = (b[:, 2] <= 0) | (b[:, 3] <= 0) | (b[:, 0] >= w) | (b[:, 1] >= h)
            if outside.any():
                _warn(f"{int(outside.sum())} of {len(known)} annotation polygons lie entirely "
                      f"outside the slide (0..{w} x 0..{h} level-0 px)", slide_id, path,
                      "check that the annotation belongs to this slide and is in level-0 "
                      "pixel coordinates")

    geometries: dict[str, BaseGeometry] = {}
    for cls in CLASSES:
        geoms = per_class[cls]
        if geoms:
            geometries[cls] = _polygonal(shapely.union_all(np.array(geoms, dtype=object)))
    exclude = geometries.get("exclude")
    if exclude is not None and not exclude.is_empty:
        for cls in ("tumour", "normal"):
            if cls in geometries:
                geometries[cls] = _polygonal(shapely.difference(geometries[cls], exclude))
    if not any(not geometries.get(c, shapely.Polygon()).is_empty for c in ("tumour", "normal")):
        _warn("no tumour or normal polygon in the annotation: every patch will count as "
              "tumour-free", slide_id, path,
              "check labels.class_map against the class names in the file")
    return Annotation(fmt, path, geometries, None, repaired, dict(reader.ignored),
                      dict(unknown), dict(class_counts), slide_id)


def _load_raster(path: Path, cmap: _ClassMap, slide_id: str | None,
                 slide_size: tuple[int, int] | None) -> Annotation:
    def error(what: str, fix: str) -> AnnotationError:
        return AnnotationError(what, slide=slide_id, path=path, fix=fix)

    if slide_size is None:
        raise error("a raster mask needs the slide's level-0 size to be placed",
                    "pass slide_size (the store's level_dimensions[0])")
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
    h, w = mask.shape
    if h == 0 or w == 0:
        raise error("the mask is empty (0 pixels)", "export the mask again")
    sw, sh = slide_size
    sx, sy = level_scale(int(sw), w), level_scale(int(sh), h)
    rel = abs(sx - sy) / max(sx, sy)
    off_px = max(abs(sh / sx - h), abs(sw / sy - w))
    if rel > ASPECT_RTOL and off_px > 1:
        raise error(f"the mask ({w} x {h} px) does not have the slide's aspect ratio "
                    f"({sw} x {sh} px): scales {sx:.4g} (x) and {sy:.4g} (y) differ by "
                    f"{100 * rel:.1f} %", "give the mask of this slide, covering the whole "
                    "slide at one downsample factor")

    if mask.dtype.kind == "u" and mask.dtype.itemsize <= 2:
        counts = np.bincount(mask.ravel())
        present = {int(v): int(n) for v, n in enumerate(counts) if n}
    else:
        vals, counts = np.unique(mask, return_counts=True)
        present = {int(v): int(n) for v, n in zip(vals, counts, strict=True)}
    values = {v: cmap.values[v] for v in present if v in cmap.values}
    unknown = {str(v): n for v, n in present.items() if v not in cmap.values and v != 0}
    if unknown:
        _warn(f"unknown mask values {_describe(unknown)} (pixel counts) were ignored",
              slide_id, path, "add those integers to labels.class_map (tumour, normal or "
              "exclude) in the config")
    if not any(c in ("tumour", "normal") for c in values.values()):
        _warn("no tumour or normal pixel in the mask: every patch will count as tumour-free",
              slide_id, path, "check labels.class_map against the mask's values")
    return Annotation("raster", path, {}, RasterMask(mask, sx, sy, values), 0, {}, unknown,
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
    cmap = _ClassMap.parse(class_map)
    fmt = sniff_format(path, slide_id=slide_id)
    if slide_size is not None:
        slide_size = (int(slide_size[0]), int(slide_size[1]))
    if fmt == "raster":
        return _load_raster(path, cmap, slide_id, slide_size)
    return _load_vector(path, fmt, cmap, slide_id, slide_size)
