"""The training losses of the four methods; ``docs/learn.md`` gives each formula.

Every loss takes tensors whose first dimension is the batch and returns the
batch mean as a scalar tensor that gradients flow through.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_ndim(name: str, tensor: Tensor, ndim: int) -> None:
    if not isinstance(tensor, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(tensor.shape)}")


def _check_same_shape(**tensors: Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"shapes must match: {listed}")


def _check_embeddings(**tensors: Tensor) -> None:
    """All (B, D) and of one shape."""
    for name, tensor in tensors.items():
        _check_ndim(name, tensor, 2)
    _check_same_shape(**tensors)


def _check_logits(logits: Tensor, target: Tensor) -> None:
    _check_ndim("logits", logits, 2)
    _check_ndim("target", target, 1)
    if target.shape[0] != logits.shape[0]:
        raise ValueError(f"batch sizes differ: logits {tuple(logits.shape)}, "
                         f"target {tuple(target.shape)}")


def _squared_distance(x: Tensor, y: Tensor) -> Tensor:
    return ((x - y) ** 2).sum(1)


def _log_p_true(logits: Tensor, target: Tensor) -> Tensor:
    """``log p_t``: log-softmax probability of each row's true class, shape (B,)."""
    return -F.cross_entropy(logits, target.long(), reduction="none")


def pair_loss(e1: Tensor, e2: Tensor, same: Tensor, margin: float = 1.0) -> Tensor:
    """SMSE's contrastive pair loss on embeddings (B, D); ``same`` is 1 for a
    same-class pair, else 0."""
    _check_embeddings(e1=e1, e2=e2)
    same = torch.as_tensor(same, device=e1.device)
    if same.shape != (e1.shape[0],):
        raise ValueError(f"same must have shape ({e1.shape[0]},) to match e1 "
                         f"{tuple(e1.shape)}, got {tuple(same.shape)}")
    d2 = _squared_distance(e1, e2)
    s = same.to(d2.dtype)
    return (s * d2 + (1 - s) * F.relu(margin - d2)).mean()


def triplet_loss(anchor: Tensor, positive: Tensor, negative: Tensor,
                 margin: float = 1.0) -> Tensor:
    """SMSE's triplet loss on embeddings (B, D), squared Euclidean distances."""
    _check_embeddings(anchor=anchor, positive=positive, negative=negative)
    d_ap = _squared_distance(anchor, positive)
    d_an = _squared_distance(anchor, negative)
    return F.relu(d_ap - d_an + margin).mean()


def reinforced_focal_loss(logits: Tensor, target: Tensor, lam: float = 2.0,
                          gamma: float = 1.5) -> Tensor:
    """SMSE's reinforced focal loss ``lam * (1 - p_t)^gamma`` of logits (B, C):
    bounded on purpose (built on the L1 loss ``1 - p_t``, no log)."""
    _check_logits(logits, target)
    p_t = _log_p_true(logits, target).exp()
    return (lam * (1 - p_t) ** gamma).mean()


def focal_loss(logits: Tensor, target: Tensor, gamma: float = 2.0) -> Tensor:
    """The standard focal loss (Lin et al. 2017) of logits (B, C); ``gamma = 0``
    is cross entropy."""
    _check_logits(logits, target)
    log_p_t = _log_p_true(logits, target)
    return (-((1 - log_p_t.exp()) ** gamma) * log_p_t).mean()


def npair_loss(anchor: Tensor, positive: Tensor) -> Tensor:
    """Sohn's N-pair loss on embeddings (B, D): ``positive[j]`` is a negative
    of every anchor ``i != j``."""
    _check_embeddings(anchor=anchor, positive=positive)
    logits = anchor @ positive.T
    target = torch.arange(anchor.shape[0], device=anchor.device)
    return F.cross_entropy(logits, target)


def constellation_loss(anchor: Tensor, positive: Tensor, negatives: Tensor) -> Tensor:
    """The constellation loss (Medela & Picon 2020) on L2-normalised
    embeddings: anchors and positives (B, D), K negatives per anchor (B, K, D)."""
    _check_embeddings(anchor=anchor, positive=positive)
    _check_ndim("negatives", negatives, 3)
    if negatives.shape[0] != anchor.shape[0] or negatives.shape[2] != anchor.shape[1]:
        raise ValueError(f"negatives must have shape ({anchor.shape[0]}, K, {anchor.shape[1]}) "
                         f"to match anchor {tuple(anchor.shape)}, "
                         f"got {tuple(negatives.shape)}")
    a = F.normalize(anchor, dim=-1)
    p = F.normalize(positive, dim=-1)
    n = F.normalize(negatives, dim=-1)
    a_p = (a * p).sum(-1, keepdim=True)                      # (B, 1)
    a_n = (a.unsqueeze(1) * n).sum(-1)                       # (B, K)
    diffs = torch.cat([torch.zeros_like(a_p), a_n - a_p], 1)  # (B, 1 + K)
    return torch.logsumexp(diffs, dim=1).mean()


def nt_xent_loss(z1: Tensor, z2: Tensor, temperature: float = 0.1) -> Tensor:
    """NT-Xent (SimCLR) over the 2N views ``[z1; z2]`` (each (N, D)); the
    positive of ``z1[i]`` is ``z2[i]``."""
    _check_embeddings(z1=z1, z2=z2)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=-1)
    logits = (z @ z.T) / temperature
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    idx = torch.arange(n, device=z.device)
    target = torch.cat([idx + n, idx])
    return F.cross_entropy(logits, target)


def sim_loss(features: Sequence[Tensor]) -> Tensor:
    """DSML's SIM term between two or more feature maps (B, C_m, H_m, W_m) of one
    batch: channels and spatial sizes may differ."""
    if isinstance(features, Tensor) or len(features) < 2:
        count = "a single tensor" if isinstance(features, Tensor) else f"{len(features)} map(s)"
        raise ValueError(f"sim_loss needs a sequence of at least 2 feature maps, got {count}")
    for m, f in enumerate(features):
        _check_ndim(f"features[{m}]", f, 4)
    batches = [f.shape[0] for f in features]
    if len(set(batches)) > 1:
        raise ValueError(f"feature maps must have one batch size, got {batches}")
    size = (min(f.shape[2] for f in features), min(f.shape[3] for f in features))
    maps = [F.adaptive_avg_pool2d(f.amax(dim=1, keepdim=True), size) for f in features]
    pair_terms = [(x - y).abs().mean() for x, y in combinations(maps, 2)]
    return torch.stack(pair_terms).mean()
