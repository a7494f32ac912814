"""The command line: every subcommand with its arguments, help and handler."""

from __future__ import annotations

import argparse
from pathlib import Path

from multimag.cli.commands import (
    cmd_aggregate,
    cmd_demo,
    cmd_evaluate,
    cmd_figures,
    cmd_index,
    cmd_label,
    cmd_predict,
    cmd_split,
    cmd_tile,
    cmd_tissue,
    cmd_train,
)

DESCRIPTION = "``multimag``: one subcommand per workflow rule."


def _arg(*flags: str, **options: object) -> tuple[tuple[str, ...], dict[str, object]]:
    """One argument of a subcommand: what ``add_argument`` takes."""
    return flags, options


_PROGRESS = _arg("--progress", action=argparse.BooleanOptionalAction, default=None,
                 help="progress bar (default: when stderr is a terminal)")
_TORCH_THREADS = _arg("--threads", type=int, help="CPU threads of torch (default: torch's)")
_SLIDE_ARGUMENTS = [
    _arg("slide", type=Path, help="whole-slide image"),
    _arg("--slide-id", help="default: the file name without extension"),
    _arg("--mpp", type=float, help="level-0 um/px, overrides the slide's metadata"),
    _arg("--config", type=Path, help="YAML config (default: built-in defaults)"),
    _arg("--reader", choices=["tiffslide", "openslide"]),
    _arg("--magnifications", type=float, nargs="+", metavar="M"),
    _arg("--patch-px", type=int),
    _arg("--mode", choices=["same_center", "same_field"]),
]
_VERDICT_ARGUMENTS = [
    _arg("--rule", choices=["majority", "mean", "fraction"],
         help="slide/patient verdict rule (default: aggregate.rule of the config)"),
    _arg("--tie", choices=["tumour", "normal"], help="majority-vote tie goes to"),
    _arg("--fraction-threshold", type=float),
    _arg("--config", type=Path),
]

# The command line, in help order: (name, handler, help, arguments, extra defaults).
_COMMANDS = [
    ("demo", cmd_demo, "write the synthetic demo cohort (real pyramidal SVS)", [
        _arg("outdir", type=Path),
        _arg("--seed", type=int, default=0),
    ], {}),
    ("tissue", cmd_tissue, "tissue mask (.npz) and QC thumbnail of one slide", [
        *_SLIDE_ARGUMENTS,
        _arg("out", type=Path, help="tissue mask file (.npz)"),
        _arg("--qc", type=Path, help="QC thumbnail PNG (mask outline and patch grid)"),
    ], {}),
    ("tile", cmd_tile, "co-registered multi-magnification patch store of one slide", [
        *_SLIDE_ARGUMENTS,
        _arg("out", type=Path, help="patch store (SLIDE.zarr)"),
        _arg("--patient-id"),
        _arg("--tissue", type=Path,
             help="tissue mask from `multimag tissue` (default: detect it now)"),
        _arg("--qc", type=Path, help="QC thumbnail PNG"),
        _arg("--threads", type=int, help="worker processes that cut and encode the patches "
             "(default: the config's threads; never more than the CPUs this process may use)"),
        _PROGRESS,
    ], {}),
    ("label", cmd_label, "per-patch labels of one store from its annotation", [
        _arg("store", type=Path, help="patch store (SLIDE.zarr)"),
        _arg("out", type=Path, help="labels table (.parquet)"),
        _arg("--annotation", type=Path, help="GeoJSON, ASAP XML or raster mask TIFF"),
        _arg("--slide-label", choices=["tumour", "normal"],
             help="label every patch (slides without annotation, BreakHis style)"),
        _arg("--config", type=Path),
    ], {}),
    ("split", cmd_split, "patient-level cross-validation folds", [
        _arg("samples", type=Path, help="samples.tsv"),
        _arg("out", type=Path,
             help="splits.tsv (slide_id, patient_id, fold, diagnosis, diagnosis_source)"),
        _arg("--folds", type=int, default=5),
        _arg("--seed", type=int, default=0),
        _arg("--config", type=Path,
             help="config YAML (labels.class_map, to read the annotations' diagnosis)"),
    ], {}),
    ("index", cmd_index, "pair / triplet / magnification-pair indices of one fold", [
        _arg("splits", type=Path, help="splits.tsv"),
        _arg("labels_dir", type=Path, help="folder of {slide_id}.parquet label tables"),
        _arg("out_dir", type=Path),
        _arg("--fold", type=int, required=True),
        _arg("--config", type=Path),
    ], {}),
    ("train", cmd_train, "train one method on one fold (resumes from its checkpoint)", [
        _arg("index_dir", type=Path, help="indices of the fold (rule index)"),
        _arg("out_dir", type=Path, help="model directory (model.pt, model.json, history.csv)"),
        _arg("--method", required=True, help="ce_baseline, smse_pair, smse_triplet, dsml, "
             "constellation, mpcs_pretrain or mpcs_finetune"),
        _arg("--fold", type=int, required=True),
        _arg("--config", type=Path),
        _arg("--device", choices=["auto", "cpu", "cuda"]),
        _arg("--gpus", type=int, help="> 1: DistributedDataParallel via torchrun"),
        _arg("--stores", type=Path,
             help="folder of the patch stores (default: OUTDIR/stores of the config)"),
        _arg("--init", type=Path, help="model directory to start from "
             "(mpcs_finetune: the fold's mpcs_pretrain model)"),
        _PROGRESS,
        _TORCH_THREADS,
    ], {"argv": None}),
    ("predict", cmd_predict, "patch probabilities and embeddings of slides", [
        _arg("model_dir", type=Path, help="trained model directory (rule train)"),
        _arg("store", type=Path, help="patch store (SLIDE.zarr)"),
        _arg("out", type=Path, help="predictions (.parquet)"),
        _arg("more", nargs="*", type=Path, help="more MODEL_DIR STORE.zarr OUT.parquet "
             "triples, predicted in the same process (torch starts once)"),
        _arg("--labels", type=Path, action="append",
             help="the store's labels table (rule label): once for all, or once per triple"),
        _arg("--config", type=Path, help="ignored: the model carries its configuration"),
        _arg("--device", choices=["auto", "cpu", "cuda"], default="auto"),
        _arg("--batch-size", type=int),
        _TORCH_THREADS,
        _PROGRESS,
    ], {}),
    ("aggregate", cmd_aggregate, "slide and patient verdicts of one method", [
        _arg("predictions_dir", type=Path, help="predictions/{method} of rule predict"),
        _arg("splits", type=Path, help="splits.tsv"),
        _arg("out_dir", type=Path, help="writes slides.tsv, patients.tsv, summary.json"),
        *_VERDICT_ARGUMENTS,
    ], {}),
    ("evaluate", cmd_evaluate, "metrics per method and fold, and the summary table", [
        _arg("splits", type=Path, help="splits.tsv"),
        _arg("out_dir", type=Path, help="writes {method}/metrics.tsv, summary.tsv, summary.md, "
             "summary.html (intervals: evaluate.bootstrap of the config)"),
        _arg("predictions_dirs", type=Path, nargs="+",
             help="predictions/{method} folders (the folder name is the method)"),
        *_VERDICT_ARGUMENTS,
    ], {}),
    ("figures", cmd_figures,
     "ROC, confusion, t-SNE, heatmaps and QuPath GeoJSON of one method", [
        _arg("predictions_dir", type=Path, help="predictions/{method} of rule predict"),
        _arg("splits", type=Path, help="splits.tsv"),
        _arg("tissue_dir", type=Path, help="the tissue masks {slide}.npz of rule tissue"),
        _arg("out_dir", type=Path,
             help="writes roc.png, confusion.png, tsne.png, heatmaps/, qupath/"),
        _arg("--samples", type=Path, help="samples.tsv (annotation outlines)"),
        _arg("--config", type=Path, help="config YAML (labels.class_map, seed)"),
        _PROGRESS,
    ], {}),
]


def build_parser() -> argparse.ArgumentParser:
    from multimag import __version__

    parser = argparse.ArgumentParser(prog="multimag", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"multimag {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, handler, help_text, arguments, defaults in _COMMANDS:
        command = subparsers.add_parser(name, help=help_text)
        for flags, options in arguments:
            command.add_argument(*flags, **options)
        command.set_defaults(func=handler, **defaults)
    return parser
