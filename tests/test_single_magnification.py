"""The single-magnification baselines (``ce_single``): names the registry resolves,
a configuration that expands them per magnification and refuses one that is not
tiled, and a model that reads, learns and predicts from its own magnification only."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr

from multimag.config import configured_methods, load_config, validate_config
from multimag.errors import ConfigError
from multimag.learn.data import PatchDataset, make_loader
from multimag.learn.methods import get_method
from multimag.learn.predict import predict_store
from multimag.learn.train import train

TINY = {"train": {"epochs": 1, "samples_per_epoch": 64, "val_max_patches": 40, "workers": 0,
                  "batch_size": 16},
        "model": {"backbone": "pnn", "pnn_width": 4}}


def test_the_registry_resolves_single_magnification_names():
    for name, magnification in (("ce_single_20x", 20.0), ("ce_single_2.5x", 2.5),
                                ("ce_single_40x", 40.0)):
        method = get_method(name)
        assert method.name == name and method.magnification == magnification
        assert method.patch_magnifications({"magnifications": [40, 20, 2.5]}) == [magnification]
    assert get_method("ce_baseline").patch_magnifications({"magnifications": [20, 10]}) == [
        20.0, 10.0]
    for bad in ("ce_single_20.0x", "ce_single_x", "ce_single", "ce_single_20"):
        with pytest.raises(ConfigError, match="unknown method"):
            get_method(bad)


def test_ce_single_expands_to_every_configured_magnification():
    config = validate_config({"magnifications": [20, 10, 5, 2.5],
                              "methods": ["ce_baseline", "ce_single", "ce_single_10x", "dsml"]})
    assert configured_methods(config) == ["ce_baseline", "ce_single_20x", "ce_single_10x",
                                          "ce_single_5x", "ce_single_2.5x", "dsml"]
    one = validate_config({"magnifications": [20, 10], "methods": ["ce_single_10x"]})
    assert configured_methods(one) == ["ce_single_10x"]


def test_a_single_magnification_that_is_not_configured_is_refused():
    with pytest.raises(ConfigError, match=r"'ce_single_40x' is trained at 40x, which is not "
                       r"among magnifications \[20, 10\]"):
        validate_config({"magnifications": [20, 10], "methods": ["ce_baseline", "ce_single_40x"]})
    with pytest.raises(ConfigError, match="ce_single_5x"):
        get_method("ce_single_5x").patch_magnifications({"magnifications": [20, 10]})
    with pytest.raises(ConfigError, match=r"config key 'methods.0': 'ce_single_twenty' is not "
                       r"one of \['ce_baseline', 'ce_single', .*does not match"):
        validate_config({"methods": ["ce_single_twenty"]})


@pytest.fixture(scope="module")
def fold0(demo_dataset):
    results = demo_dataset / "results"
    config = load_config(results / "config.resolved.yaml")
    for section, values in TINY.items():
        config[section] = {**config[section], **values}
    splits = pd.read_csv(results / "splits.tsv", sep="\t")
    return {"index": results / "indices" / "fold0", "stores": results / "stores",
            "labels": results / "labels", "config": config,
            "test_slide": splits.loc[splits["fold"] == 0, "slide_id"].iloc[0]}


def test_its_loader_yields_one_view_at_its_magnification(fold0):
    config = fold0["config"]
    finest, coarsest = max(config["magnifications"]), min(config["magnifications"])
    for magnification in (finest, coarsest):
        method = get_method(f"ce_single_{magnification:g}x")
        sampling = method.training_sampling(fold0["index"], config)
        assert set(sampling.table["magnification"]) == {float(magnification)}
        train_patches = pd.read_parquet(fold0["index"] / "patches_train.parquet")
        assert len(sampling.table) == len(train_patches)
        dataset = PatchDataset(sampling.table, sampling.views, fold0["stores"],
                               sampling.label_columns)
        batch = next(iter(make_loader(dataset, _first_rows(8))))
        assert len(batch["views"]) == 1 and batch["views"][0].shape[1] == 3
        first = sampling.table.iloc[0]
        from multimag.wsi.store import PatchReader

        reader = PatchReader(fold0["stores"] / f"{first['slide_id']}.zarr")
        want = reader.read(f"mag_{magnification:g}x", [int(first["patch"])])[0]
        np.testing.assert_array_equal(batch["views"][0][0].permute(1, 2, 0).numpy(), want)


def _first_rows(n: int):
    from multimag.learn.data import EpochSampler

    return EpochSampler(n, n, shuffle=False)


def _overwrite(store: Path, array: str, seed: int) -> None:
    """Noise instead of the pixels of one magnification of a store."""
    target = zarr.open_group(store, mode="r+")[array]
    noise = np.random.default_rng(seed).integers(0, 256, target.shape, dtype=np.uint8)
    target[...] = noise


def test_its_predictions_come_from_its_magnification_alone(fold0, tmp_path):
    """Noise in every other magnification of the test store leaves its predictions
    as they were; noise in its own changes them."""
    config = fold0["config"]
    own = max(config["magnifications"])
    name = f"ce_single_{own:g}x"
    model = tmp_path / name
    meta = train(fold0["index"], model, name, 0, config, stores_dir=fold0["stores"],
                 progress=False)
    assert meta["method"] == name
    slide = fold0["test_slide"]
    labels = fold0["labels"] / f"{slide}.parquet"
    before = predict_store(model, fold0["stores"] / f"{slide}.zarr", tmp_path / "a.parquet",
                           labels=labels, progress=False)
    assert set(before["view"]) == {f"{own:g}x", "fused"}
    views = before.pivot(index="patch", columns="view", values="prob_tumour")
    np.testing.assert_array_equal(views["fused"], views[f"{own:g}x"])

    stores = tmp_path / "stores"
    stores.mkdir()
    shutil.copytree(fold0["stores"] / f"{slide}.zarr", stores / f"{slide}.zarr")
    for i, other in enumerate(m for m in config["magnifications"] if m != own):
        _overwrite(stores / f"{slide}.zarr", f"mag_{other:g}x", seed=i)
    after = predict_store(model, stores / f"{slide}.zarr", tmp_path / "b.parquet",
                          labels=labels, progress=False)
    np.testing.assert_array_equal(after["prob_tumour"], before["prob_tumour"])

    _overwrite(stores / f"{slide}.zarr", f"mag_{own:g}x", seed=99)
    noisy = predict_store(model, stores / f"{slide}.zarr", tmp_path / "c.parquet",
                          labels=labels, progress=False)
    assert not np.array_equal(noisy["prob_tumour"], before["prob_tumour"])
