"""The predictions table: one Parquet file per slide and method (rule ``predict``).

This module owns the format (columns, the ``fused`` view, the metadata) and is the
one writer and reader of it; ``docs/evaluate.md`` has the schema and the checks.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from multimag.dataset.index_digest import (
    SUMMARY_FILE,
    index_digest,
    index_test_slides,
    read_index_summary,
)
from multimag.dataset.splits import splits_frame
from multimag.errors import IndexBuildError, PlotError, PredictionsError, short_list
from multimag.tables import METADATA_KEY, read_metadata, write_table

#: the view of a patch's own prediction (beside one view per magnification)
FUSED = "fused"

# column -> predicate on its arrow type (the predictions schema)
COLUMNS: dict[str, Any] = {
    "slide_id": pa.types.is_string,
    "patient_id": pa.types.is_string,
    "fold": pa.types.is_integer,
    "patch": pa.types.is_integer,
    "x": pa.types.is_integer,
    "y": pa.types.is_integer,
    "label": pa.types.is_integer,
    "view": pa.types.is_string,
    "prob_tumour": pa.types.is_floating,
    "pred": pa.types.is_integer,
    "embedding": lambda t: pa.types.is_list(t) or pa.types.is_large_list(t)
    or pa.types.is_fixed_size_list(t) or pa.types.is_null(t),
}
#: the Arrow schema the predict step writes
SCHEMA = pa.schema([("slide_id", pa.string()), ("patient_id", pa.string()),
                    ("fold", pa.int16()), ("patch", pa.int64()), ("x", pa.int64()),
                    ("y", pa.int64()), ("label", pa.int8()), ("view", pa.string()),
                    ("prob_tumour", pa.float32()), ("pred", pa.int8()),
                    ("embedding", pa.list_(pa.float32()))])
#: the columns that place a patch and score it in one view (what a picture of it needs)
PATCH_COLUMNS = ("patch", "x", "y", "label", "view", "prob_tumour")

_FIX_PREDICT = "re-run the predict step (multimag predict) for the current splits"


def check_predictions(pred_dir: str | Path,
                      splits: pd.DataFrame | str | Path) -> dict[str, dict[str, Any]]:
    """Check one method's predictions directory against the splits, from the files'
    schemas and metadata only (no rows are read); return ``{slide_id: metadata}``.

    Raises ``PredictionsError`` when a slide of the splits has no file, a file
    lacks a column of the schema or its metadata, the files mix methods or
    configurations, a slide was predicted by the model of another fold, or the
    index the model trained on (read from its files) lacks the slide among its
    test slides or changed since.
    """
    pred_dir = Path(pred_dir)
    table = splits_frame(splits)
    slide_ids = table["slide_id"].astype(str).tolist()
    _check_every_slide_has_a_file(pred_dir, slide_ids)
    metas = {slide_id: _file_metadata(pred_dir / f"{slide_id}.parquet", slide_id)
             for slide_id in slide_ids}
    _check_one_configuration(pred_dir, metas)
    _check_own_test_fold(pred_dir, metas,
                         dict(zip(slide_ids, table["fold"].astype(int), strict=True)))
    _check_model_indices(pred_dir, metas)
    return metas


def _check_every_slide_has_a_file(pred_dir: Path, slide_ids: list[str]) -> None:
    if not pred_dir.is_dir():
        raise PredictionsError("the predictions directory does not exist", path=pred_dir,
                               fix=_FIX_PREDICT)
    missing = [s for s in slide_ids if not (pred_dir / f"{s}.parquet").is_file()]
    if missing:
        raise PredictionsError(f"{len(missing)} slide(s) of the splits have no predictions "
                               f"file: {short_list(missing)}", path=pred_dir,
                               fix=f"{_FIX_PREDICT} ({{slide_id}}.parquet for every slide)")


def _file_metadata(path: Path, slide_id: str) -> dict[str, Any]:
    """The metadata of one file, after checking its columns and their types."""
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as exc:
        raise PredictionsError(f"not a readable Parquet file ({exc})", slide=slide_id,
                               path=path, fix=_FIX_PREDICT) from exc
    absent = [c for c in COLUMNS if c not in schema.names]
    if absent:
        raise PredictionsError(f"missing column(s) {', '.join(absent)}", slide=slide_id,
                               path=path, fix=_FIX_PREDICT)
    wrong = [f"{c} ({schema.field(c).type})" for c, ok in COLUMNS.items()
             if not ok(schema.field(c).type)]
    if wrong:
        raise PredictionsError(f"column(s) of the wrong type: {', '.join(wrong)}",
                               slide=slide_id, path=path, fix=_FIX_PREDICT)
    meta = read_metadata(schema)
    if not isinstance(meta, dict) or not {"method", "fold", "config_sha256"} <= set(meta):
        raise PredictionsError("no valid 'multimag' metadata (method, fold, config_sha256)",
                               slide=slide_id, path=path, fix=_FIX_PREDICT)
    return meta


def _check_own_test_fold(pred_dir: Path, metas: Mapping[str, Mapping[str, Any]],
                         fold_of: Mapping[str, int]) -> None:
    """Each slide predicted by the model of its own test fold (any other model
    trained or validated on it)."""
    for slide_id, meta in metas.items():
        try:
            predicted_by = int(meta["fold"])
        except (TypeError, ValueError):
            predicted_by = None
        if predicted_by != fold_of[slide_id]:
            raise PredictionsError(
                f"predicted by the model of fold {meta['fold']}, but the splits put the slide "
                f"in test fold {fold_of[slide_id]}: that model trained or validated on it "
                "(a leak), or the splits changed after prediction", slide=slide_id,
                path=pred_dir / f"{slide_id}.parquet",
                fix=f"{_FIX_PREDICT} (the model of fold {fold_of[slide_id]} must predict it)")


def _check_model_indices(pred_dir: Path, metas: Mapping[str, Mapping[str, Any]]) -> None:
    """Each slide is a test slide of the index its model trained on, and that index
    still has the content the model recorded: checked from the index's own files."""
    indices: dict[Path, tuple[str, list[str]]] = {}
    for slide_id, meta in metas.items():
        path = pred_dir / f"{slide_id}.parquet"
        if not all(isinstance(meta.get(k), str) for k in ("index_dir", "index_sha256")):
            raise PredictionsError("the metadata names no model index (index_dir, "
                                   "index_sha256)", slide=slide_id, path=path, fix=_FIX_PREDICT)
        folder = _index_folder(Path(meta["index_dir"]), pred_dir)
        if folder is None:
            raise PredictionsError(f"the index the model trained on ({meta['index_dir']}) "
                                   "is not there", slide=slide_id, path=path,
                                   fix=f"{_FIX_PREDICT}, with models trained on the current "
                                   "indices")
        if folder not in indices:
            try:
                indices[folder] = (index_digest(folder),
                                   index_test_slides(read_index_summary(folder)))
            except IndexBuildError as exc:
                raise PredictionsError(f"the index the model trained on is unreadable: "
                                       f"{exc.what}", slide=slide_id, path=folder,
                                       fix="re-run the index, train and predict steps") from exc
        digest, test_slides = indices[folder]
        if digest != meta["index_sha256"]:
            raise PredictionsError(f"the index the model trained on ({folder}) changed after "
                                   "training", slide=slide_id, path=path,
                                   fix="re-run the train and predict steps on the current "
                                   "index")
        if slide_id not in test_slides:
            raise PredictionsError(f"not a test slide of the index the model trained on "
                                   f"({folder}): that model may have trained or validated on "
                                   "the slide's patient (a leak)", slide=slide_id, path=path,
                                   fix=f"{_FIX_PREDICT} (with the model whose index holds the "
                                   "slide in its test set)")


def _index_folder(recorded: Path, pred_dir: Path) -> Path | None:
    """The index folder a model recorded: as written (absolute, or relative to the
    working directory), else relative to a folder above the predictions (a
    workflow directory run from elsewhere)."""
    candidates = [recorded]
    if not recorded.is_absolute():
        candidates += [base / recorded for base in pred_dir.resolve().parents]
    return next((c for c in candidates if (c / SUMMARY_FILE).is_file()), None)


def _check_one_configuration(pred_dir: Path, metas: Mapping[str, Mapping[str, Any]]) -> None:
    groups: dict[tuple[str, str], list[str]] = {}
    for slide_id, meta in metas.items():
        key = (str(meta["method"]), str(meta["config_sha256"]))
        groups.setdefault(key, []).append(f"{slide_id}.parquet")
    if len(groups) <= 1:
        return
    ordered = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    (method, sha), majority = ordered[0]
    odd = "; ".join(f"{short_list(files)} (method {m!r}, config_sha256 {s[:12]!r})"
                    for (m, s), files in ordered[1:])
    raise PredictionsError(
        f"predictions from {len(groups)} methods/configurations are mixed: {len(majority)} "
        f"file(s) have method {method!r}, config_sha256 {sha[:12]!r}, but {odd}",
        path=pred_dir,
        fix="delete the stale files and re-run the predict step with one configuration")


def read_predictions(pred_dir: str | Path, splits: pd.DataFrame | str | Path, *,
                     fused: bool | None = None, labelled_only: bool = False,
                     columns: Iterable[str] | None = None,
                     slides: Iterable[str] | None = None) -> pd.DataFrame:
    """All rows of one method's predictions, concatenated in splits order.

    ``check_predictions`` runs first over every slide of the splits. ``fused``:
    ``True`` reads only the ``fused`` rows, ``False`` only the per-magnification
    rows, ``None`` both. ``labelled_only`` drops ambiguous patches; ``columns``
    picks columns (the identifying ones are always read); ``slides`` reads a
    subset of the slides. The frame's ``attrs["multimag"]`` holds ``method``,
    ``config_sha256`` and ``magnifications`` of the files.
    """
    pred_dir = Path(pred_dir)
    table = splits_frame(splits)
    metas = check_predictions(pred_dir, table)
    patient_of = dict(zip(table["slide_id"].astype(str), table["patient_id"].astype(str),
                          strict=True))
    wanted = list(patient_of) if slides is None else [str(s) for s in slides]
    unknown = [s for s in wanted if s not in patient_of]
    if unknown:
        raise PredictionsError(f"slide(s) {short_list(unknown)} are not in the splits",
                               path=pred_dir, fix="ask for slides of the splits only")
    cols = list(COLUMNS) if columns is None else list(dict.fromkeys(
        ["slide_id", "patient_id", "fold", "patch", "label", "view", "prob_tumour", "pred",
         *columns]))
    filters = []
    if fused is True:
        filters.append(("view", "=", FUSED))
    elif fused is False:
        filters.append(("view", "!=", FUSED))
    if labelled_only:
        filters.append(("label", ">=", 0))
    frames = []
    for slide_id in wanted:
        path = pred_dir / f"{slide_id}.parquet"
        arrow = pq.read_table(path, columns=cols, filters=filters or None, partitioning=None)
        frame = arrow.to_pandas()
        _check_rows(frame, slide_id, patient_of[slide_id], metas[slide_id], path,
                    complete=fused is None and not labelled_only)
        frames.append(frame)
    filled = [f for f in frames if len(f)]  # concat warns about empty frames
    out = (pd.concat(filled, ignore_index=True) if filled
           else frames[0] if frames else pd.DataFrame(columns=cols))
    first = next(iter(metas.values()), {})
    out.attrs["multimag"] = {"method": first.get("method"),
                             "config_sha256": first.get("config_sha256"),
                             "magnifications": first.get("magnifications")}
    return out


def _check_rows(frame: pd.DataFrame, slide_id: str, patient_id: str, meta: Mapping[str, Any],
                path: Path, *, complete: bool) -> None:
    def bad(what: str) -> PredictionsError:
        return PredictionsError(what, slide=slide_id, path=path, fix=_FIX_PREDICT)

    if not len(frame):
        return
    if (frame["slide_id"].astype(str) != slide_id).any():
        others = sorted(set(frame["slide_id"]) - {slide_id})
        raise bad(f"rows of another slide ({short_list(others)}) in the file of slide {slide_id!r}")
    if (frame["patient_id"].astype(str) != patient_id).any():
        raise bad(f"patient_id differs from the splits (expected {patient_id!r})")
    if (frame["fold"].astype(np.int64) != int(meta["fold"])).any():
        raise bad(f"column fold disagrees with the metadata fold {meta['fold']}")
    if not frame["label"].isin([-1, 0, 1]).all():
        raise bad("label must be 1 (tumour), 0 (normal) or -1 (ambiguous)")
    if not frame["pred"].isin([0, 1]).all():
        raise bad("pred must be 0 or 1")
    prob = frame["prob_tumour"].to_numpy(dtype=np.float64)
    if not (np.isfinite(prob) & (prob >= 0) & (prob <= 1)).all():
        raise bad("prob_tumour must lie in [0, 1]")
    if frame.duplicated(["patch", "view"]).any():
        raise bad("more than one row per (patch, view)")
    if complete:
        is_fused = frame["view"] == FUSED
        fused_patches = set(frame.loc[is_fused, "patch"].tolist())
        if not set(frame.loc[~is_fused, "patch"].tolist()) <= fused_patches:
            raise bad("a patch has per-magnification rows but no 'fused' row")


def write_predictions(scores: pd.DataFrame, out: str | Path, info: Mapping[str, Any]) -> None:
    """Write one slide's scores (the columns of ``SCHEMA``) with ``info`` as metadata."""
    schema = SCHEMA.with_metadata({METADATA_KEY: json.dumps(info).encode()})
    embeddings = [None if e is None else np.asarray(e, np.float32)
                  for e in scores["embedding"]]
    write_table(pa.Table.from_pandas(scores.assign(embedding=embeddings), schema=schema,
                                     preserve_index=False), out)


def read_slide_predictions(path: str | Path) -> pd.DataFrame:
    """One predictions file as a DataFrame; its metadata (method, fold,
    magnifications, extent_level0, ...) is in ``df.attrs["multimag"]``."""
    try:
        arrow = pq.read_table(path)
    except (OSError, ValueError) as exc:
        raise PredictionsError(f"cannot read the predictions file ({exc})", path=path,
                               fix="re-run `multimag predict` for this slide") from exc
    df = arrow.to_pandas()
    df.attrs["multimag"] = read_metadata(arrow.schema) or {}
    return df


def fused_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The ``fused`` rows: one per patch, the patch's prediction."""
    if "view" not in df.columns:
        raise PredictionsError("the prediction table lacks the column 'view'",
                               fix="pass a table in the predictions schema "
                               "(read_slide_predictions)")
    return df[df["view"] == FUSED]


def view_magnification(view: str) -> float:
    """``"20x" -> 20.0``, ``"2.5x" -> 2.5`` (``nan`` for anything else, e.g. fused)."""
    try:
        return float(str(view).removesuffix("x"))
    except ValueError:
        return math.nan


def finest_extent(extent_level0: float | Mapping[str, float] | None,
                  df: pd.DataFrame | None = None) -> float:
    """Side (level-0 px) of the finest magnification's patch field.

    ``extent_level0``: a number, a ``{"20x": 128.0, ...}`` mapping (the finest is the
    largest magnification), or ``None`` to take the mapping from
    ``df.attrs["multimag"]["extent_level0"]`` (as set by ``read_slide_predictions``).
    """
    if extent_level0 is None and df is not None:
        extent_level0 = df.attrs.get("multimag", {}).get("extent_level0")
    if extent_level0 is None:
        raise PlotError("the patch extent is unknown",
                        fix="pass extent_level0 (the predictions file's metadata "
                        "'extent_level0') or read the table with read_slide_predictions")
    if isinstance(extent_level0, Mapping):
        if not extent_level0:
            raise PlotError("extent_level0 is empty", fix="pass {'20x': side_px, ...}")
        finest = max(extent_level0, key=view_magnification)
        if math.isnan(view_magnification(finest)):
            raise PlotError(f"extent_level0 keys {sorted(extent_level0)} are not "
                            "magnifications", fix="key it by view, e.g. '20x'")
        value = float(extent_level0[finest])
    else:
        value = float(extent_level0)
    if not (math.isfinite(value) and value > 0):
        raise PlotError(f"extent_level0 {value} is not a positive size",
                        fix="pass the patch side in level-0 pixels")
    return value
