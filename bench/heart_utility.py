"""Utility of the default heart-disease run under DP, over seeds, and what each choice costs.

Runs the real apps in-process (bench/inprocess.py) for each configuration and seed and
writes a Markdown table (mean ± sd over seeds) to BENCHMARKS.md between markers.

    .venv/bin/python -m bench.heart_utility            # 5 seeds (the published numbers)
    .venv/bin/python -m bench.heart_utility --seeds 2  # quicker
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from bench import inprocess
from bench.report import mean_sd, write_section

CONFIGS = {
    "default (DP-SGD, ε ≤ 3 per site, federated scaling)": {},
    "DP-SGD ε ≤ 1": {"privacy.target-epsilon": 1.0},
    "no DP (baseline)": {"privacy.enabled": False},
    "site-local scaling, ε ≤ 3": {"preprocessing.scaling": "site"},
    "noised feature moments (σ = 5), ε ≤ 3 in total": {"preprocessing.stats-noise-multiplier": 5.0},
}


def main() -> None:
    """Run each configuration over the seeds; write the BENCHMARKS.md section."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=inprocess.ROOT / "BENCHMARKS.md")
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, overrides in CONFIGS.items():
            mean_acc, auroc, worst, eps, secs = [], [], [], [], []
            for seed in range(args.seeds):
                cfg = inprocess.default_run_config()
                cfg.update(overrides)
                # Seeded DP noise so each figure can be reproduced from its seed; the
                # default (OS-entropy noise) has the same distribution.
                cfg.update({"seed": seed, "output-dir": tmp, "run-name": f"{len(rows)}-{seed}",
                            "privacy.secure-noise": False})
                t0 = time.perf_counter()
                inprocess.run(cfg)
                secs.append(time.perf_counter() - t0)
                s = json.loads((Path(tmp) / cfg["run-name"] / "summary.json").read_text())
                accs = [x["metrics"]["accuracy"] for x in s["sites"]]
                mean_acc.append(s["mean_site_accuracy"])
                auroc.append(s["global"]["metrics"]["auroc"])
                worst.append(min(accs))
                e = [x["epsilon"] for x in s["sites"]]
                eps.append(max(e) if all(isinstance(v, float) for v in e) else float("inf"))
            rows.append((label, mean_sd(mean_acc), mean_sd(auroc), mean_sd(worst),
                         "∞" if eps[0] == float("inf") else f"{max(eps):.4f}",
                         f"{statistics.median(secs):.1f}"))
            print(rows[-1], flush=True)
    write_section(
        args.out, "heart-utility",
        heading="Heart disease (FLamby Fed-Heart-Disease protocol): utility under DP",
        intro=(f"Command: `.venv/bin/python -m bench.heart_utility --seeds {args.seeds}` "
               f"(seeds 0..{args.seeds - 1}; {platform.processor() or platform.machine()}, "
               f"{os.cpu_count()} cores, no GPU; in-process apps, 10 rounds, FedAvg, logistic "
               "regression; DP noise seeded from the run seed for reproducibility, "
               "`privacy.secure-noise=false`)."),
        columns=["configuration", "mean per-site accuracy", "pooled AUROC (estimate)",
                 "worst-site accuracy", "max ε spent", "s / run (median)"],
        rows=rows,
    )


if __name__ == "__main__":
    main()
