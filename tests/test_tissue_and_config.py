from __future__ import annotations

import numpy as np
import pytest

from multimag.config import load_config, validate_config
from multimag.dataset.samples import load_samples
from multimag.errors import ConfigError, SamplesError
from multimag.wsi.tissue import TissueMask, TissueParams


def test_tissue_fractions_are_area_exact():
    mask = np.zeros((10, 10), bool)
    mask[2:6, 3:8] = True  # mask pixels are 4x4 level-0 pixels
    t = TissueMask(mask, np.zeros((10, 10, 3), np.uint8), 4.0, 4.0, 0.1, TissueParams())
    boxes = np.array([
        [12, 8, 32, 24],      # exactly the tissue block
        [10, 8, 32, 24],      # half a mask pixel of glass on the left
        [0, 0, 8, 8],         # glass
        [13, 9, 15, 11],      # inside
        [30, 20, 34, 26],     # 2x4 of 4x6 inside
    ], float)
    np.testing.assert_allclose(t.fractions(boxes), [1, 20 * 16 / (22 * 16), 0, 1, 8 / 24],
                               rtol=1e-6)


def test_tissue_mask_roundtrip(tmp_path):
    mask = np.random.default_rng(0).random((7, 9)) > 0.5
    t = TissueMask(mask, np.zeros((7, 9, 3), np.uint8), 16.0, 16.5, 0.2, TissueParams(mpp=8))
    t.save(tmp_path / "t.npz")
    back = TissueMask.load(tmp_path / "t.npz")
    assert (back.mask == mask).all() and back.scale_y == 16.5 and back.params.mpp == 8


def test_detect_tissue_on_real_slide(cmu_slide):
    from multimag.wsi.slide import open_slide
    from multimag.wsi.tissue import detect_tissue

    with open_slide(cmu_slide) as slide:
        t = detect_tissue(slide)
    # the CMU crop is mostly tissue with glass on both sides
    assert 0.3 < t.fraction < 0.8
    assert t.mask.shape == t.thumbnail.shape[:2]
    assert t.scale_x == t.scale_y == 8  # 4 um/px from 0.499 um/px by an integer factor
    white = t.thumbnail.mean(axis=2) > 225
    assert (t.mask & white).mean() < 0.1 * t.mask.mean()


def test_config_defaults_and_errors(tmp_path):
    cfg = load_config()
    assert cfg["magnifications"] == [40, 20, 10, 5] and cfg["patch_px"] == 224
    with pytest.raises(ConfigError, match="'store.shard_patches'"):
        validate_config({"store": {"shard_patches": 0}})
    with pytest.raises(ConfigError, match="unknown config key 'pach_px'"):
        validate_config({"pach_px": 1})
    bad = tmp_path / "bad.yaml"
    bad.write_text("mode: [unclosed\n")
    with pytest.raises(ConfigError, match="YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_embedded_configs_are_valid():
    from conftest import REPO

    for name in ("config.yaml", "config.production.yaml"):
        assert load_config(REPO / name)["resolution"]["base_mpp"] == 0.25


def _tsv(tmp_path, text):
    path = tmp_path / "samples.tsv"
    path.write_text(text)
    return path


def test_samples_paths_resolve_against_the_table(tmp_path):
    path = _tsv(tmp_path, "slide_id\tpatient_id\tpath\tmpp\n"
                          "a\tP1\tslides/a.svs\t\nb\tP1\t/abs/b.svs\t0.5\n")
    table = load_samples(path)
    assert table.loc["a", "path"] == str(tmp_path / "slides" / "a.svs")
    assert table.loc["b", "path"] == "/abs/b.svs"
    assert table.loc["a", "mpp"] is None and table.loc["b", "mpp"] == 0.5


@pytest.mark.parametrize("text,match", [
    ("slide_id\tpath\na\tx.svs\n", "missing column"),
    ("slide_id\tpatient_id\tpath\na\tP\tx.svs\na\tQ\ty.svs\n", "duplicate slide_id a"),
    ("slide_id\tpatient_id\tpath\tmpp\na\tP\tx.svs\tabc\n", "mpp 'abc'"),
    ("slide_id\tpatient_id\tpath\na/b\tP\tx.svs\n", "safe file name"),
    ("slide_id\tpatient_id\tpath\tslide_label\na\tP\tx.svs\tmaybe\n", "slide_label"),
])
def test_samples_errors(tmp_path, text, match):
    with pytest.raises(SamplesError, match=match):
        load_samples(_tsv(tmp_path, text))
