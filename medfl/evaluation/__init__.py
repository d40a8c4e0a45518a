"""Federated evaluation from sufficient statistics."""

from __future__ import annotations

from medfl.evaluation.stats import (
    SiteEvalStats,
    mixture_auroc,
    pool_site_stats,
    score_groups,
    site_eval_stats,
)

__all__ = ["SiteEvalStats", "mixture_auroc", "pool_site_stats", "score_groups",
           "site_eval_stats"]
