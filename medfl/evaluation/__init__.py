"""Federated evaluation from noisy sufficient statistics (score histograms, sums)."""

from __future__ import annotations

from medfl.evaluation.release import CellRelease, ReportStats
from medfl.evaluation.stats import SiteEvalStats, pool_site_stats

__all__ = ["CellRelease", "ReportStats", "SiteEvalStats", "pool_site_stats"]
