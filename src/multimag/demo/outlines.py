"""Random outlines of a demo slide, in micrometres: tissue blobs and tumour regions.

Tissue is one or two smooth blobs on white glass; tumour is one to three
disjoint irregular polygons inside the tissue, some with a normal island (a hole).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import shapely
from shapely.geometry import Polygon

__all__ = ["tissue_blobs", "tumour_regions"]

_REGION_GAP_UM = 25.0     # between tumour regions, and to the tissue edge


def _random_star(rng: np.random.Generator, n: int, harmonics: Sequence[int], amp: float,
                 jitter: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Angles and radii (max 1) of a smooth random star-shaped outline."""
    th = np.linspace(0.0, 2 * np.pi, n, endpoint=False) + rng.uniform(0, 2 * np.pi)
    r = np.ones(n)
    for k in harmonics:
        r += amp * rng.uniform(0.3, 1.0) / k ** 0.8 * np.cos(k * th + rng.uniform(0, 2 * np.pi))
    if jitter:
        j = rng.uniform(-1, 1, n)
        j = (np.roll(j, 1) + 2 * j + np.roll(j, -1)) / 4
        r *= 1 + jitter * j
    r = np.maximum(r, 0.2)
    return th, r / r.max()


def _ring_area(xy: np.ndarray) -> float:
    """Area of a closed ring of points (shoelace formula)."""
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def tissue_blobs(rng: np.random.Generator, wum: float, hum: float) -> list[Polygon]:
    """One or two smooth blobs covering ~45-55 % of the slide, white margins around."""
    nblobs = 1 if rng.random() < 0.55 else 2
    coverage = rng.uniform(0.47, 0.56)
    margin = 0.05 * min(wum, hum)
    x0, y0, x1, y1 = margin, margin, wum - margin, hum - margin
    if nblobs == 1:
        boxes, shares = [(x0, y0, x1, y1)], [1.0]
    else:   # side by side along the long axis
        gap = 0.03 * max(wum, hum)
        u = rng.uniform(0.42, 0.58)
        if wum >= hum:
            xm = x0 + u * (x1 - x0)
            boxes = [(x0, y0, xm - gap / 2, y1), (xm + gap / 2, y0, x1, y1)]
        else:
            ym = y0 + u * (y1 - y0)
            boxes = [(x0, y0, x1, ym - gap / 2), (x0, ym + gap / 2, x1, y1)]
        shares = [u, 1 - u]
    blobs = []
    for (bx0, by0, bx1, by1), share in zip(boxes, shares, strict=True):
        th, r = _random_star(rng, 240, range(2, 8), 0.16)
        hx, hy = (bx1 - bx0) / 2, (by1 - by0) / 2
        unit = np.stack([hx * r * np.cos(th), hy * r * np.sin(th)], 1)
        want = share * coverage * wum * hum
        s = min(1.0, math.sqrt(want / _ring_area(unit)))
        ext = unit * s
        # centre so that the outline stays in its box
        lo = np.array([bx0, by0]) - ext.min(0)
        hi = np.array([bx1, by1]) - ext.max(0)
        centre = lo + rng.uniform(0.3, 0.7, 2) * (hi - lo)
        blobs.append(Polygon(ext + centre))
    return blobs


def _random_points_inside(rng: np.random.Generator, poly: Polygon, n: int) -> np.ndarray:
    """Up to ``n`` uniform random points inside ``poly`` (rejection sampling)."""
    minx, miny, maxx, maxy = poly.bounds
    pts = rng.uniform([minx, miny], [maxx, maxy], size=(8 * n, 2))
    return pts[shapely.contains_xy(poly, pts[:, 0], pts[:, 1])][:n]


def _random_roomy_point(rng: np.random.Generator, avail: Polygon) -> np.ndarray | None:
    """One of the 4 points farthest from the edge among 48 random points of ``avail``."""
    pts = _random_points_inside(rng, avail, 48)
    if len(pts) == 0:
        return None
    room = shapely.distance(avail.boundary, shapely.points(pts))
    return pts[int(rng.choice(np.argsort(room)[-4:]))]


def _tumour_star(rng: np.random.Generator) -> np.ndarray:
    """A unit irregular star outline, squashed and rotated at random, as (n, 2) points."""
    th, r = _random_star(rng, 96, range(2, 6), 0.32, jitter=0.04)
    aspect = rng.uniform(0.65, 1.0)
    rot = rng.uniform(0, np.pi)
    x, y = r * np.cos(th), aspect * r * np.sin(th)
    return np.stack([x * np.cos(rot) - y * np.sin(rot), x * np.sin(rot) + y * np.cos(rot)], 1)


def _clipped_star(unit: np.ndarray, scale: float, centre: np.ndarray,
                  avail: Polygon) -> Polygon:
    """The scaled star at ``centre``, or its largest piece inside ``avail`` if it leaves it."""
    star = Polygon(unit * scale + centre)
    if avail.contains(star):
        return star
    piece = star.intersection(avail)
    parts = [g for g in getattr(piece, "geoms", [piece]) if isinstance(g, Polygon)]
    if not parts:
        return Polygon()
    best = max(parts, key=lambda g: g.area)
    return Polygon(best.exterior)   # the star is simple, so is the clipped outline


def _star_of_area(unit: np.ndarray, centre: np.ndarray, avail: Polygon,
                  area: float) -> Polygon:
    """The clipped star whose area is ~``area`` (bisection on the scale)."""
    lo, hi = 0.0, 3.0 * math.sqrt(area / _ring_area(unit))
    for _ in range(20):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _clipped_star(unit, mid, centre, avail).area < area else (lo, mid)
    return _clipped_star(unit, lo, centre, avail)


def _with_normal_island(rng: np.random.Generator, region: Polygon,
                        hole_frac: float) -> Polygon:
    """``region`` with a small star hole (~``hole_frac`` of it) around a roomy interior point.

    Returns ``region`` unchanged when no island fits.
    """
    inner = region.buffer(-20.0)
    if inner.is_empty:
        return region
    candidates = _random_points_inside(rng, inner, 32)
    if not len(candidates):
        return region
    dist = shapely.distance(region.exterior, shapely.points(candidates))
    centre = candidates[int(np.argmax(dist))]
    th, r = _random_star(rng, 48, range(2, 5), 0.25, jitter=0.04)
    unit = np.stack([r * np.cos(th), r * np.sin(th)], 1)
    scale = min(math.sqrt(hole_frac * region.area / _ring_area(unit)), 0.7 * float(dist.max()))
    if scale > 12.0:
        poly = Polygon(region.exterior.coords, [unit * scale + centre])
        if poly.is_valid and region.contains(Polygon(unit * scale + centre)):
            return poly
    return region


def _place_tumour_region(rng: np.random.Generator, avail: Polygon, want: float, hole: bool,
                         min_area: float) -> Polygon | None:
    """One irregular tumour polygon of ~``want`` um^2 inside ``avail``.

    A random smooth star around a roomy random point, scaled to the wanted
    area; where it would leave ``avail`` it is clipped to it (like an outline
    drawn along the tissue edge). Optionally with a normal island.
    """
    if avail.is_empty or avail.area < min_area:
        return None
    want = min(want, 0.8 * avail.area)
    centre = _random_roomy_point(rng, avail)
    if centre is None:
        return None
    unit = _tumour_star(rng)
    hole_frac = rng.uniform(0.08, 0.15) if hole else 0.0
    region = _star_of_area(unit, centre, avail, want / (1 - hole_frac))
    region = shapely.simplify(region, 0.05, preserve_topology=True)
    if region.is_empty or not region.is_valid or region.area * (1 - hole_frac) < min_area:
        return None
    return _with_normal_island(rng, region, hole_frac) if hole else region


def tumour_regions(rng: np.random.Generator, blobs: list[Polygon], frac: float,
                   force_hole: bool) -> list[Polygon]:
    """1-3 disjoint tumour polygons (um) covering ~``frac`` of the tissue."""
    avail = shapely.union_all([b.buffer(-_REGION_GAP_UM) for b in blobs])
    target = frac * sum(b.area for b in blobs)
    n = int(rng.choice([1, 2, 3], p=[0.35, 0.4, 0.25]))
    shares = rng.dirichlet(np.full(n, 4.0))
    min_area = 0.04 * target
    regions: list[Polygon] = []
    wants = list(shares * target)
    while wants and len(regions) < 3:
        want = wants.pop(0)
        forced = force_hole and not regions
        hole = forced or bool(rng.random() < 0.2)
        poly = _place_tumour_region(rng, avail, want, hole, min_area)
        for _ in range(8 if forced else 0):   # a forced island must exist
            if poly is not None and len(poly.interiors):
                break
            poly = _place_tumour_region(rng, avail, want, hole, min_area)
        if poly is None:
            continue
        regions.append(poly)
        avail = avail.difference(Polygon(poly.exterior).buffer(_REGION_GAP_UM))
        got = sum(p.area for p in regions)
        if not wants and got < 0.9 * target:   # shrunk to fit: top up
            wants.append(target - got)
    return regions
