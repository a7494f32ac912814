"""Annotation readers (GeoJSON, ASAP XML, raster), class mapping, repair, bad input,
and the exactness of the fast area fractions."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import shapely
import tifffile
from conftest import fixture_path

from multimag.config import load_config
from multimag.dataset.annotation_formats import sniff_format
from multimag.dataset.annotations import load_annotation
from multimag.dataset.regions import Annotation
from multimag.errors import AnnotationError, AnnotationWarning, ConfigError

CLASS_MAP = load_config()["labels"]["class_map"]
SLIDE = (3000, 2200)


def feature(rings, name="Tumor", kind="Polygon"):
    return {"type": "Feature", "geometry": {"type": kind, "coordinates": rings},
            "properties": {"objectType": "annotation",
                           "classification": {"name": name, "color": [200, 0, 0]}}}


def square(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def write_geojson(path, features):
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def asap_xml(polygons):
    """polygons: (group, type, [(x, y), ...])"""
    out = ['<?xml version="1.0"?>', "<ASAP_Annotations>", "<Annotations>"]
    for k, (group, kind, pts) in enumerate(polygons):
        out.append(f'<Annotation Name="Annotation {k}" Type="{kind}" PartOfGroup="{group}" '
                   'Color="#F4FA58"><Coordinates>')
        out += [f'<Coordinate Order="{i}" X="{x}" Y="{y}" />' for i, (x, y) in enumerate(pts)]
        out.append("</Coordinates></Annotation>")
    out += ["</Annotations>", "<AnnotationGroups />", "</ASAP_Annotations>"]
    return "\n".join(out)


def rect_overlap(boxes, r):
    ox = np.clip(np.minimum(boxes[:, 2], r[2]) - np.maximum(boxes[:, 0], r[0]), 0, None)
    oy = np.clip(np.minimum(boxes[:, 3], r[3]) - np.maximum(boxes[:, 1], r[1]), 0, None)
    return ox * oy


OUTER, HOLE = (1000, 600, 2600, 1800), (1600, 1000, 2000, 1400)


def expected_square_with_hole(boxes):
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return (rect_overlap(boxes, OUTER) - rect_overlap(boxes, HOLE)) / area


def random_boxes(n, seed=0, sides=(64, 200, 700)):
    rng = np.random.default_rng(seed)
    c = rng.uniform(-200, 3200, (n, 2))
    s = rng.choice(sides, n)[:, None] * rng.uniform(0.8, 1.2, (n, 1))
    return np.concatenate([c - s / 2, c + s / 2], axis=1)


# ---------------------------------------------------------------------------- formats


def test_geojson_polygon_with_hole_exact(tmp_path):
    path = write_geojson(tmp_path / "a.geojson", [feature([square(*OUTER), square(*HOLE)])])
    ann = load_annotation(path, CLASS_MAP, slide_size=SLIDE)
    assert ann.format == "geojson" and ann.repaired == 0 and ann.unknown_classes == {}
    assert ann.area("tumour") == pytest.approx(1600 * 1200 - 400 * 400)
    boxes = random_boxes(3000)
    got = ann.fractions(boxes)
    np.testing.assert_allclose(got["tumour"], expected_square_with_hole(boxes), atol=1e-9)
    assert not got["normal"].any() and not got["exclude"].any()


def test_asap_exclusion_group_is_subtracted(tmp_path):
    corners = lambda r: [(r[0], r[1]), (r[2], r[1]), (r[2], r[3]), (r[0], r[3])]  # noqa: E731
    path = tmp_path / "a.xml"
    path.write_text(asap_xml([("Tumor", "Polygon", corners(OUTER)),
                              ("Exclusion", "Polygon", corners(HOLE)),
                              ("Tumor", "Dot", [(5, 5)]), ("Tumor", "Dot", [(7, 7)])]))
    ann = load_annotation(path, CLASS_MAP, slide_size=SLIDE)
    assert ann.format == "asap_xml"
    assert ann.ignored == {"Dot": 2}
    assert ann.class_counts == {"Tumor": 1, "Exclusion": 1}
    boxes = random_boxes(2000, seed=1)
    np.testing.assert_allclose(ann.fractions(boxes)["tumour"], expected_square_with_hole(boxes),
                               atol=1e-9)
    # exclude is a class of its own too
    np.testing.assert_allclose(ann.fractions(boxes)["exclude"],
                               rect_overlap(boxes, HOLE) / ((boxes[:, 2] - boxes[:, 0])
                                                            * (boxes[:, 3] - boxes[:, 1])),
                               atol=1e-9)


def test_asap_rectangle_spline_and_comma_decimals(tmp_path):
    path = tmp_path / "a.xml"
    text = asap_xml([("_0", "Rectangle", [(0, 0), (100, 0), (100, 50), (0, 50)]),
                     ("_1", "Spline", [(200, 200), (300, 200), (250, 300)]),
                     ("_2", "Polygon", [(10, 10), (20, 10), (20, 20), (10, 20)])])
    text = text.replace('X="250"', 'X="250,0"')  # European decimal comma (ASAP on some locales)
    path.write_text(text)
    ann = load_annotation(path, CLASS_MAP)
    assert ann.area("tumour") == pytest.approx(100 * 50 - 100 + 0.5 * 100 * 100)
    assert ann.area("exclude") == pytest.approx(100)


def test_geojson_variants_and_class_name_matching(tmp_path):
    f1 = feature([square(0, 0, 100, 100)], name="TUMOR")  # case-insensitive match
    f2 = feature([[square(200, 0, 300, 100)], [square(400, 0, 500, 100)]], name="Stroma",
                 kind="MultiPolygon")
    f3 = {"type": "Feature", "geometry": {"type": "Polygon",
                                          "coordinates": [square(0, 200, 100, 300)]},
          "properties": {"name": "Normal"}}  # no classification: the name
    f4 = {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]},
          "properties": {"classification": {"name": "Tumor"}}}
    bare_list = tmp_path / "list.json"
    bare_list.write_text(json.dumps([f1, f2, f3, f4]))
    ann = load_annotation(bare_list, CLASS_MAP)
    assert ann.area("tumour") == pytest.approx(10_000)
    assert ann.area("normal") == pytest.approx(30_000)
    assert ann.ignored == {"Point": 1}
    single = tmp_path / "one.geojson"
    single.write_text(json.dumps(f1))
    assert load_annotation(single, CLASS_MAP).area("tumour") == pytest.approx(10_000)


def test_raster_mask_any_downsample(tmp_path):
    # the square-with-hole at downsample 8 (edges on multiples of 8: area-exact)
    ds = 8
    mask = np.zeros((SLIDE[1] // ds, SLIDE[0] // ds), np.uint8)
    mask[OUTER[1] // ds:OUTER[3] // ds, OUTER[0] // ds:OUTER[2] // ds] = 1
    mask[HOLE[1] // ds:HOLE[3] // ds, HOLE[0] // ds:HOLE[2] // ds] = 0
    path = tmp_path / "mask.tif"
    tifffile.imwrite(path, mask, tile=(64, 64), compression="zlib")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # value 0 is background: never warned about
        ann = load_annotation(path, CLASS_MAP, slide_size=SLIDE)
    assert ann.format == "raster" and ann.raster.scale_x == ann.raster.scale_y == ds
    boxes = random_boxes(2000, seed=2)
    np.testing.assert_allclose(ann.fractions(boxes)["tumour"], expected_square_with_hole(boxes),
                               atol=1e-5)


def test_raster_unknown_value_warns_and_aspect_mismatch_errors(tmp_path):
    mask = np.zeros((550, 750), np.uint8)
    mask[:10, :10] = 7
    path = tmp_path / "m.tif"
    tifffile.imwrite(path, mask)
    with pytest.warns(AnnotationWarning) as record:
        ann = load_annotation(path, CLASS_MAP, slide_size=SLIDE)
    messages = [str(w.message) for w in record]
    assert any("unknown mask values '7' (100)" in m for m in messages)
    assert any("no tumour or normal pixel" in m for m in messages)
    assert ann.unknown_classes == {"7": 100}
    # one pixel short on one axis (rounding of an odd slide size): accepted
    tifffile.imwrite(path, np.ones((549, 750), np.uint8))
    load_annotation(path, CLASS_MAP, slide_size=SLIDE)
    # a mask of another shape: refused, naming the file
    tifffile.imwrite(path, np.ones((500, 750), np.uint8))
    with pytest.raises(AnnotationError, match="aspect ratio") as err:
        load_annotation(path, CLASS_MAP, slide_size=SLIDE)
    assert str(path) in str(err.value) and "Fix:" in str(err.value)
    with pytest.raises(AnnotationError, match="slide_size"):
        load_annotation(path, CLASS_MAP)


# ---------------------------------------------------------------------------- repair, classes


def test_bowtie_is_repaired_and_counted(tmp_path):
    bowtie = [[0, 0], [100, 100], [100, 0], [0, 100], [0, 0]]
    path = write_geojson(tmp_path / "b.geojson", [feature([bowtie]),
                                                  feature([square(500, 500, 600, 600)])])
    with pytest.warns(AnnotationWarning, match="repaired 1"):
        ann = load_annotation(path, CLASS_MAP)
    assert ann.repaired == 1
    assert ann.geometries["tumour"].is_valid
    assert ann.area("tumour") == pytest.approx(2 * 2500 + 10_000)
    frac = ann.fractions(np.array([[0, 0, 100, 100], [0, 0, 100, 50]]))["tumour"]
    np.testing.assert_allclose(frac, [0.5, 0.5])


def test_unknown_class_warns_with_name_and_count(tmp_path):
    path = write_geojson(tmp_path / "u.geojson", [
        feature([square(0, 0, 10, 10)], name="Lymphocyte"),
        feature([square(20, 0, 30, 10)], name="Lymphocyte"),
        feature([square(0, 0, 100, 100)])])
    with pytest.warns(AnnotationWarning, match="'Lymphocyte' \\(2\\)"):
        ann = load_annotation(path, CLASS_MAP)
    assert ann.unknown_classes == {"Lymphocyte": 2}
    assert ann.area("tumour") == pytest.approx(10_000)


def test_annotation_outside_slide_warns(tmp_path):
    path = write_geojson(tmp_path / "o.geojson", [feature([square(9000, 9000, 9500, 9500)])])
    with pytest.warns(AnnotationWarning, match="outside the slide"):
        load_annotation(path, CLASS_MAP, slide_size=SLIDE)


def test_class_map_conflicts_are_config_errors():
    with pytest.raises(ConfigError, match="both"):
        from multimag.dataset.class_map import ClassMap
        ClassMap.parse({"tumour": ["Tumor"], "normal": ["Tumor"]})
    with pytest.raises(ConfigError, match="unknown class"):
        ClassMap.parse({"cancer": ["Tumor"]})


def test_camelyon16_xml(tmp_path):
    path = fixture_path("real", "camelyon16-tumor_031-tissue.xml")
    with pytest.warns(AnnotationWarning) as record:
        ann = load_annotation(path, CLASS_MAP)
    messages = [str(w.message) for w in record]
    assert any("'tissue' (6), 'negative' (4)" in m and str(path) in m for m in messages)
    assert any("no tumour or normal polygon" in m for m in messages)
    assert ann.format == "asap_xml"
    assert ann.class_counts == {"tissue": 6, "negative": 4}
    assert ann.unknown_classes == {"tissue": 6, "negative": 4}
    assert ann.ignored == {} and ann.repaired == 0
    assert "tumour" not in ann.geometries
    with pytest.warns(AnnotationWarning, match="'negative'"):
        tissue_only = load_annotation(path, {"tumour": ["tissue"]})
    ann = load_annotation(path, {"tumour": ["tissue"], "exclude": ["negative"]})
    assert ann.area("tumour") > 1e8
    # the negative regions lie inside the tissue and are cut out of it
    assert ann.area("tumour") == pytest.approx(tissue_only.area("tumour") - ann.area("exclude"))
    x0, y0, x1, y1 = ann.geometries["tumour"].bounds
    frac = ann.fractions(np.array([[x0, y0, x1, y1]]))["tumour"]
    assert frac[0] == pytest.approx(ann.area("tumour") / ((x1 - x0) * (y1 - y0)))


# ---------------------------------------------------------------------------- bad input


def test_content_sniffing_not_extension(tmp_path):
    geo = write_geojson(tmp_path / "really_geojson.xml", [feature([square(0, 0, 10, 10)])])
    assert load_annotation(geo, CLASS_MAP).format == "geojson"
    xml = tmp_path / "really_xml.json"
    xml.write_text("\ufeff  " + asap_xml([("Tumor", "Polygon", [(0, 0), (5, 0), (5, 5)])]))
    assert load_annotation(xml, CLASS_MAP).format == "asap_xml"
    tif = tmp_path / "mask.png"
    tifffile.imwrite(tif, np.ones((550, 750), np.uint8))
    assert sniff_format(tif) == "raster"
    assert load_annotation(tif, CLASS_MAP, slide_size=SLIDE).format == "raster"


@pytest.mark.parametrize("content, match", [
    (b"", "empty"),
    (b"  \n\t\n", "empty"),
    (b"hello world", "unrecognised annotation format"),
    (b"\x89PNG\r\n\x1a\n0000", "PNG"),
    (b'{"type": "FeatureCollection", "features": [', "invalid JSON"),
    (b'{"type": "Topology"}', "not a GeoJSON"),
    (b"<ASAP_Annotations><Annotations>", "invalid XML"),
    (b"<Annotations><Annotation><Regions><Region/></Regions></Annotation></Annotations>",
     "Aperio ImageScope"),
    (b'[{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[["a", 1]]]}}]',
     "not numbers"),
])
def test_bad_files_fail_clearly(tmp_path, content, match):
    path = tmp_path / "bad.geojson"
    path.write_bytes(content)
    with pytest.raises(AnnotationError, match=match) as err:
        load_annotation(path, CLASS_MAP, slide_id="S1")
    msg = str(err.value)
    assert str(path) in msg and "'S1'" in msg and "Fix:" in msg


def test_missing_file(tmp_path):
    with pytest.raises(AnnotationError, match="does not exist"):
        load_annotation(tmp_path / "nope.geojson", CLASS_MAP)


def test_empty_collection_warns_every_patch_tumour_free(tmp_path):
    path = write_geojson(tmp_path / "e.geojson", [])
    with pytest.warns(AnnotationWarning, match="no tumour or normal polygon"):
        ann = load_annotation(path, CLASS_MAP)
    assert not ann.fractions(random_boxes(10))["tumour"].any()


# ---------------------------------------------------------------------------- fast == exact


def star(cx, cy, r, n, seed):
    rng = np.random.default_rng(seed)
    t = np.sort(rng.uniform(0, 2 * np.pi, n))
    rr = r * (1 + 0.3 * np.sin(5 * t) + 0.03 * rng.uniform(-1, 1, n))
    return np.stack([cx + rr * np.cos(t), cy + rr * np.sin(t)], axis=1)


@pytest.mark.parametrize("seed", [0, 1])
def test_fast_fractions_match_brute_force(seed):
    poly = shapely.Polygon(star(1500, 1100, 1000, 2000, seed),
                           [star(1200, 1000, 150, 200, seed + 10),
                            star(1900, 1300, 100, 200, seed + 20)])
    other = shapely.Polygon(star(2800, 300, 150, 50, seed + 30))  # a second part
    geom = shapely.make_valid(shapely.MultiPolygon([poly, other]))
    ann = Annotation("geojson", "synthetic", {"tumour": geom})
    boxes = random_boxes(2000, seed=seed, sides=(16, 100, 500, 2500))
    got = ann.fractions(boxes, classes=("tumour",))["tumour"]
    brute = shapely.area(shapely.intersection(geom, shapely.box(*boxes.T)))
    brute /= (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    np.testing.assert_allclose(got, brute, atol=1e-9)
    assert ((got > 0) & (got < 1)).sum() > 500  # plenty of boundary boxes were tested
    assert (got == 1).sum() > 100 and (got == 0).sum() > 100
    assert ann.fractions(np.zeros((0, 4)))["tumour"].shape == (0,)


def test_fast_fractions_rectilinear_and_touching_rings():
    """Edges on quadtree cell lines, collinear edges, a hole touching its shell: the
    cases where rectangle clipping gives 'dirty' pieces."""
    rng = np.random.default_rng(3)
    rects = [shapely.box(x, y, x + w, y + h) for x, y, w, h in
             rng.integers(0, 40, (60, 4)) * 64 + [0, 0, 64, 64]]
    geom = shapely.difference(shapely.union_all(rects),
                              shapely.union_all([shapely.box(x, y, x + 64, y + 64) for x, y in
                                                 rng.integers(0, 40, (30, 2)) * 64]))
    touching = shapely.Polygon([(3000, 0), (3512, 0), (3512, 512), (3000, 512)],
                               [[(3256, 0), (3384, 128), (3128, 128)]])  # hole touches shell
    geom = shapely.union_all([geom, touching])
    assert geom.is_valid
    ann = Annotation("geojson", "synthetic", {"tumour": geom})
    rng_boxes = random_boxes(1500, seed=4, sides=(64, 256, 1024))
    grid = np.array([[x, y, x + 256, y + 256] for x in range(0, 3600, 128)
                     for y in range(0, 2600, 128)], np.float64)
    for boxes in (rng_boxes, grid):
        got = ann.fractions(boxes, classes=("tumour",))["tumour"]
        brute = shapely.area(shapely.intersection(geom, shapely.box(*boxes.T)))
        brute /= (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        np.testing.assert_allclose(got, brute, atol=1e-9)


def test_fast_fractions_on_the_camelyon_geometry():
    path = fixture_path("real", "camelyon16-tumor_031-tissue.xml")
    ann = load_annotation(path, {"tumour": ["tissue"], "exclude": ["negative"]})
    geom = ann.geometries["tumour"]
    x0, y0, x1, y1 = geom.bounds
    rng = np.random.default_rng(5)
    c = rng.uniform([x0, y0], [x1, y1], (1500, 2))
    s = rng.choice([448, 1792, 7168], (1500, 1))
    boxes = np.concatenate([c - s / 2, c + s / 2], axis=1)
    got = ann.fractions(boxes)["tumour"]
    brute = shapely.area(shapely.intersection(geom, shapely.box(*boxes.T))) / s[:, 0] ** 2
    np.testing.assert_allclose(got, brute, atol=1e-9)
    assert ((got > 0) & (got < 1)).sum() > 100
