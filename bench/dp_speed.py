"""DP-SGD throughput and peak memory against plain SGD, per shipped model and mode.

    .venv/bin/python -m bench.dp_speed                      # the 64x64 table, CPU
    .venv/bin/python -m bench.dp_speed --clinical --memory  # DenseNet121 224, UNet 256

Trains on synthetic rows with the heart-disease feature count (13), and on synthetic
images for the shipped DenseNet121, residual CNN and UNet (64x64, or with ``--clinical``
the clinical sizes: DenseNet121 at 224x224, UNet at 256x256), batch 32 by default, one
thread on the CPU (as each ClientApp runs), and reports samples/s (median of
``--repeats``). ``--memory`` adds each run's peak memory: CUDA's peak allocation, or on
the CPU the peak resident set of a fresh process per measurement. Writes a table to
BENCHMARKS.md between markers. ``auto`` in medfl times the modes at the site and keeps
the fastest (medfl.privacy.modes).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench.report import write_section
from medfl.config import ModelConfig
from medfl.models import build_model
from medfl.privacy.dp import DPPlan, attach_dp
from medfl.training import make_loader, train_epochs

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")

MODELS = {"logreg": ModelConfig("logreg", 0, 8), "mlp (64 hidden)": ModelConfig("mlp", 64, 8)}
#: The shipped imaging models at the 64x64 scenarios' size (one channel): (model, side).
IMAGE_MODELS = {"resnet 64x64 (width 8)": (ModelConfig("resnet", 0, 8), 64),
                "densenet121 64x64": (ModelConfig("densenet121", 0, 8), 64),
                "unet 64x64 (width 8)": (ModelConfig("unet", 0, 8), 64)}
#: The clinical-resolution scenarios' models (issue 21).
CLINICAL_MODELS = {"densenet121 224x224": (ModelConfig("densenet121", 0, 8), 224),
                   "unet 256x256 (width 8)": (ModelConfig("unet", 0, 8), 256)}
MODES = ["hooks", "ghost", "ew", "functorch"]


def _bce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.binary_cross_entropy_with_logits(logits.reshape(y.shape), y)


def _data(model_cfg: ModelConfig, n: int, side: int) -> tuple[np.ndarray, np.ndarray,
                                                               torch.nn.Module]:
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    if model_cfg.name in ("resnet", "densenet121", "unet"):
        x = rng.normal(size=(n, 1, side, side)).astype(np.float32)
        y = ((x > 1.0).astype(np.float32) if model_cfg.name == "unet"
             else (x[:, 0, 0, 0] > 0).astype(np.float32))
        return x, y, build_model(model_cfg, image_shape=(1, side, side))
    x = rng.normal(size=(n, 13)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float32)
    return x, y, build_model(model_cfg, n_features=13)


def throughput(model_cfg: ModelConfig, mode: str | None, n: int, *, batch: int = 32,
               device: torch.device = CPU, side: int = 64) -> tuple[float, float]:
    """(training examples per second over one epoch, peak bytes) on synthetic data;
    ``mode``: the per-sample-gradient mode, or ``None`` for plain SGD. The peak is CUDA's
    peak allocation, or this process's peak resident set on the CPU."""
    x, y, model = _data(model_cfg, n, side)
    model = model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = make_loader(x, y, batch_size=batch, shuffle=True, seed=0)
    if mode is not None:
        batches = math.ceil(n / batch)  # Opacus' Poisson loader: sample rate 1 / batches
        plan = DPPlan(1.0, 1 / batches, batches, 1, 1.0, 1e-3, "rdp", 100.0)
        model, opt, loader, _ = attach_dp(model, opt, loader, plan=plan, history=[],
                                          grad_sample_mode=mode)
    if device.type == "cuda":  # one untimed epoch: kernels chosen, caches warm
        train_epochs(model, loader, opt, epochs=1, device=device, criterion=_bce)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    train_epochs(model, loader, opt, epochs=1, device=device, criterion=_bce)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = float(torch.cuda.max_memory_allocated(device))
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0  # KiB on Linux
    return n / (time.perf_counter() - t0), peak


def _fresh(args: tuple) -> tuple[float, float]:
    torch.set_num_threads(1)
    model_cfg, mode, n, batch, side = args
    return throughput(model_cfg, mode, n, batch=batch, side=side)


def measure(model_cfg: ModelConfig, mode: str | None, n: int, *, batch: int, side: int,
            device: torch.device, repeats: int, fresh: bool) -> tuple[float, float]:
    """Median samples/s and the largest peak over ``repeats``; ``fresh``: each in a new
    process (the CPU peak resident set is per process)."""
    runs = []
    for _ in range(repeats):
        if fresh:
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                runs.append(pool.apply(_fresh, ((model_cfg, mode, n, batch, side),)))
        else:
            runs.append(throughput(model_cfg, mode, n, batch=batch, device=device, side=side))
    return statistics.median(r[0] for r in runs), max(r[1] for r in runs)


def _cell(sps: float, peak: float, base: tuple[float, float], memory: bool) -> str:
    cell = f"{sps:,.1f} ({sps / base[0]:.2f}×)" if sps < 100 else \
        f"{sps:,.0f} ({sps / base[0]:.2f}×)"
    return cell + (f", {peak / 2**30:.2f} GiB ({peak / base[1]:.2f}×)" if memory else "")


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--images", type=int, default=256, help="images per imaging run")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu", help="cpu (1 thread, as a ClientApp) or cuda")
    parser.add_argument("--models", nargs="+", help="a subset of the table's model names")
    parser.add_argument("--modes", nargs="+", default=MODES, choices=MODES)
    parser.add_argument("--clinical", action="store_true",
                        help="DenseNet121 at 224x224 and UNet at 256x256 instead")
    parser.add_argument("--memory", action="store_true", help="add each run's peak memory")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--section", default=None, help="BENCHMARKS.md section name")
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    return parser.parse_args()


def _intro(args: argparse.Namespace, device: torch.device) -> str:
    sizes = "224x224 (DenseNet121) or 256x256 (UNet)" if args.clinical else "64x64"
    where = ("1 thread (as each ClientApp runs)" if device.type == "cpu" else
             f"{torch.cuda.get_device_name(device)}, one untimed warm-up epoch")
    memory = ("" if not args.memory else " Peak memory: " + (
        "the peak resident set of a fresh process per measurement (the no-DP one included)"
        if device.type == "cpu" else "CUDA's peak allocation") + ", and its ratio to no DP.")
    return (f"Command: `{' '.join(['.venv/bin/python -m bench.dp_speed', *sys.argv[1:]])}` "
            + ("(" if args.clinical else f"({args.rows:,} synthetic rows of 13 features, or ")
            + f"{args.images} synthetic {sizes} images; batch {args.batch_size}, {where}; "
            f"torch {torch.__version__}; "
            f"{platform.machine()}, {os.cpu_count()} cores; median of {args.repeats}). "
            "Samples/s, and the ratio to training without DP." + memory
            + " `auto` (medfl.privacy.modes) times the modes at the site and keeps the "
            "fastest that runs.")


def main() -> None:
    """Measure DP-SGD throughput per model and mode; write the BENCHMARKS.md section."""
    args = _parse()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    images = CLINICAL_MODELS if args.clinical else IMAGE_MODELS
    table = {**({} if args.clinical else {m: (c, 0) for m, c in MODELS.items()}), **images}
    rows = []
    for name, (cfg, side) in table.items():
        if args.models and name not in args.models:
            continue
        n = args.images if side else args.rows
        kw = {"batch": args.batch_size, "side": side or 64, "device": device,
              "repeats": args.repeats, "fresh": args.memory and device.type == "cpu"}
        base = measure(cfg, None, n, **kw)
        cells = [_cell(*base, base, args.memory).split(" (")[0]
                 + (f", {base[1] / 2**30:.2f} GiB" if args.memory else "")]
        for mode in args.modes:
            try:
                cells.append(_cell(*measure(cfg, mode, n, **kw), base, args.memory))
            except Exception as exc:  # noqa: BLE001 - a mode that fails is reported, not fatal
                cells.append(f"fails ({type(exc).__name__})")
        rows.append((name, *cells))
        print(rows[-1], flush=True)
    section = args.section or ("dp-speed-clinical" if args.clinical else "dp-speed")
    write_section(
        args.out, section, heading="DP-SGD throughput" + (
            " at clinical resolution" if args.clinical else "") + (
            "" if device.type == "cpu" else f" on {torch.cuda.get_device_name(device)}"),
        intro=_intro(args, device),
        columns=["model", "no DP", *[f"DP {m}" for m in args.modes]], rows=rows)


if __name__ == "__main__":
    main()
