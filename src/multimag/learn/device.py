"""Where training and prediction run: the device, mixed precision, and the
process group of a multi-GPU job (torchrun, DistributedDataParallel)."""

from __future__ import annotations

import os

import torch

from multimag.errors import MultimagError


def resolve_device(requested: str) -> torch.device:
    """``auto``, ``cuda`` or ``cpu`` (or any torch device name) as a device."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise MultimagError("--device cuda was requested but no CUDA GPU is visible",
                            fix="run on a GPU node, or pass --device cpu (auto picks the GPU "
                            "when there is one)")
    if requested in ("auto", "cuda"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def autocast(device: torch.device, enabled: bool = True):
    """Mixed precision on CUDA (bfloat16 where supported, else float16); off on the CPU."""
    if device.type != "cuda" or not enabled:
        return torch.autocast("cpu", enabled=False)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def start_process_group(requested: str) -> tuple[int, int, torch.device]:
    """This process's rank, the world size and its device; joins the process
    group when torchrun started several processes."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    device = resolve_device(requested)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    return rank, world, device


def end_process_group(world: int) -> None:
    if world > 1:
        torch.distributed.destroy_process_group()


def relaunch_with_torchrun(gpus: int, argv: list[str]) -> int:
    """Run ``multimag train`` again under torchrun with ``gpus`` processes."""
    from torch.distributed.run import main as torchrun

    args = ["--standalone", f"--nproc_per_node={gpus}", "-m", "multimag.cli", *argv]
    torchrun(args)
    return 0
