"""The interface of a training method, with the defaults most methods share.

A method says what it trains on (its index tables and views), which network it
builds, its loss, and how it scores and validates; ``docs/learn.md`` describes
each one. The defaults here are those of a magnification-independent patch
classifier: one patch at one magnification per view, scored at every
magnification and fused by the mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import balanced_accuracy_score
from torch import nn

from multimag.learn.data import View, single_patches, single_view
from multimag.learn.models import PatchNet, build_backbone
from multimag.learn.predictions import FUSED
from multimag.learn.scoring import score_patches
from multimag.wsi.geometry import mag_label


@dataclass(frozen=True)
class Sampling:
    """The training samples of a method: a table and the views of one row."""

    table: pd.DataFrame
    views: list[View]
    label_columns: tuple[str, ...]
    groups: str | None = None  # column of fixed batches (constellation)
    balance: str | None = None  # column whose classes an epoch draws equally often
    shared_geometry: bool = False


def read_index(index_dir: str | Path, name: str) -> pd.DataFrame:
    """One index table of a fold (``{name}.parquet``)."""
    return pd.read_parquet(Path(index_dir) / f"{name}.parquet")


def magnifications(config: dict) -> list[float]:
    return [float(m) for m in config["magnifications"]]


def patch_net(config: dict, projection_dim: int | None = None) -> PatchNet:
    """The configured backbone under the embedding and classifier heads."""
    model_config = config["model"]
    backbone = build_backbone(model_config["backbone"], model_config["weights"],
                              model_config["pnn_width"])
    return PatchNet(backbone, model_config["embedding_dim"], projection_dim=projection_dim,
                    projection_hidden=config["mpcs"]["projection_hidden"])


def forward_views(model: nn.Module, views: list[torch.Tensor]) -> list[dict]:
    """One forward pass over several same-size views (batch norm sees them all)."""
    sizes = [v.shape[0] for v in views]
    out = model(torch.cat(views))
    return [{k: v for k, v in zip(out, parts, strict=True)}
            for parts in zip(*(out[k].split(sizes) for k in out), strict=True)]


class Method:
    """One training method; subclasses set ``name`` and override what differs."""

    name: str = ""
    #: whether it trains on labels (its validation patients need both classes)
    supervised: bool = True
    #: the method whose trained model this one must start from (``--init``)
    init_method: str | None = None

    def training_sampling(self, index_dir: str | Path, config: dict) -> Sampling:
        """The method's index table(s) of the fold in ``index_dir``."""
        raise NotImplementedError

    def build_model(self, config: dict) -> nn.Module:
        return patch_net(config)

    def loss(self, model: nn.Module, views: list[torch.Tensor], labels: torch.Tensor,
             config: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """The total loss of one batch and its parts (for the log)."""
        raise NotImplementedError

    def epochs(self, config: dict) -> int:
        return config["train"]["epochs"]

    def patch_magnifications(self, config: dict) -> list[float]:
        """The magnifications a patch is read at, one row each (every configured one)."""
        return magnifications(config)

    def inference_rows(self, table: pd.DataFrame, config: dict) -> pd.DataFrame:
        """The rows read to score the patches of ``table``: one per patch magnification."""
        return single_patches(table, self.patch_magnifications(config))

    def inference_views(self, config: dict) -> list[View]:
        """The views the network reads one inference row through."""
        return single_view()

    def score_batch(self, model: nn.Module, views: list[torch.Tensor]) -> tuple[Any, Any]:
        """Tumour probabilities and embeddings of one normalised batch, on the CPU."""
        out = model(views[0])
        return (torch.softmax(out["logits"].float(), 1)[:, 1].cpu(),
                out["embedding"].float().cpu())

    def scores_table(self, rows: pd.DataFrame, probs: list, embeddings: list,
                     config: dict) -> pd.DataFrame:
        """One row per patch and view: each magnification, and the fused mean."""
        p = torch.cat(probs).numpy() if probs else np.zeros(0, np.float32)
        e = torch.cat(embeddings).numpy() if embeddings else np.zeros((0, 1), np.float32)
        per_view = rows.assign(view=[mag_label(m) for m in rows["magnification"]],
                               prob_tumour=p, embedding=list(e))
        per_view = per_view.drop(columns="magnification")
        fused = (per_view.groupby(["slide_id", "patch", "label"], sort=False, as_index=False)
                 ["prob_tumour"].mean().assign(view=FUSED, embedding=None))
        return pd.concat([per_view, fused], ignore_index=True)

    def validate(self, model: nn.Module, config: dict, val: pd.DataFrame,
                 stores_dir: Path, device: torch.device) -> dict:
        """Validation metrics; ``score`` (higher is better) picks the best epoch."""
        scores = score_patches(model, self, config, val, stores_dir, device,
                               config["predict"]["batch_size"])
        fused = scores[scores["view"] == FUSED]
        bacc = balanced_accuracy_score(fused["label"], fused["prob_tumour"] >= 0.5)
        return {"val_balanced_acc": float(bacc), "score": float(bacc)}
