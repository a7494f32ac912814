"""Fold indices: training patients only, balanced pairs, MPCS strategies, batches,
ambiguous patches, reproducibility and errors (synthetic label tables, no stores)."""

from __future__ import annotations

import json
import math
from collections import Counter
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import chisquare

from multimag.config import validate_config
from multimag.dataset.indices import TABLES, build_indices
from multimag.dataset.splits import LeakError, fold_roles, make_splits
from multimag.errors import ConfigError, IndexBuildError, LabelTableError
from multimag.wsi.geometry import mag_label

MAGS = [20, 10, 5, 2.5]
FOLD = 1
SAMPLES_PER_CLASS = 8


def write_cohort(labels_dir: Path, n_patients: int = 20, seed: int = 0) -> pd.DataFrame:
    """Even patients: tumour slides (tumour, normal and ambiguous patches); odd
    patients: normal slides (normal and ambiguous patches). Rows are shuffled and the
    patch numbers have gaps, as real label tables may."""
    rng = np.random.default_rng(seed)
    labels_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for p in range(n_patients):
        tumour = p % 2 == 0
        for s in range(1 + (p % 3 == 0)):
            sid = f"S{p:02d}_{s}"
            n = int(rng.integers(90, 140))
            patch = np.sort(rng.choice(3 * n, size=n, replace=False)).astype(np.int64)
            probs = [0.2, 0.45, 0.35] if tumour else [0.1, 0.9, 0.0]
            label = rng.choice([-1, 0, 1], size=n, p=probs).astype(np.int8)
            table = pd.DataFrame({"slide_id": sid, "patch": patch, "label": label})
            for m in MAGS:
                frac = np.where(label == 1, 1.0, np.where(label == 0, 0.0, 0.4))
                table[f"tumour_fraction_{mag_label(m)}"] = frac.astype(np.float32)
            table["source"] = "annotation"
            table.sample(frac=1.0, random_state=p).to_parquet(labels_dir / f"{sid}.parquet",
                                                               index=False)
            rows.append({"slide_id": sid, "patient_id": f"P{p:02d}",
                         "slide_label": "tumour" if tumour else "normal"})
    return pd.DataFrame(rows)


def make_config(**index) -> dict:
    base = {"pairs_per_anchor": 4, "triplets_per_anchor": 2,
            "mpcs": {"fixed_pair": [20, 10], "pairs_per_patch": 3},
            "batch": {"classes": 2, "samples_per_class": SAMPLES_PER_CLASS}}
    base.update(index)
    return validate_config({"magnifications": MAGS, "index": base})


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    samples = write_cohort(root / "labels")
    splits = make_splits(samples, folds=5, seed=0)
    out = root / "index"
    summary = build_indices(splits, root / "labels", out, FOLD, make_config())
    tables = {name: pd.read_parquet(out / f"{name}.parquet") for name in TABLES}
    labels = pd.concat([pd.read_parquet(p) for p in sorted((root / "labels").glob("*.parquet"))])
    return {"root": root, "splits": splits, "out": out, "summary": summary,
            "tables": tables, "labels": labels, "roles": fold_roles(splits, FOLD)}


def refs(df: pd.DataFrame, prefix: str = "", suffix: str = "") -> pd.DataFrame:
    return pd.DataFrame({"slide_id": df[f"{prefix}slide_id{suffix}"].to_numpy(),
                         "patch": df[f"{prefix}patch{suffix}"].to_numpy()})


SIDES = {"patches_train": [("", "")], "pairs": [("", "_a"), ("", "_b")],
         "triplets": [("anchor_", ""), ("positive_", ""), ("negative_", "")],
         "cross_mag_pairs": [("", "")], "mpcs_fixed": [("", "")],
         "mpcs_ordered": [("", "")], "mpcs_random": [("", "")], "batches": [("", "")]}


def test_files_and_columns(cohort):
    out = cohort["out"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{t}.parquet" for t in TABLES] + ["index.json"])  # no temporary files left
    t = cohort["tables"]
    assert list(t["pairs"].columns) == [
        "slide_id_a", "patch_a", "magnification_a", "label_a",
        "slide_id_b", "patch_b", "magnification_b", "label_b", "same"]
    assert list(t["triplets"].columns) == [
        f"{r}_{c}" for r in ("anchor", "positive", "negative")
        for c in ("slide_id", "patch", "magnification", "label")]
    assert list(t["cross_mag_pairs"].columns) == [
        "slide_id", "patch", "magnification_a", "magnification_b", "label"]
    for name in ("mpcs_fixed", "mpcs_ordered", "mpcs_random"):
        assert list(t[name].columns) == ["slide_id", "patch", "magnification_a",
                                         "magnification_b"]
    assert list(t["batches"].columns) == ["batch", "slide_id", "patch", "magnification",
                                          "label"]
    for name in ("patches_train", "patches_val", "patches_test"):
        assert list(t[name].columns) == ["slide_id", "patch", "label"]
    assert t["pairs"]["magnification_a"].dtype == np.float64
    assert t["pairs"]["patch_a"].dtype == np.int64
    assert t["pairs"]["label_a"].dtype == np.int8


def test_only_training_patients_are_referenced(cohort):
    splits, roles, t = cohort["splits"], cohort["roles"], cohort["tables"]
    patient_of = dict(zip(splits["slide_id"], splits["patient_id"], strict=True))
    train_patients = {patient_of[s] for s in roles["train"]}
    held_out = {patient_of[s] for s in roles["val"] | roles["test"]}
    assert train_patients and held_out and not train_patients & held_out
    known = cohort["labels"].set_index(["slide_id", "patch"])["label"]
    for name, sides in SIDES.items():
        assert len(t[name]) > 0, name
        for prefix, suffix in sides:
            r = refs(t[name], prefix, suffix)
            assert set(r["slide_id"]) <= roles["train"], name
            assert {patient_of[s] for s in r["slide_id"]} <= train_patients, name
            # every reference exists, with the label of the label table
            idx = pd.MultiIndex.from_frame(r)
            assert idx.isin(known.index).all(), name
            col = f"{prefix}label{suffix}"
            if col in t[name].columns:
                np.testing.assert_array_equal(t[name][col].to_numpy(),
                                              known.loc[idx].to_numpy())
    assert set(t["patches_val"]["slide_id"]) <= roles["val"]
    assert set(t["patches_test"]["slide_id"]) == roles["test"]
    # the test table holds every patch of the test slides, ambiguous included
    test_labels = cohort["labels"][cohort["labels"]["slide_id"].isin(roles["test"])]
    assert len(t["patches_test"]) == len(test_labels)
    assert (t["patches_test"]["label"] == -1).any()
    # the training table holds every labelled training patch
    train_labels = cohort["labels"][cohort["labels"]["slide_id"].isin(roles["train"])]
    assert len(t["patches_train"]) == (train_labels["label"] >= 0).sum()


def test_ambiguous_patches_never_labelled_samples(cohort):
    t = cohort["tables"]
    for name in ("patches_train", "patches_val", "pairs", "triplets", "cross_mag_pairs",
                 "batches"):
        label_cols = [c for c in t[name].columns if "label" in c]
        assert label_cols
        for col in label_cols:
            assert set(t[name][col].unique()) <= {0, 1}, (name, col)
    # ... but the self-supervised MPCS pairs use every training patch
    roles = cohort["roles"]
    train_labels = cohort["labels"][cohort["labels"]["slide_id"].isin(roles["train"])]
    for name in ("mpcs_fixed", "mpcs_ordered", "mpcs_random"):
        got = Counter(zip(t[name]["slide_id"], t[name]["patch"], strict=True))
        assert set(got) == set(zip(train_labels["slide_id"], train_labels["patch"],
                                   strict=True))
        assert set(got.values()) == {3}  # pairs_per_patch


def test_pairs_are_balanced_and_consistent(cohort):
    pairs = cohort["tables"]["pairs"]
    assert len(pairs) >= 4000
    assert len(pairs) == 4 * len(cohort["tables"]["patches_train"])  # every anchor, 4 each
    same = pairs["same"].to_numpy()
    assert abs(same.mean() - 0.5) < 0.05
    np.testing.assert_array_equal(same, (pairs["label_a"] == pairs["label_b"]).astype(int))
    # tumour is the minority, yet half the pairs of tumour anchors are tumour-tumour
    tumour = pairs[pairs["label_a"] == 1]
    assert abs(tumour["same"].mean() - 0.5) < 0.06
    assert not ((pairs["slide_id_a"] == pairs["slide_id_b"])
                & (pairs["patch_a"] == pairs["patch_b"])).any()
    for col in ("magnification_a", "magnification_b"):
        counts = pairs[col].value_counts()
        assert set(counts.index) == {float(m) for m in MAGS}
        assert chisquare(counts.to_numpy()).pvalue > 1e-3
    assert (pairs["magnification_a"] != pairs["magnification_b"]).any()


def test_triplets_classes(cohort):
    tr = cohort["tables"]["triplets"]
    assert len(tr) == 2 * len(cohort["tables"]["patches_train"])
    assert (tr["anchor_label"] == tr["positive_label"]).all()
    assert (tr["anchor_label"] != tr["negative_label"]).all()
    assert not ((tr["anchor_slide_id"] == tr["positive_slide_id"])
                & (tr["anchor_patch"] == tr["positive_patch"])).any()
    assert set(tr["anchor_label"]) == {0, 1}
    for role in ("anchor", "positive", "negative"):
        assert set(tr[f"{role}_magnification"]) == {float(m) for m in MAGS}


def test_cross_magnification_pairs(cohort):
    cm = cohort["tables"]["cross_mag_pairs"]
    assert len(cm) == 4 * len(cohort["tables"]["patches_train"])
    assert (cm["magnification_a"] != cm["magnification_b"]).all()
    assert len(set(zip(cm["magnification_a"], cm["magnification_b"], strict=True))) == 12


def test_mpcs_fixed_pair(cohort):
    fixed = cohort["tables"]["mpcs_fixed"]
    assert (fixed["magnification_a"] == 20.0).all()
    assert (fixed["magnification_b"] == 10.0).all()


def test_mpcs_random_pair(cohort):
    rnd = cohort["tables"]["mpcs_random"]
    a, b = rnd["magnification_a"].to_numpy(), rnd["magnification_b"].to_numpy()
    assert (a != b).all()
    unordered = Counter(zip(np.minimum(a, b), np.maximum(a, b), strict=True))
    expected = {tuple(sorted(p)) for p in combinations([float(m) for m in MAGS], 2)}
    assert set(unordered) == expected  # all six unordered pairs
    assert chisquare(list(unordered.values())).pvalue > 1e-3


def test_mpcs_ordered_pair(cohort):
    ordered = cohort["tables"]["mpcs_ordered"]
    pairs = Counter(zip(ordered["magnification_a"], ordered["magnification_b"], strict=True))
    assert set(pairs) == {(2.5, 5.0), (5.0, 10.0), (10.0, 20.0)}  # next finer only
    counts = np.array(list(pairs.values()))
    assert chisquare(counts).pvalue > 1e-3
    assert counts.max() / counts.min() < 1.15  # the public code's 2:1 would fail this


def test_batches_are_class_balanced(cohort):
    batches = cohort["tables"]["batches"]
    train = cohort["tables"]["patches_train"]
    minority = int(train["label"].value_counts().min())
    n_batches = math.ceil(minority / SAMPLES_PER_CLASS)
    assert batches["batch"].nunique() == n_batches == cohort["summary"]["counts"][
        "batches"]["batches"]
    per = batches.groupby(["batch", "label"]).size()
    assert (per == SAMPLES_PER_CLASS).all() and len(per) == 2 * n_batches
    assert not batches.duplicated(["batch", "slide_id", "patch"]).any()
    # the minority class uses each of its patches at least once
    minority_label = int(train["label"].value_counts().idxmin())
    used = batches[batches["label"] == minority_label]
    assert used.drop_duplicates(["slide_id", "patch"]).shape[0] == minority
    # the majority class is not repeated at all
    major = batches[batches["label"] != minority_label]
    assert not major.duplicated(["slide_id", "patch"]).any()


def test_index_json(cohort):
    summary = json.loads((cohort["out"] / "index.json").read_text())
    assert summary == cohort["summary"]
    assert summary["fold"] == FOLD and summary["seed"] == 0
    assert summary["magnifications"] == [2.5, 5.0, 10.0, 20.0]
    roles = cohort["roles"]
    assert summary["slides"] == {r: sorted(ids) for r, ids in roles.items()}
    assert not set(summary["patients"]["train"]) & set(summary["patients"]["test"])
    for name in TABLES:
        assert summary["counts"][name]["rows"] == len(cohort["tables"][name])
    pairs = cohort["tables"]["pairs"]
    assert summary["counts"]["pairs"]["same"] == int(pairs["same"].sum())
    assert summary["counts"]["patches_train"]["by_label"] == {
        "normal": int((cohort["tables"]["patches_train"]["label"] == 0).sum()),
        "tumour": int((cohort["tables"]["patches_train"]["label"] == 1).sum())}


def test_reproducible_bytes_and_seed_changes(cohort, tmp_path):
    splits, labels = cohort["splits"], cohort["root"] / "labels"
    again = tmp_path / "again"
    build_indices(splits, labels, again, FOLD, make_config())
    for name in [f"{t}.parquet" for t in TABLES] + ["index.json"]:
        assert (again / name).read_bytes() == (cohort["out"] / name).read_bytes(), name
    other = tmp_path / "other_seed"
    build_indices(splits, labels, other, FOLD, make_config(seed=1))
    for name in ("pairs", "triplets", "mpcs_ordered", "mpcs_random", "batches"):
        assert ((other / f"{name}.parquet").read_bytes()
                != (cohort["out"] / f"{name}.parquet").read_bytes()), name
    # the deterministic tables do not depend on the seed
    assert ((other / "mpcs_fixed.parquet").read_bytes()
            == (cohort["out"] / "mpcs_fixed.parquet").read_bytes())


def test_max_anchors_caps_the_labelled_tables(cohort, tmp_path):
    out = tmp_path / "capped"
    summary = build_indices(cohort["splits"], cohort["root"] / "labels", out, FOLD,
                            make_config(max_anchors=100))
    assert summary["anchors"] == 100
    pairs = pd.read_parquet(out / "pairs.parquet")
    assert len(pairs) == 400
    assert pairs.drop_duplicates(["slide_id_a", "patch_a"]).shape[0] == 100
    assert len(pd.read_parquet(out / "triplets.parquet")) == 200


def test_every_fold_builds_and_stays_inside_its_training_patients(cohort, tmp_path):
    splits = cohort["splits"]
    for fold in range(5):
        summary = build_indices(splits, cohort["root"] / "labels", tmp_path / str(fold),
                                fold, make_config(pairs_per_anchor=1, triplets_per_anchor=1))
        roles = fold_roles(splits, fold)
        pairs = pd.read_parquet(tmp_path / str(fold) / "pairs.parquet")
        assert set(pairs["slide_id_a"]) | set(pairs["slide_id_b"]) <= roles["train"]
        assert summary["slides"]["test"] == sorted(roles["test"])


def test_missing_label_table_is_named(cohort, tmp_path):
    labels = tmp_path / "labels"
    labels.mkdir()
    for p in (cohort["root"] / "labels").glob("*.parquet"):
        if p.name != "S07_0.parquet":
            (labels / p.name).write_bytes(p.read_bytes())
    with pytest.raises(LabelTableError) as err:
        build_indices(cohort["splits"], labels, tmp_path / "out", FOLD, make_config())
    assert "S07_0.parquet" in str(err.value) and "label" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_fixed_pair_must_be_configured(cohort, tmp_path):
    with pytest.raises(ConfigError, match="fixed_pair"):
        build_indices(cohort["splits"], cohort["root"] / "labels", tmp_path, FOLD,
                      make_config(mpcs={"fixed_pair": [40, 20]}))


def test_fixed_pair_refuses_one_magnification_twice(cohort, tmp_path):
    with pytest.raises(ConfigError, match="names 20x twice"):
        build_indices(cohort["splits"], cohort["root"] / "labels", tmp_path, FOLD,
                      make_config(mpcs={"fixed_pair": [20, 20.0]}))
    assert not tmp_path.joinpath("fold0").exists() and not list(tmp_path.iterdir())


def test_training_set_without_a_class(tmp_path):
    samples = write_cohort(tmp_path / "labels", n_patients=10)
    for p in (tmp_path / "labels").glob("*.parquet"):  # no tumour patch anywhere
        table = pd.read_parquet(p)
        table.loc[table["label"] == 1, "label"] = 0
        table.to_parquet(p, index=False)
    splits = make_splits(samples, folds=5, seed=0)
    with pytest.raises(IndexBuildError, match="fold 2.*tumour"):
        build_indices(splits, tmp_path / "labels", tmp_path / "out", 2, make_config())


def test_too_few_patches_for_a_batch(cohort, tmp_path):
    with pytest.raises(IndexBuildError, match="samples_per_class"):
        build_indices(cohort["splits"], cohort["root"] / "labels", tmp_path, FOLD,
                      make_config(batch={"classes": 2, "samples_per_class": 100000}))


def test_leaky_splits_are_refused(cohort, tmp_path):
    leaky = cohort["splits"].copy()
    two = leaky.groupby("patient_id").filter(lambda g: len(g) > 1)
    row = two.index[0]
    leaky.loc[row, "fold"] = (leaky.loc[row, "fold"] + 1) % 5
    with pytest.raises(LeakError):
        build_indices(leaky, cohort["root"] / "labels", tmp_path, FOLD, make_config())


def test_large_cohort_is_vectorised(tmp_path):
    """300k patches in one go: a per-anchor Python loop would take far longer."""
    import time

    rng = np.random.default_rng(0)
    labels = tmp_path / "labels"
    labels.mkdir()
    rows = []
    for p in range(15):
        sid = f"L{p:02d}"
        n = 20000
        label = rng.choice([-1, 0, 1], size=n, p=[0.1, 0.6, 0.3]).astype(np.int8)
        pd.DataFrame({"slide_id": sid, "patch": np.arange(n, dtype=np.int64),
                      "label": label}).to_parquet(labels / f"{sid}.parquet", index=False)
        rows.append({"slide_id": sid, "patient_id": f"Q{p:02d}",
                     "slide_label": "tumour"})
    splits = make_splits(pd.DataFrame(rows), folds=5, seed=0)
    start = time.perf_counter()
    summary = build_indices(splits, labels, tmp_path / "out", 0,
                            make_config(pairs_per_anchor=1))
    assert time.perf_counter() - start < 20
    assert summary["counts"]["pairs"]["rows"] > 150000
