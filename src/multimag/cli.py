"""``multimag``: one subcommand per workflow rule.

Exit code 0 on success; on a failure the user can fix, exit 2 with one line on
stderr naming the slide, the file and the fix (no traceback; ``MULTIMAG_DEBUG=1``
shows it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import warnings
from pathlib import Path

from multimag.errors import MultimagError


def _add_slide_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("slide", type=Path, help="whole-slide image")
    p.add_argument("--slide-id", help="default: the file name without extension")
    p.add_argument("--mpp", type=float, help="level-0 um/px, overrides the slide's metadata")
    p.add_argument("--config", type=Path, help="YAML config (default: built-in defaults)")
    p.add_argument("--reader", choices=["tiffslide", "openslide"])
    p.add_argument("--magnifications", type=float, nargs="+", metavar="M")
    p.add_argument("--patch-px", type=int)
    p.add_argument("--mode", choices=["same_center", "same_field"])


def _config(args: argparse.Namespace) -> dict:
    from multimag.config import load_config

    return load_config(args.config, {"reader": args.reader,
                                      "magnifications": args.magnifications,
                                      "patch_px": args.patch_px, "mode": args.mode})


def _open(args: argparse.Namespace, config: dict):
    from multimag.wsi.slide import open_slide

    return open_slide(args.slide, slide_id=args.slide_id, reader=config["reader"],
                      mpp=args.mpp, cache_mb=config["cache_mb"])


def cmd_demo(args: argparse.Namespace) -> int:
    from multimag.demo.cohort import make_demo_cohort

    samples = make_demo_cohort(args.outdir, seed=args.seed)
    print(samples)
    return 0


def cmd_tissue(args: argparse.Namespace) -> int:
    from multimag.wsi.tiling import TilingConfig, plan_patches
    from multimag.wsi.tissue import detect_tissue, draw_qc

    config = _config(args)
    tconf = TilingConfig.from_config(config)
    with _open(args, config) as slide:
        tissue = detect_tissue(slide, tconf.tissue)
        patches = plan_patches(slide, tissue, tconf)
        if args.qc:
            draw_qc(tissue, patches.boxes(), args.qc,
                    f"{slide.slide_id}: {len(patches.centers)} patches")
        tissue.save(args.out)
    print(json.dumps({"slide_id": slide.slide_id, "tissue_fraction": round(tissue.fraction, 4),
                      "patches": len(patches.centers)}))
    return 0


def cmd_tile(args: argparse.Namespace) -> int:
    from multimag.wsi.tiling import TilingConfig, tile_slide
    from multimag.wsi.tissue import TissueMask

    config = _config(args)
    if args.out.suffix != ".zarr":
        raise MultimagError("the output store must end in .zarr", path=args.out,
                            fix="name it like SLIDE.zarr")
    tissue = TissueMask.load(args.tissue) if args.tissue else None
    tconf = TilingConfig.from_config(config)
    if args.threads:
        tconf = dataclasses.replace(tconf, threads=args.threads)
    with _open(args, config) as slide:
        summary = tile_slide(slide, args.out, tconf,
                             patient_id=args.patient_id, tissue=tissue, qc_path=args.qc,
                             progress=_progress(args))
    print(json.dumps(summary))
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    from multimag.config import load_config
    from multimag.dataset.labels import label_store, write_labels

    config = load_config(args.config)
    table = label_store(args.store, annotation=args.annotation, slide_label=args.slide_label,
                        labels_config=config["labels"])
    metadata = table.attrs["multimag"]
    write_labels(table, args.out, {})
    counts = table["label"].value_counts().to_dict()
    print(json.dumps({"slide_id": metadata.get("slide_id"), "patches": len(table),
                      "tumour": int(counts.get(1, 0)), "normal": int(counts.get(0, 0)),
                      "ambiguous": int(counts.get(-1, 0))}))
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    from multimag.dataset.samples import load_samples
    from multimag.dataset.splits import check_no_leak, make_splits, write_splits

    splits = make_splits(load_samples(args.samples), folds=args.folds, seed=args.seed,
                         source=args.samples)
    check_no_leak(splits)
    write_splits(splits, args.out)
    print(json.dumps({"slides": len(splits), "patients": int(splits["patient_id"].nunique()),
                      "folds": args.folds}))
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from multimag.config import load_config
    from multimag.dataset.indices import build_indices
    from multimag.dataset.splits import read_splits

    summary = build_indices(read_splits(args.splits), args.labels_dir, args.out_dir, args.fold,
                            load_config(args.config))
    brief = ("fold", "anchors", "training_patches", "warnings")
    print(json.dumps({k: v for k, v in summary.items() if k in brief}, default=str))
    return 0


def _progress(args: argparse.Namespace) -> bool:
    return sys.stderr.isatty() if args.progress is None else args.progress


def _torch_threads(threads: int | None) -> None:
    """torch's intra-op threads: the job's share, never more than its CPUs."""
    if threads:
        import torch

        torch.set_num_threads(max(1, min(threads, len(os.sched_getaffinity(0)))))


def cmd_train(args: argparse.Namespace) -> int:
    from multimag.config import load_config
    from multimag.learn.methods import check_method

    check_method(args.method)
    config = load_config(args.config)
    _torch_threads(args.threads)
    gpus = args.gpus or config["train"]["gpus"]
    if gpus > 1 and "WORLD_SIZE" not in os.environ:
        from multimag.learn.train import relaunch_with_torchrun

        return relaunch_with_torchrun(gpus, sys.argv[1:] if args.argv is None else args.argv)
    from multimag.learn.train import train

    meta = train(args.index_dir, args.out_dir, args.method, args.fold, config,
                 device=args.device, stores_dir=args.stores, init=args.init,
                 progress=_progress(args))
    if meta:
        print(json.dumps({k: meta[k] for k in ("method", "fold", "best_epoch", "best_score",
                                                "epochs_run", "device")}))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from multimag.evaluate.aggregate import FUSED
    from multimag.learn.predict import load_model, predict_store, resolve_device

    items = [args.model_dir, args.store, args.out, *args.more]
    if len(items) % 3:
        raise MultimagError("arguments must come in triples: MODEL_DIR STORE.zarr OUT.parquet",
                            fix="give a model directory, a store and an output for each "
                            "prediction")
    triples = [items[i:i + 3] for i in range(0, len(items), 3)]
    labels = args.labels or []
    if len(labels) not in (0, 1, len(triples)):
        raise MultimagError(f"{len(labels)} --labels for {len(triples)} predictions",
                            fix="give one --labels for all, or one per prediction in order")
    _torch_threads(args.threads)
    device = resolve_device(args.device)
    models: dict[Path, tuple] = {}
    for i, (model_dir, store, out) in enumerate(triples):
        if model_dir not in models:
            models[model_dir] = load_model(model_dir, device)
        label = labels[i if len(labels) > 1 else 0] if labels else None
        scores = predict_store(model_dir, store, out, labels=label, device=args.device,
                               batch_size=args.batch_size, model=models[model_dir],
                               progress=_progress(args))
        fused = scores[scores["view"] == FUSED]
        print(json.dumps({"model": str(model_dir), "store": str(store), "patches": len(fused),
                          "tumour_predicted": int(fused["pred"].sum())}))
    return 0


def _aggregate_options(args: argparse.Namespace) -> dict:
    from multimag.config import load_config

    ac = load_config(args.config)["aggregate"]
    return {"rule": args.rule or ac["rule"], "tie": args.tie or ac["tie"],
            "fraction_threshold": (ac["fraction_threshold"] if args.fraction_threshold is None
                                   else args.fraction_threshold),
            "exclude_ambiguous": ac["exclude_ambiguous"]}


def cmd_aggregate(args: argparse.Namespace) -> int:
    from multimag.evaluate.aggregate import aggregate

    _, _, summary = aggregate(args.predictions_dir, args.splits, args.out_dir,
                              **_aggregate_options(args))
    print(json.dumps({k: summary.get(k) for k in ("method", "rule", "slide_accuracy",
                                                  "patient_accuracy", "recognition_rate")}))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from multimag.evaluate.metrics import evaluate

    options = _aggregate_options(args)
    summary = evaluate({Path(d).name: d for d in args.predictions_dirs}, args.splits,
                       args.out_dir, **options)
    columns = [c for c in ("method", "balanced_acc_mean", "roc_auc_mean", "slide_accuracy_mean",
                           "recognition_rate_mean") if c in summary.columns]
    print(summary[columns].to_string(index=False))
    return 0


def cmd_figures(args: argparse.Namespace) -> int:
    from multimag.config import load_config
    from multimag.dataset.samples import load_samples
    from multimag.evaluate.figures import method_figures

    config = load_config(args.config)
    annotations = {}
    if args.samples:
        table = load_samples(args.samples)
        annotations = {s: a or None for s, a in table["annotation"].items()}
    written = method_figures(args.predictions_dir, args.splits, args.out_dir, args.tissue_dir,
                             annotations=annotations, class_map=config["labels"]["class_map"],
                             seed=config["train"]["seed"], progress=_progress(args))
    print(json.dumps({k: str(v) for k, v in written.items()}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from multimag import __version__

    parser = argparse.ArgumentParser(prog="multimag", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"multimag {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="write the synthetic demo cohort (real pyramidal SVS)")
    p.add_argument("outdir", type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("tissue", help="tissue mask (.npz) and QC thumbnail of one slide")
    _add_slide_options(p)
    p.add_argument("out", type=Path, help="tissue mask file (.npz)")
    p.add_argument("--qc", type=Path, help="QC thumbnail PNG (mask outline and patch grid)")
    p.set_defaults(func=cmd_tissue)

    p = sub.add_parser("tile", help="co-registered multi-magnification patch store of one slide")
    _add_slide_options(p)
    p.add_argument("out", type=Path, help="patch store (SLIDE.zarr)")
    p.add_argument("--patient-id")
    p.add_argument("--tissue", type=Path, help="tissue mask from `multimag tissue` "
                   "(default: detect it now)")
    p.add_argument("--qc", type=Path, help="QC thumbnail PNG")
    p.add_argument("--threads", type=int, help="worker processes that cut and encode the "
                   "patches (default: the config's threads; never more than the CPUs this "
                   "process may use)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: when stderr is a terminal)")
    p.set_defaults(func=cmd_tile)

    p = sub.add_parser("label", help="per-patch labels of one store from its annotation")
    p.add_argument("store", type=Path, help="patch store (SLIDE.zarr)")
    p.add_argument("out", type=Path, help="labels table (.parquet)")
    p.add_argument("--annotation", type=Path, help="GeoJSON, ASAP XML or raster mask TIFF")
    p.add_argument("--slide-label", choices=["tumour", "normal"],
                   help="label every patch (slides without annotation, BreakHis style)")
    p.add_argument("--config", type=Path)
    p.set_defaults(func=cmd_label)

    p = sub.add_parser("split", help="patient-level cross-validation folds")
    p.add_argument("samples", type=Path, help="samples.tsv")
    p.add_argument("out", type=Path, help="splits.tsv (slide_id, patient_id, fold)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_split)

    p = sub.add_parser("index", help="pair / triplet / magnification-pair indices of one fold")
    p.add_argument("splits", type=Path, help="splits.tsv")
    p.add_argument("labels_dir", type=Path, help="folder of {slide_id}.parquet label tables")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--fold", type=int, required=True)
    p.add_argument("--config", type=Path)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("train", help="train one method on one fold (resumes from its checkpoint)")
    p.add_argument("index_dir", type=Path, help="indices of the fold (rule index)")
    p.add_argument("out_dir", type=Path, help="model directory (model.pt, model.json, history.csv)")
    p.add_argument("--method", required=True, help="ce_baseline, smse_pair, smse_triplet, dsml, "
                   "constellation, mpcs_pretrain or mpcs_finetune")
    p.add_argument("--fold", type=int, required=True)
    p.add_argument("--config", type=Path)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--gpus", type=int, help="> 1: DistributedDataParallel via torchrun")
    p.add_argument("--stores", type=Path, help="folder of the patch stores "
                   "(default: OUTDIR/stores of the config)")
    p.add_argument("--init", type=Path, help="model directory to start from "
                   "(mpcs_finetune: the fold's mpcs_pretrain model)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: when stderr is a terminal)")
    p.add_argument("--threads", type=int, help="CPU threads of torch (default: torch's)")
    p.set_defaults(func=cmd_train, argv=None)

    p = sub.add_parser("predict", help="patch probabilities and embeddings of slides")
    p.add_argument("model_dir", type=Path, help="trained model directory (rule train)")
    p.add_argument("store", type=Path, help="patch store (SLIDE.zarr)")
    p.add_argument("out", type=Path, help="predictions (.parquet)")
    p.add_argument("more", nargs="*", type=Path, help="more MODEL_DIR STORE.zarr OUT.parquet "
                   "triples, predicted in the same process (torch starts once)")
    p.add_argument("--labels", type=Path, action="append",
                   help="the store's labels table (rule label): once for all, or once per triple")
    p.add_argument("--config", type=Path, help="ignored: the model carries its configuration")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--threads", type=int, help="CPU threads of torch (default: torch's)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: when stderr is a terminal)")
    p.set_defaults(func=cmd_predict)

    def verdict_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--rule", choices=["majority", "mean", "fraction"],
                       help="slide/patient verdict rule (default: aggregate.rule of the config)")
        p.add_argument("--tie", choices=["tumour", "normal"], help="majority-vote tie goes to")
        p.add_argument("--fraction-threshold", type=float)
        p.add_argument("--config", type=Path)

    p = sub.add_parser("aggregate", help="slide and patient verdicts of one method")
    p.add_argument("predictions_dir", type=Path, help="predictions/{method} of rule predict")
    p.add_argument("splits", type=Path, help="splits.tsv")
    p.add_argument("out_dir", type=Path, help="writes slides.tsv, patients.tsv, summary.json")
    verdict_options(p)
    p.set_defaults(func=cmd_aggregate)

    p = sub.add_parser("evaluate", help="metrics per method and fold, and the summary table")
    p.add_argument("splits", type=Path, help="splits.tsv")
    p.add_argument("out_dir", type=Path, help="writes {method}/metrics.tsv, summary.tsv, "
                   "summary.md")
    p.add_argument("predictions_dirs", type=Path, nargs="+",
                   help="predictions/{method} folders (the folder name is the method)")
    verdict_options(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("figures", help="ROC, confusion, t-SNE, heatmaps and QuPath GeoJSON "
                       "of one method")
    p.add_argument("predictions_dir", type=Path, help="predictions/{method} of rule predict")
    p.add_argument("splits", type=Path, help="splits.tsv")
    p.add_argument("tissue_dir", type=Path, help="the tissue masks {slide}.npz of rule tissue")
    p.add_argument("out_dir", type=Path, help="writes roc.png, confusion.png, tsne.png, "
                   "heatmaps/, qupath/")
    p.add_argument("--samples", type=Path, help="samples.tsv (annotation outlines)")
    p.add_argument("--config", type=Path, help="config YAML (labels.class_map, seed)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: when stderr is a terminal)")
    p.set_defaults(func=cmd_figures)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.formatwarning = lambda msg, cat, *a, **k: f"{cat.__name__}: {msg}\n"
    try:
        return args.func(args)
    except MultimagError as exc:
        if os.environ.get("MULTIMAG_DEBUG"):
            raise
        print(f"multimag {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"multimag {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
