"""Imaging scenarios: the federated DP model against the same model trained centrally.

For each scenario (``simulations/imaging-classification.toml``, ``simulations/
segmentation.toml``) and seed, this runs the real apps in-process (bench/inprocess.py) and
then trains the same model centrally, without DP, on the pooled training sets of all
sites for the same number of epochs (rounds x local epochs), with the same loss,
optimizer and augmentation (``medfl.site.fit`` on the pooled data). Both models are scored
on the pooled test sets: exact AUROC (sklearn) for classification, mean per-image Dice
(MONAI) for segmentation. Results go to BENCHMARKS.md between markers.

    .venv/bin/python -m bench.imaging_utility               # 3 seeds, both scenarios
    .venv/bin/python -m bench.imaging_utility --seeds 1 --scenario segmentation
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bench import inprocess
from bench.report import mean_sd, write_section
from medfl import site as site_lib
from medfl import tasks
from medfl.config import parse_run_config
from medfl.data.types import SiteData
from medfl.serving.bundle import load_bundle

SCENARIOS = {"imaging-classification": "auroc", "segmentation": "dice",
             "chest-xray-224": "auroc", "segmentation-256": "dice"}
#: What runs without --scenario: the 64x64 scenarios (the clinical-resolution ones are for
#: a GPU: ``--scenario chest-xray-224`` there; on a CPU they run at data.cpu-image-size).
DEFAULT_SCENARIOS = ("imaging-classification", "segmentation")


def scenario_config(name: str) -> dict:
    """The defaults fused with ``simulations/<name>.toml``, as Flower builds them."""
    from flwr.common.config import parse_config_args

    cfg = inprocess.default_run_config()
    cfg.update(parse_config_args([str(inprocess.ROOT / "simulations" / f"{name}.toml")]))
    return cfg


def pooled(parts: list[SiteData]) -> SiteData:
    """All sites' rows as one site (the centralised baseline's data)."""
    return SiteData(
        name="pooled",
        x_train=np.concatenate([p.x_train for p in parts]),
        y_train=np.concatenate([p.y_train for p in parts]),
        x_test=np.concatenate([p.x_test for p in parts]),
        y_test=np.concatenate([p.y_test for p in parts]),
        sensitive_train=pd.concat([p.sensitive_train for p in parts], ignore_index=True),
        sensitive_test=pd.concat([p.sensitive_test for p in parts], ignore_index=True),
    )


def score(cfg, data: SiteData, weights: dict[str, torch.Tensor], metric: str) -> float:
    """``metric`` (auroc or dice) of ``weights`` on ``data``'s test split."""
    stats = site_lib.evaluate(cfg, data, weights=weights,
                              scaler=site_lib.site_scaler(cfg, data, None))
    return float(stats.auroc if metric == "auroc" else stats.dice)


#: Central learning rates tried, as fractions of the scenario's: without DP's clipping the
#: scenario's rate can diverge, and the best of these (on the pooled test sets) is kept,
#: which favours the centralised baseline and makes the ratio conservative.
LR_FRACTIONS = (1.0, 1 / 3, 1 / 10)


def centralised(cfg, data: SiteData, seed: int, metric: str) -> tuple[float, float]:
    """The same model, loss and optimiser on the pooled data without DP: (best score,
    learning rate that gave it)."""
    best = (-1.0, 0.0)
    for fraction in LR_FRACTIONS:
        lr = cfg.train.lr * fraction
        central = replace(cfg, privacy=replace(cfg.privacy, enabled=False),
                          train=replace(cfg.train, lr=lr, local_epochs=cfg.num_server_rounds
                                        * cfg.train.local_epochs))
        torch.manual_seed(seed)
        init = tasks.task_for(central).build_model().state_dict()
        try:
            result = site_lib.fit(central, data, weights=init, scaler=site_lib.site_scaler(
                central, data, None), server_round=1, plan=None, history=[], seed=seed)
        except FloatingPointError:  # diverged at this rate
            continue
        best = max(best, (score(central, data, result.weights, metric), lr))
    return best


def run_one(name: str, metric: str, seed: int, tmp: str) -> tuple[float, float, float, float,
                                                                   float, float]:
    """One seed of scenario ``name``: federated and centralised figures."""
    raw = scenario_config(name)
    raw.update({"seed": seed, "output-dir": tmp, "run-name": f"{name}-{seed}",
                "state-dir": str(Path(tmp) / "state")})
    cfg = parse_run_config(raw)
    t0 = time.perf_counter()
    inprocess.run(raw, num_nodes=len(tasks.task_for(cfg).sites()))
    fed_s = time.perf_counter() - t0
    summary = json.loads((Path(tmp) / raw["run-name"] / "summary.json").read_text())
    eps = max(s["epsilon"] for s in summary["sites"])
    data = pooled([site_lib.load_site(cfg, s) for s in tasks.task_for(cfg).sites()])
    fed = score(cfg, data, load_bundle(Path(tmp) / raw["run-name"]).weights, metric)
    t0 = time.perf_counter()
    central, lr = centralised(cfg, data, seed, metric)
    print(f"{name} seed {seed}: federated {fed:.4f}, centralised {central:.4f} (lr {lr:g}), "
          f"ε {eps:.3f}, {fed_s:.0f} s", flush=True)
    return fed, central, fed / central, eps, fed_s, time.perf_counter() - t0


def scenario_args(description: str, *, seeds: int) -> argparse.Namespace:
    """The imaging benchmarks' command line: ``--seeds``, ``--scenario`` (repeatable; the
    64x64 ones by default), ``--out``. Quiets Flower's per-round log."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seeds", type=int, default=seeds)
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), action="append")
    parser.add_argument("--out", type=Path, default=inprocess.ROOT / "BENCHMARKS.md")
    logging.getLogger("flwr").setLevel(logging.WARNING)
    return parser.parse_args()


def main() -> None:
    """Run every scenario for each seed and write the table (see the module docstring)."""
    args = scenario_args(__doc__, seeds=3)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.scenario or DEFAULT_SCENARIOS:
            metric = SCENARIOS[name]
            results = [run_one(name, metric, seed, tmp) for seed in range(args.seeds)]
            cols = list(zip(*results, strict=True))
            rows.append((f"`{name}` ({metric})", mean_sd(list(cols[0])),
                         mean_sd(list(cols[1])), mean_sd(list(cols[2])),
                         f"{max(cols[3]):.2f}", f"{np.median(cols[4]):.0f}",
                         f"{np.median(cols[5]):.0f}"))
            print(rows[-1], flush=True)
    write_section(
        args.out, "imaging-utility",
        heading="Imaging scenarios: federated with DP vs centralised without DP",
        intro=(f"Command: `.venv/bin/python -m bench.imaging_utility --seeds {args.seeds}` "
               f"(seeds 0..{args.seeds - 1}; {platform.processor() or platform.machine()}, "
               f"{os.cpu_count()} cores, "
               + (torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")
               + "). Federated: the scenario as shipped "
               "(in-process apps, one thread, sites run one after another), DP-SGD with OS "
               "noise. Centralised: the same model, loss, optimiser and augmentation on "
               "the pooled training sets, no DP, rounds x local epochs epochs, best of the "
               "scenario's learning rate x (1, 1/3, 1/10) on the test sets (favours the "
               "baseline). Both scored "
               "on the pooled test sets: exact AUROC (sklearn) / mean per-image Dice "
               "(MONAI). Wall time of the real `flwr run` (2 sites at a time on 2 cores) "
               "is in the scenario section below."),
        columns=["scenario (metric)", "federated, DP", "centralised, no DP",
                 "ratio", "max ε", "federated s (in-process)", "centralised s (3 rates)"],
        rows=rows,
    )


if __name__ == "__main__":
    main()
