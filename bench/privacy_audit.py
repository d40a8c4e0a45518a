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

CONFIGS = {
    "logistic regression, DP-SGD ε ≤ 3 (default)": {},
    "logistic regression, no DP": {"privacy.enabled": False},
    "MLP (64 hidden), DP-SGD ε ≤ 3, 30 rounds": {"model.name": "mlp", "model.hidden": 64,
                                                 "num-server-rounds": 30},
    "MLP (64 hidden), no DP, 30 rounds": {"model.name": "mlp", "model.hidden": 64,
                                          "num-server-rounds": 30, "privacy.enabled": False},
}
BEGIN, END = "<!-- privacy-audit:begin -->", "<!-- privacy-audit:end -->"


def _fmt(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def main() -> None:
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
            rows.append((label, _fmt(mean_auc), _fmt(max_auc), _fmt(tpr), _fmt(acc)))
            print(rows[-1], flush=True)
    block = "\n".join([
        BEGIN,
        f"Command: `.venv/bin/python -m bench.privacy_audit --seeds {args.seeds}` (seeds 0..."
        f"{args.seeds - 1}; {platform.machine()}, {os.cpu_count()} cores; seeded DP noise).",
        "",
        "| configuration | mean attack AUC over sites | highest site attack AUC "
        "| mean TPR at FPR 0.1 | mean per-site accuracy |",
        "| --- | --- | --- | --- | --- |",
        *[f"| {' | '.join(r)} |" for r in rows],
        END,
    ])
    text = args.out.read_text()
    if BEGIN in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n## Membership-inference audit\n\n" + block + "\n"
    args.out.write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
