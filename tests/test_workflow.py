"""The Snakemake workflow: thin rules over the CLI, validated config, and a bad
slide that fails only its own jobs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
import zarr
from conftest import REPO, fixture_path

from multimag.demo.svs_writer import write_svs

SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]


def snakemake(workdir: Path, *args: str, config: dict | None = None
              ) -> subprocess.CompletedProcess:
    """Run the workflow on the embedded config, with ``config`` merged over it."""
    configfiles = [str(REPO / "config.yaml")]
    if config:
        extra = workdir / "override.yaml"
        extra.write_text(yaml.safe_dump(config))
        configfiles.append(str(extra))
    cmd = [*SNAKEMAKE, "--directory", str(workdir), "--configfile", *configfiles,
           "--cores", "2", *args]
    env = {**os.environ,
           "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


def _tissue_slide(path: Path, seed: int, mpp: float | None = 0.25) -> None:
    rng = np.random.default_rng(seed)
    img = np.full((1200, 1500, 3), 245, np.uint8)
    img[200:1000, 250:1250] = (200, 120, 180)
    img[200:1000, 250:1250] -= rng.integers(0, 40, (800, 1000, 1), dtype=np.uint8)
    write_svs(path, img, mpp=mpp, app_mag=40, tile=256)


@pytest.fixture()
def small_cohort(tmp_path) -> Path:
    slides = tmp_path / "cohort"
    slides.mkdir()
    _tissue_slide(slides / "good1.svs", 1)
    _tissue_slide(slides / "good2.svs", 2, mpp=None)
    shutil.copy(fixture_path("real", "broken.svs"), slides / "bad.svs")
    (slides / "samples.tsv").write_text(
        "slide_id\tpatient_id\tpath\tannotation\tmpp\tslide_label\n"
        "good1\tP1\tgood1.svs\t\t\ttumour\n"
        "good2\tP2\tgood2.svs\t\t0.25\tnormal\n"
        "bad\tP3\tbad.svs\t\t\tnormal\n")
    return slides / "samples.tsv"


def test_bad_slide_fails_only_its_own_jobs(tmp_path, small_cohort):
    res = snakemake(tmp_path, "--keep-going", "all",
                    config={"samples": str(small_cohort), "magnifications": [10, 5],
                            "patch_px": 64})
    assert res.returncode != 0
    out = tmp_path / "results"
    for good in ("good1", "good2"):
        store = zarr.open_group(out / "stores" / f"{good}.zarr", mode="r")
        assert store["mag_10x"].shape[0] > 0
        assert (out / "qc" / f"{good}.png").exists()
    assert zarr.open_group(out / "stores" / "good2.zarr").attrs["mpp_source"] == "override"
    # the good slides went on to their labels (slide-level labels here)
    assert set(pd.read_parquet(out / "labels" / "good1.parquet")["label"]) == {1}
    assert set(pd.read_parquet(out / "labels" / "good2.parquet")["label"]) == {0}
    assert not (out / "stores" / "bad.zarr").exists()
    assert not (out / "labels" / "bad.parquet").exists()
    log = (out / "logs" / "tissue" / "bad.log").read_text().strip().splitlines()
    assert "bad.svs" in log[-1] and "Fix:" in log[-1]


def test_config_typo_stops_the_run_naming_the_key(tmp_path, small_cohort):
    res = snakemake(tmp_path, "-n", "all", config={"samples": str(small_cohort), "patchpx": 64})
    assert res.returncode != 0
    assert "patchpx" in res.stdout + res.stderr


def test_samples_error_is_clear(tmp_path):
    tsv = tmp_path / "samples.tsv"
    tsv.write_text("slide_id\tpath\na\ta.svs\n")
    res = snakemake(tmp_path, "-n", "all", config={"samples": str(tsv)})
    assert res.returncode != 0
    assert "missing column(s) patient_id" in res.stdout + res.stderr


def _job_counts(res: subprocess.CompletedProcess) -> dict[str, int]:
    """Jobs per rule of a dry run ({} when there is nothing to do)."""
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    if "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:", 1)[1].split("total", 1)[0]
    return {m.group(1): int(m.group(2))
            for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def test_a_changed_setting_reruns_only_the_steps_that_use_it(tmp_path, demo_dataset):
    """Each rule's params carry the settings it depends on (config.STEP_KEYS): a new
    voting rule or thread count re-tiles nothing; a tissue threshold re-runs the
    slide steps from tissue on, and a new index seed only the indices."""
    work = tmp_path / "w"
    shutil.copytree(demo_dataset, work, symlinks=True)
    assert _job_counts(snakemake(work, "-n", "dataset")) == {}
    for change in ({"aggregate": {"rule": "mean"}}, {"train": {"threads": 3, "workers": 1}},
                   {"methods": ["ce_baseline"]}, {"threads": 1}):
        assert _job_counts(snakemake(work, "-n", "dataset", config=change)) == {}, change
    jobs = _job_counts(snakemake(work, "-n", "dataset", config={"index": {"seed": 5}}))
    assert jobs == {"index": 3, "dataset": 1}
    jobs = _job_counts(snakemake(work, "-n", "dataset", config={"tissue": {"min_fraction": 0.6}}))
    slides = len(list((work / "results" / "stores").glob("*.zarr")))
    assert jobs["tissue"] == jobs["tile"] == jobs["label"] == slides and jobs["index"] == 3


def test_a_rerun_gives_each_slide_the_models_of_its_fold(tmp_path, demo_dataset):
    """The fold of a slide is read from splits.tsv (rule split is a checkpoint). With
    the demo cohort (itself a checkpoint) and the folds already written, a new run
    must still give every predict job the models of the slide's test fold, never
    the checkpoint's placeholder."""
    work = tmp_path / "w"
    shutil.copytree(demo_dataset, work, symlinks=True)
    res = snakemake(work, "-n", "all")
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    folds = pd.read_csv(work / "results" / "splits.tsv", sep="\t", dtype=str)
    folds = dict(zip(folds["slide_id"], folds["fold"], strict=True))
    blocks = [b for b in re.split(r"\n(?=\[.*\d{4}\]\n)", out) if "rule predict:" in b]
    assert len(blocks) == len(folds)
    for block in blocks:
        inputs = re.search(r"^\s+input: (.*)$", block, re.M).group(1)
        assert "<TBD>" not in inputs, inputs
        slide = re.search(r"stores/([^/]+)\.zarr", inputs).group(1)
        models = re.findall(r"models/[\w.]+/fold(\d+)/model\.json", inputs)
        assert models and set(models) == {folds[slide]}, (slide, inputs)


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    """`snakemake all` on the embedded default config: demo cohort -> stores, QC,
    labels, patient folds, indices -> every method trained on every fold -> every
    slide predicted by the model that never saw its patient -> verdicts, metrics,
    figures and the report."""
    res = snakemake(tmp_path, "all")
    assert res.returncode == 0, res.stderr[-3000:]
    from multimag.config import configured_methods, load_config
    from multimag.dataset.samples import load_samples

    out = tmp_path / "results"
    config = load_config(out / "config.resolved.yaml")
    folds, methods = config["split"]["folds"], configured_methods(config)
    assert {f"ce_single_{m:g}x" for m in config["magnifications"]} <= set(methods)
    samples = load_samples(tmp_path / "demo" / "samples.tsv")
    assert len(samples) >= 8 and samples["patient_id"].nunique() >= 4
    for slide_id in samples.index:
        store = zarr.open_group(out / "stores" / f"{slide_id}.zarr", mode="r")
        assert store.attrs["slide_id"] == slide_id
        n = store["centers"].shape[0]
        assert n > 20, slide_id
        for m in ("20x", "10x", "5x", "2.5x"):
            assert store[f"mag_{m}"].shape == (n, 32, 32, 3)
        assert (out / "qc" / f"{slide_id}.png").stat().st_size > 1000
    labels = pd.concat([pd.read_parquet(out / "labels" / f"{s}.parquet") for s in samples.index])
    counts = labels["label"].value_counts()
    # the demo is built with about 1 tumour : 2 normal
    assert 0.2 < counts[1] / (counts[1] + counts[0]) < 0.5
    splits = pd.read_csv(out / "splits.tsv", sep="\t")
    assert splits.groupby("patient_id")["fold"].nunique().max() == 1
    assert sorted(splits["fold"].unique()) == list(range(folds))
    for fold in range(folds):
        pairs = pd.read_parquet(out / "indices" / f"fold{fold}" / "pairs.parquet")
        test_slides = set(splits.loc[splits["fold"] == fold, "slide_id"])
        assert len(pairs) > 100
        assert not test_slides & (set(pairs["slide_id_a"]) | set(pairs["slide_id_b"]))

    # no slide is predicted by a model that saw its patient: checked from the files
    patient = splits.set_index("slide_id")["patient_id"]
    for method in methods:
        for slide_id in samples.index:
            pred = pq.read_table(out / "predictions" / method / f"{slide_id}.parquet")
            meta = json.loads(pred.schema.metadata[b"multimag"])
            model = json.loads((tmp_path / meta["model"] / "model.json").read_text())
            index = tmp_path / model["index_dir"]
            seen = set()
            for table in ("patches_train", "patches_val"):
                seen |= set(pd.read_parquet(index / f"{table}.parquet")["slide_id"])
            assert patient[slide_id] not in {patient[s] for s in seen}, (method, slide_id)
            assert set(pred.column("fold").to_pylist()) == {model["fold"]}
            assert model["method"] == method
        assert (out / method / "patients.tsv").exists()
        for figure in ("roc.png", "confusion.png", "tsne.png"):
            assert (out / method / "figures" / figure).stat().st_size > 5000
        heatmaps = sorted(p.stem for p in (out / method / "figures" / "heatmaps").glob("*.png"))
        assert heatmaps == sorted(samples.index)

    # the results table: a row per configured method, every method well above chance
    summary = pd.read_csv(out / "summary.tsv", sep="\t").set_index("method")
    assert sorted(summary.index) == sorted(methods)
    assert (summary["balanced_acc_mean"] > 0.7).all(), summary["balanced_acc_mean"]
    assert summary.loc["smse_triplet", "balanced_acc_mean"] >= 0.85
    assert (out / "summary.md").read_text().count("|") > 20
    # every method's figures with a confidence interval from resampling patients
    for metric in ("acc", "balanced_acc", "roc_auc", "slide_accuracy", "patient_accuracy"):
        low, high = summary[f"{metric}_ci_low"], summary[f"{metric}_ci_high"]
        assert (low.notna() & (low <= high)).all(), (metric, low, high)
    coarsest = f"ce_single_{min(config['magnifications']):g}x"
    assert coarsest in (out / "summary.html").read_text(encoding="utf-8")
    # every method under every voting rule, judged against the diagnosis (the demo's
    # slide_label): every slide and patient scored, whatever its share of tumour patches
    voting = pd.read_csv(out / "voting.tsv", sep="\t")
    assert sorted(zip(voting["method"], voting["rule"], strict=True)) == sorted(
        (m, r) for m in methods for r in ("majority", "mean", "fraction"))
    assert (voting["slide_n_scored"] == len(samples)).all()
    assert (voting["patient_n_scored"] == samples["patient_id"].nunique()).all()
    for level in ("slide", "patient"):
        for metric in ("accuracy", "sensitivity", "specificity"):
            assert voting[f"{level}_{metric}"].between(0, 1).all(), (level, metric)
    assert voting["slide_roc_auc"].between(0, 1).all()
    assert (voting.groupby("method")["configured"].sum() == 1).all()
    assert (out / "voting.md").read_text(encoding="utf-8").count("| majority") == len(methods)

    # nothing left to do: a second run is a no-op; and the report builds
    again = snakemake(tmp_path, "-n", "all")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
    report = snakemake(tmp_path, "--report", "report.html")
    assert report.returncode == 0, report.stderr[-2000:]
    html = (tmp_path / "report.html").read_text(errors="replace")
    assert len(html) > 100_000 and "smse_triplet" in html
