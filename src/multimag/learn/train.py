"""Training of one method on one fold (rule ``train``), resumable.

``OUT_DIR`` (``results/models/{method}/fold{F}``) receives:

* ``checkpoints/last.pt``: after every epoch (atomic), the model, optimiser,
  schedule, loss scaler, early-stopping state and history. A job that is killed
  and re-run with the same configuration resumes after the last finished
  epoch; the data order and augmentation of each epoch are seeded by
  ``(train.seed, epoch)``, so on the CPU a resumed run ends with exactly the
  weights of an uninterrupted one. A checkpoint from another configuration is
  ignored (and said so).
* ``history.csv``: one row per epoch: losses, learning rate, validation score.
* ``model.pt`` + ``model.json`` (written last): the weights of the best epoch
  (highest validation balanced accuracy; lowest validation NT-Xent for MPCS
  pre-training) and what predicting needs: method, fold, configuration, store
  geometry and schema version.

Validation uses the fold's validation patients (``patches_val``; a fixed
seeded subset of ``train.val_max_patches``), scored exactly as ``predict``
scores test slides. Early stopping after ``train.patience`` epochs without
improvement. AdamW with a linear warm-up and cosine decay per epoch; mixed
precision on CUDA. With ``train.gpus > 1`` the job re-launches itself through
torchrun and trains with DistributedDataParallel (rank 0 validates and writes).
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import balanced_accuracy_score
from torch import nn

from multimag import __version__
from multimag.atomic import atomic_path
from multimag.config import step_settings
from multimag.errors import TrainingError
from multimag.evaluate.aggregate import FUSED
from multimag.learn.data import (
    Augment,
    AugmentParams,
    EpochSampler,
    PatchDataset,
    View,
    make_loader,
)
from multimag.learn.losses import nt_xent_loss
from multimag.learn.methods import SUPERVISED, build_model, check_method, loss, training_sampling
from multimag.learn.predict import (
    META_FILE,
    MODEL_FILE,
    STORE_KEYS,
    autocast,
    config_digest,
    load_model,
    resolve_device,
    score_patches,
)
from multimag.wsi.store import SCHEMA_VERSION, PatchReader


def _read_index_meta(index_dir: Path, fold: int) -> dict:
    path = index_dir / "index.json"
    if not path.is_file():
        raise TrainingError("the index directory has no index.json", path=index_dir,
                            fix="run `multimag index` (the index rule) for this fold first")
    meta = json.loads(path.read_text())
    if int(meta["fold"]) != fold:
        raise TrainingError(f"the index is for fold {meta['fold']}, not fold {fold}",
                            path=path, fix="pass the matching --fold or index directory")
    return meta


def _check_classes(table: pd.DataFrame, columns: tuple[str, ...], what: Path) -> None:
    labels = np.unique(np.concatenate([table[c].to_numpy() for c in columns
                                       if c.endswith("label")] or [np.array([0, 1])]))
    missing = sorted({0, 1} - set(labels.tolist()))
    if len(table) == 0 or missing:
        names = {0: "normal", 1: "tumour"}
        raise TrainingError(f"no {' or '.join(names[m] for m in missing) or 'labelled'} "
                            f"training samples in the fold", path=what,
                            fix="give the fold's training patients patches of both classes "
                            "(more patients, other split.seed, or fewer folds)")


def _store_meta(stores_dir: Path, table: pd.DataFrame, views: list[View]) -> dict:
    slide = str(table[views[0].slide].iloc[0])
    attrs = PatchReader(stores_dir / f"{slide}.zarr").attrs
    return {key: attrs[key] for key in STORE_KEYS}


def _lr_factor(epoch: int, epochs: int, warmup: int) -> float:
    if epoch < warmup:
        return (epoch + 1) / (warmup + 1)
    span = max(1, epochs - warmup)
    return 0.5 * (1 + math.cos(math.pi * (epoch - warmup) / span))


def _distributed() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def relaunch_with_torchrun(gpus: int, argv: list[str]) -> int:
    """Run ``multimag train`` again under torchrun with ``gpus`` processes."""
    from torch.distributed.run import main as torchrun

    args = ["--standalone", f"--nproc_per_node={gpus}", "-m", "multimag.cli", *argv]
    torchrun(args)
    return 0


def validate_epoch(model: nn.Module, method: str, config: dict, val: pd.DataFrame,
                   stores_dir: Path, device: torch.device, generator_seed: int) -> dict:
    """Validation score: balanced accuracy of the fused patch predictions, or
    minus the NT-Xent loss of fixed magnification pairs for MPCS pre-training."""
    if method == "mpcs_pretrain":
        mags = [float(m) for m in config["index"]["mpcs"]["fixed_pair"]]
        views = [View(magnification=m) for m in mags]
        dataset = PatchDataset(val, views, stores_dir)
        loader = make_loader(dataset, EpochSampler(len(dataset), config["train"]["batch_size"],
                                                   shuffle=False))
        aug = Augment(AugmentParams.from_config(config["train"]["augment"]))
        model.eval()
        total, n = 0.0, 0
        with torch.no_grad():
            for batch in loader:
                if len(batch["views"][0]) < 2:
                    continue
                xs = [aug.normalise(v.to(device)) for v in batch["views"]]
                with autocast(device, config["train"]["amp"]):
                    z = [model(x)["projection"].float() for x in xs]
                total += nt_xent_loss(z[0], z[1], config["mpcs"]["temperature"]).item() * len(xs[0])
                n += len(xs[0])
        return {"val_nt_xent": total / max(n, 1), "score": -total / max(n, 1)}
    scores = score_patches(model, method, config, val, stores_dir, device,
                           config["predict"]["batch_size"])
    fused = scores[scores["view"] == FUSED]
    bacc = balanced_accuracy_score(fused["label"], fused["prob_tumour"] >= 0.5)
    return {"val_balanced_acc": float(bacc), "score": float(bacc)}


def train(index_dir: str | Path, out_dir: str | Path, method: str, fold: int, config: dict,
          *, device: str | None = None, stores_dir: str | Path | None = None,
          init: str | Path | None = None, progress: bool = True) -> dict:
    """Train ``method`` on ``fold``; returns the metadata written to model.json."""
    check_method(method)
    index_dir, out_dir = Path(index_dir), Path(out_dir)
    stores_dir = Path(stores_dir or Path(config["outdir"]) / "stores")
    tc = config["train"]
    rank, world = _distributed()
    if world > 1:
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    dev = resolve_device(device or tc["device"])
    if dev.type == "cuda" and world > 1:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(dev)
    _read_index_meta(index_dir, fold)
    if method == "mpcs_finetune" and init is None:
        raise TrainingError("mpcs_finetune starts from an mpcs_pretrain model", path=out_dir,
                            fix="pass --init results/models/mpcs_pretrain/fold{F}")
    sampling = training_sampling(method, index_dir, config)
    _check_classes(sampling.table, sampling.label_columns, index_dir)
    val = pd.read_parquet(index_dir / "patches_val.parquet")
    if tc["val_max_patches"] and len(val) > tc["val_max_patches"]:
        keep = np.random.default_rng([tc["seed"], fold]).permutation(len(val))
        val = val.iloc[np.sort(keep[:tc["val_max_patches"]])]
    if method in SUPERVISED and (val["label"].nunique() < 2):
        raise TrainingError("the validation patients have patches of one class only",
                            path=index_dir / "patches_val.parquet",
                            fix="use more patients per fold or another split.seed")
    dataset = PatchDataset(sampling.table, sampling.views, stores_dir, sampling.label_columns)
    store = _store_meta(stores_dir, sampling.table, sampling.views)

    torch.manual_seed(tc["seed"])
    model = build_model(method, config)
    if init is not None:
        pretrained, _ = load_model(init)
        own = model.state_dict()
        loaded = {k: v for k, v in pretrained.state_dict().items()
                  if k in own and v.shape == own[k].shape and not k.startswith("classifier")}
        model.load_state_dict(loaded, strict=False)
    model.to(dev)
    net = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None)
    epochs = tc["epochs"]
    if method == "mpcs_pretrain" and config["mpcs"]["pretrain_epochs"]:
        epochs = config["mpcs"]["pretrain_epochs"]
    optimiser = torch.optim.AdamW(model.parameters(), lr=tc["lr"], weight_decay=tc["weight_decay"])
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda e: _lr_factor(e, epochs, tc["warmup_epochs"]))
    use_scaler = dev.type == "cuda" and tc["amp"] and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    settings = step_settings(config, "train")
    digest = config_digest({"settings": settings, "method": method, "fold": fold,
                            "init": str(init) if init else None})
    state = {"epoch": -1, "best_score": -math.inf, "best_epoch": -1, "bad_epochs": 0,
             "history": [], "best_state": None}
    ckpt_path = out_dir / "checkpoints" / "last.pt"
    if ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if ckpt.get("digest") == digest:
            model.load_state_dict(ckpt["model"])
            optimiser.load_state_dict(ckpt["optimiser"])
            schedule.load_state_dict(ckpt["schedule"])
            scaler.load_state_dict(ckpt["scaler"])
            state = ckpt["state"]
            print(f"resumed from {ckpt_path} after epoch {state['epoch'] + 1}", flush=True)
        else:
            print(f"ignoring {ckpt_path}: written with another configuration", flush=True)

    if groups := sampling.groups:
        batches = sampling.table.groupby(groups, sort=True).indices
        groups = list(batches.values())
        per_batch = len(sampling.table) / len(groups)
        max_batches = (math.ceil(tc["samples_per_epoch"] / per_batch)
                       if tc["samples_per_epoch"] else None)
        sampler = GroupSampler(groups, seed=tc["seed"], rank=rank, world=world,
                               max_samples=max_batches)
    else:
        sampler = EpochSampler(len(dataset), tc["batch_size"], seed=tc["seed"], drop_last=True
                               if len(dataset) > tc["batch_size"] else False, rank=rank,
                               world=world, max_samples=tc["samples_per_epoch"])
    loader = make_loader(dataset, sampler, tc["workers"])
    augment = Augment(AugmentParams.from_config(tc["augment"]))
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    from tqdm.auto import tqdm

    for epoch in range(state["epoch"] + 1, epochs):
        sampler.set_epoch(epoch)
        net.train()
        generator = torch.Generator(device=dev).manual_seed(tc["seed"] * 100003 + epoch)
        sums: dict[str, float] = {}
        n_batches = 0
        bar = tqdm(loader, desc=f"{method} fold {fold} epoch {epoch + 1}/{epochs}",
                   disable=not progress or rank > 0, mininterval=2, file=sys.stderr)
        for batch in bar:
            views = augment([v.to(dev, non_blocking=True) for v in batch["views"]], generator,
                            shared=sampling.shared_geometry)
            labels = batch["labels"].to(dev, non_blocking=True)
            with autocast(dev, tc["amp"]):
                total, parts = loss(method, net, views, labels, config)
            optimiser.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            scaler.step(optimiser)
            scaler.update()
            n_batches += 1
            for key, value in {"loss": total.item(), **parts}.items():
                sums[key] = sums.get(key, 0.0) + value
            bar.set_postfix(loss=f"{sums['loss'] / n_batches:.4f}", refresh=False)
        schedule.step()
        stop = torch.zeros(1, device=dev)
        if rank == 0:
            metrics = validate_epoch(model, method, config, val, stores_dir, dev, tc["seed"])
            row = {"epoch": epoch + 1, "lr": optimiser.param_groups[0]["lr"],
                   **{f"train_{k}": v / max(n_batches, 1) for k, v in sums.items()},
                   **{k: v for k, v in metrics.items() if k != "score"},
                   "seconds": round(time.time() - started, 2)}
            state["history"].append(row)
            state["epoch"] = epoch
            if metrics["score"] > state["best_score"]:
                state.update(best_score=metrics["score"], best_epoch=epoch + 1, bad_epochs=0,
                             best_state={k: v.detach().cpu().clone()
                                         for k, v in model.state_dict().items()})
            else:
                state["bad_epochs"] += 1
            _write_history(state["history"], out_dir / "history.csv")
            _save_checkpoint(ckpt_path, model, optimiser, schedule, scaler, state, digest)
            print(json.dumps(row), flush=True)
            stop[0] = float(state["bad_epochs"] >= tc["patience"])
        if world > 1:
            torch.distributed.broadcast(stop, 0)
        if stop.item():
            if rank == 0:
                print(f"early stop: no better validation score for {tc['patience']} epochs",
                      flush=True)
            break
    meta = {}
    if rank == 0:
        meta = {"method": method, "fold": fold, "config": config,
                "config_sha256": config_digest(settings), "store": store,
                "store_schema_version": SCHEMA_VERSION, "index_dir": str(index_dir),
                "init": str(init) if init else None, "best_epoch": state["best_epoch"],
                "best_score": state["best_score"], "epochs_run": state["epoch"] + 1,
                "device": str(dev), "world_size": world, "multimag_version": __version__}
        with atomic_path(out_dir / MODEL_FILE) as tmp:
            torch.save({"state_dict": state["best_state"] or model.state_dict()}, tmp)
        with atomic_path(out_dir / META_FILE) as tmp:
            Path(tmp).write_text(json.dumps(meta, indent=1, default=float))
    if world > 1:
        torch.distributed.destroy_process_group()
    return meta


class GroupSampler(EpochSampler):
    """Fixed batches (e.g. class-balanced constellation batches) in a seeded
    order per epoch."""

    def __init__(self, groups: list[np.ndarray], seed: int = 0, rank: int = 0,
                 world: int = 1, max_samples: int | None = None) -> None:
        super().__init__(len(groups), 1, seed=seed, rank=rank, world=world,
                         max_samples=max_samples)
        self.groups = groups

    def __iter__(self):
        for (g,) in super().__iter__():
            yield self.groups[g].tolist()


def _write_history(history: list[dict], path: Path) -> None:
    columns = list(dict.fromkeys(k for row in history for k in row))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)


def _save_checkpoint(path: Path, model, optimiser, schedule, scaler, state: dict,
                     digest: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"model": model.state_dict(), "optimiser": optimiser.state_dict(),
                    "schedule": schedule.state_dict(), "scaler": scaler.state_dict(),
                    "state": state, "digest": digest}, tmp)
