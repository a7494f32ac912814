"""Every voting rule side by side, per method: ``voting.tsv`` and ``voting.md``.

One row per method and rule (``majority``, ``mean``, ``fraction``) with the
slide and patient accuracy, sensitivity and specificity against the diagnosis
and the slide-level ROC AUC of the predicted tumour fraction, over all test
folds pooled, so a user can pick a rule for a cohort from one table. Columns
and formulas: docs/evaluate.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from multimag.atomic import atomic_path
from multimag.dataset.splits import splits_frame
from multimag.evaluate.aggregate import RULES, TUMOUR, verdicts
from multimag.evaluate.metrics import NAN

__all__ = ["VOTING_COLUMNS", "level_scores", "voting_markdown", "voting_rows",
           "voting_table", "write_voting"]

VOTING_OPTIONS = ("rule", "tie", "threshold", "fraction_threshold", "exclude_ambiguous")
LEVEL_SCORES = ("n_scored", "accuracy", "sensitivity", "specificity")
VOTING_COLUMNS = ("method", "rule", "setting", "configured",
                  *(f"slide_{m}" for m in LEVEL_SCORES),
                  *(f"patient_{m}" for m in LEVEL_SCORES), "slide_roc_auc")


def level_scores(table: pd.DataFrame) -> dict[str, Any]:
    """Accuracy, sensitivity (tumour recall) and specificity (normal recall) of the
    scored rows of a slides or patients table (of ``verdicts``); NaN when undefined."""
    from sklearn.metrics import confusion_matrix

    scored = table[table["correct"].notna()]
    if not len(scored):
        return {"n_scored": 0, "accuracy": NAN, "sensitivity": NAN, "specificity": NAN}
    truth = (scored["truth"] == TUMOUR).to_numpy()
    verdict = (scored["verdict"] == TUMOUR).to_numpy()
    (tn, fp), (fn, tp) = confusion_matrix(truth, verdict, labels=[False, True])

    def ratio(num: int, den: int) -> float:
        return float(num / den) if den else NAN

    return {"n_scored": int(len(scored)), "accuracy": ratio(tp + tn, len(scored)),
            "sensitivity": ratio(tp, tp + fn), "specificity": ratio(tn, tn + fp)}


def _slide_roc_auc(slides: pd.DataFrame) -> float:
    """ROC AUC of ``tumour_fraction_pred`` against the diagnosis (NaN with one class)."""
    from sklearn.metrics import roc_auc_score

    score = pd.to_numeric(slides["tumour_fraction_pred"], errors="coerce")
    keep = (slides["truth"] != "") & score.notna()
    truth = (slides.loc[keep, "truth"] == TUMOUR).to_numpy()
    if len(np.unique(truth)) < 2:
        return NAN
    return float(roc_auc_score(truth, score[keep].to_numpy(dtype=np.float64)))


def _setting(rule: str, tie: str, threshold: float, fraction_threshold: float) -> str:
    if rule == "majority":
        return f"tie {tie}"
    if rule == "mean":
        return f"threshold {threshold:g}"
    return f"fraction_threshold {fraction_threshold:g}"


def voting_rows(method: str, fused: pd.DataFrame, splits: pd.DataFrame, *,
                rule: str = "majority", tie: str = "tumour", threshold: float = 0.5,
                fraction_threshold: float = 0.5, exclude_ambiguous: bool = True
                ) -> list[dict[str, Any]]:
    """One row per voting rule of one method's ``fused`` rows; ``rule`` is the
    configured one (``configured`` True), the other parameters as in ``verdicts``."""
    rows = []
    for each in RULES:
        slides, patients = verdicts(fused, splits, each, tie=tie, threshold=threshold,
                                    fraction_threshold=fraction_threshold,
                                    exclude_ambiguous=exclude_ambiguous)
        row: dict[str, Any] = {"method": str(method), "rule": each,
                               "setting": _setting(each, tie, threshold, fraction_threshold),
                               "configured": each == rule}
        for level, table in (("slide", slides), ("patient", patients)):
            row.update({f"{level}_{k}": v for k, v in level_scores(table).items()})
        row["slide_roc_auc"] = _slide_roc_auc(slides)  # the same for every rule
        rows.append(row)
    return rows


def voting_table(fused_rows: Mapping[str, pd.DataFrame], splits: pd.DataFrame | str | Path,
                 **options: Any) -> pd.DataFrame:
    """The table of :func:`voting_rows` of every method (method -> its fused predictions,
    ``read_predictions(..., fused=True)``).

    ``options``: those of :func:`voting_rows`; others (of ``evaluate_method``) are
    ignored.
    """
    splits = splits_frame(splits)
    kept = {k: v for k, v in options.items() if k in VOTING_OPTIONS}
    rows: list[dict[str, Any]] = []
    for method, fused in fused_rows.items():
        rows += voting_rows(method, fused, splits, **kept)
    return pd.DataFrame(rows, columns=list(VOTING_COLUMNS))


def _number(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def voting_markdown(table: pd.DataFrame) -> str:
    """``table`` as Markdown: one row per method and rule, the configured rule marked
    ``*``; counts as integers, scores with three decimals."""
    head = ["method", "rule", "slides", "slide acc", "slide sens", "slide spec", "patients",
            "patient acc", "patient sens", "patient spec", "slide ROC AUC"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for _, r in table.iterrows():
        rule = f"{r['rule']} ({r['setting']})" + (" *" if bool(r["configured"]) else "")
        cells = [str(r["method"]), rule]
        for level in ("slide", "patient"):
            cells.append(_number(r[f"{level}_n_scored"], 0))
            cells += [_number(r[f"{level}_{m}"]) for m in ("accuracy", "sensitivity",
                                                           "specificity")]
        cells.append(_number(r["slide_roc_auc"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n`*` the configured rule (`aggregate.rule`).\n"


def write_voting(table: pd.DataFrame, out_dir: str | Path) -> dict[str, Path]:
    """Write ``voting.tsv`` and ``voting.md`` into ``out_dir`` atomically."""
    out_dir = Path(out_dir)
    paths = {"tsv": out_dir / "voting.tsv", "markdown": out_dir / "voting.md"}
    with atomic_path(paths["tsv"]) as tmp, open(tmp, "w", newline="") as handle:
        table.to_csv(handle, sep="\t", index=False, lineterminator="\n", na_rep="NaN")
    with atomic_path(paths["markdown"]) as tmp:
        tmp.write_text(voting_markdown(table), encoding="utf-8")
    return paths
