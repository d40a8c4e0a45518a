"""The server's one-off queries to the sites, outside the training rounds.

Each query is one message type (``query.<name>``, names in ``records``) sent once to a set
of nodes through :func:`ask`; a site that fails is logged and left out, and the caller
decides whether the answers that came back are enough (the consortium standardiser needs
every asked site, the audit and the report take what they get).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from medfl.data.scaling import FeatureMoments
from medfl.evaluation.release import ReportStats
from medfl.federation.records import (
    QUERY_AUDIT,
    QUERY_FEATURE_MOMENTS,
    QUERY_REPORT,
    moments_from_metrics,
    site_of,
)
from medfl.federation.secure_report import SecureReport, query_secure_report
from medfl.privacy.audit import AuditRelease, AuditResult

logger = logging.getLogger(__name__)


def _for_one_node(content: RecordDict) -> RecordDict:
    """A message's own copy of ``content``: config records are copied, arrays shared (they
    are large and nobody writes to them)."""
    return RecordDict({key: ConfigRecord(dict(record)) if isinstance(record, ConfigRecord)
                       else record for key, record in content.items()})


def ask(grid: Grid, nodes: Iterable[int], message_type: str, content: RecordDict, *,
        timeout: float, failures: dict[int, str] | None = None) -> dict[str, Message]:
    """Send ``content`` as one ``message_type`` message to each of ``nodes``.

    Returns
    -------
    dict[str, Message]
        The successful replies by site name. A node that answers with an error is logged
        (node id and the error's reason, which sites vet) and left out; ``failures``, when
        given, gains node id -> that reason.
    """
    messages = [Message(_for_one_node(content), dst_node_id=node, message_type=message_type)
                for node in nodes]
    replies: dict[str, Message] = {}
    for rep in grid.send_and_receive(messages, timeout=timeout):
        if rep.has_error():
            logger.warning("%s: node %d failed: %s", message_type, rep.metadata.src_node_id,
                           rep.error.reason)
            if failures is not None:
                failures[rep.metadata.src_node_id] = rep.error.reason or "no reason given"
            continue
        replies[site_of(rep)] = rep
    return replies


def query_feature_moments(grid: Grid, nodes: list[int], *, timeout: float, run_key: int,
                          failures: dict[int, str] | None = None
                          ) -> tuple[dict[str, FeatureMoments], dict[int, str]]:
    """Ask every node for its feature moments; a site that fails is left out and logged
    (and its reason kept in ``failures`` when given).

    Returns the moments by site and the node id -> site name map learnt from the replies.
    """
    content = RecordDict({"config": ConfigRecord({"run-key": run_key})})
    replies = ask(grid, nodes, f"query.{QUERY_FEATURE_MOMENTS}", content, timeout=timeout,
                  failures=failures)
    moments = {site: moments_from_metrics(rep.content.metric_records["metrics"])
               for site, rep in replies.items()}
    names = {rep.metadata.src_node_id: site for site, rep in replies.items()}
    return moments, names


def query_audit(grid: Grid, nodes: list[int], *, arrays: ArrayRecord, config: ConfigRecord,
                timeout: float) -> dict[str, AuditResult]:
    """Ask every node to run the membership-inference audit on the final model."""
    content = RecordDict({"arrays": arrays, "config": config})
    replies = ask(grid, nodes, f"query.{QUERY_AUDIT}", content, timeout=timeout)
    return {site: AuditRelease.from_metrics(dict(rep.content.metric_records["metrics"]))
            .result() for site, rep in replies.items()}


def query_report(grid: Grid, nodes: list[int], *, arrays: ArrayRecord, config: ConfigRecord,
                 timeout: float, n_cells: int, secure: SecureReport | None = None
                 ) -> dict[str, dict[str, Any]]:
    """Ask every node for its report release on the final model (raw metric dicts, as
    received: the run directory keeps them so that ``medfl report`` can rebuild).

    A reply that does not parse as a report release over the run's ``n_cells`` cells
    (:meth:`medfl.evaluation.release.ReportStats.from_metrics`) is logged and left out.
    With ``secure`` (``secure-aggregation.enabled``) the releases go through SecAgg+ and
    the server keeps only their sum (:func:`query_secure_report`).
    """
    if secure is not None:
        return query_secure_report(grid, nodes, arrays=arrays, config=config,
                                   timeout=timeout, plan=secure)
    content = RecordDict({"arrays": arrays, "config": config})
    replies = ask(grid, nodes, f"query.{QUERY_REPORT}", content, timeout=timeout)
    out: dict[str, dict[str, Any]] = {}
    for site, rep in replies.items():
        metrics = dict(rep.content.metric_records["metrics"])
        try:
            ReportStats.from_metrics(metrics, n_cells=n_cells)
        except (KeyError, TypeError, ValueError) as exc:
            logger.warning("query.report: the release of %s is malformed and left out (%s)",
                           site, type(exc).__name__)
            continue
        out[site] = metrics
    return out
