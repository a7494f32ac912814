"""Training on the demo cohort's fold 0: every method trains and predicts, a killed
job resumes from its checkpoint to the same weights as an uninterrupted run, and
bad input stops with one clear line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import QUICK, quick_config

from multimag.learn.model_folder import load_model
from multimag.learn.predict import ModelError, predict_store
from multimag.learn.train import TrainingError, train


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "multimag.cli", *args], capture_output=True,
                          text=True)


@pytest.mark.parametrize("method", ["ce_baseline", "smse_pair", "smse_triplet", "dsml",
                                    "constellation", "mpcs"])
def test_every_method_trains_and_predicts_its_test_slide(fold0, tmp_path, method):
    config = fold0["config"]
    init = None
    if method == "mpcs":
        train(fold0["index"], tmp_path / "pre", "mpcs_pretrain", 0, config,
              stores_dir=fold0["stores"], progress=False)
        init, method = tmp_path / "pre", "mpcs_finetune"
        pre = pd.read_csv(tmp_path / "pre" / "history.csv")
        assert "val_nt_xent" in pre and np.isfinite(pre["train_loss"]).all()
    out = tmp_path / method
    meta = train(fold0["index"], out, method, 0, config, stores_dir=fold0["stores"], init=init,
                 progress=False)
    history = pd.read_csv(out / "history.csv")
    assert list(history["epoch"]) == [1, 2]
    assert np.isfinite(history["train_loss"]).all()
    assert 0 <= meta["best_score"] <= 1 and meta["best_epoch"] in (1, 2)
    assert meta["store"]["patch_px"] == 32
    slide = fold0["test_slide"]
    scores = predict_store(out, fold0["stores"] / f"{slide}.zarr", tmp_path / "p.parquet",
                           labels=fold0["labels"] / f"{slide}.parquet", progress=False)
    fused = scores[scores["view"] == "fused"]
    n = len(pd.read_parquet(fold0["labels"] / f"{slide}.parquet"))
    assert len(fused) == n and fused["patch"].is_unique
    assert scores["prob_tumour"].between(0, 1).all()
    views = set(scores["view"]) - {"fused"}
    assert views == ({"20x", "10x"} if method == "dsml" else {"20x", "10x", "5x", "2.5x"})
    emb = np.stack(scores.loc[scores["view"] != "fused", "embedding"].to_numpy())
    assert emb.shape[1] == (32 if method == "dsml" else 12)  # DSML: pooled PNN features


def test_mpcs_finetune_starts_from_the_pretrained_encoder(fold0, tmp_path):
    """With a learning rate of zero, fine-tuning leaves the encoder exactly as
    pre-training left it (and pre-training did move it from the seeded init)."""
    from multimag.learn.methods import get_method

    config = quick_config(fold0["index"].parents[2], train={**QUICK["train"], "epochs": 1})
    train(fold0["index"], tmp_path / "pre", "mpcs_pretrain", 0, config,
          stores_dir=fold0["stores"], progress=False)
    with pytest.raises(TrainingError, match="mpcs_pretrain model"):
        train(fold0["index"], tmp_path / "ft", "mpcs_finetune", 0, config,
              stores_dir=fold0["stores"])
    frozen = quick_config(fold0["index"].parents[2],
                          train={**QUICK["train"], "epochs": 1, "lr": 0.0})
    train(fold0["index"], tmp_path / "ft", "mpcs_finetune", 0, frozen,
          stores_dir=fold0["stores"], init=tmp_path / "pre", progress=False)
    pre = dict(load_model(tmp_path / "pre")[0].named_parameters())
    tuned = dict(load_model(tmp_path / "ft")[0].named_parameters())
    torch.manual_seed(config["train"]["seed"])
    fresh = dict(get_method("mpcs_pretrain").build_model(config).named_parameters())
    backbone = [k for k in pre if k.startswith("backbone")]
    assert backbone
    assert any(not torch.equal(pre[k], fresh[k]) for k in backbone)
    for k in backbone:
        torch.testing.assert_close(tuned[k], pre[k], rtol=0, atol=0)


def _write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_killed_training_resumes_from_its_last_checkpoint(fold0, tmp_path):
    config = quick_config(fold0["index"].parents[2],
                          train={**QUICK["train"], "epochs": 4, "samples_per_epoch": 1024,
                                 "patience": 10})
    cfg = _write_config(tmp_path / "config.yaml", config)
    args = [str(fold0["index"]), "--method", "smse_triplet", "--fold", "0",
            "--config", str(cfg), "--stores", str(fold0["stores"]), "--threads", "1"]
    # the reference: one uninterrupted run
    ref = _cli("train", args[0], str(tmp_path / "ref"), *args[1:])
    assert ref.returncode == 0, ref.stderr[-2000:]
    # the same run, killed as soon as its first checkpoint is on disk
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "multimag.cli", "train", args[0], str(out),
                             *args[1:]], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ckpt = out / "checkpoints" / "last.pt"
    deadline = time.time() + 300
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "model.json").exists(), "the run finished before it could be killed"
    done = len(pd.read_csv(out / "history.csv"))
    assert 1 <= done < 4
    again = _cli("train", args[0], str(out), *args[1:])
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resumed from {ckpt} after epoch {done}" in again.stdout
    history = pd.read_csv(out / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3, 4]
    reference = pd.read_csv(tmp_path / "ref" / "history.csv")
    np.testing.assert_allclose(history["train_loss"], reference["train_loss"], rtol=1e-5)
    a = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "ref" / "model.pt", weights_only=True)["state_dict"]
    for key in b:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_a_checkpoint_of_another_configuration_is_not_resumed(fold0, tmp_path):
    config = quick_config(fold0["index"].parents[2], train={**QUICK["train"], "epochs": 1})
    train(fold0["index"], tmp_path, "ce_baseline", 0, config, stores_dir=fold0["stores"],
          progress=False)
    config["train"]["lr"] = config["train"]["lr"] / 2
    cfg = _write_config(tmp_path / "c.yaml", config)
    res = _cli("train", str(fold0["index"]), str(tmp_path), "--method", "ce_baseline",
               "--fold", "0", "--config", str(cfg), "--stores", str(fold0["stores"]))
    assert res.returncode == 0 and "ignoring" in res.stdout and "resumed" not in res.stdout


# -- bad input: one line naming the problem and the fix ------------------------------

def _one_line_error(res: subprocess.CompletedProcess, *needles: str) -> str:
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_unknown_method_backbone_and_missing_weights(fold0, tmp_path):
    index, stores = str(fold0["index"]), str(fold0["stores"])
    _one_line_error(_cli("train", index, str(tmp_path / "m"), "--method", "smse_quad",
                         "--fold", "0"), "unknown method 'smse_quad'", "smse_triplet")
    for model, needle in (({"backbone": "resnet5000"}, "unknown backbone 'resnet5000'"),
                          ({"backbone": "resnet18", "weights": str(tmp_path / "w.pth")},
                           "does not exist")):
        config = quick_config(fold0["index"].parents[2], model={**QUICK["model"], **model})
        cfg = _write_config(tmp_path / "c.yaml", config)
        _one_line_error(_cli("train", index, str(tmp_path / "m"), "--method", "ce_baseline",
                             "--fold", "0", "--config", str(cfg), "--stores", stores), needle)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_one_line(fold0, tmp_path):
    _one_line_error(_cli("train", str(fold0["index"]), str(tmp_path), "--method", "ce_baseline",
                         "--fold", "0", "--device", "cuda", "--stores", str(fold0["stores"])),
                    "cuda", "--device cpu")


def test_index_with_a_missing_store_or_patch(fold0, tmp_path):
    index = tmp_path / "fold0"
    shutil.copytree(fold0["index"], index)
    res = _cli("train", str(index), str(tmp_path / "m"), "--method", "ce_baseline", "--fold", "0",
               "--stores", str(tmp_path / "nowhere"))
    _one_line_error(res, "missing store", "Fix:")
    triplets = pd.read_parquet(index / "triplets.parquet")
    triplets.loc[5, "anchor_patch"] = 10**6
    triplets.to_parquet(index / "triplets.parquet")
    res = _cli("train", str(index), str(tmp_path / "m"), "--method", "smse_triplet", "--fold",
               "0", "--stores", str(fold0["stores"]))
    _one_line_error(res, "references patch 1000000 of a store with", "Fix:")
    assert not (tmp_path / "m").exists()


def test_a_fold_with_one_class_stops_before_training(fold0, tmp_path):
    index = tmp_path / "fold0"
    shutil.copytree(fold0["index"], index)
    patches = pd.read_parquet(index / "patches_train.parquet")
    patches[patches["label"] == 0].to_parquet(index / "patches_train.parquet")
    res = _cli("train", str(index), str(tmp_path / "m"), "--method", "ce_baseline", "--fold",
               "0", "--stores", str(fold0["stores"]))
    _one_line_error(res, "no tumour", "training samples")
    assert not (tmp_path / "m" / "model.pt").exists()
    meta = json.loads((index / "index.json").read_text())
    assert meta["fold"] == 0
    res = _cli("train", str(index), str(tmp_path / "m"), "--method", "ce_baseline", "--fold", "1")
    _one_line_error(res, "not fold 1")


def test_predict_refuses_a_model_dir_without_checkpoint_and_a_foreign_store(fold0, tmp_path):
    slide = fold0["test_slide"]
    store = fold0["stores"] / f"{slide}.zarr"
    res = _cli("predict", str(tmp_path), str(store), str(tmp_path / "p.parquet"))
    _one_line_error(res, "no trained model", "Fix:")
    config = quick_config(fold0["index"].parents[2], train={**QUICK["train"], "epochs": 1})
    train(fold0["index"], tmp_path / "m", "ce_baseline", 0, config, stores_dir=fold0["stores"],
          progress=False)
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    meta["store_schema_version"] = 99
    (tmp_path / "m" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="schema version 1 but the model was trained on "
                       "version 99"):
        predict_store(tmp_path / "m", store, tmp_path / "p.parquet", progress=False)
    assert not (tmp_path / "p.parquet").exists()


def test_gpus_2_trains_with_distributed_data_parallel(fold0, tmp_path):
    """`--gpus 2` re-launches the job under torchrun; on a machine without GPUs the
    two processes train with gloo on the CPU, rank 0 validates and writes."""
    config = quick_config(fold0["index"].parents[2], train={**QUICK["train"], "epochs": 1})
    cfg = _write_config(tmp_path / "c.yaml", config)
    res = _cli("train", str(fold0["index"]), str(tmp_path / "m"), "--method", "smse_triplet",
               "--fold", "0", "--config", str(cfg), "--stores", str(fold0["stores"]),
               "--gpus", "2", "--device", "cpu", "--threads", "1")
    assert res.returncode == 0, res.stderr[-3000:]
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["world_size"] == 2 and meta["epochs_run"] == 1
    assert len(pd.read_csv(tmp_path / "m" / "history.csv")) == 1  # one writer
    assert load_model(tmp_path / "m")[1]["method"] == "smse_triplet"
