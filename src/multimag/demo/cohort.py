"""The synthetic demo cohort: 14 small H&E-like SVS slides from 10 patients.

``make_demo_cohort(outdir, seed)`` writes a complete, deterministic toy dataset
that exercises every path of the pipeline:

- ``slides/{slide_id}.svs``: real Aperio SVS pyramids (levels 1/4/16, JPEG),
  ~3000 x 2200 px at 0.25 um/px (AppMag 40), 240- or 256-px tiles. One slide
  (``P04_A``) is scanned at 20x (0.5 um/px, half the pixels, same physical
  size, rendered at that resolution); one (``P05_A``) has no MPP in its
  metadata (its true 0.25 um/px is given in ``samples.tsv``).
- ``annotations/{slide_id}.geojson`` (QuPath), ``.xml`` (ASAP / CAMELYON16) and
  ``_mask.tif`` (PAIP-style raster, 1 = tumour, downsample 4): three encodings
  of the same tumour polygons, in level-0 pixel coordinates of the slide.
- ``samples.tsv`` and ``README.md``.

Content: one or two smooth tissue blobs on a white (245) background. Normal
tissue is pink fibrous stroma with sparse small oval nuclei (6-8 um); tumour is
crowded, larger (9-14 um), irregular, hyperchromatic nuclei on a paler
background, calibrated per slide so that the mean colour of tumour and normal
tissue match: a classifier has to learn texture, not colour. All sizes are
physical (micrometres), so the 20x slide shows the same tissue at half the
sampling. Tumour polygons are rasterised once into a level-0 mask that drives
the rendering and the raster mask file, so image, vectors and raster agree.

Coordinates: pixel ``(row i, col j)`` covers ``[j, j+1) x [i, i+1)`` in level-0
pixel units (the OpenSlide / QuPath convention); a pixel is inside a polygon
when its centre ``(j + 0.5, i + 0.5)`` is.

Randomness: slide ``k`` draws from ``np.random.SeedSequence([seed, k])`` only,
so a slide's pixels and annotations do not depend on which other slides are
generated, nor on how many worker processes are used.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
import tifffile
from PIL import Image
from scipy import ndimage as ndi
from scipy.special import ndtri
from shapely.geometry import Polygon
from shapely.geometry.polygon import orient

from multimag.atomic import atomic_path
from multimag.demo.svs_writer import box_downsample, write_svs

__all__ = [
    "DemoSlide",
    "cohort_spec",
    "make_demo_cohort",
    "rasterize_polygons",
    "MASK_DOWNSAMPLE",
    "BACKGROUND_RGB",
]

BASE_MPP = 0.25          # um/px of a 40x scan
MASK_DOWNSAMPLE = 4      # raster mask pixel = 4x4 level-0 pixels
BACKGROUND_RGB = 245.0   # glass
TUMOUR_CLASS = "Tumor"
EXCLUSION_GROUP = "Exclusion"
TUMOUR_SPACING_UM = 16.5  # hexagonal grid of tumour nuclei (before jitter, 6 % dropped)
NORMAL_DENSITY = 0.0016   # normal nuclei per um^2 (Poisson)
SAMPLES_COLUMNS = ("slide_id", "patient_id", "path", "annotation", "mpp", "slide_label")

# RGB anchors (float) of the stains, linear mixing in RGB
_STROMA_PALE = np.array([226.0, 200.0, 220.0], np.float32)
_STROMA_DENSE = np.array([166.0, 84.0, 136.0], np.float32)
_TUMOUR_PALE = np.array([250.0, 214.0, 226.0], np.float32)
_TUMOUR_DENSE = np.array([216.0, 102.0, 132.0], np.float32)
_NUC_LIGHT = np.array([188.0, 142.0, 206.0], np.float32)
_NUC_DARK = np.array([78.0, 44.0, 128.0], np.float32)


@dataclass(frozen=True)
class DemoSlide:
    """One slide of the demo cohort (a fixed layout; only the content depends on the seed)."""

    index: int
    slide_id: str
    patient_id: str
    label: str               # "tumour" or "normal"
    mpp: float               # true level-0 pixel size, um/px
    app_mag: float
    mpp_in_metadata: bool    # False: the SVS carries no MPP (samples.tsv gives it)
    width: int
    height: int
    tile: int
    force_hole: bool         # its first tumour region gets a normal island

    @property
    def samples_mpp(self) -> str:
        return "" if self.mpp_in_metadata else f"{self.mpp:g}"


# slide_id, label, width and height at 40x (level 0 px), note
_LAYOUT: tuple[tuple[str, str, int, int, str], ...] = (
    ("P01_A", "tumour", 3000, 2200, "hole"),
    ("P01_B", "tumour", 3071, 2163, ""),
    ("P02_A", "tumour", 2945, 2241, ""),
    ("P03_A", "tumour", 3117, 2189, "hole"),
    ("P03_B", "tumour", 2988, 2227, ""),
    ("P04_A", "tumour", 3002, 2202, "20x"),
    ("P05_A", "tumour", 3053, 2175, "no-mpp"),
    ("P06_A", "tumour", 2911, 2233, ""),
    ("P06_B", "tumour", 3096, 2151, ""),
    ("P07_A", "tumour", 2967, 2219, ""),
    ("P08_A", "normal", 3033, 2195, ""),
    ("P08_B", "normal", 2979, 2247, ""),
    ("P09_A", "normal", 3110, 2171, ""),
    ("P10_A", "normal", 2953, 2209, ""),
)


def cohort_spec() -> list[DemoSlide]:
    """The fixed layout of the demo cohort (ids, patients, labels, sizes, scanners)."""
    out = []
    for k, (sid, label, w40, h40, note) in enumerate(_LAYOUT):
        is20 = note == "20x"
        out.append(DemoSlide(
            index=k, slide_id=sid, patient_id=sid.split("_")[0], label=label,
            mpp=2 * BASE_MPP if is20 else BASE_MPP, app_mag=20.0 if is20 else 40.0,
            mpp_in_metadata=note != "no-mpp",
            width=w40 // 2 if is20 else w40, height=h40 // 2 if is20 else h40,
            tile=240 if k % 2 == 0 else 256, force_hole=note == "hole",
        ))
    return out


# --------------------------------------------------------------------------- geometry


def rasterize_polygons(polygons: Sequence[Polygon], shape: tuple[int, int],
                       downsample: float = 1.0) -> np.ndarray:
    """Boolean mask of the pixels whose centres lie inside the polygons (holes excluded).

    ``polygons`` are in level-0 pixel units; the mask pixel ``(i, j)`` has its
    centre at ``((j + 0.5) * downsample, (i + 0.5) * downsample)``. Scanline
    even-odd fill per polygon, union over polygons; vectorised, O(pixels).
    """
    h, w = shape
    out = np.zeros((h, w), bool)
    for poly in polygons:
        rings = [np.asarray(poly.exterior.coords, np.float64)[:-1] / downsample]
        rings += [np.asarray(r.coords, np.float64)[:-1] / downsample for r in poly.interiors]
        allxy = np.concatenate(rings)
        r0 = int(np.clip(math.floor(allxy[:, 1].min()) - 1, 0, h))
        r1 = int(np.clip(math.ceil(allxy[:, 1].max()) + 1, 0, h))
        c0 = int(np.clip(math.floor(allxy[:, 0].min()) - 1, 0, w))
        c1 = int(np.clip(math.ceil(allxy[:, 0].max()) + 1, 0, w))
        if r1 <= r0 or c1 <= c0:
            continue
        toggles = np.zeros((r1 - r0, c1 - c0 + 1), np.uint8)
        for ring in rings:
            x1, y1 = ring[:, 0], ring[:, 1]
            x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
            # rows i whose centre yc = i + 0.5 is in [min(y1, y2), max(y1, y2))
            i0 = np.clip(np.ceil(np.minimum(y1, y2) - 0.5).astype(np.int64), r0, r1)
            i1 = np.clip(np.ceil(np.maximum(y1, y2) - 0.5).astype(np.int64), r0, r1)
            counts = np.maximum(i1 - i0, 0)
            total = int(counts.sum())
            if total == 0:
                continue
            e = np.repeat(np.arange(len(x1)), counts)
            starts = np.cumsum(counts) - counts
            rows = i0[e] + (np.arange(total) - starts[e])
            yc = rows + 0.5
            xi = x1[e] + (yc - y1[e]) * (x2[e] - x1[e]) / (y2[e] - y1[e])
            # first column whose centre is right of the crossing
            col = np.clip(np.floor(xi - 0.5).astype(np.int64) + 1, c0, c1) - c0
            np.add.at(toggles, (rows - r0, col), 1)
        inside = (np.cumsum(toggles, axis=1, dtype=np.uint8)[:, : c1 - c0] & 1).astype(bool)
        out[r0:r1, c0:c1] |= inside
    return out


def _unit_star(rng: np.random.Generator, n: int, harmonics: Sequence[int], amp: float,
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


def _shoelace(xy: np.ndarray) -> float:
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _tissue_blobs(rng: np.random.Generator, wum: float, hum: float) -> list[Polygon]:
    """One or two smooth blobs covering ~45-55 % of the slide, white margins around."""
    nblobs = 1 if rng.random() < 0.55 else 2
    cov = rng.uniform(0.47, 0.56)
    margin = 0.05 * min(wum, hum)
    x0, y0, x1, y1 = margin, margin, wum - margin, hum - margin
    if nblobs == 1:
        boxes, shares = [(x0, y0, x1, y1)], [1.0]
    else:
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
        th, r = _unit_star(rng, 240, range(2, 8), 0.16)
        hx, hy = (bx1 - bx0) / 2, (by1 - by0) / 2
        unit = np.stack([hx * r * np.cos(th), hy * r * np.sin(th)], 1)
        want = share * cov * wum * hum
        s = min(1.0, math.sqrt(want / _shoelace(unit)))
        ext = unit * s
        # centre so that the outline stays in its box
        lo = np.array([bx0, by0]) - ext.min(0)
        hi = np.array([bx1, by1]) - ext.max(0)
        centre = lo + rng.uniform(0.3, 0.7, 2) * (hi - lo)
        blobs.append(Polygon(ext + centre))
    return blobs


def _random_points_in(rng: np.random.Generator, poly: Polygon, n: int) -> np.ndarray:
    """Up to ``n`` uniform random points inside ``poly`` (rejection sampling)."""
    minx, miny, maxx, maxy = poly.bounds
    pts = rng.uniform([minx, miny], [maxx, maxy], size=(8 * n, 2))
    return pts[shapely.contains_xy(poly, pts[:, 0], pts[:, 1])][:n]


def _place_region(rng: np.random.Generator, avail: Polygon, want: float, hole: bool,
                  min_area: float) -> Polygon | None:
    """One irregular tumour polygon of ~``want`` um^2 inside ``avail``.

    A random smooth star around the roomiest of a few random points, scaled to
    the wanted area; where it would leave ``avail`` it is clipped to it (like an
    outline drawn along the tissue edge). Optionally with a normal island.
    """
    if avail.is_empty or avail.area < min_area:
        return None
    want = min(want, 0.8 * avail.area)
    pts = _random_points_in(rng, avail, 48)
    if len(pts) == 0:
        return None
    room = shapely.distance(avail.boundary, shapely.points(pts))
    centre = pts[int(rng.choice(np.argsort(room)[-4:]))]
    th, r = _unit_star(rng, 96, range(2, 6), 0.32, jitter=0.04)
    aspect = rng.uniform(0.65, 1.0)
    rot = rng.uniform(0, np.pi)
    x, y = r * np.cos(th), aspect * r * np.sin(th)
    unit = np.stack([x * np.cos(rot) - y * np.sin(rot), x * np.sin(rot) + y * np.cos(rot)], 1)
    hole_frac = rng.uniform(0.08, 0.15) if hole else 0.0
    ext_want = want / (1 - hole_frac)

    def clipped(scale: float) -> Polygon:
        star = Polygon(unit * scale + centre)
        if avail.contains(star):
            return star
        piece = star.intersection(avail)
        parts = [g for g in getattr(piece, "geoms", [piece]) if isinstance(g, Polygon)]
        if not parts:
            return Polygon()
        best = max(parts, key=lambda g: g.area)
        return Polygon(best.exterior)   # the star is simple, so is the clipped outline

    lo, hi = 0.0, 3.0 * math.sqrt(ext_want / _shoelace(unit))
    for _ in range(20):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if clipped(mid).area < ext_want else (lo, mid)
    ext = clipped(lo)
    ext = shapely.simplify(ext, 0.05, preserve_topology=True)
    if ext.is_empty or not ext.is_valid or ext.area * (1 - hole_frac) < min_area:
        return None
    if hole:
        # a normal island: a small star around the roomiest interior point
        inner = ext.buffer(-20.0)
        if not inner.is_empty:
            cands = _random_points_in(rng, inner, 32)
            if len(cands):
                dist = shapely.distance(ext.exterior, shapely.points(cands))
                hc = cands[int(np.argmax(dist))]
                hth, hr = _unit_star(rng, 48, range(2, 5), 0.25, jitter=0.04)
                hunit = np.stack([hr * np.cos(hth), hr * np.sin(hth)], 1)
                hs = min(math.sqrt(hole_frac * ext.area / _shoelace(hunit)),
                         0.7 * float(dist.max()))
                if hs > 12.0:
                    poly = Polygon(ext.exterior.coords, [hunit * hs + hc])
                    if poly.is_valid and ext.contains(Polygon(hunit * hs + hc)):
                        return poly
    return ext


def _tumour_regions(rng: np.random.Generator, blobs: list[Polygon], frac: float,
                    force_hole: bool) -> list[Polygon]:
    """1-3 disjoint tumour polygons (um) covering ~``frac`` of the tissue."""
    gap = 25.0                       # um between regions, and to the tissue edge
    avail = shapely.union_all([b.buffer(-gap) for b in blobs])
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
        poly = _place_region(rng, avail, want, hole, min_area)
        for _ in range(8 if forced else 0):   # a forced island must exist
            if poly is not None and len(poly.interiors):
                break
            poly = _place_region(rng, avail, want, hole, min_area)
        if poly is None:
            continue
        regions.append(poly)
        avail = avail.difference(Polygon(poly.exterior).buffer(gap))
        got = sum(p.area for p in regions)
        if not wants and got < 0.9 * target:   # shrunk to fit: top up
            wants.append(target - got)
    return regions


def _to_pixels(poly: Polygon, mpp: float) -> Polygon:
    """um -> level-0 px on a 0.01 px grid (the exact coordinates written to disk).

    Snapping goes through ``shapely.set_precision``, which keeps the outline
    valid (a rounding that would fold a thin spike removes it instead).
    """
    px = shapely.transform(poly, lambda xy: xy / mpp)
    snapped = shapely.set_precision(px, 0.01)
    parts = [g for g in getattr(snapped, "geoms", [snapped]) if isinstance(g, Polygon)]
    best = max(parts, key=lambda g: g.area)
    out = orient(Polygon(np.round(np.asarray(best.exterior.coords), 2),
                         [np.round(np.asarray(r.coords), 2) for r in best.interiors]), sign=1.0)
    if not out.is_valid:
        raise RuntimeError("demo polygon became invalid on the 0.01 px grid")
    return out


# --------------------------------------------------------------------------- texture


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], mpp: float,
                  scale_um: float) -> np.ndarray:
    """Unit-variance smooth noise with correlation length ~scale_um, at full resolution.

    White noise on a coarse physical grid (cell = scale/3 um), Gaussian-filtered
    there and bilinearly resampled onto the slide's pixel grid, so that the
    same physical texture appears at any mpp.
    """
    h, w = shape
    cell = scale_um / 3.0
    ch = int(math.ceil(h * mpp / cell)) + 4
    cw = int(math.ceil(w * mpp / cell)) + 4
    coarse = ndi.gaussian_filter(rng.standard_normal((ch, cw)).astype(np.float32), 1.5,
                                 mode="wrap")
    coarse /= coarse.std() + 1e-6
    box = (2.0, 2.0, 2.0 + w * mpp / cell, 2.0 + h * mpp / cell)
    img = Image.fromarray(coarse, mode="F").resize((w, h), Image.Resampling.BILINEAR, box=box)
    return np.array(img, np.float32)


def _stamp_nuclei(alpha: np.ndarray, dark: np.ndarray, cx: np.ndarray, cy: np.ndarray,
                  a: np.ndarray, b: np.ndarray, rot: np.ndarray, harm: np.ndarray,
                  phase: np.ndarray, darkness: np.ndarray, vesicular: np.ndarray,
                  edge_px: float) -> None:
    """Draw anti-aliased irregular ellipses (all sizes in px) into alpha / dark (max)."""
    n = len(cx)
    if n == 0:
        return
    h, w = alpha.shape
    ks = np.arange(2, 2 + harm.shape[1], dtype=np.float32)
    reach = a * (1 + harm.sum(1)) + edge_px + 1
    rmax = int(math.ceil(reach.max()))
    off = np.arange(-rmax, rmax + 1, dtype=np.int64)
    aflat, dflat = alpha.reshape(-1), dark.reshape(-1)
    chunk = max(1, 2_000_000 // len(off) ** 2)
    for s in range(0, n, chunk):
        sl = slice(s, s + chunk)
        ix, iy = np.floor(cx[sl]).astype(np.int64), np.floor(cy[sl]).astype(np.int64)
        px = ix[:, None, None] + off[None, None, :]
        py = iy[:, None, None] + off[None, :, None]
        dx = (px + 0.5 - cx[sl, None, None]).astype(np.float32)
        dy = (py + 0.5 - cy[sl, None, None]).astype(np.float32)
        c, si = np.cos(rot[sl])[:, None, None], np.sin(rot[sl])[:, None, None]
        ua = (dx * c + dy * si) / a[sl, None, None]
        vb = (dy * c - dx * si) / b[sl, None, None]
        rho = np.sqrt(ua * ua + vb * vb)
        phi = np.arctan2(vb, ua)
        rmod = np.ones_like(rho)
        for j, k in enumerate(ks):
            rmod += harm[sl, j, None, None] * np.cos(k * phi + phase[sl, j, None, None])
        q = rho / rmod
        radius = np.sqrt(a[sl] * b[sl])[:, None, None]
        al = np.clip((1 - q) * radius / edge_px + 0.5, 0, 1)
        # vesicular nuclei: pale centre, dark rim (chromatin margination)
        dk = darkness[sl, None, None] * (1 - vesicular[sl, None, None] * 0.45
                                         * np.clip(1 - q * q, 0, 1))
        ok = (al > 0) & (px >= 0) & (px < w) & (py >= 0) & (py < h)
        flat = (py * w + px)[ok]
        np.maximum.at(aflat, flat, al[ok])
        np.maximum.at(dflat, flat, (al * dk)[ok])


def _nuclei_params(rng: np.random.Generator, xy: np.ndarray, kind: str, mpp: float,
                   orient_at: np.ndarray) -> dict[str, np.ndarray]:
    n = len(xy)
    f32 = np.float32
    if kind == "normal":   # small oval, 6-8 um, along the fibres
        a_um = rng.uniform(3.2, 4.2, n)
        b_um = a_um * rng.uniform(0.55, 0.85, n)
        rot = orient_at + rng.normal(0, 0.35, n)
        harm = rng.uniform(0, 0.04, (n, 2))
        darkness = rng.uniform(0.55, 0.75, n)
        vesicular = np.zeros(n)
    else:                  # tumour: 9-14 um, pleomorphic, hyperchromatic
        a_um = rng.uniform(4.6, 7.0, n)
        b_um = a_um * rng.uniform(0.7, 1.0, n)
        rot = rng.uniform(0, np.pi, n)
        harm = rng.uniform(0, 1, (n, 3)) * np.array([0.14, 0.09, 0.06])
        darkness = rng.uniform(0.6, 1.0, n)
        vesicular = (rng.random(n) < 0.6).astype(float) * rng.uniform(0.6, 1.0, n)
    phase = rng.uniform(0, 2 * np.pi, harm.shape)
    return dict(cx=xy[:, 0].astype(np.float64), cy=xy[:, 1].astype(np.float64),
                a=(a_um / mpp).astype(f32), b=(b_um / mpp).astype(f32), rot=rot.astype(f32),
                harm=harm.astype(f32), phase=phase.astype(f32), darkness=darkness.astype(f32),
                vesicular=vesicular.astype(f32))


def _oriented_texture(rng: np.random.Generator, shape: tuple[int, int], mpp: float,
                      angle: float, along_um: float = 9.0, across_um: float = 0.9) -> np.ndarray:
    """Unit-variance streaky noise (fibres) running at ``angle``, at full resolution.

    Anisotropic Gaussian-filtered noise on a rotated physical grid (2 um along x
    0.5 um across), sampled onto the slide's pixels by one bilinear affine warp.
    """
    h, w = shape
    ca, cc = 2.0, 0.5
    diag = math.hypot(h * mpp, w * mpp) + 20.0
    nx, ny = int(diag / ca) + 2, int(diag / cc) + 2
    tex = rng.standard_normal((ny, nx)).astype(np.float32)
    tex = ndi.gaussian_filter(tex, (across_um / cc, along_um / ca), mode="wrap", truncate=3.0)
    tex /= tex.std() + 1e-6
    cs, sn = math.cos(angle), math.sin(angle)
    xc, yc = w * mpp / 2, h * mpp / 2
    # output pixel (x, y) -> physical (x * mpp - xc, y * mpp - yc) -> rotated -> texture cell
    data = (cs * mpp / ca, sn * mpp / ca, (-cs * xc - sn * yc) / ca + nx / 2,
            -sn * mpp / cc, cs * mpp / cc, (sn * xc - cs * yc) / cc + ny / 2)
    img = Image.fromarray(tex, mode="F").transform((w, h), Image.Transform.AFFINE, data,
                                                   resample=Image.Resampling.BILINEAR)
    return np.array(img, np.float32)


def _stroma_t(rng: np.random.Generator, shape: tuple[int, int], mpp: float,
              ang: float) -> np.ndarray:
    """Eosin density (0 pale .. 1 dense) of normal stroma: fibre bundles, loose areas.

    Fibres run mostly at ``ang`` (radians, image x towards y), partly at a second angle.
    """
    f1 = _oriented_texture(rng, shape, mpp, ang)
    f2 = _oriented_texture(rng, shape, mpp, ang + rng.uniform(0.6, 1.2))
    mix = np.clip(0.5 + 0.6 * _smooth_field(rng, shape, mpp, 60.0), 0, 1)
    fib = f1 * mix + f2 * (1 - mix)
    del f1, f2, mix
    fib = np.clip(fib - 0.2, 0, None)
    loose = _smooth_field(rng, shape, mpp, 25.0)
    t = 0.42 + 0.32 * fib - 0.25 * np.clip(loose - 0.6, 0, 1)
    return np.clip(t, 0, 1, out=t)


def _upsample(field: np.ndarray, shape: tuple[int, int], factor: int) -> np.ndarray:
    """Bilinear resize of a coarse grid whose cell k covers full pixels [k*f, (k+1)*f)."""
    if factor == 1:
        return np.array(field[: shape[0], : shape[1]], np.float32)
    h, w = shape
    img = Image.fromarray(np.ascontiguousarray(field, np.float32), mode="F")
    img = img.resize((w, h), Image.Resampling.BILINEAR, box=(0, 0, w / factor, h / factor))
    return np.array(img, np.float32)


# random bytes -> N(0, 1) quantiles: Gaussian-like sensor noise ~20x cheaper than
# standard_normal on (H, W, 3)
_NOISE_LUT = ndtri((np.arange(256) + 0.5) / 256).astype(np.float32)


def _nuclei_maps(rng: np.random.Generator, tissue: np.ndarray, tumour: np.ndarray,
                 mpp: float, fibre_angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Nuclear opacity (0..1) and darkness (0..1) maps."""
    h, w = tissue.shape
    alpha = np.zeros((h, w), np.float32)
    dark = np.zeros((h, w), np.float32)
    edge_px = 0.6 / mpp
    # normal: sparse Poisson, ~0.0016 per um^2
    pts = rng.uniform([0, 0], [w, h], size=(rng.poisson(NORMAL_DENSITY * w * h * mpp * mpp), 2))
    pi_, pj = pts[:, 1].astype(np.int64), pts[:, 0].astype(np.int64)
    keep = tissue[pi_, pj] & ~tumour[pi_, pj]
    nn = _nuclei_params(rng, pts[keep], "normal", mpp, np.full(int(keep.sum()), fibre_angle))
    _stamp_nuclei(alpha, dark, edge_px=edge_px, **nn)
    if tumour.any():
        # tumour: crowded jittered hexagonal grid
        sp = TUMOUR_SPACING_UM / mpp
        rows = np.nonzero(tumour.any(1))[0]
        cols = np.nonzero(tumour.any(0))[0]
        gy = np.arange(rows[0], rows[-1] + sp, sp * math.sqrt(3) / 2)
        gx = np.arange(cols[0], cols[-1] + sp, sp)
        gxx, gyy = np.meshgrid(gx, gy)
        gxx = gxx + (np.arange(len(gy)) % 2 * sp / 2)[:, None]
        tp = np.stack([gxx.ravel(), gyy.ravel()], 1)
        tp += rng.uniform(-0.3, 0.3, tp.shape) * sp
        tp = tp[(tp[:, 0] >= 0) & (tp[:, 0] < w) & (tp[:, 1] >= 0) & (tp[:, 1] < h)]
        ti, tj = tp[:, 1].astype(np.int64), tp[:, 0].astype(np.int64)
        keep = tumour[ti, tj] & (rng.random(len(tp)) > 0.06)
        tn = _nuclei_params(rng, tp[keep], "tumour", mpp, np.zeros(int(keep.sum())))
        _stamp_nuclei(alpha, dark, edge_px=edge_px, **tn)
    return alpha, dark


def _render(rng: np.random.Generator, spec: DemoSlide, tissue: np.ndarray,
            tumour: np.ndarray) -> np.ndarray:
    """The (H, W, 3) uint8 H&E-like image for the given level-0 masks.

    Smooth fields (stroma, cytoplasm, chromatin) are computed on a 0.5 um grid
    and resampled; nuclei are drawn at full resolution; colours are composed
    one channel at a time, in place, to keep memory traffic low.
    """
    h, w = tissue.shape
    mpp = spec.mpp
    f32 = np.float32
    g = max(1, round(0.5 / mpp))          # coarse grid factor (2 at 40x, 1 at 20x)
    cshape = (-(-h // g), -(-w // g))
    cmpp = mpp * g

    # eosin density: fibrous stroma (normal) or pale granular cytoplasm (tumour)
    fibre_angle = rng.uniform(0, np.pi)
    t = _stroma_t(rng, cshape, cmpp, fibre_angle)
    gran = _smooth_field(rng, cshape, cmpp, 1.5)
    t = np.where(tumour[::g, ::g], f32(0.32) + f32(0.08) * gran, t)
    t = _upsample(t, (h, w), g)
    chrom = _upsample(_smooth_field(rng, cshape, cmpp, 1.2), (h, w), g)
    del gran

    alpha, dark = _nuclei_maps(rng, tissue, tumour, mpp, fibre_angle)
    # per-pixel nuclear darkness, with chromatin texture
    dpix = np.maximum(alpha, f32(1e-3))
    np.divide(dark, dpix, out=dpix)
    chrom *= f32(0.12)
    chrom += f32(1)
    dpix *= chrom
    np.clip(dpix, 0, 1, out=dpix)
    del chrom, dark

    normal = tissue & ~tumour
    calibrate = bool(tumour.any() and normal.any())
    if calibrate:
        wts = (1 - alpha) * tumour
        wmean = max(float(wts.mean(where=tumour)), 1e-3)
    edge = ndi.gaussian_filter(tissue.astype(f32), 0.5 / mpp, truncate=3.0)
    noise = rng.bytes(3 * h * w)
    out = np.empty((h, w, 3), np.uint8)
    ch = np.empty((h, w), f32)
    tmp = np.empty((h, w), f32)
    for c in range(3):
        # background colour: pale + t * (dense - pale) of the pixel's class
        np.multiply(t, _STROMA_DENSE[c] - _STROMA_PALE[c], out=ch)
        ch += _STROMA_PALE[c]
        np.multiply(t, _TUMOUR_DENSE[c] - _TUMOUR_PALE[c], out=tmp)
        tmp += _TUMOUR_PALE[c]
        np.copyto(ch, tmp, where=tumour)
        # nuclei over it: ch += alpha * (nucleus - ch)
        np.multiply(dpix, _NUC_DARK[c] - _NUC_LIGHT[c], out=tmp)
        tmp += _NUC_LIGHT[c]
        tmp -= ch
        tmp *= alpha
        ch += tmp
        if calibrate:  # same mean colour in tumour and normal tissue
            delta = (ch.mean(where=normal) - ch.mean(where=tumour)) / wmean
            np.multiply(wts, f32(delta), out=tmp)
            ch += tmp
        # glass around the tissue, soft edge, sensor noise
        ch -= f32(BACKGROUND_RGB)
        ch *= edge
        ch += f32(BACKGROUND_RGB + 0.5)
        ch += _NOISE_LUT[np.frombuffer(noise, np.uint8, h * w, c * h * w).reshape(h, w)] * 2
        np.clip(ch, 0, 255, out=ch)
        out[..., c] = ch
    return out


# --------------------------------------------------------------------------- files


def _geojson(regions: list[Polygon]) -> str:
    feats = []
    for k, poly in enumerate(regions):
        rings = [poly.exterior, *poly.interiors]
        feats.append({
            "type": "Feature",
            "id": f"tumor-{k}",
            "geometry": {"type": "Polygon",
                         "coordinates": [[[round(x, 2), round(y, 2)] for x, y in r.coords]
                                         for r in rings]},
            "properties": {"objectType": "annotation",
                           "classification": {"name": TUMOUR_CLASS, "color": [200, 0, 0]}},
        })
    return json.dumps({"type": "FeatureCollection", "features": feats}) + "\n"


def _asap_xml(regions: list[Polygon]) -> str:
    def fmt(v: float) -> str:
        return f"{v:.2f}"

    lines = ['<?xml version="1.0"?>', "<ASAP_Annotations>", "\t<Annotations>"]
    k = 0
    for poly in regions:
        for group, ring, color in [(TUMOUR_CLASS, poly.exterior, "#C80000")] + [
                (EXCLUSION_GROUP, r, "#64FE2E") for r in poly.interiors]:
            lines.append(f'\t\t<Annotation Name="Annotation {k}" Type="Polygon" '
                         f'PartOfGroup="{group}" Color="{color}">')
            lines.append("\t\t\t<Coordinates>")
            for i, (x, y) in enumerate(list(ring.coords)[:-1]):
                lines.append(f'\t\t\t\t<Coordinate Order="{i}" X="{fmt(x)}" Y="{fmt(y)}" />')
            lines.append("\t\t\t</Coordinates>")
            lines.append("\t\t</Annotation>")
            k += 1
    lines += ["\t</Annotations>", "\t<AnnotationGroups>"]
    for name, color in ((TUMOUR_CLASS, "#C80000"), (EXCLUSION_GROUP, "#64FE2E")):
        lines += [f'\t\t<Group Name="{name}" PartOfGroup="None" Color="{color}">',
                  "\t\t\t<Attributes />", "\t\t</Group>"]
    lines += ["\t</AnnotationGroups>", "</ASAP_Annotations>", ""]
    return "\n".join(lines)


def _mask_levels(tumour: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Level-0 mask -> uint8 masks at downsample 4 and 16 (area fraction >= 0.5)."""
    m = tumour.astype(np.uint8)[..., None] * np.uint8(255)
    m4 = box_downsample(m, MASK_DOWNSAMPLE)[..., 0] >= 128
    m16 = box_downsample(m, MASK_DOWNSAMPLE * 4)[..., 0] >= 128
    return m4.astype(np.uint8), m16.astype(np.uint8)


def _write_mask(path: Path, tumour: np.ndarray) -> None:
    m4, m16 = _mask_levels(tumour)
    h, w = tumour.shape
    desc = json.dumps({"multimag_mask": "tumour", "values": {"0": "not tumour", "1": "tumour"},
                       "downsample": MASK_DOWNSAMPLE, "level0_width": w, "level0_height": h,
                       "levels_downsample": [MASK_DOWNSAMPLE, MASK_DOWNSAMPLE * 4]})
    kw = dict(tile=(256, 256), compression="zlib", photometric="minisblack", metadata=None,
              software=False)
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp) as tif:
        tif.write(m4, subifds=1, description=desc, **kw)
        tif.write(m16, subfiletype=1, **kw)


def _make_slide(outdir: Path, spec: DemoSlide, seed: int) -> None:
    """Render and write one slide, its three annotation files and nothing else."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), spec.index]))
    mpp = spec.mpp
    wum, hum = spec.width * mpp, spec.height * mpp
    blobs_um = _tissue_blobs(rng, wum, hum)
    regions_um: list[Polygon] = []
    if spec.label == "tumour":
        frac = rng.uniform(0.42, 0.54)
        regions_um = _tumour_regions(rng, blobs_um, frac, spec.force_hole)
    blobs = [_to_pixels(b, mpp) for b in blobs_um]
    regions = [_to_pixels(r, mpp) for r in regions_um]
    shape = (spec.height, spec.width)
    tissue = rasterize_polygons(blobs, shape)
    tumour = rasterize_polygons(regions, shape) & tissue
    img = _render(rng, spec, tissue, tumour)

    write_svs(outdir / "slides" / f"{spec.slide_id}.svs", img,
              mpp=mpp if spec.mpp_in_metadata else None, app_mag=spec.app_mag,
              tile=spec.tile, downsamples=(1, 4, 16), quality=90)
    ann = outdir / "annotations"
    (ann / f"{spec.slide_id}.geojson").write_text(_geojson(regions), encoding="utf-8")
    (ann / f"{spec.slide_id}.xml").write_text(_asap_xml(regions), encoding="utf-8")
    _write_mask(ann / f"{spec.slide_id}_mask.tif", tumour)


def _readme(specs: list[DemoSlide], seed: int) -> str:
    n_pat = len({s.patient_id for s in specs})
    n_tum = sum(s.label == "tumour" for s in specs)
    special = [f"{s.slide_id} is scanned at 20x ({s.mpp:g} um/px)" for s in specs
               if s.app_mag == 20]
    special += [f"{s.slide_id} carries no MPP in its metadata (its true {s.mpp:g} um/px is "
                "in samples.tsv)" for s in specs if not s.mpp_in_metadata]
    return (
        "# multimag synthetic demo cohort\n\n"
        f"Generated by `multimag.demo.cohort.make_demo_cohort(outdir, seed={seed})`: {len(specs)} "
        f"synthetic H&E-like Aperio SVS slides from {n_pat} patients ({n_tum} tumour-bearing, "
        f"{len(specs) - n_tum} normal; every patient's slides share one label), level 0 at "
        f"{BASE_MPP} um/px (AppMag 40) with levels at downsample 1/4/16"
        + "".join(f"; {x}" for x in special) + ". "
        "Normal tissue is pink fibrous stroma with sparse small oval nuclei, tumour is crowded "
        "large pleomorphic nuclei on a paler background with the same mean colour. Tumour "
        "regions are given three ways in level-0 pixel coordinates: QuPath GeoJSON "
        "(`annotations/{slide_id}.geojson`), ASAP XML with `Tumor` and `Exclusion` groups "
        "(`.xml`) and a uint8 raster mask at downsample 4 (`_mask.tif`, 1 = tumour). "
        "`samples.tsv` lists slide_id, patient_id, path, annotation, mpp (only where the "
        "slide lacks it) and slide_label. Content is synthetic and deterministic for a seed; "
        "it is meant for testing pipelines, not for biology.\n"
    )


def make_demo_cohort(outdir: str | Path, seed: int = 0, *,
                     slide_ids: Sequence[str] | None = None,
                     workers: int | None = None) -> Path:
    """Write the synthetic demo cohort into ``outdir``; return the path of samples.tsv.

    ``slide_ids`` restricts generation to some slides (each slide's content
    depends only on ``seed`` and its own id, so a subset is identical to the
    same slides of the full cohort); ``workers`` is the number of threads
    rendering slides at once (default: up to 2, one per CPU); the output does
    not depend on it.
    """
    outdir = Path(outdir)
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    specs = cohort_spec()
    if slide_ids is not None:
        known = {s.slide_id for s in specs}
        unknown = sorted(set(slide_ids) - known)
        if unknown:
            raise ValueError(f"unknown demo slide ids {unknown}; known: {sorted(known)}")
        specs = [s for s in specs if s.slide_id in set(slide_ids)]
    (outdir / "slides").mkdir(parents=True, exist_ok=True)
    (outdir / "annotations").mkdir(parents=True, exist_ok=True)

    if workers is None:
        workers = min(2, os.cpu_count() or 1, len(specs))
    if workers > 1 and len(specs) > 1:
        # threads, not processes: numpy / scipy / Pillow / JPEG encoding release
        # the GIL, and threads need no picklable state or __main__ guard
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(lambda s: _make_slide(outdir, s, seed), specs):
                pass
    else:
        for s in specs:
            _make_slide(outdir, s, seed)

    rows = ["\t".join(SAMPLES_COLUMNS)]
    for s in specs:
        rows.append("\t".join([s.slide_id, s.patient_id, f"slides/{s.slide_id}.svs",
                               f"annotations/{s.slide_id}.geojson", s.samples_mpp, s.label]))
    samples = outdir / "samples.tsv"
    samples.write_text("\n".join(rows) + "\n", encoding="utf-8")
    (outdir / "README.md").write_text(_readme(specs, seed), encoding="utf-8")
    return samples
