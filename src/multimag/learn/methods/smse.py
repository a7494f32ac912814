"""SMSE (Sun et al. 2021): pairs and triplets of patches drawn across
magnifications; an embedding loss plus the reinforced focal loss of every side."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from multimag.learn import losses
from multimag.learn.data import pair_views, triplet_views

from .base import Method, Sampling, forward_views, read_index


class SMSE(Method):
    """What the pair and triplet variants share: the loss around the embedding term."""

    def embedding_loss(self, embeddings: list[torch.Tensor], labels: torch.Tensor,
                       margin: float) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, model: nn.Module, views: list[torch.Tensor], labels: torch.Tensor,
             config: dict) -> tuple[torch.Tensor, dict[str, float]]:
        smse_config = config["smse"]
        outs = forward_views(model, views)
        embed = self.embedding_loss([o["embedding"] for o in outs], labels, smse_config["margin"])
        cls = sum(losses.reinforced_focal_loss(o["logits"], labels[:, i],
                                               smse_config["focal_lambda"],
                                               smse_config["focal_gamma"])
                  for i, o in enumerate(outs)) / len(outs)
        return embed + cls, {"embed": embed.item(), "cls": cls.item()}


class SMSEPair(SMSE):
    name = "smse_pair"

    def training_sampling(self, index_dir: str | Path, config: dict) -> Sampling:
        return Sampling(read_index(index_dir, "pairs"), pair_views(),
                        ("label_a", "label_b", "same"), balance="label_a")

    def embedding_loss(self, embeddings: list[torch.Tensor], labels: torch.Tensor,
                       margin: float) -> torch.Tensor:
        return losses.pair_loss(embeddings[0], embeddings[1], labels[:, 2], margin)


class SMSETriplet(SMSE):
    name = "smse_triplet"

    def training_sampling(self, index_dir: str | Path, config: dict) -> Sampling:
        return Sampling(read_index(index_dir, "triplets"), triplet_views(),
                        ("anchor_label", "positive_label", "negative_label"),
                        balance="anchor_label")

    def embedding_loss(self, embeddings: list[torch.Tensor], labels: torch.Tensor,
                       margin: float) -> torch.Tensor:
        return losses.triplet_loss(*embeddings, margin=margin)
