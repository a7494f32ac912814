"""Training augmentation and normalisation, batched on the training device.

SMSE's augmentation with per-sample random parameters drawn from one seeded
generator (flips, a multiple of 90 degrees, colour jitter), then
normalisation; ``docs/learn.md`` gives the draws and their order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


#: RGB -> YIQ (luma and two chroma axes); a hue shift is a rotation of the chroma plane
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114],
                            [0.596, -0.274, -0.322],
                            [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


def _hue_rotation(turns: torch.Tensor) -> torch.Tensor:
    """(n, 3, 3) RGB matrices that turn the hue by ``turns`` (1 = a full circle)."""
    angle = turns * (2 * math.pi)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotation = torch.zeros(len(turns), 3, 3, device=turns.device)
    rotation[:, 0, 0] = 1
    rotation[:, 1, 1], rotation[:, 1, 2] = cos, -sin
    rotation[:, 2, 1], rotation[:, 2, 2] = sin, cos
    return _YIQ_TO_RGB.to(turns.device) @ rotation @ _RGB_TO_YIQ.to(turns.device)


def _grey(x: torch.Tensor) -> torch.Tensor:
    return (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


@dataclass(frozen=True)
class AugmentParams:
    flip: bool = True
    rot90: bool = True
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.05
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @classmethod
    def from_config(cls, augment_config: dict) -> AugmentParams:
        return cls(**{k: tuple(v) if isinstance(v, list) else v
                      for k, v in augment_config.items()})


class Augment:
    """Flips, rotation and colour jitter per sample, then normalisation.
    ``shared=True`` gives every view of a sample the same flips and rotation
    (DSML: the magnifications of one field must stay aligned for SIM)."""

    def __init__(self, params: AugmentParams) -> None:
        self.p = params

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> normalised float, no augmentation (evaluation)."""
        return self._standardise(x.float() / 255.0)

    def _standardise(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.p.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.p.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def __call__(self, views: Sequence[torch.Tensor], generator: torch.Generator,
                 shared: bool = False) -> list[torch.Tensor]:
        n = views[0].shape[0]
        dev = views[0].device

        def geometry() -> tuple[torch.Tensor, ...]:
            return (torch.rand(n, generator=generator, device=dev) < 0.5,
                    torch.rand(n, generator=generator, device=dev) < 0.5,
                    torch.randint(0, 4, (n,), generator=generator, device=dev))

        shared_geo = geometry() if shared else None
        out = []
        for view in views:
            x = view.float() / 255.0
            hflip, vflip, rot = shared_geo or geometry()
            if self.p.flip:
                x = torch.where(hflip.view(-1, 1, 1, 1), x.flip(-1), x)
                x = torch.where(vflip.view(-1, 1, 1, 1), x.flip(-2), x)
            if self.p.rot90 and x.shape[-1] == x.shape[-2]:
                for k in (1, 2, 3):
                    x = torch.where((rot == k).view(-1, 1, 1, 1), torch.rot90(x, k, (-2, -1)), x)
            out.append(self._standardise(self._jitter(x, generator)))
        return out

    def _factor(self, n: int, amount: float, generator: torch.Generator, dev) -> torch.Tensor:
        u = torch.rand(n, generator=generator, device=dev)
        return (1 - amount + 2 * amount * u).view(-1, 1, 1, 1)

    def _jitter(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, dev = x.shape[0], x.device
        if self.p.brightness:
            x = (x * self._factor(n, self.p.brightness, generator, dev)).clamp(0, 1)
        if self.p.contrast:
            mean = _grey(x).mean((1, 2, 3), keepdim=True)
            c = self._factor(n, self.p.contrast, generator, dev)
            x = (c * x + (1 - c) * mean).clamp(0, 1)
        if self.p.saturation:
            s = self._factor(n, self.p.saturation, generator, dev)
            x = (s * x + (1 - s) * _grey(x)).clamp(0, 1)
        if self.p.hue:
            shift = (torch.rand(n, generator=generator, device=dev) * 2 - 1) * self.p.hue
            x = torch.einsum("nij,njhw->nihw", _hue_rotation(shift), x).clamp(0, 1)
        return x
