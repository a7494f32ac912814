"""Write the tiling benchmark's slide: a 40,000 x 30,000 px Aperio-like SVS.

0.25 um/px, AppMag 40, JPEG q90 256-px tiles, levels 1/4/16 (written by
``multimag.demo.svs_writer.write_svs`` through its tile-source interface, so memory
stays at a few tile rows). About 40% of the area is white background around a
lobulated tissue section; the tissue is procedural histology-like texture:
wavy pink stroma fibres, eosin density variations, and purple elliptical nuclei
of two populations (small round lymphocyte-like ones, larger elongated ones)
with chromatin texture, plus sensor grain.

Everything is a deterministic function of the level-0 pixel coordinates and the
seed (lattice noise from an integer hash, nuclei from per-cell hashes, grain
from a per-tile generator), vectorised per 256-px tile.

    /work/venv/bin/python benchmarks/make_slide.py [--out benchmarks/work/bench_40k.svs]

The file is cached: nothing is done when it already exists (``--force`` rewrites).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

# the 256-px matrix products of the noise are far too small for BLAS threads
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "work" / "bench_40k.svs"
WIDTH, HEIGHT = 40_000, 30_000
TILE = 256
LOWRES = 64  # level-0 pixels per pixel of the tissue field
BACKGROUND_FRACTION = 0.40

_M1, _M2 = np.uint32(0x8DA6B343), np.uint32(0xD8163841)


def _hash01(iy: np.ndarray, ix: np.ndarray, seed: int) -> np.ndarray:
    """Uniform [0, 1) float32 from integer lattice coordinates (broadcasting)."""
    s = np.uint32((seed * 0xCB1AB31F) & 0xFFFFFFFF)
    h = (iy.astype(np.uint32) * _M1) ^ (ix.astype(np.uint32) * _M2) ^ s
    h ^= h >> np.uint32(13)
    h *= np.uint32(0x5BD1E995)
    h ^= h >> np.uint32(15)
    h *= np.uint32(0x27D4EB2F)
    h ^= h >> np.uint32(16)
    return (h >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / (1 << 24))


def _interp_matrix(coords: np.ndarray, scale: float, smooth: bool = True
                   ) -> tuple[np.ndarray, int, int]:
    """(n, m) weights that interpolate lattice nodes ``i0 .. i0 + m - 1`` (spacing
    ``scale``) at ``coords``; returns (weights, i0, m)."""
    g = coords / scale
    fl = np.floor(g)
    t = (g - fl).astype(np.float32)
    if smooth:
        t = t * t * (3 - 2 * t)
    fl = fl.astype(np.int64)
    i0 = int(fl.min())
    m = int(fl.max()) - i0 + 2
    w = np.zeros((len(coords), m), np.float32)
    rows = np.arange(len(coords))
    w[rows, fl - i0] = 1 - t
    w[rows, fl - i0 + 1] = t
    return w, i0, m


def value_noise(ys: np.ndarray, xs: np.ndarray, sy: float, sx: float, seed: int) -> np.ndarray:
    """Smooth value noise in [0, 1) over the grid ``ys x xs`` (seamless across tiles)."""
    wy, iy0, my = _interp_matrix(ys, sy)
    wx, ix0, mx = _interp_matrix(xs, sx)
    lattice = _hash01(np.arange(iy0, iy0 + my)[:, None], np.arange(ix0, ix0 + mx)[None, :], seed)
    return wy @ lattice @ wx.T


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0, 1)
    return t * t * (3 - 2 * t)


class HistologySource:
    """Level-0 pixels, tile by tile (the ``write_svs`` tile-source interface)."""

    def __init__(self, width: int = WIDTH, height: int = HEIGHT, seed: int = 1) -> None:
        self.shape = (height, width, 3)
        self.seed = seed
        self.field = self._tissue_field(width, height, seed)

    @staticmethod
    def _tissue_field(width: int, height: int, seed: int) -> np.ndarray:
        """Signed low-res field: tissue where > 0, ~BACKGROUND_FRACTION of it <= 0."""
        h, w = -(-height // LOWRES) + 8, -(-width // LOWRES) + 8  # + a full tile
        rng = np.random.default_rng(seed)
        v, u = np.mgrid[0:h, 0:w].astype(np.float64)
        u, v = u * LOWRES / width, v * LOWRES / height
        # a section: a big blob (two overlapping lobes) left-centre and a smaller fragment
        lobe1 = 1 - np.hypot((u - 0.40) / 0.34, (v - 0.50) / 0.40)
        lobe2 = 1 - np.hypot((u - 0.62) / 0.22, (v - 0.42) / 0.33)
        frag = 1 - np.hypot((u - 0.86) / 0.09, (v - 0.68) / 0.16)
        base = np.maximum(np.maximum(lobe1, lobe2), frag)
        low = ndimage.gaussian_filter(rng.standard_normal((h, w)), 30, mode="wrap")
        mid = ndimage.gaussian_filter(rng.standard_normal((h, w)), 6, mode="wrap")
        hi = ndimage.gaussian_filter(rng.standard_normal((h, w)), 2, mode="wrap")
        f = base + 0.25 * low / low.std() + 0.10 * mid / mid.std() + 0.04 * hi / hi.std()
        # keep a white margin at the slide border
        margin = np.minimum.reduce([u, 1 - u, v, 1 - v])
        f -= 2.0 * np.clip(0.04 - margin, 0, None) / 0.04
        f -= np.quantile(f, BACKGROUND_FRACTION)
        return (f / np.abs(f).max()).astype(np.float32)

    def tile(self, level_index: int, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        if level_index != 0:
            raise ValueError("only level 0 is generated")
        # always render the full aligned tile (cells of 32 / 64 px align with it), then crop
        ys = np.arange(y0, y0 + TILE, dtype=np.float64)
        xs = np.arange(x0, x0 + TILE, dtype=np.float64)
        return self._render(ys, xs, y0, x0)[:h, :w]

    def _render(self, ys: np.ndarray, xs: np.ndarray, y0: int, x0: int) -> np.ndarray:
        seed = self.seed
        n = len(ys)
        rng = np.random.default_rng((seed, y0, x0))
        # tissue alpha: bilinear upsampling of the field + ragged edges
        wy, iy0, my = _interp_matrix(ys / LOWRES + 0.5, 1.0, smooth=False)
        wx, ix0, mx = _interp_matrix(xs / LOWRES + 0.5, 1.0, smooth=False)
        g = wy @ self.field[iy0:iy0 + my, ix0:ix0 + mx] @ wx.T
        grain = rng.standard_normal((n, n, 1), np.float32)
        background = np.array([242, 241, 244], np.float32)
        if g.max() < -0.02:  # glass only
            return np.clip(background + 1.2 * grain, 0, 255).astype(np.uint8)
        edge = value_noise(ys, xs, 40, 40, seed + 1) - 0.5
        alpha = _smoothstep(-0.004, 0.004, g + 0.012 * edge)[..., None]

        # stroma: wavy fibres + density variations
        warp = value_noise(ys, xs, 160, 160, seed + 2)
        phase = (xs[None, :] * 0.5 + ys[:, None] * 0.866) * (2 * np.pi / 11.0)
        fibre = 0.5 + 0.5 * np.sin(phase.astype(np.float32) + 9.0 * warp)
        fine = value_noise(ys, xs, 5, 5, seed + 3)
        patchy = value_noise(ys, xs, 900, 900, seed + 4)
        dens = np.clip(0.25 + 0.35 * fibre * fine + 0.25 * value_noise(ys, xs, 28, 28, seed + 5)
                       + 0.35 * patchy - 0.1, 0, 1)[..., None]
        light, dark = (np.array([246, 214, 230], np.float32),
                       np.array([204, 96, 158], np.float32))
        rgb = light + (dark - light) * dens
        # white gaps (fat / tears) inside the tissue
        gaps = _smoothstep(0.72, 0.78, value_noise(ys, xs, 120, 120, seed + 6))[..., None]
        rgb = rgb + (background - rgb) * gaps * 0.9

        # nuclei: two populations of ellipses, one per cell, inside its cell
        cellular = value_noise(ys, xs, 2500, 2500, seed + 7)
        nuc = np.zeros((n, n), np.float32)
        # (cell px, min / max radius px, elongation, presence: base + gain * cellularity, seed)
        populations = ((64, 11, 20, 0.45, 0.15, 0.75, 11), (32, 6, 9, 0.1, 0.08, 0.25, 12))
        for cell, rmin, rmax, elong, p0, gain, s in populations:
            k = n // cell
            cy = (y0 // cell) + np.arange(k)[:, None]
            cx = (x0 // cell) + np.arange(k)[None, :]
            r = rmin + (rmax - rmin) * _hash01(cy, cx, seed + s)
            ry = r * (1 - elong * _hash01(cy, cx, seed + s + 100))
            ang = np.pi * _hash01(cy, cx, seed + s + 200)
            oy = r + (cell - 2 * r) * _hash01(cy, cx, seed + s + 300)
            ox = r + (cell - 2 * r) * _hash01(cy, cx, seed + s + 400)
            pres = _hash01(cy, cx, seed + s + 500)
            local = np.arange(cell, dtype=np.float32) + 0.5
            dy = local[None, :, None, None] - oy[:, None, :, None]  # (k, cell, k, 1)
            dx = local[None, None, None, :] - ox[:, None, :, None]  # (k, 1, k, cell)
            ca, sa = np.cos(ang)[:, None, :, None], np.sin(ang)[:, None, :, None]
            u = (dx * ca + dy * sa) / r[:, None, :, None]
            v = (dy * ca - dx * sa) / ry[:, None, :, None]
            blob = np.clip((1 - (u * u + v * v)) * 4, 0, 1).reshape(n, n)
            cells_p = p0 + gain * cellular.reshape(k, cell, k, cell).mean(axis=(1, 3))
            on = (pres < cells_p).astype(np.float32)
            blob *= np.repeat(np.repeat(on, cell, 0), cell, 1)
            nuc = np.maximum(nuc, blob)
        chromatin = value_noise(ys, xs, 3, 3, seed + 8)
        nlight, ndark = np.array([150, 110, 185], np.float32), np.array([62, 32, 112], np.float32)
        ncol = nlight + (ndark - nlight) * (0.35 + 0.65 * chromatin)[..., None]
        nuc = nuc[..., None] * 0.95
        rgb = rgb + (ncol - rgb) * nuc
        out = background + (rgb - background) * alpha + 4.0 * grain
        return np.clip(out, 0, 255).astype(np.uint8)


def make_slide(out: Path, seed: int = 1, force: bool = False) -> Path:
    from multimag.demo.svs_writer import write_svs

    if out.exists() and not force:
        print(f"{out}: exists ({out.stat().st_size / 2**20:.0f} MiB), skipped "
              "(--force rewrites it)")
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    write_svs(out, HistologySource(seed=seed), mpp=0.25, app_mag=40, tile=TILE,
              downsamples=(1, 4, 16), quality=90)
    dt = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{out}: {WIDTH} x {HEIGHT} px, {out.stat().st_size / 2**20:.0f} MiB, "
          f"written in {dt:.0f} s (peak RSS {rss:.0f} MiB)")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--force", action="store_true", help="rewrite an existing file")
    ap.add_argument("--preview", type=Path,
                    help="only render a 2048-px crop at the tissue edge to this PNG and exit")
    args = ap.parse_args(argv)
    if args.preview:
        from PIL import Image

        src = HistologySource(seed=args.seed)
        y0, x0 = 12_800, 3_840
        img = np.concatenate([np.concatenate([src.tile(0, y, x, TILE, TILE)
                                              for x in range(x0, x0 + 2048, TILE)], axis=1)
                              for y in range(y0, y0 + 2048, TILE)], axis=0)
        Image.fromarray(img).save(args.preview)
        lowres = (src.field > 0)
        print(f"tissue fraction of the field: {lowres.mean():.3f}")
        Image.fromarray(np.where(lowres, 0, 255).astype(np.uint8)).save(
            args.preview.with_name(args.preview.stem + "_mask.png"))
        return 0
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    make_slide(args.out, args.seed, args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
