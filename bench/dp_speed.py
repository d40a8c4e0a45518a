"""DP-SGD throughput against plain SGD, per shipped model and Opacus grad-sample mode.

    .venv/bin/python -m bench.dp_speed

Trains on synthetic rows with the heart-disease feature count (13), and on synthetic
64x64 images for the shipped DenseNet121 and UNet, batch 32, one thread (as each
ClientApp runs), and reports samples/s (median of 3 repeats). Writes a table to
BENCHMARKS.md between markers. ``auto`` in medfl picks the fastest mode that works.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
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
#: The shipped imaging models at the scenarios' size (64 x 64, one channel).
IMAGE_MODELS = {"resnet 64x64 (width 8)": ModelConfig("resnet", 0, 8),
                "densenet121 64x64": ModelConfig("densenet121", 0, 8),
                "unet 64x64 (width 8)": ModelConfig("unet", 0, 8)}
MODES = ["hooks", "ew", "functorch"]


def _bce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.binary_cross_entropy_with_logits(logits.reshape(y.shape), y)


def throughput(model_cfg: ModelConfig, mode: str | None, n: int, *, batch: int = 32,
               device: torch.device = CPU) -> float:
    """Training examples per second over one epoch on synthetic data; ``mode``: the
    Opacus grad-sample mode, or ``None`` for plain SGD."""
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    if model_cfg.name in ("resnet", "densenet121", "unet"):
        x = rng.normal(size=(n, 1, 64, 64)).astype(np.float32)
        y = ((x > 1.0).astype(np.float32) if model_cfg.name == "unet"
             else (x[:, 0, 0, 0] > 0).astype(np.float32))
        model = build_model(model_cfg, image_shape=(1, 64, 64))
    else:
        x = rng.normal(size=(n, 13)).astype(np.float32)
        y = (x[:, 0] > 0).astype(np.float32)
        model = build_model(model_cfg, n_features=13)
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
    t0 = time.perf_counter()
    train_epochs(model, loader, opt, epochs=1, device=device, criterion=_bce)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return n / (time.perf_counter() - t0)


def main() -> None:
    """Measure DP-SGD throughput per model and mode; write the BENCHMARKS.md section."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--images", type=int, default=256, help="images per imaging run")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu", help="cpu (1 thread, as a ClientApp) or cuda")
    parser.add_argument("--models", nargs="+", help="a subset of the table's model names")
    parser.add_argument("--section", default="dp-speed", help="BENCHMARKS.md section name")
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    rows = []
    sizes = {**{m: args.rows for m in MODELS}, **{m: args.images for m in IMAGE_MODELS}}
    models = {k: v for k, v in {**MODELS, **IMAGE_MODELS}.items()
              if not args.models or k in args.models}

    def measure(cfg: ModelConfig, mode: str | None, n: int) -> float:
        return statistics.median(throughput(cfg, mode, n, batch=args.batch_size,
                                            device=device) for _ in range(3))

    for name, cfg in models.items():
        n = sizes[name]
        base = measure(cfg, None, n)
        cells = [f"{base:,.0f}"]
        for mode in MODES:
            try:
                sps = measure(cfg, mode, n)
                cells.append(f"{sps:,.0f} ({sps / base:.2f}×)")
            except Exception as exc:  # noqa: BLE001 - a mode that fails is reported, not fatal
                cells.append(f"fails ({type(exc).__name__})")
        rows.append((name, *cells))
        print(rows[-1], flush=True)
    write_section(
        args.out, args.section, heading="DP-SGD throughput" + (
            "" if device.type == "cpu" else f" on {torch.cuda.get_device_name(device)}"),
        intro=(f"Command: `{' '.join(['.venv/bin/python -m bench.dp_speed', *sys.argv[1:]])}` "
               f"({args.rows:,} synthetic rows of 13 features, or {args.images} synthetic "
               f"64x64 images; batch {args.batch_size}, "
               + ("1 thread (as each ClientApp runs); " if device.type == "cpu" else
                  f"{torch.cuda.get_device_name(device)}, one untimed warm-up epoch; ")
               + f"{platform.machine()}, {os.cpu_count()} cores; median of 3, each mode "
               "measured right after its no-DP baseline in the same process). Samples/s, and "
               "the ratio to training without DP. `auto` "
               "(medfl.privacy.dp.choose_grad_sample_mode) picks `ew` for models of linear "
               "layers and `hooks` otherwise."),
        columns=["model", "no DP", "DP hooks", "DP ew", "DP functorch"],
        rows=rows,
    )


if __name__ == "__main__":
    main()
