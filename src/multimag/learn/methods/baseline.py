"""The cross-entropy baseline: every training patch at every magnification, one
network, plain cross entropy."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from multimag.learn.data import single_patches, single_view

from .base import Method, Sampling, magnifications, read_index


class CrossEntropyBaseline(Method):
    name = "ce_baseline"

    def training_sampling(self, index_dir: str | Path, config: dict) -> Sampling:
        return Sampling(single_patches(read_index(index_dir, "patches_train"),
                                       magnifications(config)), single_view(), ("label",))

    def loss(self, model: nn.Module, views: list[torch.Tensor], labels: torch.Tensor,
             config: dict) -> tuple[torch.Tensor, dict[str, float]]:
        ce = F.cross_entropy(model(views[0])["logits"], labels[:, 0])
        return ce, {"ce": ce.item()}
