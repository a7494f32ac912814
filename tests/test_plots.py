"""Evaluation figures: the numbers behind each picture (heatmap raster, ROC mean,
confusion counts, t-SNE selection) checked exactly, then each plot function writes
a real PNG (opens, non-trivial content, atomic), on synthetic tables and on the demo
cohort's stores, labels, tissue masks and annotations when results/ is present."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import shapely
from conftest import fake_model_index
from PIL import Image
from sklearn.metrics import roc_auc_score

from multimag.dataset.annotations import load_annotation
from multimag.dataset.regions import Annotation, RasterMask
from multimag.errors import PlotError, PredictionsError
from multimag.evaluate.heatmaps import heatmap_array, plot_heatmap
from multimag.evaluate.patch_plots import (
    confusion_counts,
    plot_confusion,
    plot_roc,
    plot_tsne,
    predictions_by_fold,
    roc_summary,
    tsne_points,
)
from multimag.learn.predictions import finest_extent, read_slide_predictions
from multimag.wsi.tissue import TissueMask, TissueParams

MAGS = (20.0, 10.0, 5.0, 2.5)
EXTENTS = {"20x": 128.0, "10x": 256.0, "5x": 512.0, "2.5x": 1024.0}

# -- predictions in the schema of docs/evaluate.md -----------------------------------------

SCHEMA = pa.schema([
    ("slide_id", pa.string()), ("patient_id", pa.string()), ("fold", pa.int16()),
    ("patch", pa.int64()), ("x", pa.int64()), ("y", pa.int64()), ("label", pa.int8()),
    ("view", pa.string()), ("prob_tumour", pa.float32()), ("pred", pa.int8()),
    ("embedding", pa.list_(pa.float32())),
])


def make_predictions(centers, labels, *, slide_id="S1", patient_id="P1", fold=0, seed=0,
                     mags=MAGS, dim=12, noise=0.25) -> pd.DataFrame:
    """Per-magnification probabilities = label-derived noise (ambiguous: 0.5 +- noise),
    fused = their mean; embeddings = class centre + noise."""
    rng = np.random.default_rng(seed)
    centers = np.asarray(centers, np.int64).reshape(-1, 2)
    labels = np.asarray(labels, np.int8)
    base = np.where(labels == 1, 0.75, np.where(labels == 0, 0.25, 0.5))
    rows = []
    per_mag = []
    for m in mags:
        p = np.clip(base + rng.normal(0, noise, len(labels)), 0, 1).astype(np.float32)
        per_mag.append(p)
        emb = (labels[:, None] * 2.0 + rng.normal(0, 0.5, (len(labels), dim))).astype(np.float32)
        for k in range(len(labels)):
            rows.append((f"{m:g}x", k, p[k], list(emb[k])))
    fused = np.mean(per_mag, axis=0).astype(np.float32)
    rows += [("fused", k, fused[k], None) for k in range(len(labels))]
    view, patch, prob, emb = zip(*rows, strict=True)
    patch = np.asarray(patch, np.int64)
    prob = np.asarray(prob, np.float32)
    return pd.DataFrame({
        "slide_id": slide_id, "patient_id": patient_id,
        "fold": np.full(len(patch), fold, np.int16), "patch": patch,
        "x": centers[patch, 0], "y": centers[patch, 1], "label": labels[patch],
        "view": list(view), "prob_tumour": prob, "pred": (prob >= 0.5).astype(np.int8),
        "embedding": list(emb),
    })


def write_predictions(df: pd.DataFrame, path: Path, **meta) -> Path:
    table = pa.Table.from_pandas(df, schema=SCHEMA, preserve_index=False)
    info = {"method": "smse", "fold": int(df["fold"].iloc[0]),
            "slide_id": str(df["slide_id"].iloc[0]), "magnifications": list(MAGS),
            "patch_px": 64, "extent_level0": EXTENTS, "store_schema_version": 1,
            "model": "models/smse/fold0", "config_sha256": "0" * 64,
            **fake_model_index(Path(path).parent / "indices", str(df["slide_id"].iloc[0]),
                               int(df["fold"].iloc[0])), **meta}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           b"multimag": json.dumps(info).encode()})
    pq.write_table(table, path)
    return path


def grid_centers(cols: int, rows: int, stride: int = 128, offset: int = 64) -> np.ndarray:
    return np.array([(offset + stride * i, offset + stride * j)
                     for j in range(rows) for i in range(cols)], np.int64)


def assert_png(path: Path, min_colours: int = 20) -> np.ndarray:
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as im:
        assert im.format == "PNG"
        rgb = np.asarray(im.convert("RGB"))
    assert rgb.shape[0] > 100 and rgb.shape[1] > 100
    colours = np.unique(rgb.reshape(-1, 3), axis=0)
    assert len(colours) >= min_colours, f"{path.name}: only {len(colours)} colours"
    assert not list(path.parent.glob(f".{path.name}.*")), "temporary file left behind"
    return rgb


def tissue_file(tmp_path: Path, h: int = 40, w: int = 60, scale: float = 16.0) -> Path:
    rng = np.random.default_rng(3)
    thumb = np.full((h, w, 3), 240, np.uint8)
    thumb[5:35, 5:55] = (200, 120, 180)
    thumb += rng.integers(0, 10, (h, w, 1), dtype=np.uint8)
    mask = np.zeros((h, w), bool)
    mask[5:35, 5:55] = True
    path = tmp_path / "S1.npz"
    TissueMask(mask, thumb, scale, scale, 0.1, TissueParams()).save(path)
    return path


# -- tables --------------------------------------------------------------------------------


def test_finest_extent_takes_the_largest_magnification_or_the_metadata(tmp_path):
    assert finest_extent({"2.5x": 1024.0, "20x": 128.0, "5x": 512.0}) == 128.0
    assert finest_extent(300) == 300.0
    df = make_predictions(grid_centers(3, 2), [1, 0, -1, 1, 0, 1])
    path = write_predictions(df, tmp_path / "S1.parquet")
    back = read_slide_predictions(path)
    assert back.attrs["multimag"]["extent_level0"] == EXTENTS
    assert finest_extent(None, back) == 128.0
    for bad in (None, {}, {"fused": 3.0}, -5.0, float("nan")):
        with pytest.raises(PlotError):
            finest_extent(bad, df)


def test_read_predictions_keeps_the_schema(tmp_path):
    df = make_predictions(grid_centers(4, 3), np.tile([1, 0, -1], 4))
    back = read_slide_predictions(write_predictions(df, tmp_path / "S1.parquet"))
    assert len(back) == len(df) == 12 * 5
    assert (back["view"] == "fused").sum() == 12
    assert back.loc[back["view"] == "fused", "embedding"].isna().all()
    assert len(back["embedding"].iloc[0]) == 12
    folds = predictions_by_fold(pd.concat([back, back.assign(fold=np.int16(3))]))
    assert sorted(folds) == [0, 3] and len(folds[3]) == len(back)
    with pytest.raises(PredictionsError, match="cannot read"):
        read_slide_predictions(tmp_path / "missing.parquet")


# -- heatmap raster ------------------------------------------------------------------------


def test_heatmap_array_paints_each_patch_field_and_nothing_else():
    centers = grid_centers(4, 3)  # 128-px grid, squares [128 i, 128 (i + 1))
    labels = np.array([1, 0, -1, 1, 0, 0, 1, -1, 1, 0, 1, 1])
    df = make_predictions(centers, labels)
    fused = df[df["view"] == "fused"].set_index("patch")["prob_tumour"]
    heat = heatmap_array(df, (30, 40), 16.0, 128.0)
    assert heat.shape == (30, 40)
    for k, (x, y) in enumerate(centers):
        i0, j0 = (y - 64) // 16, (x - 64) // 16  # an 8 x 8 block of thumbnail pixels
        block = heat[i0:i0 + 8, j0:j0 + 8]
        np.testing.assert_allclose(block, fused[k], rtol=1e-6)  # ambiguous painted too
    assert np.isfinite(heat).sum() == len(centers) * 64
    assert np.isnan(heat[24:, :]).all() and np.isnan(heat[:, 32:]).all()


def test_heatmap_array_averages_overlaps_and_keeps_tiny_patches():
    df = pd.DataFrame({"patch": [0, 1, 2, 2], "x": [100, 140, 1000, 1000],
                       "y": [100, 100, 1000, 1000], "label": [1, 0, 1, 1],
                       "view": ["fused", "fused", "fused", "20x"],
                       "prob_tumour": [1.0, 0.0, 0.3, 0.9]})
    heat = heatmap_array(df, (100, 100), (10.0, 20.0), 80.0)
    # patch 0: x [60, 140) -> columns 6..13 (pixel centres (j + 0.5) * 10 inside),
    # y [60, 140) -> rows 3..6; patch 1: columns 10..17; overlap 10..13 is the mean
    row = heat[4]
    np.testing.assert_array_equal(row[6:10], 1.0)
    np.testing.assert_allclose(row[10:14], 0.5)
    np.testing.assert_array_equal(row[14:18], 0.0)
    assert np.isnan(row[5]) and np.isnan(row[18])
    assert np.isnan(heat[2, 8]) and heat[3, 8] == 1.0 and heat[6, 8] == 1.0
    assert np.isnan(heat[7, 8])
    # patch 2 (fused 0.3, its 20x row 0.9 ignored) is clipped at the right edge
    np.testing.assert_allclose(heat[48:52, 96:100], np.float32(0.3))
    assert np.isfinite(heat).sum() == 4 * 12 + 4 * 4
    tiny = heatmap_array(df, (100, 100), (10.0, 20.0), 2.0)  # under a pixel: the one below
    assert tiny[5, 10] == 1.0 and tiny[5, 14] == 0.0
    assert np.isfinite(tiny).sum() == 2  # patch 2's pixel (100, 50) is off the thumbnail


# -- ROC, confusion ------------------------------------------------------------------------


def fold_table(seed: int, n: int = 300, fold: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = rng.choice([1, 0, -1], n, p=[0.4, 0.45, 0.15])
    return make_predictions(grid_centers(n, 1), labels, fold=fold, seed=seed, noise=0.3)


def test_roc_summary_matches_sklearn_and_averages_folds():
    folds = {k: fold_table(10 + k, fold=k) for k in range(3)}
    s = roc_summary(folds)
    assert [c.fold for c in s.curves] == [0, 1, 2] and not s.skipped
    for c in s.curves:
        f = folds[c.fold]
        f = f[(f["view"] == "fused") & (f["label"] >= 0)]
        assert c.auc == pytest.approx(roc_auc_score(f["label"], f["prob_tumour"]), abs=1e-12)
        assert c.n_tumour + c.n_normal == len(f)
    single = roc_summary({0: folds[0]})
    assert single.mean_auc == pytest.approx(single.curves[0].auc, abs=2e-3)
    assert single.std_auc == 0.0
    interp = np.stack([np.interp(s.grid, c.fpr, c.tpr) for c in s.curves])
    interp[:, 0] = 0.0
    np.testing.assert_allclose(s.mean_tpr, interp.mean(0), atol=1e-12)
    np.testing.assert_allclose(s.std_tpr, interp.std(0), atol=1e-12)
    assert s.std_auc == pytest.approx(np.std([c.auc for c in s.curves]))
    assert 0.5 < s.mean_auc < 1.0 and s.mean_tpr[0] == 0.0 and s.mean_tpr[-1] == 1.0


def test_roc_summary_skips_one_class_folds():
    only_tumour = make_predictions(grid_centers(5, 1), [1, 1, -1, 1, 1], fold=4)
    s = roc_summary({0: fold_table(1), 4: only_tumour})
    assert [c.fold for c in s.curves] == [0] and s.skipped == [4]
    empty = roc_summary({4: only_tumour})
    assert not empty.curves and np.isnan(empty.mean_auc)


def test_confusion_counts_use_fused_labelled_rows():
    labels = [1, 1, 1, 0, 0, -1, 0]
    df = make_predictions(grid_centers(7, 1), labels)
    fused = df["view"] == "fused"
    df.loc[fused, "pred"] = np.array([1, 1, 0, 0, 1, 1, 0], np.int8)
    df.loc[~fused, "pred"] = 1  # per-magnification rows must not count
    np.testing.assert_array_equal(confusion_counts(df), [[2, 1], [1, 2]])


# -- t-SNE ---------------------------------------------------------------------------------


def test_tsne_points_selects_subsamples_and_is_deterministic():
    labels = np.tile([1, 0, -1], 40)  # 80 labelled patches x 4 views = 320 rows
    df = make_predictions(grid_centers(120, 1), labels, dim=12)
    a = tsne_points(df, max_points=100, seed=5)
    b = tsne_points(df, max_points=100, seed=5)
    assert len(a) == 100
    pd.testing.assert_frame_equal(a, b)
    assert set(a["label"]) <= {0, 1} and "fused" not in set(a["view"])
    assert set(a["view"]) == {"20x", "10x", "5x", "2.5x"}
    assert np.isfinite(a[["tx", "ty"]].to_numpy()).all()
    c = tsne_points(df, max_points=100, seed=6)
    assert not a[["patch", "view"]].equals(c[["patch", "view"]])
    # classes separate: class centres differ by 2 per dimension
    xy = a[["tx", "ty"]].to_numpy()
    gap = np.linalg.norm(xy[a["label"] == 1].mean(0) - xy[a["label"] == 0].mean(0))
    assert gap > xy.std(0).mean()


def test_tsne_points_handles_2d_embeddings_tiny_counts_and_mixed_dims():
    df = make_predictions(grid_centers(6, 1), [1, 0, 1, 0, -1, 1], dim=2)
    pts = tsne_points(df)
    rows = df[(df["view"] != "fused") & (df["label"] >= 0)]
    np.testing.assert_allclose(pts[["tx", "ty"]].to_numpy(),
                               np.stack(rows["embedding"].to_numpy()), rtol=1e-6)
    for n in (1, 2, 3, 4):
        tiny = make_predictions(grid_centers(n, 1), [1, 0, 1, 0][:n], dim=12, mags=(20.0,))
        pts = tsne_points(tiny)
        assert len(pts) == n and np.isfinite(pts[["tx", "ty"]].to_numpy()).all()
    assert len(tsne_points(make_predictions(grid_centers(2, 1), [-1, -1]))) == 0
    mixed = df.copy()
    mixed.at[0, "embedding"] = [0.0, 1.0, 2.0]
    with pytest.raises(PlotError, match="dimensions"):
        tsne_points(mixed)


# -- the PNGs ------------------------------------------------------------------------------


def test_plot_functions_write_real_pngs(tmp_path):
    folds = {k: fold_table(20 + k, n=120, fold=k) for k in range(3)}
    assert_png(plot_roc(folds, tmp_path / "roc.png", "ROC smse"))
    assert_png(plot_roc({0: make_predictions(grid_centers(3, 1), [1, 1, 1])},
                        tmp_path / "roc_none.png"), min_colours=5)
    both = pd.concat(folds.values(), ignore_index=True)
    assert_png(plot_confusion(both, tmp_path / "confusion.png", "smse"))
    assert_png(plot_tsne(both, tmp_path / "tsne.png", "smse", max_points=300))
    assert_png(plot_tsne(make_predictions(grid_centers(2, 1), [-1, -1]),
                         tmp_path / "tsne_empty.png"), min_colours=5)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "confusion.png", "roc.png", "roc_none.png", "tsne.png", "tsne_empty.png"]


def test_plot_heatmap_synthetic_with_vector_and_raster_annotations(tmp_path):
    tissue = tissue_file(tmp_path)  # 60 x 40 thumbnail at 16 level-0 px per pixel
    centers = grid_centers(6, 4, offset=64 + 128)
    labels = np.r_[np.ones(12, int), np.zeros(8, int), -np.ones(4, int)]
    df = make_predictions(centers, labels)
    df.attrs["multimag"] = {"extent_level0": EXTENTS}
    tumour = shapely.box(128, 128, 128 * 7, 128 * 3)
    vec = Annotation("geojson", tmp_path / "a.geojson", {"tumour": tumour})
    rgb = assert_png(plot_heatmap(df, tissue, tmp_path / "vec.png", annotation=vec))
    # the probability colours (RdYlBu_r: red for tumour, blue for normal) are present
    red = (rgb[..., 0] > 180) & (rgb[..., 1] < 120) & (rgb[..., 2] < 120)
    blue = (rgb[..., 2] > 150) & (rgb[..., 0] < 130)
    assert red.sum() > 50 and blue.sum() > 50
    mask = np.zeros((22, 30), np.uint8)
    mask[4:12, 4:28] = 1
    raster = Annotation("raster", tmp_path / "m.tif", {},
                        RasterMask(mask, 32.0, 32.0, {1: "tumour"}))
    assert_png(plot_heatmap(df, tissue, tmp_path / "raster.png", annotation=raster,
                            extent_level0=128.0, title="raster"))
    assert_png(plot_heatmap(df, tissue, tmp_path / "none.png"))
    with pytest.raises(PlotError, match="one slide"):
        plot_heatmap(pd.concat([df, df.assign(slide_id="S2")]), tissue, tmp_path / "x.png")
    with pytest.raises(PlotError, match="lacks columns"):
        plot_heatmap(df.drop(columns="prob_tumour"), tissue, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


# -- the demo cohort -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_slide(tmp_path_factory, demo_dataset):
    """P01_A's fused-and-per-magnification predictions built from its labels and store."""
    results = demo_dataset / "results"
    labels_path = results / "labels" / "P01_A.parquet"
    store_path = results / "stores" / "P01_A.zarr"
    tissue_path = results / "tissue" / "P01_A.npz"
    from multimag.wsi.store import open_store

    store = open_store(store_path)
    centers = store["centers"][:]
    extents = {lv["array"].removeprefix("mag_"): lv["extent_level0"]
               for lv in store.attrs["levels"]}
    labels = pd.read_parquet(labels_path).sort_values("patch")["label"].to_numpy()
    assert len(labels) == len(centers)
    df = make_predictions(centers, labels, slide_id="P01_A", patient_id="P01", fold=2)
    path = write_predictions(df, tmp_path_factory.mktemp("pred") / "P01_A.parquet",
                             extent_level0=extents, slide_id="P01_A")
    annotation = demo_dataset / "demo" / "annotations" / "P01_A.geojson"
    return read_slide_predictions(path), tissue_path, annotation


def test_demo_heatmap_values_sit_under_the_patch_centres(demo_slide, tmp_path):
    df, tissue_path, annotation = demo_slide
    tissue = TissueMask.load(tissue_path)
    extent = finest_extent(None, df)
    assert extent == df.attrs["multimag"]["extent_level0"]["20x"]
    heat = heatmap_array(df, tissue.thumbnail.shape[:2], (tissue.scale_x, tissue.scale_y),
                         extent)
    fused = df[df["view"] == "fused"]
    i = (fused["y"].to_numpy() // tissue.scale_y).astype(int)
    j = (fused["x"].to_numpy() // tissue.scale_x).astype(int)
    np.testing.assert_allclose(heat[i, j], fused["prob_tumour"].to_numpy(), rtol=1e-6)
    cells = (extent / tissue.scale_x) * (extent / tissue.scale_y)
    assert np.isfinite(heat).sum() == pytest.approx(len(fused) * cells)
    assert_png(plot_heatmap(df, tissue_path, tmp_path / "P01_A.png", annotation=annotation))
    ann = load_annotation(annotation, {"tumour": ["Tumor"]}, slide_id="P01_A")
    assert_png(plot_heatmap(df, tissue_path, tmp_path / "P01_A_obj.png", annotation=ann))


def test_demo_report_figures(demo_slide, tmp_path):
    df = demo_slide[0]
    folds = predictions_by_fold(df)
    assert list(folds) == [2]
    assert_png(plot_roc(folds, tmp_path / "roc.png"))
    assert_png(plot_confusion(df, tmp_path / "confusion.png"))
    assert_png(plot_tsne(df, tmp_path / "tsne.png", max_points=400))
