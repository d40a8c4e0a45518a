"""``summary.json``: the machine-readable headline of a run."""

from __future__ import annotations

import math
from typing import Any

from medfl.config import RunConfig
from medfl.evaluation.stats import SiteEvalStats, pool_site_stats


def build_summary(
    cfg: RunConfig,
    *,
    site_order: list[str],
    train: dict[str, dict[str, Any]],
    evaluation: dict[str, SiteEvalStats],
    run_name: str,
    rounds_completed: int,
) -> dict[str, Any]:
    """Per-site privacy and metrics, pooled metrics, and FLamby's mean per-site accuracy.

    ``train`` holds each site's last train metrics (ε etc. are cumulative); ``evaluation``
    each site's statistics for the final global model.
    """
    sites = []
    for name in site_order:
        t, e = train.get(name, {}), evaluation.get(name)
        dp = cfg.privacy.enabled
        sites.append({
            "name": name,
            "n_train": int(t["num-examples"]) if "num-examples" in t else None,
            "n_test": e.n if e else None,
            "epsilon": float(t["epsilon"]) if "epsilon" in t else None,
            "delta": float(t["delta"]) if dp and "delta" in t else None,
            "noise_multiplier": float(t["noise-multiplier"]) if dp and t else None,
            "sample_rate": float(t["sample-rate"]) if dp and t else None,
            "steps": int(t["steps"]) if "steps" in t else None,
            "max_grad_norm": float(t["max-grad-norm"]) if dp and t else None,
            "accountant": cfg.privacy.accountant if dp else None,
            "metrics": {
                "accuracy": e.accuracy if e else None,
                "auroc": e.auroc if e else None,
                "loss": (e.loss_sum / e.n) if e and e.n else None,
            },
        })
    pooled = pool_site_stats(list(evaluation.values()))
    accs = [s["metrics"]["accuracy"] for s in sites]
    mean_acc = (sum(accs) / len(accs)) if accs and all(a is not None for a in accs) else None
    eps = [s["epsilon"] for s in sites if s["epsilon"] is not None]
    return {
        "run_name": run_name,
        "task": cfg.task,
        "dataset": "uci-heart-disease" if cfg.task == "heart-disease" else cfg.task,
        "strategy": cfg.strategy.name,
        "model": cfg.model.name,
        "rounds": rounds_completed,
        "rounds_planned": cfg.num_server_rounds,
        "seed": cfg.seed,
        "privacy": {
            "dp_sgd": cfg.privacy.enabled,
            "target_epsilon": cfg.privacy.target_epsilon if cfg.privacy.enabled else None,
            "target_delta": cfg.privacy.target_delta if cfg.privacy.enabled else None,
            "max_epsilon": max(eps) if eps else None,
            "k_threshold": cfg.privacy.k_threshold,
            "feature_scaling": cfg.preprocessing.scaling,
            "stats_noise_multiplier": cfg.preprocessing.stats_noise_multiplier,
        },
        "sites": sites,
        "global": {
            "metrics": {"accuracy": pooled["accuracy"], "auroc": pooled["auroc"],
                        "loss": pooled["loss"]},
            "n_test": pooled["n"],
            "auroc_method": "pooled per-class score histograms, coarsened at each site to "
                            f">= k={cfg.privacy.k_threshold} per bin",
            "suppressed_histograms": pooled["suppressed_histograms"],
        },
        "mean_site_accuracy": mean_acc,
    }


def epsilon_display(value: float | None) -> str:
    if value is None:
        return "-"
    return "inf" if math.isinf(value) else f"{value:.2f}"
