from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MULTIMAG_SHARED", REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures"


def fixture_path(*parts: str) -> Path:
    """A file from ../shared/fixtures, or skip the test when the folder is absent."""
    path = FIXTURES.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared fixture {path} is not available")
    return path


@pytest.fixture(scope="session")
def cmu_slide() -> Path:
    return fixture_path("real", "cmu-1-small-region.svs")


# -- a synthetic slide with fiducial marks at known level-0 positions ----------------------

FIDUCIAL_SIZE = 25  # marks cover [m - 12, m + 13): centroid at m + 0.5


def fiducial_positions(width: int, height: int) -> np.ndarray:
    xs = np.arange(150, width - 150, 397)
    ys = np.arange(170, height - 170, 383)
    return np.array([(x, y) for y in ys for x in xs], dtype=np.int64)


@pytest.fixture(scope="session")
def fiducial_slide(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """Non-square, odd-sized Aperio-like SVS (levels 1/4/16, 240-px tiles), 0.25 um/px,
    pink 'tissue' everywhere with black square marks."""
    from multimag.demo.svs_writer import write_svs

    width, height = 4801, 3603
    rng = np.random.default_rng(7)
    image = np.empty((height, width, 3), np.uint8)
    image[:] = (225, 160, 200)
    image += rng.integers(0, 6, size=(height, width, 1), dtype=np.uint8)
    marks = fiducial_positions(width, height)
    h = FIDUCIAL_SIZE // 2
    for x, y in marks:
        image[y - h:y + h + 1, x - h:x + h + 1] = 0
    path = tmp_path_factory.mktemp("fiducial") / "fiducial.svs"
    write_svs(path, image, mpp=0.25, app_mag=40, tile=240, downsamples=(1, 4, 16), quality=95)
    return path, marks


def full_tissue(slide):
    """A tissue mask that keeps every grid cell (the co-registration test wants all)."""
    from multimag.wsi.tissue import TissueMask, TissueParams

    lv = slide.pyramid.levels[-1]
    return TissueMask(np.ones((lv.height, lv.width), bool),
                      np.full((lv.height, lv.width, 3), 200, np.uint8),
                      lv.scale_x, lv.scale_y, 0.0, TissueParams())


# -- predictions written by hand name the index of their model -----------------------------

def fake_model_index(root: Path, slide_id: str, fold: int) -> dict:
    """A one-file index folder under ``root`` whose test set holds the slide, and the
    predictions metadata that names it (``index_dir``, ``index_sha256``)."""
    import json

    from multimag.dataset.index_digest import index_digest

    folder = root / f"{slide_id}_fold{fold}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "index.json").write_text(json.dumps(
        {"fold": fold, "slides": {"train": [], "val": [], "test": [slide_id]},
         "files": ["index.json"]}))
    return {"index_dir": str(folder), "index_sha256": index_digest(folder)}


# -- the demo cohort up to its training indices, built once per test session ---------------

def run_workflow(workdir: Path, *args: str, config: dict | None = None):
    """``snakemake`` on the embedded config.yaml (``config`` merged over it) in
    ``workdir``; the multimag console script of this interpreter on PATH."""
    import subprocess
    import sys

    import yaml

    configfiles = [str(REPO / "config.yaml")]
    if config:
        extra = workdir / "override.yaml"
        extra.write_text(yaml.safe_dump(config))
        configfiles.append(str(extra))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(workdir), "--configfile", *configfiles, "--cores", "2", *args]
    env = {**os.environ,
           "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory) -> Path:
    """The embedded demo config's ``dataset`` target (demo slides, stores, labels,
    folds, indices; about a minute), shared by the xdist workers through a lock.
    Returns the workflow directory (``demo/``, ``results/``)."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:  # the workers' common folder of this session
        root = root.parent
    workdir = root / "demo_dataset"
    with FileLock(str(root / "demo_dataset.lock")):
        done = workdir / "DONE"
        if not done.exists():
            workdir.mkdir(exist_ok=True)
            res = run_workflow(workdir, "dataset")
            assert res.returncode == 0, res.stderr[-3000:]
            done.touch()
    return workdir


# -- fast training on the demo cohort's fold 0 ----------------------------------------------

#: small training settings: a few seconds per model on the CPU
QUICK = {"train": {"epochs": 2, "samples_per_epoch": 256, "val_max_patches": 120,
                   "workers": 0, "batch_size": 32},
         "model": {"backbone": "pnn", "pnn_width": 4},
         "mpcs": {"projection_dim": 8, "projection_hidden": 16}}


def quick_config(demo_dataset: Path, **overrides) -> dict:
    """The demo dataset's resolved config with QUICK, then ``overrides``, merged
    over its sections."""
    from multimag.config import load_config

    config = load_config(demo_dataset / "results" / "config.resolved.yaml")
    for section, values in {**QUICK, **overrides}.items():
        config[section] = {**config[section], **values}
    return config


@pytest.fixture(scope="module")
def fold0(demo_dataset):
    """Fold 0 of the demo dataset: its index, the stores, the labels, a test slide
    and the QUICK config."""
    import pandas as pd

    results = demo_dataset / "results"
    splits = pd.read_csv(results / "splits.tsv", sep="\t")
    test_slide = splits.loc[splits["fold"] == 0, "slide_id"].iloc[0]
    return {"index": results / "indices" / "fold0", "stores": results / "stores",
            "labels": results / "labels", "test_slide": test_slide,
            "config": quick_config(demo_dataset)}
