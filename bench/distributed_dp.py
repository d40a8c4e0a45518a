"""Local DP against distributed DP on heart disease, at the same per-site ε.

Local DP (today's default): every site adds all the DP-SGD noise its ε needs to each
update, 10 rounds of one local epoch (2 DP-SGD steps at Cleveland's size). Distributed
DP: SecAgg+ on, each site adds 1/sqrt(m) of the noise (m = `strategy.min-round-nodes` =
3), one DP-SGD step per round (DP-FedSGD), 20 rounds: the same number of noisy steps.
Both runs use the same recipe otherwise (logistic regression, batch 128, SGD lr 1.0, the
same seeds), exact feature moments (the comparison is about DP-SGD's noise, not the
moments'), and exact test figures (`privacy.test-epsilon = 0`, allowed in simulation),
so the table measures the model, not the report's noise.

    .venv/bin/python -m bench.distributed_dp --seeds 5 --out BENCHMARKS.md
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
from medfl.privacy.calibration_cache import CACHE_ENV

SECTION = "distributed-dp"
COMMON = {"preprocessing.stats-noise-multiplier": 0.0, "privacy.test-epsilon": 0.0,
          "privacy.secure-noise": False, "privacy.audit": False,
          "evaluation.personal-epochs": 0}
MODES = {
    "local DP (each site all its noise), 10 rounds x 1 epoch": {},
    "distributed DP (SecAgg+, noise share 1/sqrt(3)), 20 rounds x 1 step": {
        "num-server-rounds": 20, "secure-aggregation.enabled": True,
        "strategy.min-round-nodes": 3, "privacy.mode": "distributed"},
}


#: The imaging scenario (`simulations/imaging-classification.toml`, ε = 8) in both modes:
#: distributed DP takes one step a round, so more rounds of larger batches, and the
#: momentum moves to the server (FedAvgM: post-processing of the secure sum). RDP
#: accounting in both: a site composes its whole ledger with the accountant every round,
#: which PRV makes slow over a hundred rounds' entries (BENCHMARKS.md, the notes).
IMAGING_MODES = {
    "local DP, the scenario as shipped (30 rounds x 3 epochs, batch 32, momentum 0.9)": {
        "privacy.accountant": "rdp"},
    "distributed DP (SecAgg+, share 1/sqrt(3)), 100 rounds x 1 step, batch 128, FedAvgM": {
        "privacy.accountant": "rdp",
        "num-server-rounds": 100, "train.batch-size": 128, "train.lr": 0.1,
        "train.momentum": 0.0, "strategy.name": "fedavgm", "strategy.server-momentum": 0.9,
        "secure-aggregation.enabled": True, "strategy.min-round-nodes": 3,
        "privacy.mode": "distributed", "evaluation.monitor-every": 100},
}


def one_run(overrides: dict, seed: int, epsilon: float, tmp: str, name: str,
            scenario: str | None = None) -> dict:
    """One in-process run; its headline figures and time."""
    cfg = inprocess.default_run_config()
    if scenario:
        from flwr.common.config import parse_config_args

        cfg.update(parse_config_args([str(inprocess.ROOT / "simulations" / scenario)]))
    # each run's sites keep a fresh ledger: composing every earlier run's releases (the
    # default state folder) would only slow the run down
    cfg.update({**COMMON, **overrides, "seed": seed, "privacy.target-epsilon": epsilon,
                "output-dir": tmp, "run-name": name,
                "state-dir": str(Path(tmp) / "state" / name)})
    start = time.perf_counter()
    inprocess.run(cfg)
    s = json.loads((Path(tmp) / name / "summary.json").read_text())
    return {"acc": s["mean_site_accuracy"], "auroc": s["global"]["metrics"]["auroc"],
            "eps": max(x["epsilon"] for x in s["sites"]),
            "eps_local": max((x.get("epsilon_local") or x["epsilon"]) for x in s["sites"]),
            "s": time.perf_counter() - start}


def _figures(runs: list[dict]) -> tuple[str, str, str, str, str]:
    """A table row's cells over the seeds: accuracy and AUROC (mean ± sd), the largest
    binding and unconditional ε, and the median seconds per run."""
    return (mean_sd([r["acc"] for r in runs]), mean_sd([r["auroc"] for r in runs]),
            f"{max(r['eps'] for r in runs):.3f}", f"{max(r['eps_local'] for r in runs):.2f}",
            f"{statistics.median(r['s'] for r in runs):.0f}")


def main() -> None:
    """Run both modes at each ε over the seeds; write the BENCHMARKS.md section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 3.0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--imaging", action="store_true",
                        help="the imaging-classification scenario at ε = 8 instead")
    args = parser.parse_args()
    if args.imaging:
        return imaging(args)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # one noise calibration per (ε, mode, site size), shared by the seeds
        os.environ.setdefault(CACHE_ENV, str(Path(tmp) / "calibrations"))
        for epsilon in args.epsilons:
            for label, overrides in MODES.items():
                runs = [one_run(overrides, seed, epsilon, tmp, f"{len(rows)}-{seed}")
                        for seed in range(args.seeds)]
                print(epsilon, label, runs, flush=True)
                acc, auroc, eps, eps_local, secs = _figures(runs)
                rows.append((f"{epsilon:g}", label, acc, auroc, eps, eps_local, secs))
    if args.out:
        write_section(
            args.out, SECTION, heading="Distributed DP against local DP (heart disease)",
            intro=(f"`python -m bench.distributed_dp --seeds {args.seeds} --out "
                   f"BENCHMARKS.md` (seeds 0..{args.seeds - 1}; {platform.machine()}, "
                   "in-process apps; logistic regression, batch 128, SGD lr 1.0; exact "
                   "moments and exact test figures so that the model is measured). ε: the "
                   "per-site guarantee against a coordinator that sees only what the mode "
                   "lets it see (local: each update; distributed: the secure sum); "
                   "unconditional ε: what holds if the sum is broken (local: the same)."),
            columns=["target ε", "mode", "mean per-site accuracy", "pooled AUROC",
                     "max ε", "max unconditional ε", "s / run (median)"],
            rows=rows)


def imaging(args: argparse.Namespace) -> None:
    """Both modes on the imaging scenario at ε = 8; pooled AUROC (exact test figures)."""
    logging.getLogger("flwr").setLevel(logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault(CACHE_ENV, str(Path(tmp) / "calibrations"))
        for label, overrides in IMAGING_MODES.items():
            runs = [one_run(overrides, seed, 8.0, tmp, f"img-{len(rows)}-{seed}",
                            scenario="imaging-classification.toml")
                    for seed in range(args.seeds)]
            print(label, runs, flush=True)
            acc, auroc, eps, eps_local, secs = _figures(runs)
            rows.append((label, auroc, acc, eps, eps_local, secs))
    if args.out:
        write_section(
            args.out, "distributed-dp-imaging",
            heading="Distributed DP against local DP (imaging classification, ε = 8)",
            intro=(f"`python -m bench.distributed_dp --imaging --seeds {args.seeds} --out "
                   "BENCHMARKS.md` (the `imaging-classification` scenario: four synthetic "
                   "hospitals, MONAI residual CNN, 64x64; in-process apps on "
                   f"{platform.machine()}; exact test figures)."),
            columns=["mode", "pooled AUROC", "mean per-site accuracy", "max ε",
                     "max unconditional ε", "s / run"],
            rows=rows)


if __name__ == "__main__":
    main()
