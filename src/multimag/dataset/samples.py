"""samples.tsv: the cohort, one row per slide (schema in docs/dataset.md).

Relative paths resolve against the directory of samples.tsv, so a cohort
folder can be moved as a whole.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd

from multimag.errors import SamplesError

REQUIRED = ("slide_id", "patient_id", "path")
OPTIONAL = ("annotation", "mpp", "slide_label")
SLIDE_LABELS = ("tumour", "normal")


def load_samples(path: str | Path) -> pd.DataFrame:
    """The validated table, indexed by slide_id; ``mpp`` is a float or None."""
    path = Path(path)
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False,
                            comment="#")
    except FileNotFoundError as exc:
        raise SamplesError("samples.tsv does not exist", path=path,
                           fix="create it, or run the demo rule for the demo cohort") from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise SamplesError(f"not a tab-separated table ({exc})", path=path,
                           fix="write a header line and one tab-separated row per slide"
                           ) from exc
    table.columns = [c.strip() for c in table.columns]
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise SamplesError(f"missing column(s) {', '.join(missing)}", path=path,
                           fix=f"samples.tsv needs the columns {', '.join(REQUIRED)}")
    table = table.apply(lambda col: col.str.strip())
    for col in OPTIONAL:
        if col not in table.columns:
            table[col] = ""
    for col in REQUIRED:
        empty = table.loc[table[col] == "", "slide_id"].tolist()
        if empty:
            raise SamplesError(f"empty {col} in {len(empty)} row(s)", path=path,
                               fix=f"fill in {col} for every slide")
    dupes = sorted(table.loc[table["slide_id"].duplicated(), "slide_id"].unique())
    if dupes:
        raise SamplesError(f"duplicate slide_id {', '.join(dupes)}", path=path,
                           fix="give every slide a unique slide_id")
    bad_ids = [s for s in table["slide_id"] if not _safe_id(s)]
    if bad_ids:
        raise SamplesError(f"slide_id {bad_ids[0]!r} is not a safe file name", path=path,
                           fix="use letters, digits, '.', '_' and '-' only")

    def mpp(row: pd.Series) -> float | None:
        if row["mpp"] == "":
            return None
        try:
            value = float(row["mpp"])
        except ValueError:
            value = float("nan")
        if not (math.isfinite(value) and value > 0):
            raise SamplesError(f"mpp {row['mpp']!r} of slide {row['slide_id']!r} is not a "
                               "positive number", path=path, fix="give level-0 um/px, e.g. 0.25")
        return value

    table["mpp"] = pd.Series([mpp(r) for _, r in table.iterrows()], index=table.index,
                             dtype=object)
    bad = table.loc[~table["slide_label"].isin(("",) + SLIDE_LABELS), "slide_id"].tolist()
    if bad:
        raise SamplesError(f"slide_label of {', '.join(bad)} is not tumour/normal/empty",
                           path=path, fix="use tumour, normal, or leave it empty")
    base = path.parent
    for col in ("path", "annotation"):
        table[col] = [os.path.normpath(base / p) if p and not Path(p).is_absolute() else p
                      for p in table[col]]
    return table.set_index("slide_id", drop=False)


def _safe_id(slide_id: str) -> bool:
    return (slide_id[:1].isalnum()
            and all(c.isalnum() or c in "._-" for c in slide_id))
