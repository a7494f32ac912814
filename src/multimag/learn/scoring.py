"""Patch scores and embeddings of a network: the one scoring path that training's
validation and the predict step share."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import torch
from torch import nn

from multimag.learn.augment import Augment, AugmentParams
from multimag.learn.data import EpochSampler, PatchDataset, make_loader
from multimag.learn.device import autocast

if TYPE_CHECKING:
    from multimag.learn.methods.base import Method


@torch.no_grad()
def score_patches(model: nn.Module, method: Method, config: dict, table: pd.DataFrame,
                  stores_dir: str | Path, device: torch.device, batch_size: int = 256,
                  workers: int = 0, progress: bool = False) -> pd.DataFrame:
    """Scores of the patches ``table`` (slide_id, patch, label) at every view of
    ``method`` (one row per patch and view, the ``fused`` view included)."""
    from tqdm.auto import tqdm

    model.eval()
    augment = Augment(AugmentParams.from_config(config["train"]["augment"]))
    table = table[["slide_id", "patch", "label"]].reset_index(drop=True)
    dataset = PatchDataset(method.inference_rows(table, config), method.inference_views(config),
                           stores_dir)
    loader = make_loader(dataset, EpochSampler(len(dataset), batch_size, shuffle=False), workers)
    probs, embeddings = [], []
    for batch in tqdm(loader, desc="predict", disable=not progress, mininterval=2):
        views = [augment.normalise(v.to(device, non_blocking=True)) for v in batch["views"]]
        with autocast(device, config["train"]["amp"]):
            batch_probs, batch_embeddings = method.score_batch(model, views)
        probs.append(batch_probs)
        embeddings.append(batch_embeddings)
    return method.scores_table(dataset.table, probs, embeddings, config)
