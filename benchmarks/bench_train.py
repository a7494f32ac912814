"""Training throughput: does the store loader keep the GPU busy?

    python benchmarks/bench_train.py [--backbone resnet50] [--patch-px 224] [--steps 60]
                                     [--workers 8] [--device cuda]

Same model, optimiser and mixed precision as ``multimag train`` (PatchNet over the
backbone, AdamW, bfloat16 autocast where supported, augmentation on the device),
measured two ways in one run:

a. GPU bound: the batch is already on the device (one fixed random batch);
b. from the stores: ``PatchDataset`` + ``make_loader`` with ``--workers``
   processes reading shuffled single patches of the demo stores (built by
   bench_loader.py at ``--patch-px``), then augmentation on the device.

Reports images/s of both, b / a (1.0 = the loader never starves the GPU), and
the GPU utilisation sampled by nvidia-smi during b when it is there. Appends
the table to benchmarks/results/train-<date>.md.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import subprocess
import threading
import time
from pathlib import Path

import pandas as pd
import torch
from bench_loader import MAGS, build_stores, sample_rows

HERE = Path(__file__).resolve().parent


def _step_fn(net, optimiser, augment, device):
    from multimag.learn.device import autocast

    def step(views: list[torch.Tensor], labels: torch.Tensor, generator) -> None:
        x = augment(views, generator)[0]
        with autocast(device, True):
            loss = torch.nn.functional.cross_entropy(net(x)["logits"].float(), labels)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    return step


def _gpu_sampler(stop: threading.Event, samples: list[float]) -> None:
    while not stop.is_set():
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu",
                                  "--format=csv,noheader,nounits"], capture_output=True,
                                 text=True, timeout=5).stdout.split()
            samples.append(float(out[0]))
        except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
            return
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--patch-px", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    from multimag.learn.augment import Augment, AugmentParams
    from multimag.learn.data import EpochSampler, PatchDataset, View, make_loader
    from multimag.learn.models import PatchNet, build_backbone

    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    stores = build_stores(args.patch_px)
    n = (args.steps + args.warmup) * args.batch
    rows = sample_rows(stores, 10**9, seed=0)
    rows = pd.concat([rows] * (n // len(rows) + 1), ignore_index=True).head(n)
    rows["magnification"] = [MAGS[i % len(MAGS)] for i in range(len(rows))]
    rows["label"] = [i % 2 for i in range(len(rows))]
    net = PatchNet(build_backbone(args.backbone, None), 128).to(device).train()
    net = net.to(memory_format=torch.channels_last)
    optimiser = torch.optim.AdamW(net.parameters(), lr=1e-4)
    step = _step_fn(net, optimiser, Augment(AugmentParams()), device)
    generator = torch.Generator(device=device).manual_seed(0)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    # a. the GPU bound: a fixed batch already on the device
    fixed = [torch.randint(0, 256, (args.batch, 3, args.patch_px, args.patch_px),
                           dtype=torch.uint8, device=device)]
    labels = torch.randint(0, 2, (args.batch,), device=device)
    for _ in range(args.warmup):
        step(fixed, labels, generator)
    sync()
    start = time.perf_counter()
    for _ in range(args.steps):
        step(fixed, labels, generator)
    sync()
    rate_a = args.steps * args.batch / (time.perf_counter() - start)

    # b. from the stores, through the training loader
    dataset = PatchDataset(rows, [View()], stores, label_columns=["label"])
    loader = make_loader(dataset, EpochSampler(len(rows), args.batch, seed=1), args.workers)
    stop, util = threading.Event(), []
    times = []
    for k, batch in enumerate(loader):
        if k == args.warmup:
            sync()
            start = time.perf_counter()
            sampler = threading.Thread(target=_gpu_sampler, args=(stop, util), daemon=True)
            if device.type == "cuda":
                sampler.start()
        views = [v.to(device, non_blocking=True) for v in batch["views"]]
        step(views, batch["labels"][:, 0].to(device), generator)
        times.append(time.perf_counter())
    sync()
    rate_b = args.steps * args.batch / (time.perf_counter() - start)
    stop.set()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    today = datetime.date.today().isoformat()
    gpu = f"{statistics.median(util):.0f}%" if util else "n/a"
    text = (f"\n## {today}, {name}\n\n"
            f"Command: `python benchmarks/bench_train.py --backbone {args.backbone} --patch-px "
            f"{args.patch_px} --batch {args.batch} --steps {args.steps} --workers "
            f"{args.workers} --device {args.device}`; torch {torch.__version__}.\n\n"
            "| | data | images/s | GPU utilisation (median) |\n|---|---|---:|---:|\n"
            f"| a | fixed batch on the device (GPU bound) | {rate_a:.0f} | |\n"
            f"| b | demo stores via make_loader, {args.workers} workers | {rate_b:.0f} | {gpu} |\n"
            f"\nb / a = {rate_b / rate_a:.2f}\n")
    out = HERE / "results" / f"train-{today}.md"
    with open(out, "a") as fh:
        fh.write(text)
    print(text)


if __name__ == "__main__":
    main()
