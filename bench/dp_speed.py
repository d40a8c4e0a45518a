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
import time
from pathlib import Path

import numpy as np
import torch

from bench.inprocess import ROOT
from bench.report import write_section
from medfl.config import ModelConfig
from medfl.models import build_model
from medfl.privacy.dp import DPPlan, attach_dp
from medfl.training import make_loader, train_epochs

MODELS = {"logreg": ModelConfig("logreg", 0, 8), "mlp (64 hidden)": ModelConfig("mlp", 64, 8)}
#: The shipped imaging models at the scenarios' size (64 x 64, one channel).
IMAGE_MODELS = {"densenet121 64x64": ModelConfig("densenet121", 0, 8),
                "unet 64x64 (width 8)": ModelConfig("unet", 0, 8)}
MODES = ["hooks", "ew", "functorch"]


def _bce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.binary_cross_entropy_with_logits(logits.reshape(y.shape), y)


def throughput(model_cfg: ModelConfig, mode: str | None, n: int) -> float:
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    if model_cfg.name in ("densenet121", "unet"):
        x = rng.normal(size=(n, 1, 64, 64)).astype(np.float32)
        y = ((x > 1.0).astype(np.float32) if model_cfg.name == "unet"
             else (x[:, 0, 0, 0] > 0).astype(np.float32))
        model = build_model(model_cfg, image_shape=(1, 64, 64))
    else:
        x = rng.normal(size=(n, 13)).astype(np.float32)
        y = (x[:, 0] > 0).astype(np.float32)
        model = build_model(model_cfg, n_features=13)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = make_loader(x, y, batch_size=32, shuffle=True, seed=0)
    if mode is not None:
        batches = math.ceil(n / 32)  # Opacus' Poisson loader: sample rate 1 / batches
        plan = DPPlan(1.0, 1 / batches, batches, 1, 1.0, 1e-3, "rdp", 100.0)
        model, opt, loader, _ = attach_dp(model, opt, loader, plan=plan, history=[],
                                          grad_sample_mode=mode)
    t0 = time.perf_counter()
    train_epochs(model, loader, opt, epochs=1, device=torch.device("cpu"), criterion=_bce)
    return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--images", type=int, default=256, help="images per imaging run")
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    sizes = {**{m: args.rows for m in MODELS}, **{m: args.images for m in IMAGE_MODELS}}
    for name, cfg in {**MODELS, **IMAGE_MODELS}.items():
        n = sizes[name]
        base = statistics.median(throughput(cfg, None, n) for _ in range(3))
        cells = [f"{base:,.0f}"]
        for mode in MODES:
            try:
                sps = statistics.median(throughput(cfg, mode, n) for _ in range(3))
                cells.append(f"{sps:,.0f} ({sps / base:.2f}×)")
            except Exception as exc:  # noqa: BLE001 - a mode that fails is reported, not fatal
                cells.append(f"fails ({type(exc).__name__})")
        rows.append((name, *cells))
        print(rows[-1], flush=True)
    write_section(
        args.out, "dp-speed", heading="DP-SGD throughput",
        intro=(f"Command: `.venv/bin/python -m bench.dp_speed` ({args.rows:,} synthetic rows "
               f"of 13 features, or {args.images} synthetic 64x64 images; batch 32, 1 thread "
               f"(as each ClientApp runs); {platform.machine()}, {os.cpu_count()} cores, no "
               "GPU; median of 3, each mode measured right after its no-DP baseline in the "
               "same process). Samples/s, and the ratio to training without DP. `auto` "
               "(medfl.privacy.dp.choose_grad_sample_mode) picks `ew` for models of linear "
               "layers and `hooks` otherwise."),
        columns=["model", "no DP", "DP hooks", "DP ew", "DP functorch"],
        rows=rows,
    )


if __name__ == "__main__":
    main()
