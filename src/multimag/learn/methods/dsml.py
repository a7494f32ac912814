"""DSML (Diao et al. 2023): several magnifications of the same field of view,
one backbone each, fused by weighted softmaxes; cross entropy on the fused
output plus the SIM term between the feature maps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from multimag.errors import ConfigError
from multimag.learn import losses
from multimag.learn.data import View, field_views
from multimag.learn.models import DSMLNet, build_backbone
from multimag.learn.predictions import FUSED
from multimag.wsi.geometry import mag_label

from .base import Method, Sampling, read_index


def dsml_magnifications(config: dict) -> list[float]:
    """``dsml.magnifications`` (default: the two finest), finest first."""
    mags = config["dsml"]["magnifications"]
    if mags is None:
        return sorted((float(m) for m in config["magnifications"]), reverse=True)[:2]
    missing = [m for m in mags if float(m) not in {float(x) for x in config["magnifications"]}]
    if missing:
        raise ConfigError(f"dsml.magnifications {missing} are not among magnifications "
                          f"{config['magnifications']}",
                          fix="tile them or change dsml.magnifications")
    return sorted((float(m) for m in mags), reverse=True)


class DSML(Method):
    name = "dsml"

    def training_sampling(self, index_dir: str | Path, config: dict) -> Sampling:
        return Sampling(read_index(index_dir, "patches_train"), self.inference_views(config),
                        ("label",), shared_geometry=True, balance="label")

    def build_model(self, config: dict) -> nn.Module:
        model_config, dsml_config = config["model"], config["dsml"]

        def backbone() -> nn.Module:
            return build_backbone(model_config["backbone"], model_config["weights"],
                                  model_config["pnn_width"])

        return DSMLNet(backbone, len(dsml_magnifications(config)),
                       weights=dsml_config["fusion_weights"],
                       learnable=dsml_config["learnable_weights"])

    def loss(self, model: nn.Module, views: list[torch.Tensor], labels: torch.Tensor,
             config: dict) -> tuple[torch.Tensor, dict[str, float]]:
        dsml_config = config["dsml"]
        out = model(views)
        ce = F.nll_loss(torch.log(out["probs"].clamp_min(1e-8)), labels[:, 0])
        sim = losses.sim_loss(out["feature_maps"])
        return (dsml_config["alpha"] * ce + dsml_config["beta"] * sim,
                {"ce": ce.item(), "sim": sim.item()})

    def inference_rows(self, table: pd.DataFrame, config: dict) -> pd.DataFrame:
        return table

    def inference_views(self, config: dict) -> list[View]:
        return field_views(dsml_magnifications(config))

    def score_batch(self, model: nn.Module, views: list[torch.Tensor]) -> tuple[Any, Any]:
        """Per magnification and fused probabilities (B, M + 1); pooled features per
        magnification."""
        out = model(views)
        probs = torch.stack([torch.softmax(lg.float(), 1)[:, 1] for lg in out["logits"]]
                            + [out["probs"][:, 1].float()], 1).cpu()
        return probs, [e.float().cpu() for e in out["embeddings"]]

    def scores_table(self, rows: pd.DataFrame, probs: list, embeddings: list,
                     config: dict) -> pd.DataFrame:
        """One row per patch and view: each magnification, and the weighted fusion."""
        mags = dsml_magnifications(config)
        p = torch.cat(probs).numpy() if probs else np.zeros((0, len(mags) + 1), np.float32)
        frames = []
        for m, mag in enumerate(mags):
            e = (torch.cat([b[m] for b in embeddings]).numpy() if embeddings
                 else np.zeros((0, 1)))
            frames.append(rows.assign(view=mag_label(mag), prob_tumour=p[:, m],
                                      embedding=list(e)))
        frames.append(rows.assign(view=FUSED, prob_tumour=p[:, -1], embedding=None))
        return pd.concat(frames, ignore_index=True)
