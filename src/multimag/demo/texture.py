"""Smooth random textures of the demo slides, defined in micrometres.

Each texture is drawn on a coarse physical grid and resampled onto the
slide's pixels, so the same tissue looks the same at any pixel size.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

__all__ = ["oriented_texture", "smooth_field", "stroma_density", "upsample_coarse"]


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], mpp: float,
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


def oriented_texture(rng: np.random.Generator, shape: tuple[int, int], mpp: float,
                     angle: float, along_um: float = 9.0, across_um: float = 0.9) -> np.ndarray:
    """Unit-variance streaky noise (fibres) running at ``angle``, at full resolution.

    Anisotropic Gaussian-filtered noise on a rotated physical grid (2 um along x
    0.5 um across), sampled onto the slide's pixels by one bilinear affine warp.
    """
    h, w = shape
    cell_along, cell_across = 2.0, 0.5
    diag = math.hypot(h * mpp, w * mpp) + 20.0
    nx, ny = int(diag / cell_along) + 2, int(diag / cell_across) + 2
    tex = rng.standard_normal((ny, nx)).astype(np.float32)
    tex = ndi.gaussian_filter(tex, (across_um / cell_across, along_um / cell_along), mode="wrap",
                              truncate=3.0)
    tex /= tex.std() + 1e-6
    cs, sn = math.cos(angle), math.sin(angle)
    xc, yc = w * mpp / 2, h * mpp / 2
    # output pixel (x, y) -> physical (x * mpp - xc, y * mpp - yc) -> rotated -> texture cell
    data = (cs * mpp / cell_along, sn * mpp / cell_along,
            (-cs * xc - sn * yc) / cell_along + nx / 2,
            -sn * mpp / cell_across, cs * mpp / cell_across,
            (sn * xc - cs * yc) / cell_across + ny / 2)
    img = Image.fromarray(tex, mode="F").transform((w, h), Image.Transform.AFFINE, data,
                                                   resample=Image.Resampling.BILINEAR)
    return np.array(img, np.float32)


def stroma_density(rng: np.random.Generator, shape: tuple[int, int], mpp: float,
                   fibre_angle: float) -> np.ndarray:
    """Eosin density (0 pale .. 1 dense) of normal stroma: fibre bundles, loose areas.

    Fibres run mostly at ``fibre_angle`` (radians, image x towards y), partly at a second angle.
    """
    f1 = oriented_texture(rng, shape, mpp, fibre_angle)
    f2 = oriented_texture(rng, shape, mpp, fibre_angle + rng.uniform(0.6, 1.2))
    mix = np.clip(0.5 + 0.6 * smooth_field(rng, shape, mpp, 60.0), 0, 1)
    fib = f1 * mix + f2 * (1 - mix)
    del f1, f2, mix
    fib = np.clip(fib - 0.2, 0, None)
    loose = smooth_field(rng, shape, mpp, 25.0)
    t = 0.42 + 0.32 * fib - 0.25 * np.clip(loose - 0.6, 0, 1)
    return np.clip(t, 0, 1, out=t)


def upsample_coarse(field: np.ndarray, shape: tuple[int, int], factor: int) -> np.ndarray:
    """Bilinear resize of a coarse grid whose cell k covers full pixels [k*f, (k+1)*f)."""
    if factor == 1:
        return np.array(field[: shape[0], : shape[1]], np.float32)
    h, w = shape
    img = Image.fromarray(np.ascontiguousarray(field, np.float32), mode="F")
    img = img.resize((w, h), Image.Resampling.BILINEAR, box=(0, 0, w / factor, h / factor))
    return np.array(img, np.float32)
