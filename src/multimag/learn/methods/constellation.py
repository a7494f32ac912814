"""Constellation loss (Medela & Picon 2020): fixed class-balanced batches; each
sample is an anchor, the next sample of its class its positive, all samples of
the other classes its negatives; plus a weighted cross entropy."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from multimag.learn import losses
from multimag.learn.data import single_view

from .base import Method, Sampling, read_index


def constellation_triples(emb: torch.Tensor, labels: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Anchors, positives and negatives (B, K, D) from a class-balanced batch."""
    n = len(labels)
    idx = torch.arange(n, device=emb.device)
    pos = torch.empty(n, dtype=torch.long, device=emb.device)
    neg_rows = []
    for c in labels.unique():
        members = idx[labels == c]
        if len(members) < 2:
            raise ValueError("a constellation batch needs two samples of every class in it")
        pos[members] = members.roll(-1)
        neg_rows.append((members, idx[labels != c]))
    k = min(len(others) for _, others in neg_rows)
    if k == 0:
        raise ValueError("a constellation batch needs samples of at least two classes")
    negatives = torch.empty(n, k, dtype=torch.long, device=emb.device)
    for members, others in neg_rows:
        negatives[members] = others[:k].expand(len(members), k)
    return emb, emb[pos], emb[negatives]


class Constellation(Method):
    name = "constellation"

    def training_sampling(self, index_dir: str | Path, config: dict) -> Sampling:
        return Sampling(read_index(index_dir, "batches"), single_view(), ("label",),
                        groups="batch")

    def loss(self, model: nn.Module, views: list[torch.Tensor], labels: torch.Tensor,
             config: dict) -> tuple[torch.Tensor, dict[str, float]]:
        constellation_config = config["constellation"]
        out = model(views[0])
        anchor, positive, negatives = constellation_triples(out["embedding"], labels[:, 0])
        if constellation_config["loss"] == "npair":
            embed = losses.npair_loss(anchor, positive)
        else:
            embed = losses.constellation_loss(anchor, positive, negatives)
        ce = F.cross_entropy(out["logits"], labels[:, 0])
        return (embed + constellation_config["cls_weight"] * ce,
                {"embed": embed.item(), "ce": ce.item()})
