"""QuPath export: one square tile per patch at the finest field, the prediction as
the class, P(tumour) as a measurement; it reads back as an annotation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely
from test_plots import grid_centers, make_predictions, write_predictions

from multimag.dataset.annotations import load_annotation
from multimag.errors import PlotError
from multimag.evaluate.qupath import export_geojson
from multimag.learn.predictions import read_slide_predictions


@pytest.fixture()
def predictions(tmp_path):
    centers = grid_centers(6, 4)  # stride 128 = the 20x extent: tiles touch, never overlap
    labels = np.array([1, 0, -1, 0] * 6, np.int8)
    df = make_predictions(centers, labels, slide_id="S1", seed=2)
    return read_slide_predictions(write_predictions(df, tmp_path / "S1.parquet", slide_id="S1"))


def test_one_square_tile_per_patch_with_prediction_and_probability(predictions, tmp_path):
    path = export_geojson(predictions, tmp_path / "S1.geojson", None, "S1")
    doc = json.loads(path.read_text())
    fused = predictions[predictions["view"] == "fused"].set_index("patch")
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == len(fused)
    assert doc["multimag"]["extent_level0"] == 128.0
    for feature in doc["features"]:
        props = feature["properties"]
        row = fused.loc[props["measurements"]["patch"]]
        ring = np.array(feature["geometry"]["coordinates"][0])
        assert ring.shape == (5, 2) and (ring[0] == ring[-1]).all()
        np.testing.assert_allclose(ring[:4].mean(0), [row["x"], row["y"]])
        np.testing.assert_allclose(np.ptp(ring, 0), [128.0, 128.0])
        assert props["classification"]["name"] == ("Tumor" if row["pred"] == 1 else "Normal")
        assert props["measurements"]["prob_tumour"] == pytest.approx(float(row["prob_tumour"]))
        assert props["measurements"]["label"] == row["label"]
    ids = [f["id"] for f in doc["features"]]
    assert len(set(ids)) == len(ids)
    again = export_geojson(predictions, tmp_path / "again.geojson", None, "S1")
    assert again.read_bytes() == path.read_bytes()  # ids and order are reproducible


def test_the_export_reads_back_as_an_annotation(predictions, tmp_path):
    path = export_geojson(predictions, tmp_path / "S1.geojson", None, "S1")
    ann = load_annotation(path, {"tumour": ["Tumor"], "normal": ["Normal"]}, slide_id="S1")
    fused = predictions[predictions["view"] == "fused"]
    n_tumour = int((fused["pred"] == 1).sum())
    assert shapely.area(ann.geometries["tumour"]) == pytest.approx(n_tumour * 128.0**2)
    assert shapely.area(ann.geometries["normal"]) == pytest.approx(
        (len(fused) - n_tumour) * 128.0**2)


def test_bad_tables_are_refused(predictions, tmp_path):
    other = predictions.copy()
    other.loc[other.index[0], "slide_id"] = "S2"
    with pytest.raises(PlotError, match="other slides"):
        export_geojson(other, tmp_path / "x.geojson", None, "S1")
    broken = predictions.copy()
    broken.loc[broken["view"] == "fused", "prob_tumour"] = np.nan
    with pytest.raises(PlotError, match="non-finite"):
        export_geojson(broken, tmp_path / "x.geojson", None, "S1")
    assert not (tmp_path / "x.geojson").exists()
