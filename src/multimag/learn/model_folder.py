"""The model folder (``results/models/{method}/fold{F}``): the one writer and
reader of its files; ``docs/learn.md`` has their format."""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from multimag.atomic import atomic_path
from multimag.errors import ModelError
from multimag.learn.methods import get_method
from multimag.wsi.store import PatchReader

MODEL_FILE = "model.pt"
META_FILE = "model.json"
HISTORY_FILE = "history.csv"
CHECKPOINT_FILE = "checkpoints/last.pt"
#: what a store must share with the stores a model was trained on
STORE_KEYS = ("patch_px", "mode", "magnifications")


def config_digest(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def weights_digest(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and values of a network's tensors
    (what the weights are, whichever file or path they came from)."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def store_geometry(reader: PatchReader) -> dict:
    """The ``STORE_KEYS`` of a store, as the model's metadata records them."""
    return {key: reader.attrs[key] for key in STORE_KEYS}


def save_model(model_dir: Path, state_dict: dict, meta: dict) -> None:
    """Write the weights, then the metadata (the file that says the model is done)."""
    with atomic_path(model_dir / MODEL_FILE) as tmp:
        torch.save({"state_dict": state_dict}, tmp)
    with atomic_path(model_dir / META_FILE) as tmp:
        Path(tmp).write_text(json.dumps(meta, indent=1, default=float))


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
    model = get_method(meta["method"]).build_model(meta["config"])
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


def check_test_slide(meta: dict, reader: PatchReader, model_dir: str | Path) -> None:
    """The slide must be one of the test slides of the index the model trained on:
    any other slide's patient may be among those it trained or validated on."""
    test_slides = meta.get("test_slides")
    if test_slides is None:
        raise ModelError("the model records no test slides (trained by an older multimag)",
                         slide=reader.slide_id, path=Path(model_dir) / META_FILE,
                         fix="retrain the model (multimag train)")
    if reader.slide_id not in test_slides:
        raise ModelError(f"the slide is not a test slide of the model's index "
                         f"({meta.get('index_dir')}): the model may have trained or validated "
                         "on its patient", slide=reader.slide_id,
                         path=Path(model_dir) / META_FILE,
                         fix=f"predict it with the model of the fold whose test set holds it "
                         f"(this one is fold {meta.get('fold')})")


def write_history(model_dir: Path, history: list[dict]) -> None:
    """``history.csv``: one row per finished epoch."""
    columns = list(dict.fromkeys(k for row in history for k in row))
    with atomic_path(model_dir / HISTORY_FILE) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)


def save_checkpoint(model_dir: Path, checkpoint: dict) -> None:
    path = model_dir / CHECKPOINT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


def load_checkpoint(model_dir: Path) -> dict | None:
    """The last checkpoint of ``model_dir``, or None when there is none."""
    path = model_dir / CHECKPOINT_FILE
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)
