"""Bad input: one clear line on stderr naming the slide, the file and the fix,
a non-zero exit, and no store (nor temporary store) left behind."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import fixture_path

from multimag.demo.svs_writer import write_svs


def run_tile(slide: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "multimag.cli", "tile", str(slide), str(out),
                           "--magnifications", "20", "10", "5", "--patch-px", "64", *extra],
                          capture_output=True, text=True)


def assert_clean_failure(res: subprocess.CompletedProcess, out: Path, slide: Path,
                         *words: str) -> str:
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    line = lines[0]
    assert slide.name in line and "Fix:" in line, line
    for word in words:
        assert word in line, line
    assert "Traceback" not in res.stderr
    assert list(out.parent.glob("*.zarr*")) == [] and list(out.parent.glob(".*")) == []
    return line


def _tissue_image(h=900, w=1100, value=(210, 140, 190)):
    img = np.full((h, w, 3), 245, np.uint8)
    img[150:750, 200:900] = value
    return img


@pytest.fixture()
def out(tmp_path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    return d / "s.zarr"


def test_missing_file(tmp_path, out):
    slide = tmp_path / "nope.svs"
    assert_clean_failure(run_tile(slide, out), out, slide, "does not exist")


def test_zero_byte_file(tmp_path, out):
    slide = tmp_path / "empty.svs"
    slide.touch()
    assert_clean_failure(run_tile(slide, out), out, slide, "empty")


@pytest.mark.parametrize("reader", ["tiffslide", "openslide"])
@pytest.mark.parametrize("keep", [0.5, 0.97])
def test_truncated_svs(tmp_path, out, reader, keep):
    full = tmp_path / "full.svs"
    write_svs(full, _tissue_image(1800, 2200), mpp=0.25, app_mag=40, tile=256)
    data = full.read_bytes()
    slide = tmp_path / "truncated.svs"
    slide.write_bytes(data[: int(len(data) * keep)])
    assert_clean_failure(run_tile(slide, out, "--reader", reader), out, slide)


@pytest.mark.parametrize("reader", ["tiffslide", "openslide"])
@pytest.mark.parametrize("name", [("real", "broken.svs"), ("openslide", "unopenable.tiff"),
                                  ("openslide", "unreadable.svs")])
def test_broken_fixtures(out, reader, name):
    slide = fixture_path(*name)
    assert_clean_failure(run_tile(slide, out, "--reader", reader), out, slide)


def test_no_mpp_and_no_override(tmp_path, out):
    slide = tmp_path / "nompp.svs"
    write_svs(slide, _tissue_image(), mpp=None, app_mag=40, tile=256)
    assert_clean_failure(run_tile(slide, out), out, slide, "mpp")
    # the override makes it work
    res = run_tile(slide, out, "--mpp", "0.25")
    assert res.returncode == 0, res.stderr
    assert zarr.open_group(out, mode="r").attrs["mpp_source"] == "override"


def test_magnification_finer_than_the_scan(cmu_slide, out):
    res = subprocess.run([sys.executable, "-m", "multimag.cli", "tile", str(cmu_slide),
                          str(out), "--magnifications", "40", "20"],
                         capture_output=True, text=True)
    assert_clean_failure(res, out, cmu_slide, "40x", "allow_upsample")


def test_upsampling_when_allowed(cmu_slide, tmp_path, out):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("allow_upsample: true\nmagnifications: [40, 20]\npatch_px: 64\n")
    res = subprocess.run([sys.executable, "-m", "multimag.cli", "tile", str(cmu_slide),
                          str(out), "--config", str(cfg)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    levels = zarr.open_group(out, mode="r").attrs["levels"]
    assert levels[0]["upsampled"] is True and levels[1]["upsampled"] is False


def test_meaningless_72dpi_mpp_is_explained(out):
    slide = fixture_path("openslide", "boxes.tiff")
    line = assert_clean_failure(run_tile(slide, out), out, slide, "352.778")
    assert "--mpp" in line


def test_slide_without_tissue_writes_valid_empty_store(tmp_path, out):
    slide = tmp_path / "blank.svs"
    write_svs(slide, np.full((900, 1100, 3), 244, np.uint8), mpp=0.25, app_mag=40, tile=256)
    res = run_tile(slide, out)
    assert res.returncode == 0, res.stderr
    assert "no tissue" in res.stderr
    store = zarr.open_group(out, mode="r")
    assert store["centers"].shape == (0, 2)
    assert store["mag_20x"].shape == (0, 64, 64, 3)
    assert store.attrs["complete"] is True


def test_failure_does_not_touch_an_existing_store(tmp_path, out, cmu_slide):
    """Re-running a slide that has since become unreadable keeps the old store."""
    good = tmp_path / "s.svs"
    shutil.copy(cmu_slide, good)
    assert run_tile(good, out).returncode == 0
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    good.write_bytes(b"not a slide any more")
    res = run_tile(good, out)
    assert res.returncode != 0
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert [p.name for p in out.parent.iterdir()] == ["s.zarr"]


def test_bad_config_names_the_key(tmp_path, out, cmu_slide):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("tissue:\n  min_fractoin: 0.3\n")
    res = subprocess.run([sys.executable, "-m", "multimag.cli", "tile", str(cmu_slide),
                          str(out), "--config", str(cfg)], capture_output=True, text=True)
    assert res.returncode != 0 and "tissue.min_fractoin" in res.stderr
