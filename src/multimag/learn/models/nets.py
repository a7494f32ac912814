"""The networks over a backbone: ``PatchNet`` (one patch -> embedding, logits and
an optional MPCS projection) and ``DSMLNet`` (one backbone per magnification,
fused by weighted softmaxes); ``docs/learn.md`` draws both."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from multimag.errors import ConfigError


class PatchNet(nn.Module):
    def __init__(self, backbone: nn.Module, embed_dim: int = 12, n_classes: int = 2,
                 projection_dim: int | None = None, projection_hidden: int = 512) -> None:
        super().__init__()
        self.backbone = backbone
        c = backbone.out_channels
        self.embed = nn.Linear(c, embed_dim)
        self.classifier = nn.Linear(embed_dim, n_classes)
        self.projection = (nn.Sequential(nn.Linear(c, projection_hidden), nn.ReLU(inplace=True),
                                         nn.Linear(projection_hidden, projection_dim))
                           if projection_dim else None)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        fmap = self.backbone(x)
        pooled = fmap.mean((2, 3))
        embedding = self.embed(pooled)
        out = {"feature_map": fmap, "pooled": pooled, "embedding": embedding,
               "logits": self.classifier(embedding)}
        if self.projection is not None:
            out["projection"] = self.projection(pooled)
        return out


class DSMLNet(nn.Module):
    def __init__(self, make_backbone: Callable[[], nn.Module], n_views: int = 2,
                 n_classes: int = 2, weights: Sequence[float] | None = None,
                 learnable: bool = False) -> None:
        super().__init__()
        self.backbones = nn.ModuleList(make_backbone() for _ in range(n_views))
        self.classifiers = nn.ModuleList(nn.Linear(b.out_channels, n_classes)
                                         for b in self.backbones)
        w = torch.tensor(weights if weights is not None else [1.0 / n_views] * n_views,
                         dtype=torch.float32)
        if len(w) != n_views or (w < 0).any() or abs(float(w.sum()) - 1) > 1e-6:
            raise ConfigError(f"dsml.fusion_weights must be {n_views} non-negative numbers "
                              f"summing to 1, got {w.tolist()}",
                              fix="give one weight per DSML magnification, e.g. [0.5, 0.5]")
        if learnable:
            self.weight_logits = nn.Parameter(torch.log(w.clamp_min(1e-6)))
        else:
            self.register_buffer("fixed_weights", w)

    @property
    def fusion_weights(self) -> torch.Tensor:
        if hasattr(self, "weight_logits"):
            return torch.softmax(self.weight_logits, 0)
        return self.fixed_weights

    def forward(self, views: Sequence[torch.Tensor]) -> dict:
        fmaps = [b(x) for b, x in zip(self.backbones, views, strict=True)]
        pooled = [f.mean((2, 3)) for f in fmaps]
        logits = [c(p) for c, p in zip(self.classifiers, pooled, strict=True)]
        probs = torch.stack([torch.softmax(lg.float(), 1) for lg in logits], 0)
        fused = (self.fusion_weights.view(-1, 1, 1) * probs).sum(0)
        return {"feature_maps": fmaps, "embeddings": pooled, "logits": logits, "probs": fused}
