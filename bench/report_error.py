"""What test-set DP costs the report on a real run, in metric error.

For the default heart-disease run (10 rounds, DP-SGD ε ≤ 3) over several seeds, each
site's report release is rebuilt from the final model's real test scores exactly as a
site builds it (a histogram per cell on the public grid, then ``gaussian_release`` at the
report σ the run's plan gives for test-set ε = 0, 1 and 4); the server's pooled figures
(:mod:`medfl.evaluation.population`) are compared with sklearn on the real scores of all
four sites. ε = 0 is the exact release: its error is the grid's alone. Each ε gets
several noise draws per seed. Written to BENCHMARKS.md between markers.

    .venv/bin/python -m bench.report_error             # 5 seeds (the published numbers)
    .venv/bin/python -m bench.report_error --seeds 2   # quicker
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import brier_score_loss, recall_score, roc_auc_score

from bench import inprocess
from bench.report import write_section
from medfl import tasks
from medfl.config import RunConfig, parse_run_config
from medfl.data.scaling import Standardizer
from medfl.evaluation.histograms import histogram
from medfl.evaluation.release import CellRelease, ReportStats
from medfl.evaluation.report_cells import report_sensitivity
from medfl.evaluation.scores import score_table
from medfl.privacy.audit import AUDIT_SIGMA
from medfl.privacy.mechanisms import gaussian_release, monitor_rounds, plan_test_releases
from medfl.reporting.report import _Populations
from medfl.serving import load_bundle
from medfl.training import predict_proba

EPSILONS = (0.0, 1.0, 4.0)
DRAWS = 20  # noise draws per seed and ε
METRICS = ("auroc", "sensitivity", "specificity", "brier", "ece")


def _exact(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    return {"auroc": roc_auc_score(y, p), "sensitivity": recall_score(y, p >= 0.5),
            "specificity": recall_score(1 - y, p < 0.5), "brier": brier_score_loss(y, p),
            "ece": float(score_table(y, p[None], threshold=0.5)["ece"][0])}


def report_sigma(cfg: RunConfig, epsilon: float) -> float:
    """The report's noise multiplier for test-set ``epsilon`` under the run's plan."""
    rounds = monitor_rounds(cfg.num_server_rounds, cfg.evaluation.monitor_every)
    return plan_test_releases(epsilon=epsilon, delta=cfg.privacy.target_delta,
                              accountant=cfg.privacy.accountant,
                              report_share=cfg.privacy.report_share, rounds=rounds,
                              audit_sigma=AUDIT_SIGMA if cfg.privacy.audit else 0.0
                              ).report_sigma


def _final_scores(seed: int, tmp: str) -> tuple[RunConfig, dict[str, tuple]]:
    """Train one seeded run; each site's test labels, probabilities and attributes."""
    raw = inprocess.default_run_config()
    raw.update({"seed": seed, "output-dir": tmp, "run-name": f"s{seed}",
                "privacy.secure-noise": False, "privacy.audit": False})
    inprocess.run(raw)
    cfg = parse_run_config(raw)
    bundle = load_bundle(Path(tmp) / f"s{seed}")
    std = Standardizer(**{k: tuple(v) for k, v in
                          bundle.manifest["preprocessing"]["standardizer"].items()})
    task = tasks.task_for(cfg)
    model = task.build_model()
    model.load_state_dict(bundle.weights)
    out = {}
    for s in task.sites():
        d = task.load_site(s)
        p = predict_proba(model, std.transform(d.x_test), device=torch.device("cpu")).reshape(-1)
        out[s] = (np.asarray(d.y_test), p, d.sensitive_test)
    return cfg, out


def one_run(seed: int, tmp: str) -> dict[float, list[dict[str, float]]]:
    """One seeded run's pooled report figures against sklearn, per test-set ε."""
    cfg, scores = _final_scores(seed, tmp)
    cells = tasks.task_for(cfg).cells()
    # as a site computes it: every cell a patient is in, plus the explanation vector
    sensitivity = report_sensitivity(
        cells=1 + len({c.attribute for c in cells if not c.is_all}), segmentation=False,
        explained=True)
    hists = {s: np.stack([histogram(y[np.asarray(c.select(sens), bool)],
                                    p[np.asarray(c.select(sens), bool)], threshold=0.5)
                          for c in cells]) for s, (y, p, sens) in scores.items()}
    sites = list(scores)
    exact = _exact(np.concatenate([scores[s][0] for s in sites]),
                   np.concatenate([scores[s][1] for s in sites]))
    rng = np.random.default_rng(seed)
    out: dict[float, list[dict[str, float]]] = {}
    for eps in EPSILONS:
        sigma = report_sigma(cfg, eps)
        out[eps] = []
        for _ in range(DRAWS if eps else 1):
            stats = {}
            for s, h in hists.items():
                rel = gaussian_release(h, 1.0, sensitivity=sensitivity, sigma=sigma, rng=rng)
                stats[s] = ReportStats(tuple(CellRelease(hist=x) for x in rel.values),
                                       hist_std=float(rel.std.flat[0]))
            pops = _Populations(cfg, stats, sites)
            metrics = pops.metrics(pops.cell(sites, 0))
            pooled = pops.population("pooled", sites)
            lo, hi = metrics["auroc"]["ci"] or (math.nan, math.nan)
            row = {f"err_{m}": abs((metrics[m]["value"] or math.nan) - exact[m])
                   for m in METRICS}
            row |= {"ci_width": hi - lo, "covers": float(lo <= exact["auroc"] <= hi),
                    "subgroups": sum(not s.suppressed for s in pooled.subgroups)}
            out[eps].append(row)
    return out


def main() -> None:
    """Measure the report's error per test-set ε; write the BENCHMARKS.md section."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=inprocess.ROOT / "BENCHMARKS.md")
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    results: dict[float, list[dict[str, float]]] = {e: [] for e in EPSILONS}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            for eps, records in one_run(seed, tmp).items():
                results[eps] += records
    print(json.dumps({str(k): v for k, v in results.items()}, indent=1))

    def med(eps: float, key: str, digits: int = 3) -> str:
        vals = [r[key] for r in results[eps] if math.isfinite(r[key])]
        return f"{statistics.median(vals):.{digits}f} (max {max(vals):.{digits}f})" \
            if vals else "n/a"

    rows = [(f"{eps:g}" if eps else "0 (exact)", *(med(eps, f"err_{m}") for m in METRICS),
             med(eps, "ci_width"), f"{statistics.mean(r['covers'] for r in results[eps]):.2f}",
             f"{statistics.median(r['subgroups'] for r in results[eps]):.0f} of 4")
            for eps in EPSILONS]
    write_section(
        args.out, "report-error", heading="Report figures under test-set DP: real-run error",
        intro=(f"Command: `.venv/bin/python -m bench.report_error --seeds {args.seeds}` on "
               f"{platform.machine()}, {platform.python_version()} (2 cores). Default heart "
               "run (10 rounds, DP-SGD ε ≤ 3), seeds 0–"
               f"{args.seeds - 1}; each site's report release rebuilt from the final model's "
               "real test scores at the report σ of test-set ε (sensitivity 2: three "
               "cells and the explanation, as a site has), "
               f"{DRAWS} noise draws per seed; median absolute error (max) of the pooled "
               "figures (all four sites) against sklearn on the real scores; ε = 0: the "
               "exact release (the grid's error alone). Subgroups: pooled subgroup cells "
               "over the floor k."),
        columns=["test-set ε", *(f"{m} error" for m in METRICS), "AUROC 95% CI width",
                 "CI covers real AUROC", "pooled subgroups shown"],
        rows=rows)


if __name__ == "__main__":
    main()
