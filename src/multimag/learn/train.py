"""Training of one method on one fold (rule ``train``), resumable from its
checkpoint; ``docs/learn.md`` describes the steps and the model folder.

Each epoch's data order and augmentation are seeded by ``(train.seed, epoch)``,
so on the CPU a resumed run ends with the weights of an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from multimag import __version__
from multimag.config import step_settings
from multimag.dataset.index_digest import index_digest, index_test_slides
from multimag.errors import TrainingError
from multimag.learn.augment import Augment, AugmentParams
from multimag.learn.data import EpochSampler, GroupSampler, PatchDataset, make_loader
from multimag.learn.device import autocast, end_process_group, start_process_group
from multimag.learn.methods import Method, Sampling, get_method
from multimag.learn.model_folder import (
    CHECKPOINT_FILE,
    config_digest,
    load_checkpoint,
    load_model,
    save_checkpoint,
    save_model,
    store_geometry,
    weights_digest,
    write_history,
)
from multimag.wsi.store import SCHEMA_VERSION, PatchReader


@dataclass
class _Job:
    """What one training job is: the method, fold, configuration and where it runs."""

    method: Method
    fold: int
    config: dict
    index_dir: Path
    out_dir: Path
    stores_dir: Path
    init: str | Path | None  # as given (the identity takes its weights' digest)
    rank: int
    world: int
    device: torch.device

    @property
    def train_config(self) -> dict:
        return self.config["train"]


@dataclass
class _TrainingData:
    sampling: Sampling
    dataset: PatchDataset
    val: pd.DataFrame
    store: dict
    index_sha256: str
    test_slides: list[str]


@dataclass
class _Optimisation:
    """The network and what updates it, with the early-stopping state."""

    model: nn.Module
    net: nn.Module  # the model, wrapped by DistributedDataParallel in a multi-GPU job
    optimiser: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    epochs: int
    identity: dict  # what the training reads, part by part (see _identity)
    state: dict = field(default_factory=lambda: {
        "epoch": -1, "best_score": -math.inf, "best_epoch": -1, "bad_epochs": 0,
        "history": [], "best_state": None})

    @property
    def digest(self) -> str:
        return config_digest(self.identity)


def train(index_dir: str | Path, out_dir: str | Path, method: str, fold: int, config: dict,
          *, device: str | None = None, stores_dir: str | Path | None = None,
          init: str | Path | None = None, progress: bool = True) -> dict:
    """Train ``method`` on ``fold``; returns the metadata written to model.json."""
    trained = get_method(method)
    stores_dir = Path(stores_dir or Path(config["outdir"]) / "stores")
    rank, world, dev = start_process_group(device or config["train"]["device"])
    job = _Job(trained, fold, config, Path(index_dir), Path(out_dir), stores_dir, init,
               rank, world, dev)
    data = _load_training_data(job)
    optimisation = _build_optimisation(job, data)
    _resume(job, optimisation)
    loader = make_loader(data.dataset, _epoch_sampler(job, data), job.train_config["workers"])
    job.out_dir.mkdir(parents=True, exist_ok=True)
    _run_epochs(job, optimisation, data, loader, progress)
    meta = {}
    if rank == 0:
        meta = _model_metadata(job, optimisation, data)
        save_model(job.out_dir, optimisation.state["best_state"]
                   or optimisation.model.state_dict(), meta)
    end_process_group(world)
    return meta


def _load_training_data(job: _Job) -> _TrainingData:
    """The method's training samples and the validation patches, checked."""
    summary = _read_index_meta(job.index_dir, job.fold)
    if job.method.init_method and job.init is None:
        raise TrainingError(f"{job.method.name} starts from an {job.method.init_method} model",
                            path=job.out_dir,
                            fix=f"pass --init results/models/{job.method.init_method}/fold{{F}}")
    sampling = job.method.training_sampling(job.index_dir, job.config)
    _check_classes(sampling.table, sampling.label_columns, job.index_dir)
    val = pd.read_parquet(job.index_dir / "patches_val.parquet")
    limit = job.train_config["val_max_patches"]
    if limit and len(val) > limit:
        keep = np.random.default_rng([job.train_config["seed"], job.fold]).permutation(len(val))
        val = val.iloc[np.sort(keep[:limit])]
    if job.method.supervised and (val["label"].nunique() < 2):
        raise TrainingError("the validation patients have patches of one class only",
                            path=job.index_dir / "patches_val.parquet",
                            fix="use more patients per fold or another split.seed")
    dataset = PatchDataset(sampling.table, sampling.views, job.stores_dir,
                           sampling.label_columns)
    slide = str(sampling.table[sampling.views[0].slide].iloc[0])
    store = store_geometry(PatchReader(job.stores_dir / f"{slide}.zarr"))
    return _TrainingData(sampling, dataset, val, store, index_digest(job.index_dir),
                         index_test_slides(summary))


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


def _build_optimisation(job: _Job, data: _TrainingData) -> _Optimisation:
    """The seeded network (from ``--init`` where given), AdamW, the schedule, the
    loss scaler and the identity of the training."""
    train_config = job.train_config
    torch.manual_seed(train_config["seed"])
    model = job.method.build_model(job.config)
    init_sha256 = None if job.init is None else _load_encoder(model, job.init)
    model.to(job.device)
    net = model
    if job.world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[job.device.index] if job.device.type == "cuda" else None)
    epochs = job.method.epochs(job.config)
    optimiser = torch.optim.AdamW(model.parameters(), lr=train_config["lr"],
                                  weight_decay=train_config["weight_decay"])
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda e: _lr_factor(e, epochs, train_config["warmup_epochs"]))
    use_scaler = (job.device.type == "cuda" and train_config["amp"]
                  and not torch.cuda.is_bf16_supported())
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    return _Optimisation(model, net, optimiser, schedule, scaler, epochs,
                         _identity(job, data, init_sha256))


def _load_encoder(model: nn.Module, init: str | Path) -> str:
    """Every weight of the model at ``init`` that fits, but the classifier's; the
    digest of the init model's weights."""
    pretrained, _ = load_model(init)
    weights = pretrained.state_dict()
    own = model.state_dict()
    loaded = {k: v for k, v in weights.items()
              if k in own and v.shape == own[k].shape and not k.startswith("classifier")}
    model.load_state_dict(loaded, strict=False)
    return weights_digest(weights)


#: the parts of a training's identity, as the log names them when one changed
_IDENTITY_PARTS = {"settings": "the train step's settings", "method": "the method",
                   "fold": "the fold", "index": "the content of the index",
                   "store": "the patch geometry of the stores",
                   "init": "the weights of the --init model"}


def _identity(job: _Job, data: _TrainingData, init_sha256: str | None) -> dict:
    """Everything the training reads, as digests: a checkpoint resumes only a
    training of the same identity."""
    return {"settings": config_digest(step_settings(job.config, "train")),
            "method": job.method.name, "fold": job.fold, "index": data.index_sha256,
            "store": config_digest({**data.store, "schema_version": SCHEMA_VERSION}),
            "init": init_sha256}


def _lr_factor(epoch: int, epochs: int, warmup: int) -> float:
    if epoch < warmup:
        return (epoch + 1) / (warmup + 1)
    span = max(1, epochs - warmup)
    return 0.5 * (1 + math.cos(math.pi * (epoch - warmup) / span))


def _resume(job: _Job, optimisation: _Optimisation) -> None:
    """Continue after the last finished epoch of a checkpoint of this identity; a
    checkpoint of another one is discarded, saying why."""
    checkpoint = load_checkpoint(job.out_dir)
    if checkpoint is None:
        return
    path = job.out_dir / CHECKPOINT_FILE
    if checkpoint.get("digest") != optimisation.digest:
        if job.rank == 0:
            old = checkpoint.get("identity")
            changed = ([name for key, name in _IDENTITY_PARTS.items()
                        if old.get(key) != optimisation.identity[key]]
                       if isinstance(old, dict) else ["its identity (it records none)"])
            print(f"ignoring {path}: {', '.join(changed) or 'its identity'} changed since it "
                  "was written; training from scratch", flush=True)
        return
    optimisation.model.load_state_dict(checkpoint["model"])
    optimisation.optimiser.load_state_dict(checkpoint["optimiser"])
    optimisation.schedule.load_state_dict(checkpoint["schedule"])
    optimisation.scaler.load_state_dict(checkpoint["scaler"])
    optimisation.state = checkpoint["state"]
    print(f"resumed from {path} after epoch {optimisation.state['epoch'] + 1}", flush=True)


def _epoch_sampler(job: _Job, data: _TrainingData) -> EpochSampler:
    """The method's fixed batches in a seeded order, or seeded shuffled batches."""
    train_config, table = job.train_config, data.sampling.table
    if data.sampling.groups:
        groups = list(table.groupby(data.sampling.groups, sort=True).indices.values())
        per_batch = len(table) / len(groups)
        max_batches = (math.ceil(train_config["samples_per_epoch"] / per_batch)
                       if train_config["samples_per_epoch"] else None)
        return GroupSampler(groups, seed=train_config["seed"], rank=job.rank, world=job.world,
                            max_samples=max_batches)
    n = len(data.dataset)
    balance = data.sampling.balance if train_config["balance_classes"] else None
    return EpochSampler(n, train_config["batch_size"], seed=train_config["seed"],
                        drop_last=n > train_config["batch_size"], rank=job.rank,
                        world=job.world, max_samples=train_config["samples_per_epoch"],
                        classes=None if balance is None else table[balance].to_numpy())


def _run_epochs(job: _Job, optimisation: _Optimisation, data: _TrainingData, loader,
                progress: bool) -> None:
    """Train, validate and checkpoint epoch by epoch until the last epoch or an
    early stop (rank 0 decides and tells the others)."""
    augment = Augment(AugmentParams.from_config(job.train_config["augment"]))
    started = time.time()
    for epoch in range(optimisation.state["epoch"] + 1, optimisation.epochs):
        sums, n_batches = _train_epoch(job, optimisation, data, loader, augment, epoch,
                                       progress)
        stop = torch.zeros(1, device=job.device)
        if job.rank == 0:
            stop[0] = float(_validate_and_save_epoch(job, optimisation, data, epoch, sums,
                                                     n_batches, started))
        if job.world > 1:
            torch.distributed.broadcast(stop, 0)
        if stop.item():
            if job.rank == 0:
                print(f"early stop: no better validation score for "
                      f"{job.train_config['patience']} epochs", flush=True)
            break


def _train_epoch(job: _Job, optimisation: _Optimisation, data: _TrainingData, loader,
                 augment: Augment, epoch: int, progress: bool) -> tuple[dict[str, float], int]:
    """One pass over the epoch's batches; the summed loss parts and the batch count."""
    from tqdm.auto import tqdm

    loader.batch_sampler.set_epoch(epoch)
    optimisation.net.train()
    generator = torch.Generator(device=job.device).manual_seed(
        job.train_config["seed"] * 100003 + epoch)
    sums: dict[str, float] = {}
    n_batches = 0
    bar = tqdm(loader, desc=f"{job.method.name} fold {job.fold} epoch {epoch + 1}/"
               f"{optimisation.epochs}", disable=not progress or job.rank > 0, mininterval=2,
               file=sys.stderr)
    for batch in bar:
        views = augment([v.to(job.device, non_blocking=True) for v in batch["views"]],
                        generator, shared=data.sampling.shared_geometry)
        labels = batch["labels"].to(job.device, non_blocking=True)
        with autocast(job.device, job.train_config["amp"]):
            total, parts = job.method.loss(optimisation.net, views, labels, job.config)
        optimisation.optimiser.zero_grad(set_to_none=True)
        optimisation.scaler.scale(total).backward()
        optimisation.scaler.step(optimisation.optimiser)
        optimisation.scaler.update()
        n_batches += 1
        for key, value in {"loss": total.item(), **parts}.items():
            sums[key] = sums.get(key, 0.0) + value
        bar.set_postfix(loss=f"{sums['loss'] / n_batches:.4f}", refresh=False)
    optimisation.schedule.step()
    return sums, n_batches


def _validate_and_save_epoch(job: _Job, optimisation: _Optimisation, data: _TrainingData,
                             epoch: int, sums: dict[str, float], n_batches: int,
                             started: float) -> bool:
    """Validate, keep the best weights, write the history and the checkpoint;
    whether to stop early."""
    model, state = optimisation.model, optimisation.state
    metrics = job.method.validate(model, job.config, data.val, job.stores_dir, job.device)
    row = {"epoch": epoch + 1, "lr": optimisation.optimiser.param_groups[0]["lr"],
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
    write_history(job.out_dir, state["history"])
    save_checkpoint(job.out_dir, {
        "model": model.state_dict(), "optimiser": optimisation.optimiser.state_dict(),
        "schedule": optimisation.schedule.state_dict(),
        "scaler": optimisation.scaler.state_dict(), "state": state,
        "digest": optimisation.digest, "identity": optimisation.identity})
    print(json.dumps(row), flush=True)
    return state["bad_epochs"] >= job.train_config["patience"]


def _model_metadata(job: _Job, optimisation: _Optimisation, data: _TrainingData) -> dict:
    """``model.json``: what predicting needs, what the model was trained on, and
    how the training went."""
    state = optimisation.state
    return {"method": job.method.name, "fold": job.fold, "config": job.config,
            "config_sha256": config_digest(step_settings(job.config, "train")),
            "store": data.store, "store_schema_version": SCHEMA_VERSION,
            "identity": optimisation.digest, "index_sha256": data.index_sha256,
            "test_slides": data.test_slides, "index_dir": str(job.index_dir),
            "init": str(job.init) if job.init else None,
            "init_sha256": optimisation.identity["init"],
            "best_epoch": state["best_epoch"], "best_score": state["best_score"],
            "epochs_run": state["epoch"] + 1, "device": str(job.device),
            "world_size": job.world, "multimag_version": __version__}
