"""FLamby-style utility table for heart disease: local-only, pooled centralised training,
and each federated strategy with DP off and at ε = 1 and ε = 3 per site (δ = 1e-3), each
also with the personalised evaluation (every site fine-tunes the final global model for one
local epoch), plus robustness to one site sending corrupted updates every round.

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
from medfl import site as site_lib
from medfl import tasks
from medfl.config import RunConfig, parse_run_config
from medfl.data.scaling import Standardizer, local_standardizer
from medfl.serving.bundle import load_bundle
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
    "va scales its update x10, fedtrimmedavg (beta 0.2), no norm check": {
        "attack.sites": "va", "attack.kind": "scale", "strategy.name": "fedtrimmedavg",
        "strategy.norm-ratio": 0.0},
    "va scales its update x10, multikrum (1 malicious), no norm check": {
        "attack.sites": "va", "attack.kind": "scale", "strategy.name": "multikrum",
        "strategy.num-malicious": 1, "strategy.norm-ratio": 0.0},
    "va flips its update's sign, fedavg + norm check": {
        "attack.sites": "va", "attack.kind": "sign-flip"},
    "va sends NaN, fedavg (validation)": {"attack.sites": "va", "attack.kind": "nan"},
}
FLAMBY = [("FLamby (published): FedAvg", "off", "0.685", "", "", ""),
          ("FLamby (published): best federated strategy", "off", "0.731", "", "", ""),
          ("FLamby (published): pooled training", "off", "0.735", "", "", "")]
PERSONAL_EPOCHS = 1


def federated(overrides: dict, seed: int, tmp: str) -> dict[str, float]:
    """One in-process run: the global model's figures and the personalised ones."""
    cfg = inprocess.default_run_config()
    cfg.update({"evaluation.personal-epochs": PERSONAL_EPOCHS, **overrides})
    cfg.update({"seed": seed, "output-dir": tmp, "run-name": f"u{abs(hash(str(overrides)))}-{seed}",
                "privacy.secure-noise": False, "privacy.audit": False})
    inprocess.run(cfg)
    run = Path(tmp) / cfg["run-name"]
    s = json.loads((run / "summary.json").read_text())
    exact, exact_personal = _exact_pooled_auroc(parse_run_config(cfg), run, s)
    accs = [x["metrics"]["accuracy"] for x in s["sites"]]
    out = {"acc": s["mean_site_accuracy"], "worst": min(accs),
           "auroc": s["global"]["metrics"]["auroc"], "auroc4": exact}
    if "personal" in s:
        paccs = [x["personal_metrics"]["accuracy"] for x in s["sites"]]
        out.update({"p-acc": s["personal"]["mean_site_accuracy"], "p-worst": min(paccs),
                    "p-auroc": s["personal"]["metrics"]["auroc"], "p-auroc4": exact_personal})
    return out


def _exact_pooled_auroc(cfg: RunConfig, run: Path, summary: dict) -> tuple[float, float]:
    """Bench-side only (the bench holds every site's data): the exact AUROC over all four
    sites' test rows, of the final global model and of the sites' personalised copies.
    The personalised copies are re-made here exactly as the sites made them (same seed),
    checked against the accuracies the sites reported."""
    bundle = load_bundle(run)
    received = Standardizer.from_dict(bundle.manifest["preprocessing"]["standardizer"])
    ys, glob, pers = [], [], []
    for site in summary["sites"]:
        data = tasks.task_for(cfg).load_site(site["name"])
        scaler = site_lib.site_scaler(cfg, data, received)
        x = scaler.transform(data.x_test)
        model = tasks.task_for(cfg).build_model()
        model.load_state_dict(bundle.weights)
        ys.append(data.y_test)
        glob.append(predict_proba(model, x, device="cpu").reshape(-1))
        if "personal_metrics" in site:
            tuned = site_lib.personalise(
                cfg, data, weights=bundle.weights, scaler=scaler,
                seed=site_lib.round_seed(cfg, site["name"], summary["rounds"]))
            model.load_state_dict(tuned)
            p = predict_proba(model, x, device="cpu").reshape(-1)
            acc = float(np.mean((p >= cfg.evaluation.threshold) == data.y_test))
            if abs(acc - site["personal_metrics"]["accuracy"]) > 1e-9:
                raise RuntimeError(f"{site['name']}: personalised copy not reproduced")
            pers.append(p)
    y = np.concatenate(ys)
    return (float(roc_auc_score(y, np.concatenate(glob))),
            float(roc_auc_score(y, np.concatenate(pers))) if pers else float("nan"))


def centralised(seed: int, *, pooled: bool) -> dict[str, float]:
    """Non-federated baselines with the default model and optimiser (10 epochs)."""
    cfg = parse_run_config(inprocess.default_run_config())
    data = {s: tasks.task_for(cfg).load_site(s) for s in tasks.task_for(cfg).sites()}
    spec = tasks.task_for(cfg).feature_spec()

    def train(x: np.ndarray, y: np.ndarray):
        torch.manual_seed(seed)
        scaler = local_standardizer(x, columns=spec.numeric_idx)
        model = tasks.task_for(cfg).build_model()
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

    def auroc(sites: list[str]) -> float:
        return float(roc_auc_score(np.concatenate([data[s].y_test for s in sites]),
                                   np.concatenate([probs[s].reshape(-1) for s in sites])))

    # The server's estimate leaves out a site with a class under k (Switzerland): the
    # baselines' "estimate" column is the exact AUROC over the same three sites.
    k = cfg.privacy.k_threshold
    both = [s for s, d in data.items() if min(np.sum(d.y_test == 0), np.sum(d.y_test == 1)) >= k]
    return {"acc": float(np.mean(accs)), "worst": min(accs), "auroc": auroc(both),
            "auroc4": auroc(list(data))}


COLUMNS = ["configuration", "DP", "mean per-client accuracy", "worst-site accuracy",
           "pooled AUROC, server's estimate (3 sites)", "pooled AUROC, exact (4 sites)"]


def _row(label: str, dp: str, runs: list[dict[str, float]], prefix: str = "") -> tuple[str, ...]:
    return (label, dp, *(mean_sd([r[prefix + k] for r in runs])
                         for k in ("acc", "worst", "auroc", "auroc4")))


def _rows(label: str, dp: str, runs: list[dict[str, float]]) -> list[tuple[str, ...]]:
    """The global model's row, and the personalised evaluation's from the same runs."""
    return [_row(label, dp, runs),
            _row(f"{label} + personalised ({PERSONAL_EPOCHS} local epoch)", dp, runs, "p-")]


def main() -> None:
    """Run the table's configurations for each seed and write BENCHMARKS.md's section."""
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
                rows += _rows(name, dp, runs)
                print(rows[-2:], flush=True)
        for label, attack in (ATTACKS.items() if args.part != "strategies" else ()):
            runs = [federated({"privacy.enabled": False, **attack}, s, tmp) for s in seeds]
            robust += _rows(label, "off", runs)
            print(robust[-2:], flush=True)
    t = parse_run_config(inprocess.default_run_config()).train
    intro = (f"Command: `.venv/bin/python -m bench.utility --seeds {args.seeds}` (seeds "
             f"0..{args.seeds - 1}; {platform.machine()}, 2 cores; in-process apps, 10 rounds "
             f"x 1 local epoch, logistic regression, batch {t.batch_size}, lr {t.lr:g} (the "
             "defaults; baselines too), consortium-wide scaling; DP "
             "noise seeded from the run seed, δ = 1e-3). Mean per-client accuracy is FLamby's "
             "metric (the unweighted mean of the four sites' test accuracies). "
             "\"+ personalised\" rows come from the same runs: each site fine-tunes the final "
             f"global model for {PERSONAL_EPOCHS} epoch on its own training rows (no DP; the "
             "copy stays at the site) before evaluating. The server's AUROC estimate comes "
             "from the sites' k-suppressed score groups and leaves out Switzerland (one "
             "patient without disease); the exact 4-site AUROC is computed by the benchmark, "
             "which holds every site's test rows (baselines: both columns exact).")
    if rows:
        write_section(args.out, "utility",
                      heading="Strategies on FLamby's heart-disease protocol",
                      intro=intro, columns=COLUMNS, rows=rows + FLAMBY)
    if robust:
        write_section(args.out, "robustness", heading="One site sending corrupted updates",
                      intro=intro.replace("--seeds", "--part robustness --seeds")
                      + " One of the four sites (VA) corrupts its update every round; "
                      "`strategy.norm-ratio` is 3 unless the row says otherwise.",
                      columns=COLUMNS, rows=robust)


if __name__ == "__main__":
    main()
