"""Paint a demo slide: the H&E-like RGB image of given tissue and tumour masks.

Normal tissue is pink fibrous stroma with sparse small nuclei; tumour is crowded
large nuclei on a paler background, calibrated to the same mean colour as the
normal tissue, so that a classifier has to learn texture, not colour.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from scipy.special import ndtri

from multimag.demo.nuclei import nuclei_maps
from multimag.demo.texture import smooth_field, stroma_density, upsample_coarse

__all__ = ["BACKGROUND_RGB", "render_slide"]

BACKGROUND_RGB = 245.0   # glass

# RGB anchors (float) of the stains, linear mixing in RGB
_STROMA_PALE = np.array([226.0, 200.0, 220.0], np.float32)
_STROMA_DENSE = np.array([166.0, 84.0, 136.0], np.float32)
_TUMOUR_PALE = np.array([250.0, 214.0, 226.0], np.float32)
_TUMOUR_DENSE = np.array([216.0, 102.0, 132.0], np.float32)
_NUC_LIGHT = np.array([188.0, 142.0, 206.0], np.float32)
_NUC_DARK = np.array([78.0, 44.0, 128.0], np.float32)

# random bytes -> N(0, 1) quantiles: Gaussian-like sensor noise ~20x cheaper than
# standard_normal on (H, W, 3)
_NOISE_LUT = ndtri((np.arange(256) + 0.5) / 256).astype(np.float32)

_F32 = np.float32


def _eosin_and_chromatin(rng: np.random.Generator, tumour: np.ndarray,
                         mpp: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Eosin density (0..1), chromatin texture and the stroma fibre angle.

    Eosin is fibrous stroma in normal tissue, pale granular cytoplasm in tumour.
    Both are computed on a 0.5 um grid and resampled to the slide's pixels.
    """
    h, w = tumour.shape
    g = max(1, round(0.5 / mpp))          # coarse grid factor (2 at 40x, 1 at 20x)
    coarse_shape = (-(-h // g), -(-w // g))
    coarse_mpp = mpp * g
    fibre_angle = rng.uniform(0, np.pi)
    eosin = stroma_density(rng, coarse_shape, coarse_mpp, fibre_angle)
    granules = smooth_field(rng, coarse_shape, coarse_mpp, 1.5)
    eosin = np.where(tumour[::g, ::g], _F32(0.32) + _F32(0.08) * granules, eosin)
    eosin = upsample_coarse(eosin, (h, w), g)
    chromatin = upsample_coarse(smooth_field(rng, coarse_shape, coarse_mpp, 1.2), (h, w), g)
    return eosin, chromatin, fibre_angle


def _nuclear_darkness(alpha: np.ndarray, dark: np.ndarray, chromatin: np.ndarray) -> np.ndarray:
    """Per-pixel nuclear darkness (0..1), with chromatin texture; ``chromatin`` is reused."""
    darkness = np.maximum(alpha, _F32(1e-3))
    np.divide(dark, darkness, out=darkness)
    chromatin *= _F32(0.12)
    chromatin += _F32(1)
    darkness *= chromatin
    np.clip(darkness, 0, 1, out=darkness)
    return darkness


def _stain_channel(c: int, out: np.ndarray, tmp: np.ndarray, eosin: np.ndarray,
                   tumour: np.ndarray, alpha: np.ndarray, darkness: np.ndarray) -> None:
    """Channel ``c`` of the stained tissue into ``out``: background stain, nuclei over it."""
    # background colour: pale + eosin * (dense - pale) of the pixel's class
    np.multiply(eosin, _STROMA_DENSE[c] - _STROMA_PALE[c], out=out)
    out += _STROMA_PALE[c]
    np.multiply(eosin, _TUMOUR_DENSE[c] - _TUMOUR_PALE[c], out=tmp)
    tmp += _TUMOUR_PALE[c]
    np.copyto(out, tmp, where=tumour)
    # nuclei over it: out += alpha * (nucleus - out)
    np.multiply(darkness, _NUC_DARK[c] - _NUC_LIGHT[c], out=tmp)
    tmp += _NUC_LIGHT[c]
    tmp -= out
    tmp *= alpha
    out += tmp


def _compose_rgb(rng: np.random.Generator, tissue: np.ndarray, tumour: np.ndarray,
                 eosin: np.ndarray, alpha: np.ndarray, darkness: np.ndarray,
                 mpp: float) -> np.ndarray:
    """The uint8 image: stains, colour calibration, glass with a soft edge, sensor noise.

    Composed one channel at a time, in place, to keep memory traffic low.
    """
    h, w = tissue.shape
    normal = tissue & ~tumour
    calibrate = bool(tumour.any() and normal.any())
    if calibrate:
        weights = (1 - alpha) * tumour
        mean_weight = max(float(weights.mean(where=tumour)), 1e-3)
    edge = ndi.gaussian_filter(tissue.astype(_F32), 0.5 / mpp, truncate=3.0)
    noise = rng.bytes(3 * h * w)
    out = np.empty((h, w, 3), np.uint8)
    ch = np.empty((h, w), _F32)
    tmp = np.empty((h, w), _F32)
    for c in range(3):
        _stain_channel(c, ch, tmp, eosin, tumour, alpha, darkness)
        if calibrate:  # same mean colour in tumour and normal tissue
            delta = (ch.mean(where=normal) - ch.mean(where=tumour)) / mean_weight
            np.multiply(weights, _F32(delta), out=tmp)
            ch += tmp
        # glass around the tissue, soft edge, sensor noise
        ch -= _F32(BACKGROUND_RGB)
        ch *= edge
        ch += _F32(BACKGROUND_RGB + 0.5)
        ch += _NOISE_LUT[np.frombuffer(noise, np.uint8, h * w, c * h * w).reshape(h, w)] * 2
        np.clip(ch, 0, 255, out=ch)
        out[..., c] = ch
    return out


def render_slide(rng: np.random.Generator, tissue: np.ndarray, tumour: np.ndarray,
                 mpp: float) -> np.ndarray:
    """The (H, W, 3) uint8 H&E-like image for the given level-0 masks at ``mpp`` um/px.

    Smooth fields are computed on a 0.5 um grid and resampled; nuclei are drawn
    at full resolution.
    """
    eosin, chromatin, fibre_angle = _eosin_and_chromatin(rng, tumour, mpp)
    alpha, dark = nuclei_maps(rng, tissue, tumour, mpp, fibre_angle)
    darkness = _nuclear_darkness(alpha, dark, chromatin)
    del chromatin, dark
    return _compose_rgb(rng, tissue, tumour, eosin, alpha, darkness, mpp)
