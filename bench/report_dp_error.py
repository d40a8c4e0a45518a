"""What test-set DP costs the report, in metric error, on the default heart-disease run.

Each seed runs the default run end to end (10 rounds, DP-SGD ε ≤ 3 on training rows,
test-set ε = ``privacy.test-epsilon`` on test rows; in-process apps, seeded noise so a
seed reproduces). The pooled figures of ``report.json`` are then compared with the same
final model scored exactly (sklearn) on the same four sites' test rows. Also counted: the
pooled sex subgroups and sex gaps the report gives a value with a CI, and each site's
test-set ε from ``summary.json``. Written to BENCHMARKS.md between markers.

    .venv/bin/python -m bench.report_dp_error --seeds 20          # the published numbers
    .venv/bin/python -m bench.report_dp_error --seeds 3           # quicker
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import recall_score, roc_auc_score

from bench import inprocess
from bench.report import write_section
from medfl import tasks
from medfl.config import parse_run_config
from medfl.data.scaling import Standardizer
from medfl.evaluation.histograms import score_edges
from medfl.serving import load_bundle
from medfl.training import predict_proba

METRICS = ("auroc", "sensitivity", "ece")
SEX_GAPS = ("auroc", "tpr", "fpr", "calibration")


def grid_ece(y: np.ndarray, p: np.ndarray, *, threshold: float) -> float:
    """ECE over the report's public score bins, from the exact scores."""
    z = np.log(np.clip(p, 1e-12, 1)) - np.log1p(-np.clip(p, 0, 1 - 1e-12))
    bins = np.searchsorted(score_edges(threshold), z, side="right")
    return float(sum(abs((p - y)[bins == b].sum()) for b in np.unique(bins)) / len(y))


def _exact(cfg: Any, run: Path) -> dict[str, float]:
    """The final model scored exactly on every site's test rows."""
    bundle = load_bundle(run)
    std = Standardizer(**{k: tuple(v) for k, v in
                          bundle.manifest["preprocessing"]["standardizer"].items()})
    task = tasks.task_for(cfg)
    model = task.build_model()
    model.load_state_dict(bundle.weights)
    ys, ps = [], []
    for s in task.sites():
        d = task.load_site(s)
        ys.append(np.asarray(d.y_test))
        ps.append(predict_proba(model, std.transform(d.x_test), device="cpu").reshape(-1))
    y, p = np.concatenate(ys), np.concatenate(ps)
    t = cfg.evaluation.threshold
    return {"auroc": roc_auc_score(y, p), "sensitivity": recall_score(y, p >= t),
            "ece": grid_ece(y, p, threshold=t)}


def _shown(figure: dict[str, Any] | None) -> bool:
    return bool(figure) and figure.get("value") is not None and figure.get("ci") is not None


def one_run(seed: int, tmp: str, test_epsilon: float) -> dict[str, Any]:
    """One seeded default run: pooled figures' errors, sex cells shown, test ε per site."""
    raw = inprocess.default_run_config()
    raw.update({"seed": seed, "output-dir": tmp, "run-name": f"s{seed}",
                "privacy.secure-noise": False, "privacy.test-epsilon": test_epsilon})
    inprocess.run(raw)
    cfg, run = parse_run_config(raw), Path(tmp) / f"s{seed}"
    report = json.loads((run / "report.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    pooled = report["populations"][0]
    exact = _exact(cfg, run)
    row: dict[str, Any] = {f"err_{m}": abs(pooled["metrics"][m]["value"] - exact[m])
                           for m in METRICS}
    row["ci_width"] = pooled["metrics"]["auroc"]["ci"][1] - pooled["metrics"]["auroc"]["ci"][0]
    sex = [s for s in pooled["subgroups"] if s["attribute"] == "sex"]
    row["sex_subgroups"] = sum(1 for s in sex if _shown(s["metrics"].get("auroc")))
    gaps = [f["gaps"][g] for f in pooled["fairness"] if f["attribute"] == "sex" for g in SEX_GAPS]
    row["sex_gaps"] = sum(1 for g in gaps if _shown(g))
    row["test_epsilon"] = {s["name"]: s.get("test_epsilon") for s in summary["sites"]}
    return row


def main() -> None:
    """Measure the report's error under test-set DP; write the BENCHMARKS.md section."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--test-epsilon", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=inprocess.ROOT / "BENCHMARKS.md")
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            rows.append(one_run(seed, tmp, args.test_epsilon))
            print(json.dumps(rows[-1]), flush=True)

    def med(key: str, digits: int = 4) -> str:
        vals = [r[key] for r in rows]
        return f"{statistics.median(vals):.{digits}f} (max {max(vals):.{digits}f})"

    eps = sorted({round(v, 3) for r in rows for v in r["test_epsilon"].values()
                  if v is not None})
    table = [(f"{args.test_epsilon:g}", ", ".join(f"{e:g}" for e in eps) or "-",
              f"{statistics.median(r['sex_subgroups'] for r in rows):.0f} of 2",
              f"{statistics.median(r['sex_gaps'] for r in rows):.0f} of 4",
              *(med(f"err_{m}") for m in METRICS), med("ci_width", 3))]
    write_section(
        args.out, f"report-dp-error-{args.test_epsilon:g}",
        heading="Report figures under test-set DP: error against exact scoring",
        intro=(f"Command: `.venv/bin/python -m bench.report_dp_error --seeds {args.seeds} "
               f"--test-epsilon {args.test_epsilon:g}` on {platform.machine()}, "
               f"{platform.python_version()} (2 cores). Default heart run end to end "
               f"(seeds 0–{args.seeds - 1}, in-process apps, seeded noise); median absolute "
               "error (max) of report.json's pooled figures against the same final model "
               "scored exactly on the same four sites' test rows (ECE: over the report's "
               "score bins in both). Sex cells: pooled sex subgroups and sex gaps (AUROC, "
               "TPR, FPR, calibration) given a value and a 95% CI."),
        columns=["test-set ε asked", "test-set ε per site (summary)", "pooled sex subgroups",
                 "pooled sex gaps", *(f"{m} error" for m in METRICS), "AUROC 95% CI width"],
        rows=table)


if __name__ == "__main__":
    main()
