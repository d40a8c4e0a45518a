"""FLamby-style utility table for heart disease: local-only, pooled centralised training,
and each federated strategy with DP off and at ε = 1 and ε = 3 per site (δ = 1e-3), plus
robustness to one site sending corrupted updates every round.

Every federated row runs the real apps in-process (bench/inprocess.py), 10 rounds of one
local epoch, logistic regression, consortium-wide standardisation; mean ± sd over seeds.
Local-only and pooled rows train the same model with the same optimiser for 10 epochs
(local: each site alone, on its own standardisation; pooled: all training rows in one
place), evaluated on each site's own test split. Writes BENCHMARKS.md between markers.

    .venv/bin/python -m bench.utility              # 5 seeds (the published numbers)
    .venv/bin/python -m bench.utility --seeds 2    # quicker
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import tempfile
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from bench import inprocess
from bench.report import mean_sd, write_section
from medfl import tasks
from medfl.config import parse_run_config
from medfl.data.scaling import local_standardizer
from medfl.training import make_loader, make_optimizer, predict_proba, train_epochs

STRATEGIES = ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad")
PRIVACY = {"DP off": {"privacy.enabled": False},
           "ε = 1": {"privacy.target-epsilon": 1.0},
           "ε = 3": {"privacy.target-epsilon": 3.0}}
ATTACKS = {  # one of four sites corrupts its update every round (DP off)
    "clean, fedavg": {},
    "va scales its update x10, fedavg, no validation": {
        "attack.sites": "va", "attack.kind": "scale", "strategy.norm-ratio": 0.0},
    "va scales its update x10, fedavg + norm check (default, 3x median)": {
        "attack.sites": "va", "attack.kind": "scale"},
    "va scales its update x10, fedmedian, no norm check": {
        "attack.sites": "va", "attack.kind": "scale", "strategy.name": "fedmedian",
        "strategy.norm-ratio": 0.0},
    "va sends NaN, fedavg (validation)": {"attack.sites": "va", "attack.kind": "nan"},
}
FLAMBY = [("FLamby (published): FedAvg", "off", "0.685", "", ""),
          ("FLamby (published): best federated strategy", "off", "0.731", "", ""),
          ("FLamby (published): pooled training", "off", "0.735", "", "")]


def federated(overrides: dict, seed: int, tmp: str) -> tuple[float, float, float]:
    cfg = inprocess.default_run_config()
    cfg.update(overrides)
    cfg.update({"seed": seed, "output-dir": tmp, "run-name": f"u{abs(hash(str(overrides)))}-{seed}",
                "privacy.secure-noise": False, "privacy.audit": False})
    inprocess.run(cfg)
    s = json.loads((Path(tmp) / cfg["run-name"] / "summary.json").read_text())
    accs = [x["metrics"]["accuracy"] for x in s["sites"]]
    return s["mean_site_accuracy"], s["global"]["metrics"]["auroc"], min(accs)


def centralised(seed: int, *, pooled: bool) -> tuple[float, float, float]:
    """Non-federated baselines with the default model and optimiser (10 epochs)."""
    cfg = parse_run_config(inprocess.default_run_config())
    data = {s: tasks.load_site(cfg, s) for s in tasks.sites(cfg)}
    spec = tasks.feature_spec(cfg)

    def train(x: np.ndarray, y: np.ndarray):
        torch.manual_seed(seed)
        scaler = local_standardizer(x, columns=spec.numeric_idx)
        model = tasks.build_task_model(cfg)
        loader = make_loader(scaler.transform(x), y, batch_size=cfg.train.batch_size,
                             shuffle=True, seed=seed)
        train_epochs(model, loader, make_optimizer(model, cfg.train), epochs=10,
                     device=torch.device("cpu"))
        return model, scaler

    probs = {}
    if pooled:
        model, scaler = train(np.concatenate([d.x_train for d in data.values()]),
                              np.concatenate([d.y_train for d in data.values()]))
        for s, d in data.items():
            probs[s] = predict_proba(model, scaler.transform(d.x_test), device="cpu")
    else:
        for s, d in data.items():
            model, scaler = train(d.x_train, d.y_train)
            probs[s] = predict_proba(model, scaler.transform(d.x_test), device="cpu")
    accs = [float(np.mean((probs[s].reshape(-1) >= 0.5) == d.y_test)) for s, d in data.items()]
    y = np.concatenate([d.y_test for d in data.values()])
    auroc = roc_auc_score(y, np.concatenate([probs[s].reshape(-1) for s in data]))
    return float(np.mean(accs)), float(auroc), min(accs)


def _row(label: str, dp: str, runs: list[tuple[float, float, float]]) -> tuple[str, ...]:
    cols = list(zip(*runs, strict=True))
    return (label, dp, mean_sd(list(cols[0])), mean_sd(list(cols[1])), mean_sd(list(cols[2])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=inprocess.ROOT / "BENCHMARKS.md")
    parser.add_argument("--part", choices=("all", "strategies", "robustness"), default="all")
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    seeds = range(args.seeds)
    rows, robust = [], []
    if args.part in ("all", "strategies"):
        rows = [_row("local-only (each site alone)", "off",
                     [centralised(s, pooled=False) for s in seeds]),
                _row("pooled centralised", "off", [centralised(s, pooled=True) for s in seeds])]
        print(rows, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for dp, privacy in (PRIVACY.items() if rows else ()):
            for name in STRATEGIES:
                runs = [federated({"strategy.name": name, **privacy}, s, tmp) for s in seeds]
                rows.append(_row(name, dp, runs))
                print(rows[-1], flush=True)
        for label, attack in (ATTACKS.items() if args.part != "strategies" else ()):
            runs = [federated({"privacy.enabled": False, **attack}, s, tmp) for s in seeds]
            robust.append(_row(label, "off", runs))
            print(robust[-1], flush=True)
    intro = (f"Command: `.venv/bin/python -m bench.utility --seeds {args.seeds}` (seeds "
             f"0..{args.seeds - 1}; {platform.machine()}, 2 cores; in-process apps, 10 rounds "
             "x 1 local epoch, logistic regression, lr 0.5, consortium-wide scaling; DP "
             "noise seeded from the run seed). Mean per-client accuracy is FLamby's metric "
             "(the unweighted mean of the four sites' test accuracies); pooled AUROC is the "
             "report's estimate from the sites' shared statistics (Switzerland left out).")
    columns = ["configuration", "DP", "mean per-client accuracy", "pooled AUROC",
               "worst-site accuracy"]
    if rows:
        write_section(args.out, "utility",
                      heading="Strategies on FLamby's heart-disease protocol",
                      intro=intro, columns=columns, rows=rows + FLAMBY)
    if robust:
        write_section(args.out, "robustness", heading="One site sending corrupted updates",
                      intro=intro.replace("--seeds", "--part robustness --seeds")
                      + " One of the four sites (VA) corrupts its update every round; "
                      "`strategy.norm-ratio` is 3 unless the row says otherwise.",
                      columns=columns, rows=robust)


if __name__ == "__main__":
    main()
