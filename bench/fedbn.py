"""FedBN against plain FedAvg on the imaging scenarios (``strategy.fedbn``).

Each scenario as shipped (``simulations/imaging-classification.toml``,
``simulations/segmentation.toml``; DP-SGD on), once with the normalisation layers
aggregated like everything else and once with them kept at each site, same seeds. The
figures are the sites' own evaluations from ``summary.json``: under FedBN each site
evaluates with its own normalisation layers, which is how a FedBN model is used (the
aggregated copy of those layers only serves ``/predict``).

    .venv/bin/python -m bench.fedbn                 # 2 seeds, both scenarios
    .venv/bin/python -m bench.fedbn --seeds 1 --scenario segmentation
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from bench import inprocess
from bench.imaging_utility import (
    DEFAULT_SCENARIOS,
    SCENARIOS,
    scenario_args,
    scenario_config,
)
from bench.report import mean_sd, write_section
from medfl import tasks
from medfl.config import parse_run_config


def run_one(name: str, seed: int, fedbn: bool, tmp: str) -> dict[str, float]:
    """One in-process run of scenario ``name``: mean and worst per-site metric, the
    pooled one, seconds and the largest ε."""
    raw = scenario_config(name)
    raw.update({"seed": seed, "output-dir": tmp, "run-name": f"{name}-{seed}-{fedbn}",
                "state-dir": str(Path(tmp) / f"state-{seed}-{fedbn}"), "strategy.fedbn": fedbn,
                "privacy.audit": False})
    cfg = parse_run_config(raw)
    t0 = time.perf_counter()
    inprocess.run(raw, num_nodes=len(tasks.task_for(cfg).sites()))
    seconds = time.perf_counter() - t0
    s = json.loads((Path(tmp) / raw["run-name"] / "summary.json").read_text())
    key = "dice" if SCENARIOS[name] == "dice" else "accuracy"
    per_site = [x["metrics"][key] for x in s["sites"]]
    out = {"mean": sum(per_site) / len(per_site), "worst": min(per_site),
           "pooled": s["global"]["metrics"][SCENARIOS[name]], "s": seconds,
           "eps": max(x["epsilon"] for x in s["sites"])}
    print(f"{name} seed {seed} fedbn={fedbn}: {out}", flush=True)
    return out


def main() -> None:
    """Compare FedAvg with FedBN per scenario; write the BENCHMARKS.md section."""
    args = scenario_args(__doc__, seeds=2)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.scenario or DEFAULT_SCENARIOS:
            metric = "Dice" if SCENARIOS[name] == "dice" else "accuracy"
            pooled = "mean Dice" if metric == "Dice" else "AUROC (estimate)"
            for fedbn in (False, True):
                runs = [run_one(name, seed, fedbn, tmp) for seed in range(args.seeds)]
                rows.append((f"`{name}`", "FedBN" if fedbn else "FedAvg",
                             f"{mean_sd([r['mean'] for r in runs])} (per-site {metric})",
                             f"{mean_sd([r['worst'] for r in runs])}",
                             f"{mean_sd([r['pooled'] for r in runs])} ({pooled})",
                             f"{max(r['eps'] for r in runs):.2f}",
                             f"{statistics.median(r['s'] for r in runs):.0f}"))
    write_section(
        args.out, "fedbn", heading="FedBN on the imaging scenarios",
        intro=(f"Command: `.venv/bin/python -m bench.fedbn --seeds {args.seeds}` (seeds "
               f"0..{args.seeds - 1}; {platform.machine()}, {os.cpu_count()} cores, no GPU; "
               "in-process apps; each scenario as shipped, DP-SGD on). FedBN keeps every "
               "site's normalisation-layer parameters (affine instance norm) local; the "
               "figures are the sites' own evaluations (summary.json)."),
        columns=["scenario", "aggregation", "mean per-site", "worst site", "pooled",
                 "max ε", "s / run (median)"],
        rows=rows)


if __name__ == "__main__":
    main()
