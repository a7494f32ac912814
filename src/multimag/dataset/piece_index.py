"""Exact area of a class geometry inside many boxes, fast.

The geometry is cut once by a quadtree into small disjoint pieces (whole cells
stay whole) and indexed by an STRtree; a box's covered area sums the pieces it
meets, integrating exactly over the edges of the pieces that straddle its border.
The method is described in docs/dataset.md.
"""

from __future__ import annotations

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

#: quadtree leaves: at most this side (level-0 px) and this many vertices; measured
#: best for boxes of 224 to 3584 px (benchmarks/bench_labels.py)
CELL_PX = 512.0
MAX_PIECE_VERTICES = 48


def polygonal(geom: BaseGeometry) -> BaseGeometry:
    """The polygonal part of a geometry (make_valid may return collections)."""
    if isinstance(geom, (shapely.Polygon, shapely.MultiPolygon)):
        return geom
    parts = shapely.get_parts(geom)
    polys = [p for p in parts if isinstance(p, (shapely.Polygon, shapely.MultiPolygon))]
    return shapely.union_all(polys) if polys else shapely.Polygon()


def _quarter_cells(pieces: np.ndarray, cells: np.ndarray, half: float
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Each piece clipped to the four quarters (of side ``half``) of its square cell."""
    x0, y0 = cells[:, 0], cells[:, 1]
    children = np.concatenate([
        np.stack([x0 + dx, y0 + dy, x0 + dx + half, y0 + dy + half], axis=1)
        for dx in (0.0, half) for dy in (0.0, half)])
    parents = np.concatenate([pieces] * 4)
    # rectangle clipping: ~10x faster than a general overlay; its output may be
    # "dirty" (rings touching the cell edge) but the areas are exact, and areas
    # are all that is used (tests compare with shapely.intersection)
    clipped = np.array([shapely.clip_by_rect(g, *c) for g, c in zip(parents, children,
                                                                     strict=True)],
                       dtype=object)
    mixed = shapely.get_type_id(clipped) == 7  # GeometryCollection: keep polygons
    if mixed.any():
        clipped[mixed] = [polygonal(g) for g in clipped[mixed]]
    return clipped, children


def _cut_into_pieces(geometry: BaseGeometry, cell: float, max_vertices: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Quadtree pieces of ``geometry`` and whether each is a whole (full) cell."""
    minx, miny, maxx, maxy = geometry.bounds
    side = max(maxx - minx, maxy - miny, 1.0)
    pieces = np.array([geometry], dtype=object)
    cells = np.array([[minx, miny, minx + side, miny + side]], np.float64)
    out_geoms, out_full = [], []
    while len(pieces):
        side = cells[0, 2] - cells[0, 0]
        area = shapely.area(pieces)
        nonempty = area > 0
        full = area >= side * side * (1 - 1e-12)
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
        pieces, cells = _quarter_cells(pieces, cells, side / 2)
    pieces = np.concatenate(out_geoms) if out_geoms else np.array([], object)
    return pieces, (np.concatenate(out_full) if out_full else np.zeros(0, bool))


class PieceIndex:
    """One class geometry cut into small disjoint pieces, in an STRtree."""

    def __init__(self, geometry: BaseGeometry, cell: float = CELL_PX,
                 max_vertices: int = MAX_PIECE_VERTICES) -> None:
        self.pieces, self.full = _cut_into_pieces(geometry, cell, max_vertices)
        self.bounds = shapely.bounds(self.pieces).reshape(-1, 4)
        self.areas = shapely.area(self.pieces)
        self.tree = shapely.STRtree(self.pieces)
        self._index_edges()

    def _index_edges(self) -> None:
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
            integral = strip_integrals(self.edges[edge], boxes[pair])
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


def strip_integrals(edges: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Per directed edge ``(ax, ay, bx, by)`` and box ``(x0, y0, x1, y1)``: the integral
    of ``clamp(y, y0, y1) - y0`` along the edge over ``x`` in ``[x0, x1]``, signed by
    the edge's x direction; summed over a closed ring, minus the ring's signed area
    inside the box (derivation in docs/dataset.md).
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

