"""Membership-inference audit (loss threshold) with DP-SGD on and off, over seeds.

    .venv/bin/python -m bench.privacy_audit --seeds 3

Writes a table to BENCHMARKS.md between markers. The attack runs at each site on its own
training rows (members) vs test rows (non-members); 0.5 means no membership signal.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import tempfile
from pathlib import Path

from bench import inprocess
from bench.report import mean_sd, write_section

CONFIGS = {
    "logistic regression, DP-SGD ε ≤ 3 (default)": {},
    "logistic regression, no DP": {"privacy.enabled": False},
    "MLP (64 hidden), DP-SGD ε ≤ 3, 30 rounds": {"model.name": "mlp", "model.hidden": 64,
                                                 "num-server-rounds": 30},
    "MLP (64 hidden), no DP, 30 rounds": {"model.name": "mlp", "model.hidden": 64,
                                          "num-server-rounds": 30, "privacy.enabled": False},
}


def main() -> None:
    """Audit each configuration over the seeds; write the BENCHMARKS.md section."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=inprocess.ROOT / "BENCHMARKS.md")
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, overrides in CONFIGS.items():
            mean_auc, max_auc, tpr, acc = [], [], [], []
            for seed in range(args.seeds):
                cfg = inprocess.default_run_config()
                cfg.update(overrides)
                cfg.update({"seed": seed, "output-dir": tmp, "run-name": f"{len(rows)}-{seed}",
                            "state-dir": str(Path(tmp) / "state"),
                            "privacy.secure-noise": False})
                inprocess.run(cfg)
                s = json.loads((Path(tmp) / cfg["run-name"] / "summary.json").read_text())
                sites = s["privacy"]["audit"]["sites"].values()
                mean_auc.append(s["privacy"]["audit"]["mean_attack_auc"])
                max_auc.append(max(x["attack_auc"] for x in sites))
                tpr.append(statistics.mean(x["tpr_at_fpr_0.1"] for x in sites))
                acc.append(s["mean_site_accuracy"])
            rows.append((label, mean_sd(mean_auc), mean_sd(max_auc), mean_sd(tpr), mean_sd(acc)))
            print(rows[-1], flush=True)
    write_section(
        args.out, "privacy-audit", heading="Membership-inference audit",
        intro=(f"Command: `.venv/bin/python -m bench.privacy_audit --seeds {args.seeds}` "
               f"(seeds 0...{args.seeds - 1}; {platform.machine()}, {os.cpu_count()} cores; "
               "seeded DP noise)."),
        columns=["configuration", "mean attack AUC over sites", "highest site attack AUC",
                 "mean TPR at FPR 0.1", "mean per-site accuracy"],
        rows=rows,
    )


if __name__ == "__main__":
    main()
