"""Datasets over the demo stores: every view reads exactly the patch its index row
names (checked against plain zarr reads), DSML's field crop, the batch sampler,
and the augmentation (geometry is a dihedral transform of the input, colour jitter
is torchvision's)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision.transforms.v2.functional as TF
import zarr

from multimag.learn.augment import Augment, AugmentParams
from multimag.learn.data import (
    EpochSampler,
    IndexReferenceError,
    PatchDataset,
    View,
    field_views,
    make_loader,
    pair_views,
    single_patches,
    single_view,
    triplet_views,
)
from multimag.wsi.geometry import mag_label


def _zarr_patch(stores: Path, slide: str, mag: float, patch: int) -> np.ndarray:
    group = zarr.open_group(stores / f"{slide}.zarr", mode="r")
    return group[f"mag_{mag_label(mag)}"][int(patch)]


@pytest.fixture(scope="module")
def fold0(demo_dataset):
    results = demo_dataset / "results"
    return results / "stores", results / "indices" / "fold0"


@pytest.mark.parametrize(("table", "views", "prefixes"), [
    ("pairs", pair_views(), [("slide_id_a", "patch_a", "magnification_a"),
                             ("slide_id_b", "patch_b", "magnification_b")]),
    ("triplets", triplet_views(), [(f"{r}_slide_id", f"{r}_patch", f"{r}_magnification")
                                   for r in ("anchor", "positive", "negative")]),
])
def test_views_read_the_patch_the_index_names(fold0, table, views, prefixes):
    stores, index = fold0
    rows = pd.read_parquet(index / f"{table}.parquet").sample(40, random_state=1)
    dataset = PatchDataset(rows, views, stores, label_columns=[])
    order = np.random.default_rng(0).permutation(len(rows))[:25]
    batch = dataset.__getitems__(order.tolist())
    assert len(batch["views"]) == len(views)
    table_rows = rows.reset_index(drop=True)
    for v, (s, p, m) in enumerate(prefixes):
        got = batch["views"][v]
        assert got.dtype == torch.uint8 and got.shape[1] == 3
        for k, row in enumerate(order):
            r = table_rows.iloc[row]
            want = _zarr_patch(stores, r[s], r[m], r[p])
            np.testing.assert_array_equal(got[k].permute(1, 2, 0).numpy(), want)


def test_single_patches_and_labels(fold0):
    stores, index = fold0
    patches = pd.read_parquet(index / "patches_train.parquet").head(30)
    table = single_patches(patches, [20, 5])
    assert len(table) == 60 and set(table["magnification"]) == {20.0, 5.0}
    dataset = PatchDataset(table, single_view(), stores, label_columns=["label"])
    batch = dataset.__getitems__(list(range(len(table))))
    np.testing.assert_array_equal(batch["labels"][:, 0].numpy(), table["label"].to_numpy())
    r = table.iloc[41]
    np.testing.assert_array_equal(batch["views"][0][41].permute(1, 2, 0).numpy(),
                                  _zarr_patch(stores, r["slide_id"], r["magnification"],
                                              r["patch"]))


def test_dsml_views_cover_the_finest_field(fold0):
    """same_center stores: a 10x patch spans twice the 20x field, so its DSML view is
    the central half, and the crop holds exactly those pixels."""
    stores, index = fold0
    patches = pd.read_parquet(index / "patches_train.parquet").head(8)
    dataset = PatchDataset(patches, field_views([20, 10, 5]), stores)
    views = dataset.__getitems__(list(range(8)))["views"]
    assert [tuple(v.shape[2:]) for v in views] == [(32, 32), (16, 16), (8, 8)]
    r = patches.iloc[3]
    full = _zarr_patch(stores, r["slide_id"], 10, r["patch"])
    np.testing.assert_array_equal(views[1][3].permute(1, 2, 0).numpy(), full[8:24, 8:24])


def test_loader_in_worker_processes_matches_in_process(fold0):
    stores, index = fold0
    rows = pd.read_parquet(index / "triplets.parquet").head(64)
    dataset = PatchDataset(rows, triplet_views(), stores, label_columns=["anchor_label"])
    sampler = EpochSampler(len(rows), 16, seed=3)
    direct = [dataset.__getitems__(b) for b in sampler]
    loaded = list(make_loader(dataset, sampler, workers=2))
    assert len(loaded) == len(direct) == 4
    for a, b in zip(direct, loaded, strict=True):
        for va, vb in zip(a["views"], b["views"], strict=True):
            assert torch.equal(va, vb)
        assert torch.equal(a["labels"], b["labels"])


def test_missing_store_column_and_patch_are_clear_errors(fold0, tmp_path):
    stores, index = fold0
    rows = pd.read_parquet(index / "patches_train.parquet").head(4)
    ghost = rows.assign(slide_id="NOPE_1")
    with pytest.raises(IndexReferenceError, match="missing store.*NOPE_1"):
        PatchDataset(ghost, [View(magnification=20.0)], stores)
    with pytest.raises(IndexReferenceError, match="no column"):
        PatchDataset(rows, pair_views(), stores)
    n = zarr.open_group(stores / f"{rows['slide_id'].iloc[0]}.zarr")["centers"].shape[0]
    beyond = rows.assign(patch=n + 5)
    with pytest.raises(IndexReferenceError, match=f"references patch {n + 5} of a store with {n}"):
        PatchDataset(beyond, [View(magnification=20.0)], stores)


# -- the sampler -----------------------------------------------------------------------

def test_epoch_sampler_is_a_seeded_permutation_per_epoch_split_across_ranks():
    s = EpochSampler(103, 10, seed=5)
    s.set_epoch(2)
    first = [i for b in s for i in b]
    assert sorted(first) == list(range(103)) and len(s) == 11
    s.set_epoch(2)
    assert [i for b in s for i in b] == first  # a resumed epoch sees the same order
    s.set_epoch(3)
    assert [i for b in s for i in b] != first
    ranks = [EpochSampler(103, 10, seed=5, rank=r, world=2, max_samples=100) for r in (0, 1)]
    for r in ranks:
        r.set_epoch(2)
    seen = [i for r in ranks for b in r for i in b]
    assert len(seen) == 100 and len(set(seen)) == 100
    assert len(EpochSampler(103, 10, drop_last=True)) == 10


def test_balanced_epochs_draw_each_class_equally_often():
    """90 normal rows and 10 tumour rows: an epoch of 60 holds 30 of each, the
    tumour rows cycled (each seen three times), the normal ones all distinct."""
    classes = np.array([0] * 90 + [1] * 10)
    s = EpochSampler(100, 8, seed=1, max_samples=60, classes=classes)
    s.set_epoch(4)
    order = [i for b in s for i in b]
    assert len(order) == 60
    drawn = classes[order]
    assert (drawn == 0).sum() == 30 and (drawn == 1).sum() == 30
    counts = np.bincount(order, minlength=100)
    assert set(counts[90:]) == {3} and set(counts[:90]) <= {0, 1}
    s.set_epoch(4)
    assert [i for b in s for i in b] == order
    s.set_epoch(5)
    assert [i for b in s for i in b] != order
    # without a cap an epoch keeps the table's length, still half and half
    full = [i for b in EpochSampler(100, 8, seed=1, classes=classes) for i in b]
    assert len(full) == 100 and (classes[full] == 1).sum() == 50


# -- augmentation ----------------------------------------------------------------------

def _dihedral(x: torch.Tensor) -> list[torch.Tensor]:
    out = []
    for flipped in (x, x.flip(-1)):
        out += [torch.rot90(flipped, k, (-2, -1)) for k in range(4)]
    return out


def test_geometry_is_a_dihedral_transform_shared_across_views_on_request():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (32, 3, 8, 8), dtype=torch.uint8)
    aug = Augment(AugmentParams(brightness=0, contrast=0, saturation=0, hue=0,
                                mean=(0, 0, 0), std=(1, 1, 1)))
    a, b = aug([x, x.clone()], g, shared=True)
    seen = set()
    for k in range(len(x)):
        src = x[k].float() / 255
        matches = [i for i, t in enumerate(_dihedral(src)) if torch.allclose(t, a[k])]
        assert matches, k
        seen.update(matches)
        assert torch.equal(a[k], b[k])  # the same transform on both views
    assert len(seen) >= 5  # the draws vary across samples
    a, b = aug([x, x.clone()], g, shared=False)
    assert any(not torch.equal(a[k], b[k]) for k in range(len(x)))


def _yiq_hue_turn(img: torch.Tensor, turns: float) -> torch.Tensor:
    """Hue turned by rotating the I/Q chroma plane of YIQ (NTSC matrix), in numpy."""
    to_yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322],
                       [0.211, -0.523, 0.312]])
    yiq = np.einsum("ij,jhw->ihw", to_yiq, img.double().numpy())
    angle = 2 * np.pi * turns
    i, q = yiq[1].copy(), yiq[2].copy()
    yiq[1], yiq[2] = np.cos(angle) * i - np.sin(angle) * q, np.sin(angle) * i + np.cos(angle) * q
    rgb = np.einsum("ij,jhw->ihw", np.linalg.inv(to_yiq), yiq)
    return torch.from_numpy(np.clip(rgb, 0, 1)).float()


def test_hue_turn_keeps_luma_and_chroma_strength():
    img = torch.rand(3, 8, 8) * 0.4 + 0.3
    turned = _yiq_hue_turn(img, 0.05)
    luma = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
    torch.testing.assert_close((turned * luma).sum(0), (img * luma).sum(0), atol=1e-5, rtol=0)
    assert not torch.allclose(turned, img, atol=1e-3)
    torch.testing.assert_close(_yiq_hue_turn(turned, -0.05), img, atol=1e-5, rtol=0)


@pytest.mark.parametrize("which", ["brightness", "contrast", "saturation", "hue"])
def test_colour_jitter_equals_torchvision_per_sample(which):
    """Each sample's jitter equals torchvision's adjust_* at the factor drawn for it,
    the hue a turn of the YIQ chroma plane (the draw is recovered by replaying the
    generator)."""
    amount = 0.05 if which == "hue" else 0.4
    params = AugmentParams(flip=False, rot90=False, brightness=0, contrast=0, saturation=0,
                           hue=0, mean=(0, 0, 0), std=(1, 1, 1))
    params = AugmentParams(**{**params.__dict__, which: amount})
    x = torch.randint(0, 256, (6, 3, 12, 12), dtype=torch.uint8)
    (out,) = Augment(params)([x], torch.Generator().manual_seed(4))
    replay = torch.Generator().manual_seed(4)
    torch.rand(6, generator=replay), torch.rand(6, generator=replay)  # the flips,
    torch.randint(0, 4, (6,), generator=replay)  # the rotation (drawn, not applied)
    u = torch.rand(6, generator=replay)
    for k in range(6):
        img = x[k].float() / 255
        if which == "hue":
            want = _yiq_hue_turn(img, float((u[k] * 2 - 1) * amount))
        else:
            factor = float(1 - amount + 2 * amount * u[k])
            want = getattr(TF, f"adjust_{which}")(img, factor)
        torch.testing.assert_close(out[k], want, atol=2e-5, rtol=0)


def test_normalise_uses_the_configured_statistics():
    aug = Augment(AugmentParams(mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0)))
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    np.testing.assert_allclose(aug.normalise(x)[0, :, 0, 0].numpy(), [2.0, 1.0, 0.5])


def test_same_field_views_mixing_magnifications_are_brought_to_patch_px(demo_dataset,
                                                                         tmp_path):
    """In same_field stores a 5x patch has a quarter of the 20x pixels; a single view
    over both (e.g. the CE baseline) resamples it to patch_px."""
    import subprocess
    import sys

    from multimag.dataset.samples import load_samples
    from multimag.learn.data import resize_patches

    sample = load_samples(demo_dataset / "demo" / "samples.tsv").iloc[0]
    stores = tmp_path / "stores"
    res = subprocess.run([sys.executable, "-m", "multimag.cli", "tile", sample["path"],
                          str(stores / f"{sample['slide_id']}.zarr"), "--slide-id",
                          sample["slide_id"], "--mode", "same_field", "--patch-px", "32",
                          "--magnifications", "20", "5", "--no-progress"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    group = zarr.open_group(stores / f"{sample['slide_id']}.zarr", mode="r")
    assert group["mag_20x"].shape[1:3] == (32, 32) and group["mag_5x"].shape[1:3] == (8, 8)
    rows = single_patches(pd.DataFrame({"slide_id": sample["slide_id"], "patch": [0, 3, 5],
                                        "label": 0}), [20, 5])
    views = PatchDataset(rows, single_view(), stores).__getitems__(list(range(6)))["views"][0]
    assert views.shape == (6, 3, 32, 32)
    coarse = rows.index[rows["magnification"] == 5.0]
    want = resize_patches(group["mag_5x"][:][[0, 3, 5]], 32)
    np.testing.assert_array_equal(views[coarse].permute(0, 2, 3, 1).numpy(), want)
    fine = rows.index[rows["magnification"] == 20.0]
    np.testing.assert_array_equal(views[fine].permute(0, 2, 3, 1).numpy(),
                                  group["mag_20x"][:][[0, 3, 5]])
    # the resampling is an antialiased resize, not nearest: a flat patch stays flat
    flat = np.full((1, 8, 8, 3), 77, np.uint8)
    assert (resize_patches(flat, 32) == 77).all()
