"""The cross-entropy baseline: every training patch at every magnification, one
network, plain cross entropy; and the same network trained and tested at one
magnification only (``ce_single_{M}x``), what each magnification alone gives."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from multimag.config import configured_single_magnification, single_magnification_method
from multimag.learn.data import single_patches, single_view

from .base import Method, Sampling, read_index


class CrossEntropyBaseline(Method):
    name = "ce_baseline"

    def training_sampling(self, index_dir: str | Path, config: dict) -> Sampling:
        return Sampling(single_patches(read_index(index_dir, "patches_train"),
                                       self.patch_magnifications(config)), single_view(),
                        ("label",), balance="label")

    def loss(self, model: nn.Module, views: list[torch.Tensor], labels: torch.Tensor,
             config: dict) -> tuple[torch.Tensor, dict[str, float]]:
        ce = F.cross_entropy(model(views[0])["logits"], labels[:, 0])
        return ce, {"ce": ce.item()}


class SingleMagnification(CrossEntropyBaseline):
    """The baseline at ``magnification`` alone: its only view, so the fused
    prediction is that magnification's."""

    def __init__(self, magnification: float) -> None:
        self.magnification = float(magnification)
        self.name = single_magnification_method(magnification)

    def patch_magnifications(self, config: dict) -> list[float]:
        configured_single_magnification(self.name, config)
        return [self.magnification]
