"""Patient-level folds: no leak, stratification, seeds, errors, TSV round trip, and the
slides' diagnosis (slide_label, else the annotation)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import tifffile

from multimag.cli import main
from multimag.dataset.samples import load_samples
from multimag.dataset.splits import (
    LeakError,
    SplitError,
    check_no_leak,
    fold_roles,
    make_splits,
    patient_labels,
    read_splits,
    write_splits,
)
from multimag.errors import MultimagError


def cohort(n_patients: int = 20, labelled: bool = True) -> pd.DataFrame:
    """Patients P00.. with 1-3 slides; even patients tumour (one tumour slide, the rest
    normal), odd patients all normal."""
    rows = []
    for p in range(n_patients):
        for s in range(1 + p % 3):
            if not labelled:
                label = ""
            elif p % 2 == 0:
                label = "tumour" if s == 0 else "normal"
            else:
                label = "normal"
            rows.append({"slide_id": f"S{p:02d}_{s}", "patient_id": f"P{p:02d}",
                         "path": f"/x/S{p:02d}_{s}.svs", "slide_label": label})
    return pd.DataFrame(rows)


def test_twenty_patients_five_folds_never_leak():
    samples = cohort(20)
    splits = make_splits(samples, folds=5, seed=0)
    assert list(splits.columns) == ["slide_id", "patient_id", "fold", "diagnosis",
                                    "diagnosis_source"]
    assert len(splits) == len(samples)
    # the diagnosis is each slide's slide_label, carried along
    label_of = samples.set_index("slide_id")["slide_label"]
    assert (splits["diagnosis"] == label_of.loc[splits["slide_id"]].to_numpy()).all()
    assert (splits["diagnosis_source"] == "slide_label").all()
    assert set(splits["slide_id"]) == set(samples["slide_id"])
    assert splits.groupby("patient_id")["fold"].nunique().max() == 1
    assert sorted(splits["fold"].unique()) == [0, 1, 2, 3, 4]
    patients_per_fold = splits.groupby("fold")["patient_id"].nunique()
    assert (patients_per_fold >= 1).all() and patients_per_fold.sum() == 20
    check_no_leak(splits)
    patient_of = dict(zip(splits["slide_id"], splits["patient_id"], strict=True))
    fold_of = dict(zip(splits["slide_id"], splits["fold"], strict=True))
    for fold in range(5):
        roles = fold_roles(splits, fold)
        assert set(roles) == {"train", "val", "test"}
        assert set().union(*roles.values()) == set(splits["slide_id"])
        pats = {r: {patient_of[s] for s in ids} for r, ids in roles.items()}
        assert not pats["train"] & pats["val"]
        assert not pats["train"] & pats["test"]
        assert not pats["val"] & pats["test"]
        assert all(pats.values())
        assert {fold_of[s] for s in roles["test"]} == {fold}
        assert {fold_of[s] for s in roles["val"]} == {(fold + 1) % 5}
    # each fold is the validation set exactly once
    vals = [frozenset(fold_roles(splits, f)["val"]) for f in range(5)]
    assert len(set(vals)) == 5


def test_stratified_by_patient_label():
    samples = cohort(20)
    labels = patient_labels(samples)
    assert (labels == "tumour").sum() == 10 and (labels == "normal").sum() == 10
    for seed in range(5):
        splits = make_splits(samples, folds=5, seed=seed)
        per_patient = splits.drop_duplicates("patient_id").set_index("patient_id")["fold"]
        table = pd.crosstab(per_patient, labels.loc[per_patient.index])
        assert (table["tumour"] == 2).all() and (table["normal"] == 2).all(), table


def test_patient_label_rules():
    samples = pd.DataFrame({"slide_id": ["a", "b", "c", "d", "e"],
                            "patient_id": ["p1", "p1", "p2", "p3", "p3"],
                            "slide_label": ["normal", "tumour", "normal", "normal", ""]})
    labels = patient_labels(samples)
    assert labels.to_dict() == {"p1": "tumour", "p2": "normal", "p3": "unknown"}


def test_seeded_and_independent_of_row_order():
    samples = cohort(20)
    a = make_splits(samples, folds=5, seed=3)
    b = make_splits(samples.sample(frac=1.0, random_state=1), folds=5, seed=3)
    pd.testing.assert_frame_equal(a, b)
    c = make_splits(samples, folds=5, seed=4)
    assert not a["fold"].equals(c["fold"])


def test_unlabelled_cohort_uses_grouped_folds():
    samples = cohort(12, labelled=False)
    splits = make_splits(samples, folds=4, seed=0)
    # neither slide_label nor annotation: no diagnosis, and it says so
    assert (splits["diagnosis"] == "").all() and (splits["diagnosis_source"] == "none").all()
    assert splits.groupby("patient_id")["fold"].nunique().max() == 1
    assert (splits.groupby("fold")["patient_id"].nunique() == 3).all()


def test_few_patients_small_strata_still_fill_every_fold():
    samples = cohort(5)  # 3 tumour, 2 normal: every stratum smaller than 5 folds
    splits = make_splits(samples, folds=5, seed=0)
    assert (splits.groupby("fold")["patient_id"].nunique() == 1).all()


def test_too_few_patients_is_a_clear_error():
    with pytest.raises(SplitError) as err:
        make_splits(cohort(4), folds=5, source="cohort/samples.tsv")
    msg = str(err.value)
    assert "cohort/samples.tsv" in msg and "4 patient" in msg and "5 folds" in msg
    assert "split.folds" in msg
    assert isinstance(err.value, MultimagError)


def test_two_folds_leave_no_training_set():
    with pytest.raises(SplitError, match="split.folds"):
        make_splits(cohort(10), folds=2)


def test_bad_samples_tables():
    with pytest.raises(SplitError, match="patient_id"):
        make_splits(cohort(10).drop(columns="patient_id"), folds=5)
    dup = cohort(10)
    dup.loc[1, "slide_id"] = dup.loc[0, "slide_id"]
    with pytest.raises(SplitError, match="duplicate slide_id S00_0"):
        make_splits(dup, folds=5)


def test_check_no_leak_catches_a_patient_in_two_folds():
    splits = make_splits(cohort(20), folds=5, seed=0)
    leaky = splits.copy()
    row = leaky.index[leaky["patient_id"] == "P02"][0]  # P02 has three slides
    leaky.loc[row, "fold"] = (leaky.loc[row, "fold"] + 1) % 5
    with pytest.raises(LeakError, match="P02"):
        check_no_leak(leaky)
    with pytest.raises(LeakError):
        fold_roles(leaky, 0)


def test_fold_roles_rejects_unknown_fold():
    splits = make_splits(cohort(20), folds=5, seed=0)
    with pytest.raises(SplitError, match="fold 5 does not exist"):
        fold_roles(splits, 5)


def test_write_read_round_trip(tmp_path):
    splits = make_splits(cohort(20), folds=5, seed=0)
    path = write_splits(splits, tmp_path / "out" / "splits.tsv")
    assert [p.name for p in path.parent.iterdir()] == ["splits.tsv"]  # no temp file left
    assert path.read_text().splitlines()[0] == ("slide_id\tpatient_id\tfold\tdiagnosis"
                                                "\tdiagnosis_source")
    back = read_splits(path)
    pd.testing.assert_frame_equal(back, splits)
    first = path.read_bytes()
    write_splits(splits.sample(frac=1.0, random_state=0), path)
    assert path.read_bytes() == first


def test_read_splits_validates(tmp_path):
    with pytest.raises(SplitError, match="does not exist"):
        read_splits(tmp_path / "none.tsv")
    bad = tmp_path / "bad.tsv"
    bad.write_text("slide_id\tfold\na\t0\n")
    with pytest.raises(SplitError, match="patient_id") as err:
        read_splits(bad)
    assert str(bad) in str(err.value)
    bad.write_text("slide_id\tpatient_id\tfold\na\tp1\t0\nb\tp1\t1\nc\tp2\t2\n")
    with pytest.raises(LeakError, match="p1"):
        read_splits(bad)
    bad.write_text("slide_id\tpatient_id\tfold\na\tp1\t0\na\tp2\t1\nc\tp3\t2\n")
    with pytest.raises(SplitError, match="duplicate slide_id a"):
        read_splits(bad)
    bad.write_text("slide_id\tpatient_id\tfold\na\tp1\tx\n")
    with pytest.raises(SplitError, match="integers"):
        read_splits(bad)


def test_from_load_samples(tmp_path):
    samples_tsv = tmp_path / "samples.tsv"
    samples_tsv.write_text(cohort(9).loc[:, ["slide_id", "patient_id", "path", "slide_label"]]
                           .to_csv(sep="\t", index=False))
    samples = load_samples(samples_tsv)
    splits = make_splits(samples, folds=3, seed=1, source=samples_tsv)
    assert len(splits) == len(samples)
    assert splits.groupby("patient_id")["fold"].nunique().max() == 1


# -- the diagnosis: slide_label, else the annotation -------------------------------------


def _geojson(path, *squares: tuple[str, tuple[int, int, int, int]]):
    """A QuPath GeoJSON of one square per (class name, (x0, y0, x1, y1))."""
    features = [{"type": "Feature",
                 "geometry": {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1],
                                                                  [x0, y1], [x0, y0]]]},
                 "properties": {"classification": {"name": name}}}
                for name, (x0, y0, x1, y1) in squares]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path.name


def _mask(path, value: int):
    mask = np.zeros((64, 80), np.uint8)
    mask[10:30, 20:50] = value
    tifffile.imwrite(path, mask)
    return path.name


def test_diagnosis_from_slide_label_else_annotation(tmp_path):
    rows = [  # slide, slide_label, annotation, expected diagnosis, expected source
        ("S1", "normal", _geojson(tmp_path / "t.geojson", ("Tumor", (0, 0, 100, 100))),
         "normal", "slide_label"),  # the pathologist's label wins over the annotation
        ("S2", "", "t.geojson", "tumour", "annotation"),
        ("S3", "", _geojson(tmp_path / "n.geojson", ("Stroma", (0, 0, 100, 100))),
         "normal", "annotation"),
        ("S4", "", _geojson(tmp_path / "x.geojson", ("Tumor", (10, 10, 50, 50)),
                            ("Exclusion", (0, 0, 100, 100))),
         "normal", "annotation"),  # all its tumour is excluded: no tumour region left
        ("S5", "", _mask(tmp_path / "t.tif", 1), "tumour", "annotation"),
        ("S6", "", _mask(tmp_path / "z.tif", 0), "normal", "annotation"),
        ("S7", "", "", "", "none"),  # nothing known: unscored
        ("S8", "tumour", "", "tumour", "slide_label"),
    ]
    tsv = tmp_path / "samples.tsv"
    tsv.write_text("slide_id\tpatient_id\tpath\tannotation\tslide_label\n" + "".join(
        f"{sid}\tP{sid[1]}\t{sid}.svs\t{ann}\t{label}\n" for sid, label, ann, *_ in rows))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # empty mask / no tumour: the readers warn
        splits = make_splits(load_samples(tsv), folds=3, seed=0, source=tsv)
    got = splits.set_index("slide_id")
    for sid, _, _, diagnosis, source in rows:
        assert (got.loc[sid, "diagnosis"], got.loc[sid, "diagnosis_source"]) == \
            (diagnosis, source), sid
    # the strata follow the diagnosis; the file keeps it, the empty one included
    assert patient_labels(load_samples(tsv).reset_index(drop=True),
                          got["diagnosis"].to_numpy()).to_dict() == {
        f"P{sid[1]}": {"tumour": "tumour", "normal": "normal", "": "unknown"}[d]
        for sid, _, _, d, _ in rows}
    back = read_splits(write_splits(splits, tmp_path / "splits.tsv"))
    pd.testing.assert_frame_equal(back, splits)


def test_split_command_reads_the_class_map_of_the_config(tmp_path):
    _geojson(tmp_path / "a.geojson", ("Carcinoma in situ", (0, 0, 100, 100)))
    tsv = tmp_path / "samples.tsv"
    tsv.write_text("slide_id\tpatient_id\tpath\tannotation\n" + "".join(
        f"S{p}\tP{p}\tS{p}.svs\ta.geojson\n" for p in range(3)))
    config = tmp_path / "config.yaml"
    config.write_text("labels:\n  class_map:\n    tumour: [Carcinoma in situ]\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["split", str(tsv), str(tmp_path / "default.tsv"), "--folds", "3"]) == 0
        assert main(["split", str(tsv), str(tmp_path / "mapped.tsv"), "--folds", "3",
                     "--config", str(config)]) == 0
    # an unknown class is no tumour; mapped to tumour by the config, it is
    assert set(read_splits(tmp_path / "default.tsv")["diagnosis"]) == {"normal"}
    assert set(read_splits(tmp_path / "mapped.tsv")["diagnosis"]) == {"tumour"}


def test_read_splits_checks_the_diagnosis_and_reads_old_files(tmp_path):
    path = tmp_path / "splits.tsv"
    path.write_text("slide_id\tpatient_id\tfold\tdiagnosis\tdiagnosis_source\n"
                    "a\tp1\t0\tmaybe\tslide_label\nb\tp2\t1\t\tnone\nc\tp3\t2\tnormal\tnone\n")
    with pytest.raises(SplitError, match="diagnosis holds 'maybe'"):
        read_splits(path)
    # a file from before the diagnosis still gives its folds (the verdicts refuse it)
    path.write_text("slide_id\tpatient_id\tfold\na\tp1\t0\nb\tp2\t1\nc\tp3\t2\n")
    assert list(read_splits(path).columns) == ["slide_id", "patient_id", "fold"]
