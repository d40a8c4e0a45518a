"""The final report's statistics through SecAgg+: the server sees only their sum.

Flower's ``secaggplus_mod`` runs the protocol over train messages only, so under
``secure-aggregation.enabled`` the report query is a train-typed message whose config
carries the report marker (``"query" = "report"``) beside the final model. The site's train
handler answers it with its report release (:meth:`medfl.site.Site.report`: once per run,
reserved in the ledger first, as the plain ``query.report``), and the client mod
(:mod:`medfl.federation.secure_client`) masks the release's values as one vector
(:func:`medfl.evaluation.release_sum.split_release`) while the noise stds and the test ε
stay clear. The server rebuilds one pooled release from the unmasked sum
(:func:`medfl.evaluation.release_sum.pooled_release`).

A site answers the report one way per run: as ``query.report`` without secure aggregation,
only inside the protocol with it (:func:`check_report_path`): a coordinator cannot ask a
site of a secure run for its own release in the clear.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.app.message_type import MessageType

from medfl.config import RunConfig, SecureAggregationConfig
from medfl.errors import ConfigError
from medfl.evaluation.release_sum import ReportLayout, pooled_release, secure_entry
from medfl.federation.records import QUERY_REPORT, site_of
from medfl.federation.secure_agg import secure_sum
from medfl.site import reply_bounds

logger = logging.getLogger(__name__)

#: The config key of the report marker in a train-typed message (value: "report").
MARKER_KEY = "query"


def is_report_request(msg: Message) -> bool:
    """Whether ``msg`` carries the report marker (a report request inside SecAgg+)."""
    config = msg.content.config_records.get("config")
    return config is not None and config.get(MARKER_KEY) == QUERY_REPORT


def check_report_path(cfg: RunConfig, *, secure: bool) -> None:
    """Refuse (``ConfigError``) a report request that came the other way than this run's:
    ``secure`` (a train-typed request inside SecAgg+) exactly when the run has
    ``secure-aggregation.enabled``."""
    enabled = cfg.secure_aggregation.enabled
    if secure and not enabled:
        raise ConfigError("a report request inside a train message ('query' = 'report') in "
                          "a run without secure-aggregation.enabled; this site answers the "
                          "report of such a run only as a query.report message")
    if enabled and not secure:
        raise ConfigError("a query.report message in a run with secure-aggregation.enabled; "
                          "this site releases its report statistics only inside the SecAgg+ "
                          "protocol, so that the server sees their sum over sites")


@dataclass(frozen=True)
class SecureReport:
    """How the server asks the report through SecAgg+: the run's protocol settings,
    Flower's run id and the report vector's layout (from the run's public settings)."""

    sa: SecureAggregationConfig
    run_id: int
    layout: ReportLayout


def secure_report_plan(cfg: RunConfig, *, run_id: int) -> SecureReport | None:
    """The secure report query of this run, or None without secure aggregation."""
    if not cfg.secure_aggregation.enabled:
        return None
    return SecureReport(cfg.secure_aggregation, run_id,
                        ReportLayout.of(reply_bounds(cfg, {})))


def _request(arrays: ArrayRecord, config: ConfigRecord, node: int) -> Message:
    content = RecordDict({"arrays": arrays, "config": ConfigRecord(
        {**dict(config), MARKER_KEY: QUERY_REPORT, "server-round": 0})})
    return Message(content, dst_node_id=node, message_type=MessageType.TRAIN)


def query_secure_report(grid: Any, nodes: list[int], *, arrays: ArrayRecord,
                        config: ConfigRecord, timeout: float, plan: SecureReport
                        ) -> dict[str, dict[str, Any]]:
    """Ask every node for its report release through SecAgg+; returns ``evaluation.json``'s
    content (:func:`medfl.evaluation.release_sum.secure_entry`), empty when no sum could
    be unmasked or the sites' clear metrics do not describe it (logged)."""
    if not nodes:
        return {}
    result = secure_sum(grid, [_request(arrays, config, n) for n in nodes], plan.sa,
                        run_id=plan.run_id, timeout=timeout)
    for node, error in result.errors.items():
        logger.warning("secure report: node %d is not in the sum: %s", node,
                       error.reason if error is not None else "no reply")
    if result.mean is None:
        logger.warning("secure report: no sum could be unmasked; the report has no figures")
        return {}
    clear = {site_of(m): dict(m.content["metrics"]) for m in result.contributed.values()}
    total = np.concatenate([np.asarray(a, dtype=np.float64).reshape(-1)
                            for a in result.mean]) * result.count
    try:
        release = pooled_release(total, clear, layout=plan.layout)
    except (KeyError, TypeError, ValueError) as exc:
        logger.warning("secure report: the sum does not match the sites' clear metrics (%s); "
                       "the report has no figures", type(exc).__name__)
        return {}
    return secure_entry(release, clear)
