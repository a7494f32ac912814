"""``multimag``: one subcommand per workflow rule.

Exit code 0 on success; on a failure the user can fix, exit 2 with one line on
stderr naming the slide, the file and the fix (no traceback; ``MULTIMAG_DEBUG=1``
shows it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from .errors import MultimagError


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
    from .config import load_config

    return load_config(args.config, {"reader": args.reader,
                                      "magnifications": args.magnifications,
                                      "patch_px": args.patch_px, "mode": args.mode})


def _open(args: argparse.Namespace, config: dict):
    from .slide import open_slide

    return open_slide(args.slide, slide_id=args.slide_id, reader=config["reader"],
                      mpp=args.mpp, workers=config["threads"], cache_mb=config["cache_mb"])


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import make_demo_cohort

    samples = make_demo_cohort(args.outdir, seed=args.seed)
    print(samples)
    return 0


def cmd_tissue(args: argparse.Namespace) -> int:
    from .tiling import TilingConfig, plan_patches
    from .tissue import detect_tissue, draw_qc

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
    from .tiling import TilingConfig, tile_slide
    from .tissue import TissueMask

    config = _config(args)
    if args.out.suffix != ".zarr":
        raise MultimagError("the output store must end in .zarr", path=args.out,
                            fix="name it like SLIDE.zarr")
    tissue = TissueMask.load(args.tissue) if args.tissue else None
    with _open(args, config) as slide:
        summary = tile_slide(slide, args.out, TilingConfig.from_config(config),
                             patient_id=args.patient_id, tissue=tissue, qc_path=args.qc,
                             progress=args.progress)
    print(json.dumps(summary))
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    from .config import load_config
    from .labels import label_store, write_labels

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
    from .samples import load_samples
    from .splits import check_no_leak, make_splits, write_splits

    splits = make_splits(load_samples(args.samples), folds=args.folds, seed=args.seed,
                         source=args.samples)
    check_no_leak(splits)
    write_splits(splits, args.out)
    print(json.dumps({"slides": len(splits), "patients": int(splits["patient_id"].nunique()),
                      "folds": args.folds}))
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from .config import load_config
    from .sampling import build_indices
    from .splits import read_splits

    summary = build_indices(read_splits(args.splits), args.labels_dir, args.out_dir, args.fold,
                            load_config(args.config))
    brief = ("fold", "anchors", "training_patches", "warnings")
    print(json.dumps({k: v for k, v in summary.items() if k in brief}, default=str))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

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
