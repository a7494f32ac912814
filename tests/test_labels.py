"""Per-patch labels: exact fractions on hand-built geometry, agreement of the three
annotation encodings of a demo slide, slide-label fallback, empty stores, Parquet."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import tifffile
import zarr

from multimag.config import load_config
from multimag.dataset.labels import (
    LABEL_AMBIGUOUS,
    LABEL_NORMAL,
    LABEL_TUMOUR,
    label_store,
    read_labels,
    write_labels,
)
from multimag.errors import ConfigError, SamplesError, StoreError
from multimag.wsi.geometry import mag_label
from multimag.wsi.store import SCHEMA_VERSION

LABELS = load_config()["labels"]
SLIDE = (3000, 2200)
MAGS = (20.0, 10.0, 5.0)
EXTENTS = (128.0, 256.0, 512.0)  # level-0 px of 64-px patches at 20x, 10x, 5x (0.25 um/px)
OUTER, HOLE = (1000, 600, 2600, 1800), (1600, 1000, 2000, 1400)


def fake_store(path, centers, mags=MAGS, extents=EXTENTS, size=SLIDE, slide_id="S1"):
    group = zarr.open_group(path, mode="w", zarr_format=3)
    centers = np.asarray(centers, np.int64).reshape(-1, 2)
    arr = group.create_array("centers", shape=centers.shape, dtype="int64",
                             chunks=(max(1, len(centers)), 2))
    if len(centers):
        arr[:] = centers
    group.attrs.update({
        "schema_version": SCHEMA_VERSION, "slide_id": slide_id, "mpp": 0.25,
        "level_dimensions": [list(size)], "magnifications": list(mags), "complete": True,
        "levels": [{"magnification": m, "array": f"mag_{mag_label(m)}", "extent_level0": e}
                   for m, e in zip(mags, extents, strict=True)],
    })
    return path


def grid_centers(step=97):
    xs, ys = np.meshgrid(np.arange(40, SLIDE[0] - 40, step), np.arange(40, SLIDE[1] - 40, step))
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def rect_overlap(boxes, r):
    ox = np.clip(np.minimum(boxes[:, 2], r[2]) - np.maximum(boxes[:, 0], r[0]), 0, None)
    oy = np.clip(np.minimum(boxes[:, 3], r[3]) - np.maximum(boxes[:, 1], r[1]), 0, None)
    return ox * oy


def expected_fraction(centers, extent):
    c = centers.astype(np.float64)
    boxes = np.concatenate([c - extent / 2, c + extent / 2], axis=1)
    return (rect_overlap(boxes, OUTER) - rect_overlap(boxes, HOLE)) / extent**2


def square(r):
    return [[r[0], r[1]], [r[2], r[1]], [r[2], r[3]], [r[0], r[3]], [r[0], r[1]]]


def write_annotation(tmp_path, fmt):
    if fmt == "geojson":
        path = tmp_path / "ann.geojson"
        path.write_text(json.dumps({"type": "FeatureCollection", "features": [{
            "type": "Feature", "properties": {"classification": {"name": "Tumor"}},
            "geometry": {"type": "Polygon", "coordinates": [square(OUTER), square(HOLE)]}}]}))
    elif fmt == "asap_xml":
        path = tmp_path / "ann.xml"
        ann = []
        for k, (group, r) in enumerate((("Tumor", OUTER), ("Exclusion", HOLE))):
            coords = "".join(f'<Coordinate Order="{i}" X="{x}" Y="{y}" />'
                             for i, (x, y) in enumerate(square(r)[:-1]))
            ann.append(f'<Annotation Name="A{k}" Type="Polygon" PartOfGroup="{group}" '
                       f'Color="#F4FA58"><Coordinates>{coords}</Coordinates></Annotation>')
        path.write_text('<?xml version="1.0"?><ASAP_Annotations><Annotations>'
                        + "".join(ann) + "</Annotations></ASAP_Annotations>")
    else:  # raster at downsample 4: the square edges fall on mask pixel edges
        path = tmp_path / "ann_mask.tif"
        mask = np.zeros((SLIDE[1] // 4, SLIDE[0] // 4), np.uint8)
        mask[OUTER[1] // 4:OUTER[3] // 4, OUTER[0] // 4:OUTER[2] // 4] = 1
        mask[HOLE[1] // 4:HOLE[3] // 4, HOLE[0] // 4:HOLE[2] // 4] = 0
        tifffile.imwrite(path, mask, tile=(128, 128), compression="zlib")
    return path


@pytest.mark.parametrize("fmt", ["geojson", "asap_xml", "raster"])
def test_square_with_hole_exact_at_every_magnification(tmp_path, fmt):
    centers = grid_centers()
    store = fake_store(tmp_path / "S1.zarr", centers)
    table = label_store(store, annotation=write_annotation(tmp_path, fmt), slide_label=None,
                        labels_config=LABELS)
    assert list(table.columns) == ["slide_id", "patch", "label", "tumour_fraction_20x",
                                   "tumour_fraction_10x", "tumour_fraction_5x", "source"]
    assert (table["source"] == fmt).all() and (table["slide_id"] == "S1").all()
    np.testing.assert_array_equal(table["patch"], np.arange(len(centers)))
    for m, extent in zip(MAGS, EXTENTS, strict=True):
        want = expected_fraction(centers, extent)
        np.testing.assert_allclose(table[f"tumour_fraction_{mag_label(m)}"], want, atol=1e-3)
        assert 0 < want.mean() < 1
    # the rule reads the finest field: >= 0.8 tumour, 0 normal, otherwise ambiguous
    f20 = expected_fraction(centers, EXTENTS[0])
    want = np.where(f20 >= 0.8, LABEL_TUMOUR, np.where(f20 <= 0, LABEL_NORMAL, LABEL_AMBIGUOUS))
    np.testing.assert_array_equal(table["label"], want)
    assert set(np.unique(want)) == {-1, 0, 1}
    # a coarser rule magnification and other thresholds
    cfg = {**LABELS, "rule_magnification": 5, "tumour_min": 0.5, "normal_max": 0.1}
    table5 = label_store(store, annotation=write_annotation(tmp_path, fmt), labels_config=cfg)
    f5 = expected_fraction(centers, EXTENTS[2])
    want5 = np.where(f5 >= 0.5, 1, np.where(f5 <= 0.1, 0, -1))
    np.testing.assert_array_equal(table5["label"], want5)
    assert table5.attrs["multimag"]["rule_magnification"] == 5.0


# ---------------------------------------------------------------------------- demo slide


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    from multimag.demo.cohort import make_demo_cohort
    from multimag.wsi.patch_plan import TilingConfig
    from multimag.wsi.slide import open_slide
    from multimag.wsi.tiling import tile_slide

    root = tmp_path_factory.mktemp("demo")
    make_demo_cohort(root, seed=0, slide_ids=["P01_A"])
    slide = open_slide(root / "slides" / "P01_A.svs")
    store = root / "P01_A.zarr"
    tile_slide(slide, store, TilingConfig(magnifications=(20.0, 10.0, 5.0), patch_px=64,
                                          stride_px=32, min_tissue=0.25))
    return store, root / "annotations"


def test_demo_geojson_xml_and_raster_agree(demo_store):
    store, ann = demo_store
    tables = {ext: label_store(store, annotation=ann / f"P01_A{ext}", slide_label=None,
                               labels_config=LABELS)
              for ext in (".geojson", ".xml", "_mask.tif")}
    geo, xml, raster = tables.values()
    assert len(geo) > 500
    assert set(geo["label"]) == {-1, 0, 1}  # a slide with tumour, normal and borders
    assert (geo["source"] == "geojson").all() and (xml["source"] == "asap_xml").all()
    assert (raster["source"] == "raster").all()
    cols = [c for c in geo.columns if c.startswith("tumour_fraction_")]
    assert cols == ["tumour_fraction_20x", "tumour_fraction_10x", "tumour_fraction_5x"]
    # the same polygons (holes as polygons or as "Exclusion" polygons): identical
    np.testing.assert_allclose(geo[cols], xml[cols], atol=1e-6)
    np.testing.assert_array_equal(geo["label"], xml["label"])
    # the raster is the polygons rasterised at downsample 4: edge pixels differ only
    assert np.abs(geo[cols].to_numpy() - raster[cols].to_numpy()).max() < 0.05
    assert (geo["label"] == raster["label"]).mean() >= 0.97
    # the demo's tumour is a real share of the tissue
    assert 0.1 < (geo["label"] == 1).mean() < 0.9


# ---------------------------------------------------------------------------- fallbacks


@pytest.mark.parametrize("slide_label, value", [("tumour", 1), ("normal", 0)])
def test_slide_label_fallback(tmp_path, slide_label, value):
    store = fake_store(tmp_path / "S1.zarr", grid_centers(400))
    table = label_store(store, annotation="", slide_label=slide_label, labels_config=LABELS)
    assert (table["label"] == value).all() and table["label"].dtype == np.int8
    assert (table["source"] == "slide_label").all()
    for col in ("tumour_fraction_20x", "tumour_fraction_10x", "tumour_fraction_5x"):
        assert table[col].dtype == np.float32 and table[col].isna().all()
    assert table.attrs["multimag"]["counts"][slide_label] == len(table)


def test_neither_annotation_nor_slide_label_is_a_clear_error(tmp_path):
    store = fake_store(tmp_path / "S1.zarr", grid_centers(400))
    with pytest.raises(SamplesError, match="samples.tsv") as err:
        label_store(store, annotation=None, slide_label=None, labels_config=LABELS)
    assert "'S1'" in str(err.value)


def test_bad_rules_and_missing_store(tmp_path):
    store = fake_store(tmp_path / "S1.zarr", grid_centers(400))
    with pytest.raises(ConfigError, match="rule_magnification 40x"):
        label_store(store, slide_label="tumour", labels_config={**LABELS,
                                                                "rule_magnification": 40})
    with pytest.raises(ConfigError, match="normal_max"):
        label_store(store, slide_label="tumour", labels_config={**LABELS, "normal_max": 0.9})
    with pytest.raises(StoreError):
        label_store(tmp_path / "missing.zarr", slide_label="tumour", labels_config=LABELS)


def test_column_names_follow_mag_label(tmp_path):
    store = fake_store(tmp_path / "S1.zarr", grid_centers(400), mags=(10.0, 2.5),
                       extents=(256.0, 1024.0))
    table = label_store(store, annotation=write_annotation(tmp_path, "geojson"),
                        labels_config=LABELS)
    assert [c for c in table.columns if c.startswith("tumour_")] == [
        "tumour_fraction_10x", "tumour_fraction_2.5x"]


# ---------------------------------------------------------------------------- output


EXPECTED_TYPES = {"slide_id": "string", "patch": "int64", "label": "int8",
                  "tumour_fraction_20x": "float", "tumour_fraction_10x": "float",
                  "tumour_fraction_5x": "float", "source": "string"}


def check_parquet(path, n):
    schema = pq.read_schema(path)
    assert schema.names == list(EXPECTED_TYPES)
    for name, kind in EXPECTED_TYPES.items():
        assert kind in str(schema.field(name).type), (name, schema.field(name).type)
    meta = json.loads(schema.metadata[b"multimag"])
    table, meta2 = read_labels(path)
    assert len(table) == n and meta == meta2
    return table, meta


@pytest.mark.parametrize("annotated", [True, False])
def test_empty_store_gives_a_valid_empty_table(tmp_path, annotated):
    store = fake_store(tmp_path / "S1.zarr", np.zeros((0, 2)))
    table = label_store(store, annotation=write_annotation(tmp_path, "asap_xml") if annotated
                        else None, slide_label=None if annotated else "normal",
                        labels_config=LABELS)
    assert len(table) == 0 and list(table.columns) == list(EXPECTED_TYPES)
    assert table["patch"].dtype == np.int64 and table["label"].dtype == np.int8
    out = write_labels(table, tmp_path / "labels" / "S1.parquet", {"slide_id": "S1"})
    check_parquet(out, 0)


def test_write_labels_roundtrip_with_metadata(tmp_path):
    store = fake_store(tmp_path / "S1.zarr", grid_centers())
    table = label_store(store, annotation=write_annotation(tmp_path, "geojson"),
                        labels_config=LABELS)
    out = tmp_path / "out" / "S1.parquet"
    write_labels(table, out, {"run": "test", "slide_id": "S1"})
    assert sorted(p.name for p in out.parent.iterdir()) == ["S1.parquet"]  # no temp left
    back, meta = check_parquet(out, len(table))
    assert meta["run"] == "test" and meta["slide_id"] == "S1"
    assert meta["source"] == "geojson" and meta["tumour_min"] == 0.8
    assert sum(meta["counts"].values()) == len(table)
    pd.testing.assert_frame_equal(back.reset_index(drop=True), table, check_dtype=False)
    assert back["label"].dtype == np.int8 and back["tumour_fraction_20x"].dtype == np.float32
    # an overwrite replaces the file atomically
    write_labels(table.iloc[:5], out, {})
    assert len(read_labels(out)[0]) == 5
