"""The recording strategy: Flower's FedAvg family with MedFL's per-round record and update
validation.

:class:`Recording` is a mixin placed before one of Flower's strategies (see
``strategies.build_strategy``); :class:`RecordingFedAvg` is the plain FedAvg one.
Aggregation of arrays stays the wrapped strategy's own.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Message,
    MetricRecord,
    MetricRecordValues,
    RecordDict,
)
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from numpy.typing import NDArray

from medfl.errors import MedflError, PrivacyBudgetExceeded
from medfl.evaluation.stats import SiteEvalStats
from medfl.federation import compression
from medfl.federation.client import ERROR_CODES
from medfl.federation.monitoring import evaluation_record, parse_evaluations
from medfl.federation.nodes import wait_for_nodes
from medfl.federation.records import array_values, site_of
from medfl.federation.validation import check_update, finite, norm_outliers
from medfl.site.metrics import TrainMetrics

if TYPE_CHECKING:
    # The mixin always sits before one of Flower's FedAvg-family strategies.
    from flwr.serverapp.strategy import FedAvg as _StrategyBase
else:
    _StrategyBase = object

logger = logging.getLogger(__name__)

#: ``on_checkpoint(strategy, round, global arrays)`` after every completed round
CheckpointHook = Callable[["Recording", int, ArrayRecord], None]


class Recording(_StrategyBase):
    """A mixin for any of Flower's FedAvg-family strategies: a per-round record of every
    site's train and eval results, and validation of every update before the strategy
    aggregates it (non-finite values, wrong shapes, and with ``norm_ratio`` > 0 an update
    whose distance from the global model is over ``norm_ratio`` times the round's median).

    Aggregation of arrays is the wrapped strategy's own. Only the rounds in
    ``monitor_rounds`` are evaluated (``None``: every round): the sites' evaluate replies
    are their noisy monitoring releases (``medfl.evaluation.stats``), summed here into
    consortium-wide figures at the operating ``threshold``. ``on_round`` receives one
    JSON-ready dict per round; a round without evaluation records none.
    """

    def __init__(self, *, on_round: Callable[[dict[str, Any]], None],
                 node_sites: dict[int, str] | None = None, norm_ratio: float = 0.0,
                 min_round_nodes: int = 1, round_timeout: float = 600.0,
                 on_checkpoint: CheckpointHook | None = None,
                 compression: str = "none", threshold: float = 0.5,
                 monitor_rounds: tuple[int, ...] | None = None, **kwargs: Any) -> None:
        super().__init__(train_metrics_aggr_fn=_aggregate_train_metrics, **kwargs)
        self._threshold = threshold
        self._monitor_rounds = monitor_rounds
        self._compression = compression  # transport.compression: decoded before validation
        self._norm_ratio = norm_ratio
        self._min_round_nodes = min_round_nodes
        self._round_timeout = round_timeout
        self._on_checkpoint = on_checkpoint
        #: rounds completed by the run this one resumes (Flower's loop counts from 1)
        self.round_offset = 0
        #: the run round whose train replies are recorded (by a wrapper, or here)
        self._recorded_round: int | None = None
        self._round_arrays: ArrayRecord | None = None
        self._global: dict[str, NDArray[Any]] = {}
        self._on_round = on_round
        self._current: dict[str, Any] = {}
        self._sent: dict[str, list[Message]] = {"train": [], "evaluate": []}
        self._expected: dict[str, tuple[int, ...]] = {}
        self._t0 = time.monotonic()
        #: node id -> site name, learnt from replies (error replies carry no site name)
        self.node_sites: dict[int, str] = dict(node_sites or {})
        self.final_site_stats: dict[str, SiteEvalStats] = {}
        self.final_personal_stats: dict[str, SiteEvalStats] = {}
        #: each site's last train metrics, rejected updates included (ε is cumulative)
        self.final_train: dict[str, TrainMetrics] = {}
        self.rounds_trained: dict[str, list[int]] = {}

    def run_round(self, server_round: int) -> int:
        """The run's round number for Flower's ``server_round``: Flower counts from 1 at
        every start, and a resumed run continues after the rounds it had completed."""
        return server_round + self.round_offset

    def _name(self, node: int) -> str:
        return self.node_sites.get(node, f"node-{node}")

    def records(self) -> dict[str, Any]:
        """The per-site records a resumed run continues (JSON-ready)."""
        return {"rounds_trained": self.rounds_trained,
                "final_train": {k: v.to_metrics() for k, v in self.final_train.items()},
                "final_site_stats": {k: v.to_metrics() for k, v in
                                     self.final_site_stats.items()},
                "final_personal_stats": {k: v.to_metrics() for k, v in
                                         self.final_personal_stats.items()}}

    def restore(self, records: dict[str, Any], *, completed_rounds: int) -> None:
        """Continue after ``completed_rounds`` rounds recorded as ``records``."""
        self.round_offset = completed_rounds
        self.rounds_trained = {k: list(v) for k, v in records.get("rounds_trained", {}).items()}
        self.final_train = {k: TrainMetrics.from_metrics(v) for k, v in
                            records.get("final_train", {}).items()}
        t = self._threshold
        self.final_site_stats = {k: SiteEvalStats.from_metrics(v, threshold=t) for k, v in
                                 records.get("final_site_stats", {}).items()}
        self.final_personal_stats = {k: SiteEvalStats.from_metrics(v, threshold=t) for k, v
                                     in records.get("final_personal_stats", {}).items()}

    def _outcomes(self, kind: str, replies: list[Message]
                  ) -> tuple[list[Message], list[dict[str, Any]]]:
        """Split replies into successes and a record of failures, refusals and drop-outs.

        The SuperLink answers for a node that stopped sending heartbeats, so a reply is
        matched to the message it answers, not to its sender."""
        ok: list[Message] = []
        problems: list[dict[str, Any]] = []
        sent = {m.metadata.message_id: m.metadata.dst_node_id for m in self._sent[kind]
                if m.metadata.message_id}
        answered = set()
        for rep in replies:
            node = sent.get(rep.metadata.reply_to_message_id, rep.metadata.src_node_id)
            answered.add(node)
            if rep.has_error():
                code = rep.error.code
                problems.append({"site": self._name(node), "status": _error_status(code),
                                 "error_code": code, "reason": rep.error.reason})
            else:
                self.node_sites[node] = site_of(rep)
                ok.append(rep)
        problems += [{"site": self._name(m.metadata.dst_node_id), "status": "dropped",
                      "reason": f"no reply within the round timeout ({self._round_timeout:g} s)"}
                     for m in self._sent[kind] if m.metadata.dst_node_id not in answered]
        return ok, problems

    def _wait_for_round_nodes(self, grid: Grid, run_round: int) -> None:
        """Flower's sampling waits for ``min_available_nodes`` with no deadline: wait at most
        the round timeout, then fail clearly (the last checkpoint stays resumable)."""
        try:
            wait_for_nodes(grid, minimum=self._min_round_nodes, timeout=self._round_timeout)
        except MedflError:
            raise MedflError(
                f"round {run_round}: fewer than strategy.min-round-nodes="
                f"{self._min_round_nodes} sites connected within {self._round_timeout:g} s; "
                "restart the missing SuperNodes, then resume with resume-from") from None

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Flower's train messages for the round, once enough sites are connected."""
        run_round = self.run_round(server_round)
        self._wait_for_round_nodes(grid, run_round)
        self._expected = {k: tuple(v.shape) for k, v in arrays.items()}
        self._global = {k: array_values(v) for k, v in arrays.items()}
        messages = list(super().configure_train(run_round, arrays, config, grid))
        self._sent["train"] = messages
        return messages

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord,
                           config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        """Flower's evaluate messages for the round's global model: none outside the
        run's monitoring rounds (the sites would refuse them)."""
        run_round = self.run_round(server_round)
        self._round_arrays = arrays  # the round's global model, after any wrapper's noise
        if not self.monitors(run_round):
            self._sent["evaluate"] = []
            return []
        self._wait_for_round_nodes(grid, run_round)
        messages = list(super().configure_evaluate(run_round, arrays, config, grid))
        self._sent["evaluate"] = messages
        return messages

    def record_train(self, run_round: int, replies: list[Message]) -> list[Message]:
        """Record a train round (per-site metrics, problems) and return the replies to
        aggregate: the valid updates plus error replies (FedAvg counts and logs those).
        Raises ``PrivacyBudgetExceeded`` when every site refused."""
        self._recorded_round = run_round
        ok, problems = self._outcomes("train", replies)
        self._stop_if_every_site_refused(run_round, replies, problems)
        for rep in ok:  # transport.compression: back to float32 weights before anything else
            compression.decode(self._compression, rep.content, self._global)
        # A rejected update has still left its site: the privacy it cost counts in the
        # summary (a site's ε is cumulative, so its latest report is its spend).
        spent = {site_of(rep): m for rep in ok if (m := _train_metrics(rep)) is not None}
        valid = self._validated(run_round, ok, problems, spent)
        train: dict[str, dict[str, Any]] = {}
        for rep in valid:
            train[site_of(rep)] = spent[site_of(rep)].to_metrics()
            self.rounds_trained.setdefault(site_of(rep), []).append(run_round)
        self.final_train.update(spent)
        self._current = {"round": run_round, "train": train, "train_problems": problems}
        return [r for r in replies if r.has_error()] + valid  # FedAvg counts and logs errors

    def _stop_if_every_site_refused(self, run_round: int, replies: list[Message],
                                    problems: list[dict[str, Any]]) -> None:
        """Every site out of budget: record the round and stop, as later rounds would
        only be refused again."""
        refused = [p for p in problems if p["status"] == "refused"]
        if replies and len(refused) == len(replies):
            self._on_round({"round": run_round, "train": {}, "train_problems": problems,
                            "stopped": "every site refused the round (privacy budget)"})
            raise PrivacyBudgetExceeded(
                f"every site refused round {run_round}; first reason: {refused[0]['reason']}")

    def _validated(self, run_round: int, ok: list[Message], problems: list[dict[str, Any]],
                   spent: dict[str, TrainMetrics]) -> list[Message]:
        """The updates that pass :func:`check_update` and :func:`norm_outliers`; each
        rejected one is logged and added to ``problems`` with the ε it cost its site."""
        valid: list[Message] = []
        rejected: list[tuple[Message, str]] = []
        for rep in ok:
            reason = check_update(rep.content, self._expected)
            if reason is None and site_of(rep) not in spent:
                reason = "the train metrics are missing a declared key or are not numbers"
            if reason is None:
                valid.append(rep)
            else:
                rejected.append((rep, reason))
        outliers = norm_outliers(valid, self._global, ratio=self._norm_ratio)
        for rep, reason in rejected + outliers:
            site = site_of(rep)
            logger.warning("round %d: rejected the update of %s: %s", run_round, site, reason)
            problems.append({"site": site, "status": "rejected", "reason": reason,
                             "epsilon": finite(spent[site].epsilon if site in spent else None)})
        outlying = {id(rep) for rep, _ in outliers}
        return [rep for rep in valid if id(rep) not in outlying]

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Record and validate the round's updates (unless a wrapper did), then aggregate
        them with the strategy's own rule if enough are valid."""
        run_round = self.run_round(server_round)
        replies = list(replies)
        if self._recorded_round != run_round:  # not recorded by a wrapper (central DP)
            replies = self.record_train(run_round, replies)
        valid = sum(not r.has_error() for r in replies)
        if valid < self._min_round_nodes:
            reason = (f"{valid} valid update(s), fewer than strategy.min-round-nodes="
                      f"{self._min_round_nodes}; the global model is unchanged")
            logger.warning("round %d: not aggregated: %s", run_round, reason)
            self.unrecord_round(run_round, reason)
            return None, None
        return super().aggregate_train(run_round, replies)

    def unrecord_round(self, run_round: int, reason: str) -> None:
        """Mark a recorded round as not aggregated (its updates were not used)."""
        for rounds in self.rounds_trained.values():
            if run_round in rounds:
                rounds.remove(run_round)
        self._current["not_aggregated"] = reason

    def monitors(self, run_round: int) -> bool:
        """Whether ``run_round`` is evaluated (one of the plan's monitoring rounds)."""
        return self._monitor_rounds is None or run_round in self._monitor_rounds

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        """Pool the sites' monitoring releases (monitoring rounds only), write the
        round's record and checkpoint."""
        run_round = self.run_round(server_round)
        record: dict[str, Any] = {**self._current, "round": run_round}
        pooled: dict[str, Any] = {}
        if self.monitors(run_round):
            replies = list(replies)
            self._check_and_log_replies(replies, is_train=False, validate=False)
            ok, problems = self._outcomes("evaluate", replies)
            stats, personal = parse_evaluations(
                {site_of(rep): dict(rep.content.metric_records["metrics"]) for rep in ok},
                threshold=self._threshold)
            record.update(evaluation_record(stats, personal, problems))
            pooled = record["global"]
            if stats:  # a round every site dropped out of keeps the last known figures
                self.final_site_stats, self.final_personal_stats = stats, personal
        record["elapsed_s"] = round(time.monotonic() - self._t0, 3)
        if self.round_offset and run_round == self.round_offset + 1:
            record["resumed_after_round"] = self.round_offset  # the server had died
        self._on_round(record)
        if self._on_checkpoint is not None and self._round_arrays is not None:
            self._on_checkpoint(self, run_round, self._round_arrays)
        figures: dict[str, MetricRecordValues] = {
            k: v for k, v in pooled.items()
            if isinstance(v, (int, float)) and math.isfinite(v)}  # as finite(v) is not None
        return MetricRecord(figures) if figures else None


class RecordingFedAvg(Recording, FedAvg):
    """Flower's FedAvg with MedFL's per-round record and update validation."""


def _error_status(code: int) -> str:
    """A failed reply's status in the round record, from its error code."""
    if code == ERROR_CODES[PrivacyBudgetExceeded]:
        return "refused"
    if code == ErrorCode.NODE_UNAVAILABLE:
        return "dropped"
    return "failed"


def _train_metrics(rep: Message) -> TrainMetrics | None:
    """A train reply's metrics, typed; None when they do not parse (a site sent a malformed
    record: its update is rejected, and the server does not fail on it)."""
    try:
        return TrainMetrics.from_metrics(rep.content.metric_records["metrics"])
    except (KeyError, TypeError, ValueError):
        return None


def _aggregate_train_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Training examples this round and the largest ε any site has spent (sites do not
    share their training loss: it is outside the DP-SGD mechanism)."""
    # values as the sites sent them: num-examples is checked (check_update), ε is not
    rows: list[dict[str, Any]] = [dict(next(iter(r.metric_records.values())))
                                  for r in records]
    out: dict[str, MetricRecordValues] = {
        "num-examples": sum(int(m[weight_key]) for m in rows)}
    eps = [TrainMetrics.from_metrics(m).epsilon for m in rows]
    if all(math.isfinite(e) for e in eps):
        out["max-epsilon"] = max(eps)
    return MetricRecord(out)
