"""MPCS (Chhipa et al.): self-supervised pre-training with NT-Xent on pairs of
magnifications of one location, then fine-tuning on a fraction of the labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from multimag.learn.augment import Augment, AugmentParams
from multimag.learn.data import (
    EpochSampler,
    PatchDataset,
    View,
    magnification_pair_views,
    make_loader,
    single_patches,
    single_view,
)
from multimag.learn.device import autocast
from multimag.learn.losses import nt_xent_loss

from .base import Method, Sampling, forward_views, magnifications, patch_net, read_index
from .baseline import CrossEntropyBaseline


def label_subset(table: pd.DataFrame, fraction: float, seed: int) -> pd.DataFrame:
    """A seeded, class-stratified ``fraction`` of the labelled patches (at least
    two per class present)."""
    rng = np.random.default_rng([seed, 7])
    keep = []
    for _, rows in table.groupby("label", sort=True):
        n = max(2, round(fraction * len(rows)))
        keep.append(rows.iloc[np.sort(rng.permutation(len(rows))[:n])])
    return pd.concat(keep).sort_values(["slide_id", "patch"]).reset_index(drop=True)


class MPCSPretrain(Method):
    name = "mpcs_pretrain"
    supervised = False

    def training_sampling(self, index_dir: str | Path, config: dict) -> Sampling:
        return Sampling(read_index(index_dir, f"mpcs_{config['mpcs']['strategy']}"),
                        magnification_pair_views(), ())

    def build_model(self, config: dict) -> nn.Module:
        return patch_net(config, config["mpcs"]["projection_dim"])

    def loss(self, model: nn.Module, views: list[torch.Tensor], labels: torch.Tensor,
             config: dict) -> tuple[torch.Tensor, dict[str, float]]:
        outs = forward_views(model, views)
        nt = nt_xent_loss(outs[0]["projection"], outs[1]["projection"],
                          config["mpcs"]["temperature"])
        return nt, {"nt_xent": nt.item()}

    def epochs(self, config: dict) -> int:
        return config["mpcs"]["pretrain_epochs"] or config["train"]["epochs"]

    @torch.no_grad()
    def validate(self, model: nn.Module, config: dict, val: pd.DataFrame,
                 stores_dir: Path, device: torch.device) -> dict:
        """Minus the NT-Xent loss of the fixed magnification pair of every
        validation patch (``score``: higher is better)."""
        views = [View(magnification=float(m)) for m in config["index"]["mpcs"]["fixed_pair"]]
        dataset = PatchDataset(val, views, stores_dir)
        loader = make_loader(dataset, EpochSampler(len(dataset), config["train"]["batch_size"],
                                                   shuffle=False))
        augment = Augment(AugmentParams.from_config(config["train"]["augment"]))
        model.eval()
        total, n = 0.0, 0
        for batch in loader:
            if len(batch["views"][0]) < 2:
                continue
            xs = [augment.normalise(v.to(device)) for v in batch["views"]]
            with autocast(device, config["train"]["amp"]):
                z = [model(x)["projection"].float() for x in xs]
            total += nt_xent_loss(z[0], z[1], config["mpcs"]["temperature"]).item() * len(xs[0])
            n += len(xs[0])
        return {"val_nt_xent": total / max(n, 1), "score": -total / max(n, 1)}


class MPCSFinetune(CrossEntropyBaseline):
    name = "mpcs_finetune"
    init_method = MPCSPretrain.name

    def training_sampling(self, index_dir: str | Path, config: dict) -> Sampling:
        table = label_subset(read_index(index_dir, "patches_train"),
                             config["mpcs"]["label_fraction"], config["train"]["seed"])
        return Sampling(single_patches(table, magnifications(config)), single_view(), ("label",),
                        balance="label")
