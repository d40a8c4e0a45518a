"""Federated evaluation from sufficient statistics."""

from __future__ import annotations

from medfl.evaluation.stats import (
    SiteEvalStats,
    binned_auroc,
    coarsen_histogram,
    pool_site_stats,
    score_histogram,
    site_eval_stats,
)

__all__ = [
    "SiteEvalStats",
    "binned_auroc",
    "coarsen_histogram",
    "pool_site_stats",
    "score_histogram",
    "site_eval_stats",
]
