"""What each training method reads, which network it trains and its loss.

=================  ===================  ==========================================
method             index table          loss (per batch)
=================  ===================  ==========================================
``ce_baseline``    patches_train x M    cross entropy, every patch at every magnification
``smse_pair``      pairs                pair loss + mean reinforced focal loss of both sides
``smse_triplet``   triplets             triplet loss + mean reinforced focal loss of all three
``dsml``           patches_train        alpha * CE(fused) + beta * SIM(feature maps)
``constellation``  batches              constellation (or N-pair) loss + cls_weight * CE
``mpcs_pretrain``  mpcs_{strategy}      NT-Xent on the projections of two magnifications
``mpcs_finetune``  patches_train x M    cross entropy on ``label_fraction`` of the patches,
                   (a seeded subset)    encoder initialised from ``mpcs_pretrain``
=================  ===================  ==========================================

Magnification-independent methods (all but DSML) see one patch at one
magnification per view; DSML sees ``dsml.magnifications`` of the same field of
view, each through its own backbone. In constellation batches each sample is an
anchor; its positive is the next sample of its class in the batch (cyclically)
and its negatives are all samples of the other classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from multimag.errors import ConfigError
from multimag.learn import losses
from multimag.learn.data import (
    View,
    field_views,
    magnification_pair_views,
    pair_views,
    single_patches,
    single_view,
    triplet_views,
)
from multimag.learn.models import DSMLNet, PatchNet, build_backbone

METHODS = ("ce_baseline", "smse_pair", "smse_triplet", "dsml", "constellation",
           "mpcs_pretrain", "mpcs_finetune")
SUPERVISED = tuple(m for m in METHODS if m != "mpcs_pretrain")


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}", fix=f"use one of: {', '.join(METHODS)}")
    return method


def dsml_magnifications(config: dict) -> list[float]:
    mags = config["dsml"]["magnifications"]
    if mags is None:
        return sorted((float(m) for m in config["magnifications"]), reverse=True)[:2]
    missing = [m for m in mags if float(m) not in {float(x) for x in config["magnifications"]}]
    if missing:
        raise ConfigError(f"dsml.magnifications {missing} are not among magnifications "
                          f"{config['magnifications']}",
                          fix="tile them or change dsml.magnifications")
    return sorted((float(m) for m in mags), reverse=True)


@dataclass(frozen=True)
class Sampling:
    """The training samples of a method: a table and the views of one row."""

    table: pd.DataFrame
    views: list[View]
    label_columns: tuple[str, ...]
    groups: str | None = None  # column of fixed batches (constellation)
    shared_geometry: bool = False


def training_sampling(method: str, index_dir: str | Path, config: dict) -> Sampling:
    """Read the method's index table(s) from ``index_dir``."""
    index_dir = Path(index_dir)
    mags = [float(m) for m in config["magnifications"]]

    def read(name: str) -> pd.DataFrame:
        return pd.read_parquet(index_dir / f"{name}.parquet")

    if method == "ce_baseline":
        return Sampling(single_patches(read("patches_train"), mags), single_view(), ("label",))
    if method == "mpcs_finetune":
        table = label_subset(read("patches_train"), config["mpcs"]["label_fraction"],
                             config["train"]["seed"])
        return Sampling(single_patches(table, mags), single_view(), ("label",))
    if method == "smse_pair":
        return Sampling(read("pairs"), pair_views(), ("label_a", "label_b", "same"))
    if method == "smse_triplet":
        return Sampling(read("triplets"), triplet_views(),
                        ("anchor_label", "positive_label", "negative_label"))
    if method == "dsml":
        return Sampling(read("patches_train"), field_views(dsml_magnifications(config)),
                        ("label",), shared_geometry=True)
    if method == "constellation":
        return Sampling(read("batches"), single_view(), ("label",), groups="batch")
    if method == "mpcs_pretrain":
        return Sampling(read(f"mpcs_{config['mpcs']['strategy']}"), magnification_pair_views(), ())
    raise ConfigError(f"unknown method {method!r}", fix=f"use one of: {', '.join(METHODS)}")


def patch_views(method: str, config: dict) -> list[View]:
    """The views a method's network reads one patch through at inference."""
    return field_views(dsml_magnifications(config)) if method == "dsml" else single_view()


def label_subset(table: pd.DataFrame, fraction: float, seed: int) -> pd.DataFrame:
    """A seeded, class-stratified ``fraction`` of the labelled patches (at least
    two per class present)."""
    rng = np.random.default_rng([seed, 7])
    keep = []
    for _, rows in table.groupby("label", sort=True):
        n = max(2, round(fraction * len(rows)))
        keep.append(rows.iloc[np.sort(rng.permutation(len(rows))[:n])])
    return pd.concat(keep).sort_values(["slide_id", "patch"]).reset_index(drop=True)


def build_model(method: str, config: dict) -> nn.Module:
    mc = config["model"]

    def backbone() -> nn.Module:
        return build_backbone(mc["backbone"], mc["weights"], mc["pnn_width"])

    if method == "dsml":
        dc = config["dsml"]
        n = len(dsml_magnifications(config))
        return DSMLNet(backbone, n, weights=dc["fusion_weights"], learnable=dc["learnable_weights"])
    projection = config["mpcs"]["projection_dim"] if method == "mpcs_pretrain" else None
    return PatchNet(backbone(), mc["embedding_dim"], projection_dim=projection,
                    projection_hidden=config["mpcs"]["projection_hidden"])


def _forward_cat(model: nn.Module, views: list[torch.Tensor]) -> list[dict]:
    """One forward pass over several same-size views (batch norm sees them all)."""
    sizes = [v.shape[0] for v in views]
    out = model(torch.cat(views))
    return [{k: v for k, v in zip(out, parts, strict=True)}
            for parts in zip(*(out[k].split(sizes) for k in out), strict=True)]


def loss(method: str, model: nn.Module, views: list[torch.Tensor], labels: torch.Tensor,
         config: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """The method's total loss on one batch and its parts (for the log)."""
    if method in ("ce_baseline", "mpcs_finetune"):
        ce = F.cross_entropy(model(views[0])["logits"], labels[:, 0])
        return ce, {"ce": ce.item()}
    if method in ("smse_pair", "smse_triplet"):
        sc = config["smse"]
        outs = _forward_cat(model, views)
        emb = [o["embedding"] for o in outs]
        if method == "smse_pair":
            embed = losses.pair_loss(emb[0], emb[1], labels[:, 2], sc["margin"])
        else:
            embed = losses.triplet_loss(*emb, margin=sc["margin"])
        cls = sum(losses.reinforced_focal_loss(o["logits"], labels[:, i], sc["focal_lambda"],
                                               sc["focal_gamma"])
                  for i, o in enumerate(outs)) / len(outs)
        return embed + cls, {"embed": embed.item(), "cls": cls.item()}
    if method == "dsml":
        dc = config["dsml"]
        out = model(views)
        ce = F.nll_loss(torch.log(out["probs"].clamp_min(1e-8)), labels[:, 0])
        sim = losses.sim_loss(out["feature_maps"])
        return dc["alpha"] * ce + dc["beta"] * sim, {"ce": ce.item(), "sim": sim.item()}
    if method == "constellation":
        cc = config["constellation"]
        out = model(views[0])
        anchor, positive, negatives = constellation_triples(out["embedding"], labels[:, 0])
        if cc["loss"] == "npair":
            embed = losses.npair_loss(anchor, positive)
        else:
            embed = losses.constellation_loss(anchor, positive, negatives)
        ce = F.cross_entropy(out["logits"], labels[:, 0])
        return embed + cc["cls_weight"] * ce, {"embed": embed.item(), "ce": ce.item()}
    if method == "mpcs_pretrain":
        outs = _forward_cat(model, views)
        nt = losses.nt_xent_loss(outs[0]["projection"], outs[1]["projection"],
                                 config["mpcs"]["temperature"])
        return nt, {"nt_xent": nt.item()}
    raise ConfigError(f"unknown method {method!r}", fix=f"use one of: {', '.join(METHODS)}")


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
