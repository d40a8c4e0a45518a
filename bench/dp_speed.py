"""DP-SGD throughput against plain SGD, per shipped model and Opacus grad-sample mode.

    .venv/bin/python -m bench.dp_speed

Trains on synthetic rows with the heart-disease feature count (13), batch 32, one thread
(as each ClientApp runs), and reports samples/s (median of 3 repeats). Writes a table to
BENCHMARKS.md between markers. ``auto`` in medfl picks the fastest mode that works.
"""

from __future__ import annotations

import argparse
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
MODES = ["hooks", "ew", "functorch"]


def throughput(model_cfg: ModelConfig, mode: str | None, n: int) -> float:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 13)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float32)
    torch.manual_seed(0)
    model = build_model(model_cfg, n_features=13)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = make_loader(x, y, batch_size=32, shuffle=True, seed=0)
    if mode is not None:
        plan = DPPlan(1.0, 32 / n, n // 32, 1, 1.0, 1e-3, "rdp", 100.0)
        model, opt, loader, _ = attach_dp(model, opt, loader, plan=plan, history=[],
                                          grad_sample_mode=mode)
    t0 = time.perf_counter()
    train_epochs(model, loader, opt, epochs=1, device=torch.device("cpu"))
    return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name, cfg in MODELS.items():
        base = statistics.median(throughput(cfg, None, args.rows) for _ in range(3))
        cells = [f"{base:,.0f}"]
        for mode in MODES:
            try:
                sps = statistics.median(throughput(cfg, mode, args.rows) for _ in range(3))
                cells.append(f"{sps:,.0f} ({sps / base:.2f}×)")
            except Exception as exc:  # noqa: BLE001 - a mode that fails is reported, not fatal
                cells.append(f"fails ({type(exc).__name__})")
        rows.append((name, *cells))
        print(rows[-1], flush=True)
    write_section(
        args.out, "dp-speed", heading="DP-SGD throughput",
        intro=(f"Command: `.venv/bin/python -m bench.dp_speed` ({args.rows:,} synthetic rows, "
               f"13 features, batch 32, 1 thread; {platform.machine()}, {os.cpu_count()} "
               "cores, no GPU; median of 3). Samples/s, and the ratio to training without DP."),
        columns=["model", "no DP", "DP hooks", "DP ew", "DP functorch"],
        rows=rows,
    )


if __name__ == "__main__":
    main()
