"""The subcommands' handlers: each reads its arguments and calls one stage."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from multimag.errors import MultimagError


def _config_with_overrides(args: argparse.Namespace) -> dict:
    from multimag.config import load_config

    return load_config(args.config, {"reader": args.reader,
                                      "magnifications": args.magnifications,
                                      "patch_px": args.patch_px, "mode": args.mode})


def _open_slide(args: argparse.Namespace, config: dict):
    from multimag.wsi.slide import open_slide

    return open_slide(args.slide, slide_id=args.slide_id, reader=config["reader"],
                      mpp=args.mpp, cache_mb=config["cache_mb"])


def cmd_demo(args: argparse.Namespace) -> int:
    from multimag.demo.cohort import make_demo_cohort

    samples = make_demo_cohort(args.outdir, seed=args.seed)
    print(samples)
    return 0


def cmd_tissue(args: argparse.Namespace) -> int:
    from multimag.wsi.patch_plan import TilingConfig, plan_patches
    from multimag.wsi.tissue import detect_tissue, draw_qc

    config = _config_with_overrides(args)
    tiling_config = TilingConfig.from_config(config)
    with _open_slide(args, config) as slide:
        tissue = detect_tissue(slide, tiling_config.tissue)
        patches = plan_patches(slide, tissue, tiling_config)
        if args.qc:
            draw_qc(tissue, patches.boxes(), args.qc,
                    f"{slide.slide_id}: {len(patches.centers)} patches")
        tissue.save(args.out)
    print(json.dumps({"slide_id": slide.slide_id, "tissue_fraction": round(tissue.fraction, 4),
                      "patches": len(patches.centers)}))
    return 0


def cmd_tile(args: argparse.Namespace) -> int:
    from multimag.wsi.patch_plan import TilingConfig
    from multimag.wsi.tiling import tile_slide
    from multimag.wsi.tissue import TissueMask

    config = _config_with_overrides(args)
    if args.out.suffix != ".zarr":
        raise MultimagError("the output store must end in .zarr", path=args.out,
                            fix="name it like SLIDE.zarr")
    tissue = TissueMask.load(args.tissue) if args.tissue else None
    tiling_config = TilingConfig.from_config(config)
    if args.threads:
        tiling_config = dataclasses.replace(tiling_config, threads=args.threads)
    with _open_slide(args, config) as slide:
        summary = tile_slide(slide, args.out, tiling_config,
                             patient_id=args.patient_id, tissue=tissue, qc_path=args.qc,
                             progress=_show_progress(args))
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
    from multimag.config import load_config
    from multimag.dataset.samples import load_samples
    from multimag.dataset.splits import check_no_leak, make_splits, write_splits

    splits = make_splits(load_samples(args.samples), folds=args.folds, seed=args.seed,
                         source=args.samples,
                         class_map=load_config(args.config)["labels"]["class_map"])
    check_no_leak(splits)
    write_splits(splits, args.out)
    diagnosis = splits["diagnosis"].replace("", "unscored").value_counts().to_dict()
    print(json.dumps({"slides": len(splits), "patients": int(splits["patient_id"].nunique()),
                      "folds": args.folds, "diagnosis": diagnosis}))
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


def _show_progress(args: argparse.Namespace) -> bool:
    return sys.stderr.isatty() if args.progress is None else args.progress


def _set_torch_threads(threads: int | None) -> None:
    """torch's intra-op threads: the job's share, never more than its CPUs."""
    if threads:
        import torch

        torch.set_num_threads(max(1, min(threads, len(os.sched_getaffinity(0)))))


def cmd_train(args: argparse.Namespace) -> int:
    from multimag.config import load_config
    from multimag.learn.methods import check_method

    check_method(args.method)
    config = load_config(args.config)
    _set_torch_threads(args.threads)
    gpus = args.gpus or config["train"]["gpus"]
    if gpus > 1 and "WORLD_SIZE" not in os.environ:
        from multimag.learn.device import relaunch_with_torchrun

        return relaunch_with_torchrun(gpus, sys.argv[1:] if args.argv is None else args.argv)
    from multimag.learn.train import train

    meta = train(args.index_dir, args.out_dir, args.method, args.fold, config,
                 device=args.device, stores_dir=args.stores, init=args.init,
                 progress=_show_progress(args))
    if meta:
        print(json.dumps({k: meta[k] for k in ("method", "fold", "best_epoch", "best_score",
                                                "epochs_run", "device")}))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from multimag.learn.device import resolve_device
    from multimag.learn.model_folder import load_model
    from multimag.learn.predict import predict_store
    from multimag.learn.predictions import FUSED

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
    _set_torch_threads(args.threads)
    device = resolve_device(args.device)
    models: dict[Path, tuple] = {}
    for i, (model_dir, store, out) in enumerate(triples):
        if model_dir not in models:
            models[model_dir] = load_model(model_dir, device)
        label = labels[i if len(labels) > 1 else 0] if labels else None
        scores = predict_store(model_dir, store, out, labels=label, device=args.device,
                               batch_size=args.batch_size, model=models[model_dir],
                               progress=_show_progress(args))
        fused = scores[scores["view"] == FUSED]
        print(json.dumps({"model": str(model_dir), "store": str(store), "patches": len(fused),
                          "tumour_predicted": int(fused["pred"].sum())}))
    return 0


def _aggregate_options(args: argparse.Namespace) -> dict:
    from multimag.config import load_config

    aggregate_config = load_config(args.config)["aggregate"]
    return {"rule": args.rule or aggregate_config["rule"],
            "tie": args.tie or aggregate_config["tie"],
            "fraction_threshold": (aggregate_config["fraction_threshold"]
                                   if args.fraction_threshold is None
                                   else args.fraction_threshold),
            "exclude_ambiguous": aggregate_config["exclude_ambiguous"]}


def cmd_aggregate(args: argparse.Namespace) -> int:
    from multimag.evaluate.aggregate import aggregate

    _, _, summary = aggregate(args.predictions_dir, args.splits, args.out_dir,
                              **_aggregate_options(args))
    print(json.dumps({k: summary.get(k) for k in ("method", "rule", "slide_accuracy",
                                                  "patient_accuracy", "recognition_rate")}))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from multimag.config import load_config
    from multimag.evaluate.evaluation import evaluate

    options = _aggregate_options(args)
    summary = evaluate({Path(d).name: d for d in args.predictions_dirs}, args.splits,
                       args.out_dir, bootstrap=load_config(args.config)["evaluate"]["bootstrap"],
                       **options)
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
        annotations = {slide_id: annotation or None
                       for slide_id, annotation in table["annotation"].items()}
    written = method_figures(args.predictions_dir, args.splits, args.out_dir, args.tissue_dir,
                             annotations=annotations, class_map=config["labels"]["class_map"],
                             seed=config["train"]["seed"], progress=_show_progress(args))
    print(json.dumps({k: str(v) for k, v in written.items()}))
    return 0
