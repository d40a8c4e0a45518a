"""The server's side of the monitoring release: which rounds are evaluated, and the
round record's evaluation part from the sites' evaluate replies.

Only the rounds of the run's test-release plan are evaluated
(:func:`medfl.privacy.mechanisms.monitor_rounds`: every ``evaluation.monitor-every``-th
and the last); the sites refuse any other. Each site's reply is its noisy whole-test-set
statistics (:class:`medfl.evaluation.stats.SiteEvalStats`); the server sums them into
consortium-wide figures.
"""

from __future__ import annotations

import logging
from typing import Any

from medfl.evaluation.stats import PERSONAL, SiteEvalStats, pool_site_stats

logger = logging.getLogger(__name__)


def parse_evaluations(metrics: dict[str, dict[str, Any]], *, threshold: float
                      ) -> tuple[dict[str, SiteEvalStats], dict[str, SiteEvalStats]]:
    """Each site's monitoring release for the global model and, where present, for its
    personalised copy (``personal-`` keys). A reply that does not parse (a site sent a
    malformed record) is logged and left out; the server does not fail on it."""
    stats: dict[str, SiteEvalStats] = {}
    personal: dict[str, SiteEvalStats] = {}
    for site, m in metrics.items():
        try:
            parsed = SiteEvalStats.from_metrics(m, threshold=threshold)
            tuned = (SiteEvalStats.from_metrics(m, PERSONAL, threshold=threshold)
                     if SiteEvalStats.has_metrics(m, PERSONAL) else None)
        except (KeyError, TypeError, ValueError) as exc:
            logger.warning("the evaluation of %s is malformed and left out (%s)", site,
                           type(exc).__name__)
            continue
        stats[site] = parsed
        if tuned is not None:
            personal[site] = tuned
    return stats, personal


def site_figures(stats: dict[str, SiteEvalStats]) -> dict[str, dict[str, Any]]:
    """Each site's headline figures from its noisy statistics, by site name, with the
    noise's standard deviation per count and the site's test-set ε after the release."""
    figures: dict[str, dict[str, Any]] = {}
    for site, s in sorted(stats.items()):
        figures[site] = {"n": s.n, "accuracy": s.accuracy, "auroc": s.auroc, "loss": s.loss,
                         "noise_std": s.hist_std if s.hist is not None else s.sums_std,
                         "test_epsilon": s.test_epsilon}
        if s.sums is not None:
            figures[site].update({"dice": s.dice, "iou": s.iou})
    return figures


def evaluation_record(stats: dict[str, SiteEvalStats], personal: dict[str, SiteEvalStats],
                      problems: list[dict[str, Any]]) -> dict[str, Any]:
    """A monitoring round's evaluation, by site and pooled (the sites' statistics summed)."""
    record: dict[str, Any] = {
        "evaluate": site_figures(stats),
        "evaluate_problems": problems,
        "global": pool_site_stats(list(stats.values())),
    }
    if personal:
        record["evaluate_personal"] = site_figures(personal)
        record["global_personal"] = pool_site_stats(list(personal.values()))
    return record
