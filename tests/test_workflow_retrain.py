"""Under Snakemake a re-run `train` job never brings back a model of other data:
Snakemake deletes model.pt and model.json but not checkpoints/last.pt, and the
checkpoint of another index or another pre-trained model must not be resumed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import QUICK, run_workflow

from multimag.dataset.index_digest import index_digest
from multimag.learn.model_folder import load_model, weights_digest

FOLDS = range(3)  # the embedded config's split.folds
SETTINGS = {"methods": ["ce_baseline", "mpcs_finetune"],
            "train": {**QUICK["train"], "threads": 1}, "model": QUICK["model"],
            "mpcs": QUICK["mpcs"]}


def _models(methods: tuple[str, ...]) -> list[str]:
    return [f"results/models/{m}/fold{f}/model.json" for m in methods for f in FOLDS]


def _run(work: Path, targets: list[str], config: dict) -> None:
    res = run_workflow(work, *targets, config=config)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]


def _weights(work: Path, methods: tuple[str, ...]) -> dict[str, dict[str, torch.Tensor]]:
    return {model: torch.load(work / Path(model).with_name("model.pt"),
                              weights_only=True)["state_dict"] for model in _models(methods)}


def _assert_retrained_from_scratch(work: Path, before: dict, reason: str) -> None:
    """Each model's job discarded its checkpoint (naming ``reason``), resumed
    nothing and wrote other weights."""
    for model, old in before.items():
        method, fold = Path(model).parts[-3], Path(model).parts[-2]
        log = (work / "results" / "logs" / "train" / method / f"{fold}.log").read_text()
        assert "resumed" not in log, (model, log[-2000:])
        discarded = [line for line in log.splitlines() if line.startswith("ignoring ")]
        assert len(discarded) == 1 and reason in discarded[0], (model, discarded)
        new = torch.load(work / Path(model).with_name("model.pt"),
                         weights_only=True)["state_dict"]
        assert any(not torch.allclose(old[k].float(), new[k].float()) for k in old), model


def _test_slides_by_fold(work: Path) -> dict[int, frozenset[str]]:
    splits = pd.read_csv(work / "results" / "splits.tsv", sep="\t")
    return {f: frozenset(splits.loc[splits["fold"] == f, "slide_id"]) for f in FOLDS}


def _new_split_seed(work: Path) -> dict:
    """A split.seed that changes the test slides of every fold (only the split
    runs while looking for it)."""
    before = _test_slides_by_fold(work)
    for seed in range(1, 20):
        config = {**SETTINGS, "split": {"seed": seed}}
        _run(work, ["results/splits.tsv"], config)
        after = _test_slides_by_fold(work)
        if all(after[f] != before[f] for f in FOLDS):
            return config
    pytest.fail("no split.seed in 1..19 changes every fold of the demo cohort")


def _assert_no_test_patient_trained_or_validated(work: Path, methods: tuple[str, ...]) -> None:
    """From the files: each model holds the digest of its fold's current index, and
    no table of that index but patches_test references a patient of the fold's
    test slides in the current splits.tsv."""
    splits = pd.read_csv(work / "results" / "splits.tsv", sep="\t")
    patient = splits.set_index("slide_id")["patient_id"]
    for fold in FOLDS:
        index = work / "results" / "indices" / f"fold{fold}"
        test_patients = set(patient[splits.loc[splits["fold"] == fold, "slide_id"]])
        digest = index_digest(index)
        for method in methods:
            meta = load_model(work / "results" / "models" / method / f"fold{fold}")[1]
            assert meta["index_sha256"] == digest, (method, fold)
        for table in sorted(index.glob("*.parquet")):
            if table.stem == "patches_test":
                continue
            frame = pd.read_parquet(table)
            slides = set().union(*(frame[c] for c in frame.columns if "slide_id" in c))
            assert not {patient[s] for s in slides} & test_patients, (fold, table.name)


@pytest.mark.slow
def test_a_new_split_or_pretraining_retrains_from_scratch(tmp_path, demo_dataset):
    work = tmp_path / "w"
    shutil.copytree(demo_dataset, work, symlinks=True)
    every = ("ce_baseline", "mpcs_pretrain", "mpcs_finetune")
    _run(work, _models(every), SETTINGS)
    before = _weights(work, every)

    # a new split.seed: new folds, new indices, every model trained anew
    config = _new_split_seed(work)
    _run(work, _models(every), config)
    _assert_retrained_from_scratch(work, before, "the content of the index")
    _assert_no_test_patient_trained_or_validated(work, every)

    # other MPCS pre-training: fine-tuning starts again from the new encoder
    before = _weights(work, ("mpcs_finetune",))
    config = {**config, "mpcs": {**QUICK["mpcs"], "pretrain_epochs": 1}}
    _run(work, _models(("mpcs_finetune",)), config)
    _assert_retrained_from_scratch(work, before, "the weights of the --init model")
    for fold in FOLDS:
        models = work / "results" / "models"
        pretrained = load_model(models / "mpcs_pretrain" / f"fold{fold}")
        assert pretrained[1]["epochs_run"] == 1
        finetuned = load_model(models / "mpcs_finetune" / f"fold{fold}")[1]
        assert finetuned["init_sha256"] == weights_digest(pretrained[0].state_dict())
