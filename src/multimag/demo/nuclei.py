"""Cell nuclei of the demo slides: sparse small oval nuclei in normal stroma, a crowded
jittered grid of large irregular hyperchromatic nuclei in tumour.

Nuclei are drawn as anti-aliased irregular ellipses into two maps, opacity and darkness.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["nuclei_maps"]

TUMOUR_SPACING_UM = 16.5  # hexagonal grid of tumour nuclei (before jitter, 6 % dropped)
NORMAL_DENSITY = 0.0016   # normal nuclei per um^2 (Poisson)


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


def _nucleus_shapes(rng: np.random.Generator, xy: np.ndarray, kind: str, mpp: float,
                    orient_at: np.ndarray) -> dict[str, np.ndarray]:
    """Random sizes (px), orientation, outline harmonics and staining of nuclei at ``xy``."""
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


def _tumour_nucleus_centres(rng: np.random.Generator, tumour: np.ndarray,
                            mpp: float) -> np.ndarray:
    """Centres (x, y in px) of the tumour nuclei: a jittered hexagonal grid, 6 % dropped."""
    h, w = tumour.shape
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
    return tp[tumour[ti, tj] & (rng.random(len(tp)) > 0.06)]


def nuclei_maps(rng: np.random.Generator, tissue: np.ndarray, tumour: np.ndarray,
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
    normal = _nucleus_shapes(rng, pts[keep], "normal", mpp,
                             np.full(int(keep.sum()), fibre_angle))
    _stamp_nuclei(alpha, dark, edge_px=edge_px, **normal)
    if tumour.any():
        centres = _tumour_nucleus_centres(rng, tumour, mpp)
        crowded = _nucleus_shapes(rng, centres, "tumour", mpp, np.zeros(len(centres)))
        _stamp_nuclei(alpha, dark, edge_px=edge_px, **crowded)
    return alpha, dark
