"""A training resumes only a checkpoint of its own identity (the index's content,
the settings, the stores' geometry, the init model's weights), and a model is
used only on the test slides of the index it trained on: predict refuses other
slides, and the predictions check re-reads the model's index."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import QUICK, quick_config

from multimag.dataset.index_digest import index_digest
from multimag.errors import ModelError, PredictionsError
from multimag.learn.model_folder import load_model, weights_digest
from multimag.learn.predict import predict_store
from multimag.learn.predictions import check_predictions
from multimag.learn.train import train


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(model_dir / "model.pt", weights_only=True)["state_dict"]


def _assert_same_weights(a: Path, b: Path) -> None:
    """The weights of two model folders, equal up to float rounding."""
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-5, atol=1e-6)


def _moved(before: dict[str, torch.Tensor], after: Path) -> bool:
    """Whether any weight of ``after`` differs from ``before`` beyond rounding."""
    return any(not torch.allclose(before[k].float(), v.float(), rtol=1e-4, atol=1e-5)
               for k, v in _weights(after).items())


def _why_discarded(log: str) -> str:
    """The reason of the one line that says a checkpoint was discarded."""
    lines = [line for line in log.splitlines() if line.startswith("ignoring ")]
    assert len(lines) == 1, log
    return lines[0].split(": ", 1)[1]


def _train(fold0, index: Path, out: Path, method: str, config: dict, capsys,
           init: Path | None = None) -> tuple[dict, str]:
    """Train; the model's metadata and what the run printed."""
    capsys.readouterr()
    meta = train(index, out, method, 0, config, stores_dir=fold0["stores"], init=init,
                 progress=False)
    return meta, capsys.readouterr().out


def _without_one_training_slide(fold0, folder: Path) -> str:
    """A copy of fold 0's index whose patches_train lacks one training slide."""
    shutil.copytree(fold0["index"], folder)
    patches = pd.read_parquet(folder / "patches_train.parquet")
    dropped = sorted(patches["slide_id"].unique())[0]
    patches[patches["slide_id"] != dropped].to_parquet(folder / "patches_train.parquet")
    return dropped


def test_a_changed_index_discards_the_checkpoint_and_trains_from_scratch(fold0, tmp_path,
                                                                         capsys):
    config = quick_config(fold0["index"].parents[2])
    out = tmp_path / "model"
    first, _ = _train(fold0, fold0["index"], out, "ce_baseline", config, capsys)
    assert (out / "checkpoints" / "last.pt").is_file()
    first_weights = {k: v.clone() for k, v in _weights(out).items()}
    # an identical copy of the index elsewhere is the same training: it resumes
    same = tmp_path / "same_index"
    shutil.copytree(fold0["index"], same)
    again, log = _train(fold0, same, out, "ce_baseline", config, capsys)
    assert f"resumed from {out / 'checkpoints' / 'last.pt'} after epoch 2" in log
    assert again["identity"] == first["identity"]
    # one training slide fewer: the checkpoint is discarded, saying why
    changed = tmp_path / "changed_index"
    _without_one_training_slide(fold0, changed)
    meta, log = _train(fold0, changed, out, "ce_baseline", config, capsys)
    assert "resumed" not in log
    assert _why_discarded(log).startswith("the content of the index changed")
    assert meta["identity"] != first["identity"]
    assert meta["index_sha256"] == index_digest(changed) != first["index_sha256"]
    assert list(pd.read_csv(out / "history.csv")["epoch"]) == [1, 2]
    assert _moved(first_weights, out)
    # from scratch: the model of a fresh folder on the changed index
    _train(fold0, changed, tmp_path / "fresh", "ce_baseline", config, capsys)
    _assert_same_weights(out, tmp_path / "fresh")


def test_model_json_records_identity_index_digest_and_test_slides(fold0, tmp_path, capsys):
    config = quick_config(fold0["index"].parents[2], train={**QUICK["train"], "epochs": 1})
    meta, _ = _train(fold0, fold0["index"], tmp_path / "m", "ce_baseline", config, capsys)
    on_disk = json.loads((tmp_path / "m" / "model.json").read_text())
    assert on_disk["identity"] == meta["identity"] and len(meta["identity"]) == 64
    assert on_disk["index_sha256"] == index_digest(fold0["index"])
    splits = pd.read_csv(fold0["index"].parents[1] / "splits.tsv", sep="\t")
    assert on_disk["test_slides"] == sorted(splits.loc[splits["fold"] == 0, "slide_id"])
    checkpoint = torch.load(tmp_path / "m" / "checkpoints" / "last.pt", weights_only=True)
    assert checkpoint["digest"] == meta["identity"]


def test_mpcs_finetune_follows_the_init_weights_not_their_path(fold0, tmp_path, capsys):
    config = quick_config(fold0["index"].parents[2], train={**QUICK["train"], "epochs": 1})
    pre, ft = tmp_path / "pre", tmp_path / "ft"
    _train(fold0, fold0["index"], pre, "mpcs_pretrain", config, capsys)
    first, _ = _train(fold0, fold0["index"], ft, "mpcs_finetune", config, capsys, init=pre)
    assert first["init_sha256"] == weights_digest(load_model(pre)[0].state_dict())
    first_weights = {k: v.clone() for k, v in _weights(ft).items()}
    # the same weights at another path: the same training, resumed
    moved = tmp_path / "moved"
    shutil.copytree(pre, moved)
    _, log = _train(fold0, fold0["index"], ft, "mpcs_finetune", config, capsys, init=moved)
    assert "resumed from" in log
    # pre-training again with other settings, into the same folder: new init weights
    other = quick_config(fold0["index"].parents[2],
                         train={**QUICK["train"], "epochs": 1},
                         mpcs={**QUICK["mpcs"], "temperature": 0.5})
    _train(fold0, fold0["index"], pre, "mpcs_pretrain", other, capsys)
    meta, log = _train(fold0, fold0["index"], ft, "mpcs_finetune", config, capsys, init=pre)
    assert "resumed" not in log
    assert _why_discarded(log).startswith("the weights of the --init model changed")
    assert meta["init_sha256"] == weights_digest(load_model(pre)[0].state_dict())
    assert meta["init_sha256"] != first["init_sha256"]
    assert _moved(first_weights, ft)
    _train(fold0, fold0["index"], tmp_path / "fresh", "mpcs_finetune", config, capsys,
           init=pre)
    _assert_same_weights(ft, tmp_path / "fresh")


@pytest.fixture(scope="module")
def trained(fold0, tmp_path_factory):
    """A ce_baseline model of fold 0 trained on a copy of its index, with the fold's
    test slides and a training slide."""
    root = tmp_path_factory.mktemp("trained")
    index = root / "fold0"
    shutil.copytree(fold0["index"], index)
    config = quick_config(fold0["index"].parents[2], train={**QUICK["train"], "epochs": 1})
    train(index, root / "model", "ce_baseline", 0, config, stores_dir=fold0["stores"],
          progress=False)
    summary = json.loads((index / "index.json").read_text())
    return {"root": root, "index": index, "model": root / "model",
            "test": sorted(summary["slides"]["test"]),
            "train_slide": sorted(summary["slides"]["train"])[0]}


def test_predict_refuses_a_slide_outside_the_models_test_slides(fold0, trained, tmp_path):
    slide = trained["train_slide"]
    out = tmp_path / "p.parquet"
    with pytest.raises(ModelError, match="not a test slide of the model's index") as err:
        predict_store(trained["model"], fold0["stores"] / f"{slide}.zarr", out, progress=False)
    assert slide in str(err.value) and "model.json" in str(err.value)
    assert not out.exists()
    scores = predict_store(trained["model"], fold0["stores"] / f"{trained['test'][0]}.zarr",
                           out, progress=False)
    assert len(scores) and out.is_file()


def _fold0_splits(fold0, slides: list[str]) -> pd.DataFrame:
    """Splits that put ``slides`` (with their patients) in fold 0."""
    patients = pd.read_csv(fold0["index"].parents[1] / "splits.tsv", sep="\t").set_index(
        "slide_id")["patient_id"]
    return pd.DataFrame({"slide_id": slides, "patient_id": patients[slides].to_numpy(),
                         "fold": 0})


def _predict(fold0, model_dir: Path, pred_dir: Path, slides: list[str]) -> pd.DataFrame:
    """Predict ``slides`` with the model; the splits that put them in fold 0."""
    model = load_model(model_dir)
    for slide in slides:
        predict_store(model_dir, fold0["stores"] / f"{slide}.zarr",
                      pred_dir / f"{slide}.parquet", model=model, progress=False)
    return _fold0_splits(fold0, slides)


def test_predictions_check_reads_the_models_index_not_its_metadata(fold0, trained,
                                                                   tmp_path):
    pred = tmp_path / "pred"
    splits = _predict(fold0, trained["model"], pred, trained["test"])
    metas = check_predictions(pred, splits)
    assert {m["index_sha256"] for m in metas.values()} == {index_digest(trained["index"])}
    # a model.json that claims a training slide among its test slides lets predict
    # through, and splits that put it in fold 0 pass the fold check: the index does not
    liar = tmp_path / "liar"
    shutil.copytree(trained["model"], liar)
    meta = json.loads((liar / "model.json").read_text())
    slide = trained["train_slide"]
    meta["test_slides"].append(slide)
    (liar / "model.json").write_text(json.dumps(meta))
    _predict(fold0, liar, pred, [slide])
    leaky = _fold0_splits(fold0, [*trained["test"], slide])
    with pytest.raises(PredictionsError, match="not a test slide of the index") as err:
        check_predictions(pred, leaky)
    assert f"{slide}.parquet" in str(err.value) and "leak" in str(err.value)


def test_predictions_check_refuses_an_index_changed_after_training(fold0, trained, tmp_path):
    """The model's index, recorded relative to a workflow directory (here the
    folder above the predictions), is found from the predictions' folder."""
    pred = tmp_path / "predictions" / "ce_baseline"
    index = tmp_path / "fold0"
    shutil.copytree(trained["index"], index)
    model = tmp_path / "model"
    shutil.copytree(trained["model"], model)
    meta = json.loads((model / "model.json").read_text())
    (model / "model.json").write_text(json.dumps({**meta, "index_dir": "fold0"}))
    splits = _predict(fold0, model, pred, trained["test"][:1])
    assert not Path("fold0").exists()  # not where the tests run
    check_predictions(pred, splits)
    patches = pd.read_parquet(index / "patches_train.parquet")
    patches.iloc[1:].to_parquet(index / "patches_train.parquet")
    with pytest.raises(PredictionsError, match="changed after training"):
        check_predictions(pred, splits)
    shutil.rmtree(index)
    with pytest.raises(PredictionsError, match="is not there"):
        check_predictions(pred, splits)
