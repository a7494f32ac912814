"""Slide and patient verdicts: the three rules, ties, ambiguous patches, RR, patient
pooling, the diagnosis as truth, and the errors for missing, mixed and leaky
predictions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import fake_model_index

from multimag.dataset.diagnosis import patient_diagnoses
from multimag.errors import MultimagError, PredictionsError, SplitError
from multimag.evaluate.aggregate import aggregate, verdicts
from multimag.learn.predictions import read_predictions

SCHEMA = pa.schema([
    ("slide_id", pa.string()), ("patient_id", pa.string()), ("fold", pa.int16()),
    ("patch", pa.int64()), ("x", pa.int64()), ("y", pa.int64()), ("label", pa.int8()),
    ("view", pa.string()), ("prob_tumour", pa.float32()), ("pred", pa.int8()),
    ("embedding", pa.list_(pa.float32())),
])
MAGS = ("20x", "10x")


def write_pred(pred_dir: Path, slide_id: str, patient_id: str, fold: int,
               labels: list[int], probs: list[float], *, method: str = "smse",
               config: str = "c0ffee" * 10, meta_fold: int | None = None,
               mag_probs: dict[str, list[float]] | None = None,
               embeddings: dict[str, np.ndarray] | None = None) -> Path:
    """One predictions file of the schema: a 'fused' row per patch with ``probs``, and
    per-magnification rows (``mag_probs[view]``, default = the fused prob) with
    ``embeddings[view]`` (default: a 3-d vector)."""
    rows = []
    for i, (label, prob) in enumerate(zip(labels, probs, strict=True)):
        common = {"slide_id": slide_id, "patient_id": patient_id, "fold": fold, "patch": i,
                  "x": 1000 + 224 * i, "y": 2000, "label": label}
        rows.append({**common, "view": "fused", "prob_tumour": prob,
                     "pred": int(np.float32(prob) >= 0.5), "embedding": None})
        for view in MAGS:
            p = (mag_probs or {}).get(view, probs)[i]
            emb = ((embeddings or {}).get(view, np.full((len(labels), 3), float(label)))[i])
            rows.append({**common, "view": view, "prob_tumour": p,
                         "pred": int(np.float32(p) >= 0.5),
                         "embedding": [float(v) for v in emb]})
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    meta = {"method": method, "fold": fold if meta_fold is None else meta_fold,
            "slide_id": slide_id, "magnifications": [20.0, 10.0], "patch_px": 224,
            "extent_level0": {"20x": 448.0, "10x": 896.0}, "store_schema_version": 1,
            "model": f"models/{method}/fold{fold}", "config_sha256": config,
            **fake_model_index(pred_dir.parent / "indices", slide_id, fold)}
    table = table.replace_schema_metadata({b"multimag": json.dumps(meta).encode()})
    pred_dir.mkdir(parents=True, exist_ok=True)
    path = pred_dir / f"{slide_id}.parquet"
    pq.write_table(table, path)
    return path


SPLIT_COLUMNS = ["slide_id", "patient_id", "fold", "diagnosis"]


def write_splits(path: Path, rows: list[tuple[str, str, int, str]]) -> Path:
    """A splits file of (slide, patient, fold, diagnosis) rows."""
    pd.DataFrame(rows, columns=SPLIT_COLUMNS).to_csv(path, sep="\t", index=False)
    return path


def splits_frame(rows: list[tuple[str, str, int, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=SPLIT_COLUMNS)


def fused(rows: list[tuple[str, list[int], list[float]]]) -> pd.DataFrame:
    """Fused rows in memory: (slide_id, labels, probs) per slide."""
    out = []
    for slide_id, labels, probs in rows:
        for label, prob in zip(labels, probs, strict=True):
            out.append({"slide_id": slide_id, "label": label, "prob_tumour": prob,
                        "pred": int(prob >= 0.5), "view": "fused"})
    return pd.DataFrame(out)


def by_slide(df: pd.DataFrame) -> pd.DataFrame:
    return df.set_index("slide_id")


# -- rules and ties ----------------------------------------------------------------------

TIE_SPLITS = splits_frame([("A", "P1", 0, "normal"), ("B", "P2", 0, "tumour")])
# A and B: 2 patches predicted tumour, 2 normal (a tie); A is diagnosed normal although
# half its patches are labelled tumour, B tumour although one of four is
TIE_ROWS = fused([("A", [1, 1, 0, 0], [0.9, 0.8, 0.1, 0.2]),
                  ("B", [1, 0, 0, 0], [0.9, 0.2, 0.7, 0.3])])


def test_majority_tie_goes_to_tumour_by_default():
    slides, _ = verdicts(TIE_ROWS, TIE_SPLITS)
    s = by_slide(slides)
    assert s.loc["A", "verdict"] == "tumour" and s.loc["A", "truth"] == "normal"
    assert s.loc["B", "verdict"] == "tumour" and s.loc["B", "truth"] == "tumour"
    assert not bool(s.loc["A", "correct"]) and bool(s.loc["B", "correct"])
    assert (slides["rule"] == "majority").all()


def test_majority_tie_to_normal_when_asked():
    slides, _ = verdicts(TIE_ROWS, TIE_SPLITS, tie="normal")
    s = by_slide(slides)
    assert s.loc["A", "verdict"] == "normal" and s.loc["A", "truth"] == "normal"
    assert bool(s.loc["A", "correct"])
    assert s.loc["B", "verdict"] == "normal" and s.loc["B", "truth"] == "tumour"
    assert not bool(s.loc["B", "correct"])


def test_truth_is_the_diagnosis_not_a_vote_of_the_patch_labels():
    # a tumour slide with 1 of 4 labelled patches tumour, every patch predicted right:
    # the patch vote says normal, the pathologist tumour; the majority verdict is wrong
    rows = fused([("T", [1, 0, 0, 0], [0.9, 0.1, 0.2, 0.3])])
    split = splits_frame([("T", "P", 0, "tumour")])
    slides, patients = verdicts(rows, split)
    row = slides.iloc[0]
    assert row["verdict"] == "normal" and row["truth"] == "tumour"
    assert not bool(row["correct"])
    assert row["recognition_rate"] == pytest.approx(1.0)  # the patches are all right
    assert row["tumour_fraction_true"] == pytest.approx(0.25)  # patch statistics stay
    assert patients.iloc[0]["truth"] == "tumour" and not bool(patients.iloc[0]["correct"])
    # the fraction rule at 0.2 calls it tumour: right against the same truth
    slides, _ = verdicts(rows, split, "fraction", fraction_threshold=0.2)
    assert slides.iloc[0]["verdict"] == "tumour" and bool(slides.iloc[0]["correct"])


def test_three_rules_disagree_as_designed():
    # preds 2 tumour / 3 normal; mean prob (0.875*2 + 0.375*3) / 5 = 0.575; fraction 0.4
    # labels 3 tumour / 2 normal (patch statistics only); diagnosed tumour
    rows = fused([("S", [1, 1, 0, 0, 1], [0.875, 0.875, 0.375, 0.375, 0.375])])
    split = splits_frame([("S", "P", 0, "tumour")])
    got = {}
    for rule, kwargs in [("majority", {}), ("mean", {}), ("fraction", {}),
                         ("fraction", {"fraction_threshold": 0.25}),
                         ("mean", {"threshold": 0.625}),
                         ("fraction", {"fraction_threshold": 0.75})]:
        slides, _ = verdicts(rows, split, rule, **kwargs)
        got[(rule, tuple(kwargs.values()))] = (slides.loc[0, "verdict"], slides.loc[0, "truth"],
                                               bool(slides.loc[0, "correct"]))
    assert got[("majority", ())] == ("normal", "tumour", False)
    assert got[("mean", ())] == ("tumour", "tumour", True)
    assert got[("fraction", ())] == ("normal", "tumour", False)
    assert got[("fraction", (0.25,))] == ("tumour", "tumour", True)
    assert got[("mean", (0.625,))] == ("normal", "tumour", False)  # 0.575 < 0.625
    assert got[("fraction", (0.75,))] == ("normal", "tumour", False)  # 0.4 < 0.75
    slides, _ = verdicts(rows, split, "mean")
    assert slides.loc[0, "mean_prob"] == pytest.approx(0.575)
    assert slides.loc[0, "tumour_fraction_pred"] == pytest.approx(0.4)
    assert slides.loc[0, "tumour_fraction_true"] == pytest.approx(0.6)
    assert slides.loc[0, "n_tumour_pred"] == 2 and slides.loc[0, "n_patches"] == 5


def test_ambiguous_patches_excluded_by_default():
    # 3 ambiguous patches predicted tumour, 2 labelled ones predicted normal
    rows = fused([("S", [-1, -1, -1, 1, 0], [0.9, 0.9, 0.9, 0.1, 0.2])])
    split = splits_frame([("S", "P", 0, "tumour")])
    slides, _ = verdicts(rows, split)
    assert slides.loc[0, "n_patches"] == 2 and slides.loc[0, "n_ambiguous"] == 3
    assert slides.loc[0, "verdict"] == "normal"  # 0 vs 2
    assert slides.loc[0, "truth"] == "tumour" and not bool(slides.loc[0, "correct"])
    slides, _ = verdicts(rows, split, exclude_ambiguous=False)
    assert slides.loc[0, "n_patches"] == 5
    assert slides.loc[0, "verdict"] == "tumour"  # 3 vs 2
    assert slides.loc[0, "truth"] == "tumour" and bool(slides.loc[0, "correct"])
    assert slides.loc[0, "mean_prob"] == pytest.approx((0.9 * 3 + 0.1 + 0.2) / 5)


def test_slide_without_usable_patch_is_listed_but_not_scored(tmp_path):
    pred = tmp_path / "pred"
    write_pred(pred, "A", "P1", 0, [1, 1, 0], [0.9, 0.9, 0.1])
    write_pred(pred, "B", "P1", 0, [-1, -1], [0.9, 0.9])  # all ambiguous
    write_pred(pred, "C", "P2", 1, [], [])  # no patch at all
    write_pred(pred, "D", "P3", 2, [0, 0], [0.8, 0.2])  # tie 1/1 -> tumour, truth normal
    write_pred(pred, "E", "P4", 0, [1, 0], [0.9, 0.1])  # a verdict but no diagnosis
    splits = write_splits(tmp_path / "splits.tsv", [
        ("A", "P1", 0, "tumour"), ("B", "P1", 0, "tumour"), ("C", "P2", 1, "normal"),
        ("D", "P3", 2, "normal"), ("E", "P4", 0, None)])
    slides, patients, summary = aggregate(pred, splits, tmp_path / "out")
    s = by_slide(slides)
    assert s.loc["B", "verdict"] == "" and s.loc["B", "truth"] == "tumour"
    assert s.loc["E", "verdict"] == "tumour" and s.loc["E", "truth"] == ""
    for slide in ("B", "C", "E"):
        assert pd.isna(s.loc[slide, "correct"]), slide
    assert s.loc["C", "n_patches"] == 0 and s.loc["B", "n_ambiguous"] == 2
    assert summary["n_slides"] == 5 and summary["n_slides_unscored"] == 3
    assert summary["unscored_slides"] == ["B", "C", "E"]
    assert summary["undiagnosed_slides"] == ["E"]
    assert summary["slide_accuracy"] == pytest.approx(0.5)  # A right, D wrong
    p = patients.set_index("patient_id")
    assert p.loc["P2", "verdict"] == "" and pd.isna(p.loc["P2", "recognition_rate"])
    assert p.loc["P4", "truth"] == "" and pd.isna(p.loc["P4", "correct"])
    assert p.loc["P1", "n_slides"] == 2
    # RR over P1 (3/3 correct), P3 (1/2) and P4 (2/2); P2 has no labelled patch
    assert summary["recognition_rate"] == pytest.approx((1.0 + 0.5 + 1.0) / 3)
    assert summary["n_patients_scored"] == 2  # P1 right, P3 wrong
    assert summary["patient_accuracy"] == pytest.approx(0.5)
    written = pd.read_csv(tmp_path / "out" / "slides.tsv", sep="\t", keep_default_na=False)
    assert written.set_index("slide_id").loc["B", "correct"] == ""
    assert written.set_index("slide_id").loc["E", "truth"] == ""


def test_patient_verdict_pools_patches_not_slides():
    # slide A 3/3 predicted tumour, slide B 1/6: slides tumour + normal, patient 4/9 ->
    # normal (not "any slide tumour", not a vote of slides); A is diagnosed tumour, so
    # the patient is tumour and its normal verdict wrong
    rows = fused([("A", [1, 1, 1], [0.9, 0.8, 0.7]),
                  ("B", [0, 0, 0, 0, 0, 0], [0.1, 0.2, 0.3, 0.1, 0.6, 0.2])])
    split = splits_frame([("A", "P", 1, "tumour"), ("B", "P", 1, "normal")])
    slides, patients = verdicts(rows, split)
    assert by_slide(slides)["verdict"].to_dict() == {"A": "tumour", "B": "normal"}
    assert by_slide(slides)["correct"].astype(bool).to_dict() == {"A": True, "B": True}
    assert len(patients) == 1
    row = patients.iloc[0]
    assert row["verdict"] == "normal" and row["truth"] == "tumour" and not row["correct"]
    assert row["n_patches"] == 9 and row["n_tumour_pred"] == 4 and row["n_slides"] == 2
    assert row["fold"] == 1
    assert row["recognition_rate"] == pytest.approx(8 / 9)  # only B's 0.6 patch is wrong
    assert row["mean_prob"] == pytest.approx(
        np.mean([0.9, 0.8, 0.7, 0.1, 0.2, 0.3, 0.1, 0.6, 0.2]))


def test_patient_truth_tumour_if_any_slide_is():
    got = patient_diagnoses(["p1", "p1", "p2", "p2", "p3", "p4", "p4"],
                            ["normal", "tumour", "normal", "", "", "", "tumour"])
    assert got.to_dict() == {"p1": "tumour", "p2": "normal", "p3": "", "p4": "tumour"}
    rows = fused([(s, [0, 0], [0.1, 0.2]) for s in ("a", "b", "c", "d")])
    split = splits_frame([("a", "p1", 0, "normal"), ("b", "p1", 0, "tumour"),
                          ("c", "p2", 1, "normal"), ("d", "p3", 2, "")])
    _, patients = verdicts(rows, split)
    p = patients.set_index("patient_id")
    assert p["truth"].to_dict() == {"p1": "tumour", "p2": "normal", "p3": ""}
    assert not p.loc["p1", "correct"] and p.loc["p2", "correct"]
    assert pd.isna(p.loc["p3", "correct"])


def test_splits_without_diagnosis_are_refused():
    split = pd.DataFrame([("A", "P1", 0)], columns=["slide_id", "patient_id", "fold"])
    with pytest.raises(SplitError, match="no diagnosis column") as err:
        verdicts(TIE_ROWS.iloc[:4], split)
    assert "split rule" in str(err.value)


def test_unknown_rule_and_tie_are_errors():
    with pytest.raises(MultimagError, match="unknown aggregation rule"):
        verdicts(TIE_ROWS, TIE_SPLITS, "vote")
    with pytest.raises(MultimagError, match="unknown tie rule"):
        verdicts(TIE_ROWS, TIE_SPLITS, tie="coin")


# -- against a plain re-computation on a random cohort -----------------------------------


def _expected(labels, preds, probs, rule, tie, thr=0.5, frac=0.5):
    """Verdict and recognition rate of one group, written out plainly."""
    used = [i for i, lab in enumerate(labels) if lab != -1]
    n = len(used)
    n_t = sum(preds[i] for i in used)
    mean = sum(probs[i] for i in used) / n if n else 0.0
    if n == 0:
        verdict = ""
    elif rule == "majority":
        verdict = tie if n_t * 2 == n else ("tumour" if n_t * 2 > n else "normal")
    elif rule == "mean":
        verdict = "tumour" if mean >= thr else "normal"
    else:
        verdict = "tumour" if n_t / n >= frac else "normal"
    labelled = [i for i in used if labels[i] in (0, 1)]
    rr = (sum(1 for i in labelled if preds[i] == labels[i]) / len(labelled) if labelled
          else float("nan"))
    return verdict, rr


def _patient_truth(diagnoses):
    if "tumour" in diagnoses:
        return "tumour"
    return "normal" if "normal" in diagnoses else ""


@pytest.mark.parametrize("rule", ["majority", "mean", "fraction"])
@pytest.mark.parametrize("tie", ["tumour", "normal"])
def test_random_cohort_matches_plain_computation(tmp_path, rule, tie):
    rng = np.random.default_rng(3)
    pred = tmp_path / "pred"
    rows, data = [], {}
    for p in range(6):
        for s in range(1 + p % 3):
            slide, fold = f"S{p}{s}", p % 3
            n = int(rng.integers(1, 9))
            labels = rng.choice([-1, 0, 1], size=n, p=[0.2, 0.4, 0.4]).tolist()
            probs = [float(np.float32(v)) for v in rng.choice([0.125, 0.375, 0.625, 0.875],
                                                                size=n)]
            diagnosis = str(rng.choice(["tumour", "normal", ""], p=[0.45, 0.4, 0.15]))
            write_pred(pred, slide, f"P{p}", fold, labels, probs)
            rows.append((slide, f"P{p}", fold, diagnosis))
            data[slide] = (f"P{p}", labels, probs, diagnosis)
    splits = write_splits(tmp_path / "splits.tsv", rows)
    slides, patients, summary = aggregate(pred, splits, tmp_path / "out", rule, tie=tie,
                                          fraction_threshold=0.4)
    s = by_slide(slides)
    for slide, (_, labels, probs, diagnosis) in data.items():
        preds = [int(v >= 0.5) for v in probs]
        verdict, rr = _expected(labels, preds, probs, rule, tie, frac=0.4)
        assert s.loc[slide, "verdict"] == verdict, slide
        assert s.loc[slide, "truth"] == diagnosis, slide
        if verdict and diagnosis:
            assert bool(s.loc[slide, "correct"]) == (verdict == diagnosis)
        else:
            assert pd.isna(s.loc[slide, "correct"]), slide
        if verdict:
            assert s.loc[slide, "recognition_rate"] == pytest.approx(rr)
    rrs, patient_correct = [], []
    p = patients.set_index("patient_id")
    for patient in sorted({v[0] for v in data.values()}):
        mine = [v for v in data.values() if v[0] == patient]
        labels, probs = sum((v[1] for v in mine), []), sum((v[2] for v in mine), [])
        preds = [int(v >= 0.5) for v in probs]
        verdict, rr = _expected(labels, preds, probs, rule, tie, frac=0.4)
        truth = _patient_truth([v[3] for v in mine])
        assert p.loc[patient, "verdict"] == verdict and p.loc[patient, "truth"] == truth
        if verdict:
            rrs.append(rr)
        if verdict and truth:
            patient_correct.append(verdict == truth)
    assert summary["recognition_rate"] == pytest.approx(np.nanmean(rrs))
    assert summary["patient_accuracy"] == pytest.approx(np.mean(patient_correct))
    scored = [s.loc[k, "verdict"] == v[3] for k, v in data.items()
              if s.loc[k, "verdict"] and v[3]]
    assert summary["slide_accuracy"] == pytest.approx(np.mean(scored))
    assert summary["n_slides_scored"] == len(scored)
    # the files say the same as the returned frames
    out = tmp_path / "out"
    back = pd.read_csv(out / "slides.tsv", sep="\t", keep_default_na=False)
    assert back["verdict"].tolist() == slides["verdict"].tolist()
    assert back["truth"].tolist() == slides["truth"].tolist()
    assert list(back.columns) == list(slides.columns)
    assert json.loads((out / "summary.json").read_text())["rule"] == rule
    assert not [f for f in out.iterdir() if f.name.startswith(".")]  # no temp files left


# -- reading and its errors --------------------------------------------------------------


def _cohort(tmp_path: Path) -> tuple[Path, Path]:
    pred = tmp_path / "pred"
    rows = [("A", "P1", 0, "tumour"), ("B", "P2", 1, "normal"), ("C", "P3", 2, "tumour")]
    for slide, patient, fold, _ in rows:
        write_pred(pred, slide, patient, fold, [1, 0], [0.75, 0.25])
    return pred, write_splits(tmp_path / "splits.tsv", rows)


def test_read_predictions_views_and_metadata(tmp_path):
    pred, splits = _cohort(tmp_path)
    everything = read_predictions(pred, splits)
    assert len(everything) == 3 * 2 * 3  # slides x patches x (fused + 2 magnifications)
    only_fused = read_predictions(pred, splits, fused=True)
    assert set(only_fused["view"]) == {"fused"} and len(only_fused) == 6
    mags = read_predictions(pred, splits, fused=False, slides=["B"])
    assert set(mags["view"]) == set(MAGS) and set(mags["slide_id"]) == {"B"}
    assert everything.attrs["multimag"]["method"] == "smse"


def test_missing_slide_names_slide_directory_and_fix(tmp_path):
    pred, _ = _cohort(tmp_path)
    splits = write_splits(tmp_path / "s2.tsv", [("A", "P1", 0, "tumour"), ("B", "P2", 1, ""),
                                                ("C", "P3", 2, ""), ("D", "P4", 0, ""),
                                                ("E", "P5", 1, "")])
    with pytest.raises(PredictionsError) as err:
        aggregate(pred, splits, tmp_path / "out")
    msg = str(err.value)
    assert "2 slide(s)" in msg and "D, E" in msg and str(pred) in msg and "predict" in msg
    assert not (tmp_path / "out").exists()


def test_mixed_configurations_name_the_offending_file(tmp_path):
    pred, splits = _cohort(tmp_path)
    write_pred(pred, "B", "P2", 1, [1, 0], [0.75, 0.25], config="deadbeef" * 8)
    with pytest.raises(PredictionsError) as err:
        aggregate(pred, splits, tmp_path / "out")
    msg = str(err.value)
    assert "mixed" in msg and "B.parquet" in msg and "deadbeefdead" in msg
    assert "A.parquet" not in msg  # the majority is not blamed
    write_pred(pred, "B", "P2", 1, [1, 0], [0.75, 0.25], method="dsml")
    with pytest.raises(PredictionsError, match=r"B\.parquet \(method 'dsml'"):
        read_predictions(pred, splits)


def test_slide_predicted_by_another_folds_model_is_a_leak(tmp_path):
    pred, splits = _cohort(tmp_path)
    write_pred(pred, "C", "P3", 2, [1, 0], [0.75, 0.25], meta_fold=0)
    with pytest.raises(PredictionsError) as err:
        aggregate(pred, splits, tmp_path / "out")
    msg = str(err.value)
    assert "'C'" in msg and "fold 0" in msg and "test fold 2" in msg and "leak" in msg
    assert "C.parquet" in msg


def test_fold_column_disagreeing_with_metadata_is_an_error(tmp_path):
    pred, splits = _cohort(tmp_path)
    write_pred(pred, "C", "P3", 1, [1, 0], [0.75, 0.25], meta_fold=2)
    with pytest.raises(PredictionsError, match="column fold disagrees"):
        read_predictions(pred, splits)


def test_schema_errors(tmp_path):
    pred, splits = _cohort(tmp_path)
    table = pq.read_table(pred / "A.parquet").drop_columns(["prob_tumour"])
    pq.write_table(table, pred / "A.parquet")
    with pytest.raises(PredictionsError, match="missing column.*prob_tumour"):
        read_predictions(pred, splits)
    pred, splits = _cohort(tmp_path / "again")
    table = pq.read_table(pred / "A.parquet").replace_schema_metadata({})
    pq.write_table(table, pred / "A.parquet")
    with pytest.raises(PredictionsError, match="metadata"):
        read_predictions(pred, splits)
    pred, splits = _cohort(tmp_path / "third")
    write_pred(pred, "A", "P9", 0, [1, 0], [0.75, 0.25])
    with pytest.raises(PredictionsError, match="patient_id differs"):
        read_predictions(pred, splits)
