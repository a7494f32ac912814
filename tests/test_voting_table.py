"""The voting rules side by side: every method x rule, accuracy, sensitivity and
specificity against the diagnosis at slide and patient level, the slide ROC AUC,
and the files the evaluate step writes."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, recall_score, roc_auc_score
from test_aggregate import write_pred, write_splits

from multimag.evaluate.aggregate import RULES
from multimag.evaluate.evaluation import evaluate
from multimag.evaluate.voting_table import (
    VOTING_COLUMNS,
    level_scores,
    voting_rows,
    voting_table,
)
from multimag.learn.predictions import read_predictions

# slide: (patient, fold, diagnosis, P(tumour) per patch). The patch labels contradict
# the diagnosis on purpose (tumour slides all 0, normal slides all 1): the truth must
# come from the diagnosis alone.
SLIDES = {
    "A": ("P1", 0, "tumour", [0.9, 0.8, 0.3, 0.1]),  # 2/4 predicted tumour, mean 0.525
    "B": ("P1", 0, "normal", [0.1, 0.2, 0.3]),  # 0/3, mean 0.2
    "C": ("P2", 1, "tumour", [0.6, 0.3, 0.3, 0.3]),  # 1/4, mean 0.375
    "D": ("P3", 2, "normal", [0.7, 0.4, 0.45]),  # 1/3, mean 0.517
    "E": ("P4", 2, "tumour", [0.95, 0.9, 0.85]),  # 3/3, mean 0.9
    "F": ("P4", 2, "", [0.1, 0.1]),  # no diagnosis: unscored
}
OPTIONS = {"rule": "majority", "tie": "tumour", "threshold": 0.5, "fraction_threshold": 0.2}
# verdicts worked out by hand from the table above (majority: tie -> tumour; mean >= 0.5;
# fraction >= 0.2); patients pool their slides' patches: P1 2/7 (mean 0.386), P2 1/4,
# P3 1/3 (mean 0.517), P4 3/5 (mean 0.58)
SLIDE_VERDICTS = {"majority": "TNNNT", "mean": "TNNTT", "fraction": "TNTTT"}  # A..E
PATIENT_VERDICTS = {"majority": "NNNT", "mean": "NNTT", "fraction": "TTTT"}  # P1..P4
SLIDE_TRUTH, PATIENT_TRUTH = "TNTNT", "TTNT"


def _fused() -> pd.DataFrame:
    rows = []
    for slide, (_, _, diagnosis, probs) in SLIDES.items():
        label = 0 if diagnosis == "tumour" else 1
        rows += [{"slide_id": slide, "label": label, "prob_tumour": p, "pred": int(p >= 0.5),
                  "view": "fused"} for p in probs]
    return pd.DataFrame(rows)


def _splits() -> pd.DataFrame:
    return pd.DataFrame([(s, p, f, d) for s, (p, f, d, _) in SLIDES.items()],
                        columns=["slide_id", "patient_id", "fold", "diagnosis"])


def _expected(verdicts: str, truth: str) -> dict[str, float]:
    y = [c == "T" for c in truth]
    yhat = [c == "T" for c in verdicts]
    return {"accuracy": accuracy_score(y, yhat),
            "sensitivity": recall_score(y, yhat, pos_label=True),
            "specificity": recall_score(y, yhat, pos_label=False)}


def test_every_rule_scored_against_the_diagnosis():
    rows = pd.DataFrame(voting_rows("m", _fused(), _splits(), **OPTIONS)).set_index("rule")
    assert list(rows.index) == list(RULES)
    assert rows["configured"].to_dict() == {"majority": True, "mean": False,
                                            "fraction": False}
    assert rows.loc["fraction", "setting"] == "fraction_threshold 0.2"
    for rule in RULES:
        assert rows.loc[rule, "slide_n_scored"] == 5  # F has no diagnosis
        assert rows.loc[rule, "patient_n_scored"] == 4  # P4 is E's (tumour) and F's
        for level, verdicts, truth in (("slide", SLIDE_VERDICTS, SLIDE_TRUTH),
                                       ("patient", PATIENT_VERDICTS, PATIENT_TRUTH)):
            for metric, value in _expected(verdicts[rule], truth).items():
                assert rows.loc[rule, f"{level}_{metric}"] == pytest.approx(value), \
                    (rule, level, metric)
    # spelled out for two cells: the trade-off a user reads off the table
    assert rows.loc["majority", "slide_sensitivity"] == pytest.approx(2 / 3)
    assert rows.loc["fraction", "slide_sensitivity"] == pytest.approx(1.0)
    assert rows.loc["fraction", "slide_specificity"] == pytest.approx(0.5)
    # the slide ROC AUC ranks the predicted tumour fraction of the diagnosed slides
    fractions = [0.5, 0.0, 0.25, 1 / 3, 1.0]  # A..E
    auc = roc_auc_score([c == "T" for c in SLIDE_TRUTH], fractions)
    assert auc == pytest.approx(5 / 6)
    assert rows["slide_roc_auc"].tolist() == pytest.approx([auc] * 3)


def test_level_scores_undefined_without_a_class():
    table = pd.DataFrame({"verdict": ["tumour", "normal", ""], "truth": ["tumour"] * 3,
                          "correct": pd.array([True, False, pd.NA], dtype="boolean")})
    got = level_scores(table)
    assert got["n_scored"] == 2 and got["accuracy"] == pytest.approx(0.5)
    assert got["sensitivity"] == pytest.approx(0.5) and math.isnan(got["specificity"])
    none = level_scores(table.iloc[2:])
    assert none["n_scored"] == 0 and all(math.isnan(none[k]) for k in
                                         ("accuracy", "sensitivity", "specificity"))


def test_evaluate_writes_the_voting_table_for_every_method(tmp_path):
    splits = write_splits(tmp_path / "splits.tsv",
                          [(s, p, f, d) for s, (p, f, d, _) in SLIDES.items()])
    dirs = {}
    for method in ("smse", "dsml"):
        dirs[method] = tmp_path / "pred" / method
        for slide, (patient, fold, diagnosis, probs) in SLIDES.items():
            label = 0 if diagnosis == "tumour" else 1
            write_pred(dirs[method], slide, patient, fold, [label] * len(probs), probs,
                       method=method)
    evaluate(dirs, splits, tmp_path / "results", k=1, **OPTIONS)
    table = pd.read_csv(tmp_path / "results" / "voting.tsv", sep="\t")
    assert list(table.columns) == list(VOTING_COLUMNS)
    assert list(zip(table["method"], table["rule"], strict=True)) == [
        (m, r) for m in ("smse", "dsml") for r in RULES]
    expected = pd.DataFrame(voting_rows("smse", _fused(), _splits(), **OPTIONS))
    mine = table[table["method"] == "smse"].reset_index(drop=True)
    for column in VOTING_COLUMNS[4:]:
        np.testing.assert_allclose(mine[column].to_numpy(dtype=float),
                                   expected[column].to_numpy(dtype=float), err_msg=column)
    fused = {m: read_predictions(d, splits, fused=True, columns=[]) for m, d in dirs.items()}
    assert table.equals(voting_table(fused, splits, **OPTIONS, k=1))
    markdown = (tmp_path / "results" / "voting.md").read_text(encoding="utf-8")
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert len(lines) == 1 + 2 * len(RULES)  # header, then one row per method and rule
    assert "| smse | majority (tie tumour) * | 5 | 0.800 | 0.667 | 1.000 | 4 | 0.500 |" \
        in markdown
