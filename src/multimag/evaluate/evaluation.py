"""Rule ``evaluate``: metrics per method and fold, and one results table across methods.

Patch metrics (fused and per magnification), slide and patient accuracy and the
recognition rate (reusing :mod:`multimag.evaluate.aggregate`), and the quality of
the test embeddings. ``docs/evaluate.md`` defines every column of ``metrics.tsv``,
``summary.tsv`` and ``summary.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from multimag.atomic import atomic_path
from multimag.dataset.splits import read_splits
from multimag.errors import MultimagError
from multimag.evaluate.aggregate import verdict_summary, verdicts
from multimag.evaluate.bootstrap import add_intervals, method_intervals
from multimag.evaluate.metrics import (
    EMBEDDING_METRICS,
    NAN,
    embedding_metrics,
    patch_metrics,
)
from multimag.evaluate.voting_table import voting_table, write_voting
from multimag.learn.predictions import FUSED, read_predictions


def _view_order(views: Sequence[str]) -> list[str]:
    def key(view: str) -> tuple[int, float, str]:
        try:
            return (0, -float(view.rstrip("x")), view)
        except ValueError:
            return (1, 0.0, view)

    return sorted({str(v) for v in views if str(v) != FUSED}, key=key)


def _stack(embeddings: pd.Series) -> np.ndarray | None:
    """(n, d) float array of a column of per-row vectors, None if empty or ragged."""
    values = [np.asarray(v, dtype=np.float64) for v in embeddings if v is not None]
    if not values or len({v.shape for v in values}) != 1 or values[0].ndim != 1:
        return None
    return np.stack(values)


def _embedding_block(rows: pd.DataFrame, prefix: str, k: int, seed: int,
                     max_points: int) -> dict[str, float]:
    rows = rows[rows["embedding"].notna()]
    emb = _stack(rows["embedding"])
    if emb is None:
        return {f"{prefix}{m}": (0.0 if m == "n_points" else NAN) for m in EMBEDDING_METRICS}
    found = embedding_metrics(emb, rows["label"].to_numpy(), rows["patient_id"].astype(str)
                              .to_numpy(), k=k, seed=seed, max_points=max_points)
    return {f"{prefix}{m}": v for m, v in found.items()}


def evaluate_method(pred_dir: str | Path, splits_path: str | Path | pd.DataFrame,
                    out_dir: str | Path | None = None, *, rule: str = "majority",
                    tie: str = "tumour", threshold: float = 0.5,
                    fraction_threshold: float = 0.5, exclude_ambiguous: bool = True,
                    k: int = 5, max_points: int = 5000, seed: int = 0,
                    fused: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per test fold of one method's predictions (columns in
    ``docs/evaluate.md``); writes ``{out_dir}/metrics.tsv`` when ``out_dir`` is given.
    ``fused``: the folder's fused rows, when the caller has read them already.

    ``rule``, ``tie``, ``threshold``, ``fraction_threshold`` and ``exclude_ambiguous``
    are those of :func:`multimag.evaluate.aggregate.aggregate`; ``k``, ``max_points`` and
    ``seed`` those of :func:`embedding_metrics`.
    """
    splits = (read_splits(splits_path) if isinstance(splits_path, (str, Path))
              else splits_path.reset_index(drop=True))
    fused_all = (read_predictions(pred_dir, splits, fused=True, columns=[]) if fused is None
                 else fused)
    method = fused_all.attrs.get("multimag", {}).get("method") or Path(pred_dir).name
    rows = []
    for fold in sorted(splits["fold"].astype(int).unique().tolist()):
        fold_splits = splits[splits["fold"].astype(int) == fold].reset_index(drop=True)
        ids = fold_splits["slide_id"].astype(str).tolist()
        fused = fused_all[fused_all["slide_id"].astype(str).isin(ids)]
        per_mag = read_predictions(pred_dir, splits, fused=False, labelled_only=True,
                                   columns=["embedding"], slides=ids)
        row: dict[str, Any] = {"fold": fold, "method": method,
                               "n_slides": len(ids),
                               "n_patients": int(fold_splits["patient_id"].nunique())}
        row.update(patch_metrics(fused["label"], fused["prob_tumour"], fused["pred"]))
        views = _view_order(per_mag["view"].unique().tolist())
        for view in views:
            sub = per_mag[per_mag["view"] == view]
            found = patch_metrics(sub["label"], sub["prob_tumour"], sub["pred"])
            row.update({f"{view}_{m}": v for m, v in found.items()})
        slides, patients = verdicts(fused, fold_splits, rule, tie=tie, threshold=threshold,
                                    fraction_threshold=fraction_threshold,
                                    exclude_ambiguous=exclude_ambiguous)
        levels = verdict_summary(slides, patients)
        for key in ("slide_accuracy", "patient_accuracy", "recognition_rate"):
            row[key] = NAN if levels[key] is None else levels[key]
        row["n_slides_unscored"] = levels["n_slides_unscored"]
        row.update(_embedding_block(per_mag, "", k, seed, max_points))
        for view in views:
            row.update(_embedding_block(per_mag[per_mag["view"] == view], f"{view}_", k, seed,
                                        max_points))
        rows.append(row)
    table = pd.DataFrame(rows)
    if out_dir is not None:
        _write_tsv(table, Path(out_dir) / "metrics.tsv")
    return table


def summarise(per_fold_tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per method: ``method``, ``folds``, ``{metric}_mean``, ``{metric}_std``.

    Every numeric column but ``fold`` is a metric. Mean and sample standard
    deviation (``ddof=1``) skip NaN folds; the std of a single fold is NaN.
    """
    rows = []
    for method, table in per_fold_tables.items():
        row: dict[str, Any] = {"method": str(method), "folds": int(len(table))}
        for column in table.columns:
            if column == "fold" or not pd.api.types.is_numeric_dtype(table[column]) \
                    or pd.api.types.is_bool_dtype(table[column]):
                continue
            values = table[column].astype(np.float64)
            row[f"{column}_mean"] = float(values.mean()) if values.notna().any() else NAN
            row[f"{column}_std"] = (float(values.std(ddof=1)) if values.notna().sum() > 1
                                    else NAN)
        rows.append(row)
    return pd.DataFrame(rows)


def _cell(mean: float, std: float, low: float = NAN, high: float = NAN) -> str:
    if mean is None or not math.isfinite(mean):
        return "n/a"
    text = f"{mean:.3f}" if std is None or not math.isfinite(std) else f"{mean:.3f} ± {std:.3f}"
    if math.isfinite(low) and math.isfinite(high):
        text += f" [{low:.3f}, {high:.3f}]"
    return text


def summary_cells(summary: pd.DataFrame) -> pd.DataFrame:
    """``summary`` (of :func:`summarise`) as text: one row per metric (``folds``
    first), one column per method, cells ``mean ± std [ci_low, ci_high]`` (3 decimals)."""
    metrics = [c[: -len("_mean")] for c in summary.columns if c.endswith("_mean")]
    rows = {"folds": [str(int(f)) for f in summary["folds"]]}
    for metric in metrics:
        parts = [summary.get(f"{metric}_{part}", pd.Series(NAN, index=summary.index))
                 for part in ("mean", "std", "ci_low", "ci_high")]
        rows[metric] = [_cell(*(float(v) for v in values)) for values in zip(*parts, strict=True)]
    return pd.DataFrame.from_dict(rows, orient="index",
                                  columns=summary["method"].astype(str).tolist())


def markdown_table(summary: pd.DataFrame) -> str:
    """``summary`` (of :func:`summarise`) as a Markdown table (:func:`summary_cells`)."""
    cells = summary_cells(summary)
    lines = ["| metric | " + " | ".join(cells.columns) + " |",
             "|---|" + "---:|" * len(cells.columns)]
    lines += [f"| {metric} | " + " | ".join(row) + " |" for metric, row in cells.iterrows()]
    return "\n".join(lines) + "\n"


def _write_tsv(table: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        table.to_csv(handle, sep="\t", index=False, lineterminator="\n", na_rep="NaN")


def write_summary(df: pd.DataFrame, tsv_path: str | Path, md_path: str | Path,
                  html_path: str | Path | None = None) -> None:
    """Write the summary table as TSV, as Markdown and (for the report) as HTML,
    atomically."""
    _write_tsv(df, Path(tsv_path))
    with atomic_path(md_path) as tmp:
        tmp.write_text(markdown_table(df), encoding="utf-8")
    if html_path is not None:
        table = summary_cells(df).rename_axis("metric").to_html(border=0)
        with atomic_path(html_path) as tmp:
            tmp.write_text(f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"></head><body>"
                           f"\n{table}\n</body></html>\n", encoding="utf-8")


def evaluate(pred_dirs: Mapping[str, str | Path] | Sequence[str | Path],
             splits_path: str | Path | pd.DataFrame, out_dir: str | Path,
             bootstrap: Mapping[str, Any] | None = None, **options: Any) -> pd.DataFrame:
    """Evaluate several methods and write the results table.

    ``pred_dirs`` maps method -> predictions directory (a plain list is named by
    the methods in the files' metadata). Writes ``{out_dir}/{method}/metrics.tsv``
    per method, ``{out_dir}/summary.tsv`` + ``summary.md`` + ``summary.html`` (with the
    patient-bootstrap intervals of ``bootstrap``: resamples, seed, level) and the voting
    rules side by side in ``voting.tsv`` + ``voting.md``; returns the summary.
    ``options`` go to :func:`evaluate_method`.
    """
    out_dir = Path(out_dir)
    splits = (read_splits(splits_path) if isinstance(splits_path, (str, Path))
              else splits_path)
    tables: dict[str, pd.DataFrame] = {}
    fused_rows: dict[str, pd.DataFrame] = {}
    items = (list(pred_dirs.items()) if isinstance(pred_dirs, Mapping)
             else [(None, d) for d in pred_dirs])
    for name, pred_dir in items:
        fused = read_predictions(pred_dir, splits, fused=True, columns=[])
        table = evaluate_method(pred_dir, splits, fused=fused, **options)
        if name is not None:
            method = str(name)
        elif len(table):
            method = str(table["method"].iloc[0])
        else:
            method = Path(pred_dir).name
        if method in tables:
            raise MultimagError(f"method {method!r} is given twice", path=pred_dir,
                                fix="evaluate each method's predictions directory once")
        _write_tsv(table, out_dir / method / "metrics.tsv")
        tables[method] = table
        fused_rows[method] = fused
    summary = add_intervals(summarise(tables), {
        method: method_intervals(fused, splits, bootstrap or {}, **options)
        for method, fused in fused_rows.items()})
    write_summary(summary, out_dir / "summary.tsv", out_dir / "summary.md",
                  out_dir / "summary.html")
    write_voting(voting_table(fused_rows, splits, **options), out_dir)  # every rule side by side
    return summary
