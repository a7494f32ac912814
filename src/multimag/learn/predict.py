"""Patch scores and embeddings from a trained model (rule ``predict``).

``score_patches`` is the one scoring path: training validates with it and
``predict_store`` writes a slide's predictions with it. Rows (see README,
"Predictions"): one per patch and view, where a view is one magnification
(``"20x"``) or ``"fused"``, the patch's prediction: the mean of the
per-magnification probabilities for the magnification-independent methods,
the weighted fusion ``sum_m w_m softmax(logits_m)`` for DSML.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn

from multimag.atomic import atomic_path
from multimag.errors import ModelError, MultimagError
from multimag.evaluate.aggregate import FUSED, METADATA_KEY
from multimag.learn.data import (
    Augment,
    AugmentParams,
    EpochSampler,
    PatchDataset,
    make_loader,
    single_patches,
)
from multimag.learn.methods import build_model, dsml_magnifications, patch_views
from multimag.wsi.geometry import mag_label
from multimag.wsi.store import SCHEMA_VERSION, PatchReader

MODEL_FILE = "model.pt"
META_FILE = "model.json"
#: what a store must share with the stores a model was trained on
STORE_KEYS = ("patch_px", "mode", "magnifications")


def config_digest(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise MultimagError("--device cuda was requested but no CUDA GPU is visible",
                            fix="run on a GPU node, or pass --device cpu (auto picks the GPU "
                            "when there is one)")
    if requested in ("auto", "cuda"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def autocast(device: torch.device, enabled: bool = True):
    if device.type != "cuda" or not enabled:
        return torch.autocast("cpu", enabled=False)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


@torch.no_grad()
def score_patches(model: nn.Module, method: str, config: dict, table: pd.DataFrame,
                  stores_dir: str | Path, device: torch.device, batch_size: int = 256,
                  workers: int = 0, progress: bool = False) -> pd.DataFrame:
    """Scores of the patches ``table`` (slide_id, patch, label) at every view."""
    from tqdm.auto import tqdm

    model.eval()
    augment = Augment(AugmentParams.from_config(config["train"]["augment"]))
    table = table[["slide_id", "patch", "label"]].reset_index(drop=True)
    if method == "dsml":
        mags = dsml_magnifications(config)
        dataset = PatchDataset(table, patch_views(method, config), stores_dir)
    else:
        mags = [float(m) for m in config["magnifications"]]
        dataset = PatchDataset(single_patches(table, mags), patch_views(method, config),
                               stores_dir)
    loader = make_loader(dataset, EpochSampler(len(dataset), batch_size, shuffle=False), workers)
    probs, embs = [], []
    for batch in tqdm(loader, desc="predict", disable=not progress, mininterval=2):
        views = [augment.normalise(v.to(device, non_blocking=True)) for v in batch["views"]]
        with autocast(device, config["train"]["amp"]):
            if method == "dsml":
                out = model(views)
                probs.append(torch.stack([torch.softmax(lg.float(), 1)[:, 1]
                                          for lg in out["logits"]]
                                         + [out["probs"][:, 1].float()], 1).cpu())
                embs.append([e.float().cpu() for e in out["embeddings"]])
            else:
                out = model(views[0])
                probs.append(torch.softmax(out["logits"].float(), 1)[:, 1].cpu())
                embs.append(out["embedding"].float().cpu())
    if method == "dsml":
        p = torch.cat(probs).numpy() if probs else np.zeros((0, len(mags) + 1), np.float32)
        frames = []
        for m, mag in enumerate(mags):
            e = torch.cat([b[m] for b in embs]).numpy() if embs else np.zeros((0, 1))
            frames.append(table.assign(view=mag_label(mag), prob_tumour=p[:, m],
                                       embedding=list(e)))
        frames.append(table.assign(view=FUSED, prob_tumour=p[:, -1], embedding=None))
        return pd.concat(frames, ignore_index=True)
    p = torch.cat(probs).numpy() if probs else np.zeros(0, np.float32)
    e = torch.cat(embs).numpy() if embs else np.zeros((0, 1), np.float32)
    per_view = dataset.table.assign(view=[mag_label(m) for m in dataset.table["magnification"]],
                                    prob_tumour=p, embedding=list(e))
    per_view = per_view.drop(columns="magnification")
    fused = (per_view.groupby(["slide_id", "patch", "label"], sort=False, as_index=False)
             ["prob_tumour"].mean().assign(view=FUSED, embedding=None))
    return pd.concat([per_view, fused], ignore_index=True)


def load_model(model_dir: str | Path, device: torch.device | str = "cpu"
               ) -> tuple[nn.Module, dict]:
    """The trained network of ``model_dir`` and its metadata."""
    model_dir = Path(model_dir)
    path = model_dir / MODEL_FILE
    if not path.is_file() or not (model_dir / META_FILE).is_file():
        raise ModelError(f"no trained model ({MODEL_FILE} and {META_FILE}) in the directory",
                         path=model_dir, fix="run `multimag train` (the train rule) for this "
                         "method and fold first")
    meta = json.loads((model_dir / META_FILE).read_text())
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model = build_model(meta["method"], meta["config"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(device), meta


def check_store_fits(meta: dict, reader: PatchReader) -> None:
    """The store must have the schema and geometry the model was trained on."""
    attrs = reader.attrs
    if attrs.get("schema_version") != meta["store_schema_version"]:
        raise ModelError(f"store schema version {attrs.get('schema_version')} but the model "
                         f"was trained on version {meta['store_schema_version']}",
                         slide=reader.slide_id, path=reader.path,
                         fix="re-tile the slide with the multimag version the model was "
                         "trained with, or retrain")
    for key in STORE_KEYS:
        if attrs.get(key) != meta["store"][key]:
            raise ModelError(f"store {key} is {attrs.get(key)!r} but the model was trained on "
                             f"{meta['store'][key]!r}", slide=reader.slide_id, path=reader.path,
                             fix="tile the slide with the model's configuration or retrain")


def predict_store(model_dir: str | Path, store: str | Path, out: str | Path,
                  labels: str | Path | None = None, device: str = "auto",
                  batch_size: int | None = None, model: tuple[nn.Module, dict] | None = None,
                  progress: bool = True) -> pd.DataFrame:
    """Score every patch of one store and write ``out`` (parquet)."""
    dev = resolve_device(device)
    net, meta = model or load_model(model_dir, dev)
    store = Path(store)
    reader = PatchReader(store)
    check_store_fits(meta, reader)
    config = meta["config"]
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
    scores = score_patches(net, meta["method"], config, table, store.parent, dev,
                           batch_size or config["predict"]["batch_size"], progress=progress)
    scores = scores.assign(
        patient_id=str(reader.attrs.get("patient_id", "")), fold=np.int16(meta["fold"]),
        x=reader.centers[scores["patch"], 0], y=reader.centers[scores["patch"], 1],
        pred=(scores["prob_tumour"] >= 0.5).astype(np.int8),
        prob_tumour=scores["prob_tumour"].astype(np.float32),
        label=scores["label"].astype(np.int8))
    columns = ["slide_id", "patient_id", "fold", "patch", "x", "y", "label", "view",
               "prob_tumour", "pred", "embedding"]
    scores = scores[columns].sort_values(["patch", "view"], kind="stable").reset_index(drop=True)
    levels = {level["array"].removeprefix("mag_"): level["extent_level0"]
              for level in reader.attrs["levels"]}
    info = {"method": meta["method"], "fold": meta["fold"], "slide_id": reader.slide_id,
            "magnifications": reader.attrs["magnifications"], "patch_px": reader.attrs["patch_px"],
            "extent_level0": levels, "store_schema_version": SCHEMA_VERSION,
            "model": str(Path(model_dir)), "config_sha256": meta["config_sha256"]}
    write_predictions(scores, out, info)
    return scores


def write_predictions(scores: pd.DataFrame, out: str | Path, info: dict) -> None:
    schema = pa.schema([("slide_id", pa.string()), ("patient_id", pa.string()),
                        ("fold", pa.int16()), ("patch", pa.int64()), ("x", pa.int64()),
                        ("y", pa.int64()), ("label", pa.int8()), ("view", pa.string()),
                        ("prob_tumour", pa.float32()), ("pred", pa.int8()),
                        ("embedding", pa.list_(pa.float32()))],
                       metadata={METADATA_KEY: json.dumps(info).encode()})
    embeddings = [None if e is None else np.asarray(e, np.float32)
                  for e in scores["embedding"]]
    table = pa.Table.from_pandas(scores.assign(embedding=embeddings), schema=schema,
                                 preserve_index=False)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)
