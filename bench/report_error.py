"""What k-suppressed sufficient statistics cost the report, in metric error.

For the default heart-disease run (10 rounds, DP-SGD ε ≤ 3) over several seeds, each site
recomputes its report statistics for the final model at k = 5, 10 and 20; the server-side
figures (medfl.evaluation.population) are compared with sklearn on the real scores of the
same sites (the ones the report could include), and with all four sites (the cost of
leaving a suppressed site out). Written to BENCHMARKS.md between markers.

    .venv/bin/python -m bench.report_error             # 5 seeds (the published numbers)
    .venv/bin/python -m bench.report_error --seeds 2   # quicker
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import statistics
import tempfile
from pathlib import Path

import numpy as np
from sklearn.metrics import brier_score_loss, recall_score, roc_auc_score

from bench import inprocess
from bench.report import write_section
from medfl import tasks
from medfl.config import parse_run_config
from medfl.data.scaling import Standardizer
from medfl.evaluation.population import score_table
from medfl.reporting.report import _Populations
from medfl.serving import load_bundle
from medfl.site.report import report
from medfl.training import predict_proba

KS = (5, 10, 20)
METRICS = ("auroc", "sensitivity", "specificity", "brier", "ece")


def _exact(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    return {"auroc": roc_auc_score(y, p), "sensitivity": recall_score(y, p >= 0.5),
            "specificity": recall_score(1 - y, p < 0.5), "brier": brier_score_loss(y, p),
            "ece": float(score_table(y, p[None], threshold=0.5)["ece"][0])}


def one_run(seed: int, tmp: str) -> dict[int, dict[str, float]]:
    """One seeded run's report figures against the exact pooled ones, per k."""
    raw = inprocess.default_run_config()
    raw.update({"seed": seed, "output-dir": tmp, "run-name": f"s{seed}",
                "privacy.secure-noise": False, "privacy.audit": False})
    inprocess.run(raw)
    cfg = parse_run_config(raw)
    bundle = load_bundle(Path(tmp) / f"s{seed}")
    std = Standardizer(**{k: tuple(v) for k, v in
                          bundle.manifest["preprocessing"]["standardizer"].items()})
    model = tasks.task_for(cfg).build_model()
    model.load_state_dict(bundle.weights)
    sites = tasks.task_for(cfg).sites()
    data = {s: tasks.task_for(cfg).load_site(s) for s in sites}
    probs = {s: predict_proba(model, std.transform(d.x_test), device="cpu").reshape(-1)
             for s, d in data.items()}
    out = {}
    for k in KS:
        cfg_k = dataclasses.replace(cfg, privacy=dataclasses.replace(cfg.privacy, k_threshold=k))
        stats = {s: report(cfg_k, data[s], weights=bundle.weights, scaler=std, local_dir=None)
                 for s in sites}
        pops = _Populations(cfg_k, stats, sites)
        metrics, used, _ = pops.metrics(sites, 0)
        y = np.concatenate([data[s].y_test for s in used])
        p = np.concatenate([probs[s] for s in used])
        y_all = np.concatenate([data[s].y_test for s in sites])
        p_all = np.concatenate([probs[s] for s in sites])
        exact, exact_all = _exact(y, p), _exact(y_all, p_all)
        row = {f"err_{m}": abs(metrics[m]["value"] - exact[m]) for m in METRICS}
        row["auroc_vs_all"] = abs(metrics["auroc"]["value"] - exact_all["auroc"])
        row["ci_width"] = metrics["auroc"]["ci"][1] - metrics["auroc"]["ci"][0]
        row["sites"] = len(used)
        shown = sum(1 for s in sites for c in stats[s].cells[1:] if c.groups)
        row["subgroup_cells"] = shown
        out[k] = row
    return out


def main() -> None:
    """Measure the report's estimation error per k; write the BENCHMARKS.md section."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=inprocess.ROOT / "BENCHMARKS.md")
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    results: dict[int, list[dict[str, float]]] = {k: [] for k in KS}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            for k, row in one_run(seed, tmp).items():
                results[k].append(row)
    print(json.dumps(results, indent=1))

    def med(k: int, key: str, digits: int = 4) -> str:
        vals = [r[key] for r in results[k]]
        return f"{statistics.median(vals):.{digits}f} (max {max(vals):.{digits}f})"

    rows = [(str(k), f"{statistics.median(r['sites'] for r in results[k]):.0f} of 4",
             *(med(k, f"err_{m}") for m in METRICS), med(k, "auroc_vs_all"),
             med(k, "ci_width", 3),
             f"{statistics.median(r['subgroup_cells'] for r in results[k]):.0f} of 16")
            for k in KS]
    write_section(
        args.out, "report-error", heading="Report figures from k-suppressed statistics",
        intro=(f"Command: `.venv/bin/python -m bench.report_error --seeds {args.seeds}` on "
               f"{platform.machine()}, {platform.python_version()} (2 cores). Default heart "
               "run (10 rounds, DP-SGD ε ≤ 3), seeds 0–"
               f"{args.seeds - 1}; median absolute error (max) of the pooled figures "
               "against sklearn on the real scores of the sites the report includes; "
               "'AUROC vs all 4' compares with the exact AUROC over every site, so it adds "
               "the cost of leaving a suppressed site out. Subgroup cells: site-level "
               "subgroup cells with class detail shared (4 sites x 4 levels)."),
        columns=["k", "sites in pooled", *(f"{m} error" for m in METRICS), "AUROC vs all 4",
                 "AUROC 95% CI width", "subgroup cells shown"],
        rows=rows)


if __name__ == "__main__":
    main()
