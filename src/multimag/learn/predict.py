"""Per-patch scores and embeddings of one slide from a trained model (rule
``predict``), written as the predictions table (``multimag.learn.predictions``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from torch import nn

from multimag.errors import ModelError
from multimag.learn.device import resolve_device
from multimag.learn.methods import get_method
from multimag.learn.model_folder import check_store_fits, check_test_slide, load_model
from multimag.learn.predictions import SCHEMA, write_predictions
from multimag.learn.scoring import score_patches
from multimag.wsi.store import SCHEMA_VERSION, PatchReader


def predict_store(model_dir: str | Path, store: str | Path, out: str | Path,
                  labels: str | Path | None = None, device: str = "auto",
                  batch_size: int | None = None, model: tuple[nn.Module, dict] | None = None,
                  progress: bool = True) -> pd.DataFrame:
    """Score every patch of one store and write ``out`` (parquet); the slide must
    be a test slide of the model."""
    dev = resolve_device(device)
    net, meta = model or load_model(model_dir, dev)
    store = Path(store)
    reader = PatchReader(store)
    check_store_fits(meta, reader)
    check_test_slide(meta, reader, model_dir)
    config = meta["config"]
    table = _patch_table(reader, labels)
    scores = score_patches(net, get_method(meta["method"]), config, table, store.parent, dev,
                           batch_size or config["predict"]["batch_size"], progress=progress)
    scores = scores.assign(
        patient_id=str(reader.attrs.get("patient_id", "")), fold=np.int16(meta["fold"]),
        x=reader.centers[scores["patch"], 0], y=reader.centers[scores["patch"], 1],
        pred=(scores["prob_tumour"] >= 0.5).astype(np.int8),
        prob_tumour=scores["prob_tumour"].astype(np.float32),
        label=scores["label"].astype(np.int8))
    scores = (scores[SCHEMA.names].sort_values(["patch", "view"], kind="stable")
              .reset_index(drop=True))
    levels = {level["array"].removeprefix("mag_"): level["extent_level0"]
              for level in reader.attrs["levels"]}
    info = {"method": meta["method"], "fold": meta["fold"], "slide_id": reader.slide_id,
            "magnifications": reader.attrs["magnifications"], "patch_px": reader.attrs["patch_px"],
            "extent_level0": levels, "store_schema_version": SCHEMA_VERSION,
            "model": str(Path(model_dir)), "config_sha256": meta["config_sha256"],
            "model_identity": meta["identity"], "index_dir": meta["index_dir"],
            "index_sha256": meta["index_sha256"]}
    write_predictions(scores, out, info)
    return scores


def _patch_table(reader: PatchReader, labels: str | Path | None) -> pd.DataFrame:
    """Every patch of the store with its label (-1 without a label table)."""
    n = reader.n
    table = pd.DataFrame({"slide_id": reader.slide_id, "patch": np.arange(n, dtype=np.int64),
                          "label": np.full(n, -1, np.int8)})
    if labels is not None:
        lab = pd.read_parquet(labels, columns=["patch", "label"])
        if len(lab) != n or not np.array_equal(lab["patch"].to_numpy(), np.arange(n)):
            raise ModelError(f"the label table has {len(lab)} rows for a store of {n} patches",
                             slide=reader.slide_id, path=labels,
                             fix="re-run the label step for this slide")
        table["label"] = lab["label"].to_numpy(np.int8)
    return table
