"""Server side: waiting for sites, queries, central DP, and the recording FedAvg."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg

from medfl.config import RunConfig
from medfl.data.scaling import FeatureMoments
from medfl.errors import MedflError, PrivacyBudgetExceeded
from medfl.evaluation.stats import PERSONAL, SiteEvalStats, pool_site_stats
from medfl.federation import compression
from medfl.federation.client import ERROR_CODES
from medfl.federation.records import (
    QUERY_AUDIT,
    QUERY_FEATURE_MOMENTS,
    QUERY_REPORT,
    moments_from_metrics,
    site_of,
)
from medfl.privacy.audit import AuditResult
from medfl.privacy.dp import epsilon_from_history

logger = logging.getLogger(__name__)

# --- server side ---------------------------------------------------------------------------

def wait_for_nodes(grid: Grid, *, minimum: int, timeout: float = 300.0) -> list[int]:
    """Block until at least ``minimum`` nodes are connected; raise after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = list(grid.get_node_ids())
        if len(nodes) >= minimum:
            return nodes
        if time.monotonic() > deadline:
            raise MedflError(
                f"only {len(nodes)} of the required {minimum} sites connected within "
                f"{timeout:.0f}s; lower strategy.min-nodes or start more SuperNodes"
            )
        time.sleep(1.0)


def sample_nodes(nodes: Iterable[int], fraction: float, *, minimum: int, seed: int
                 ) -> list[int]:
    """The nodes a one-off query goes to: all of them at ``fraction`` 1, else a sample of
    as many as Flower's strategies sample per round (``int(fraction * n)``, at least
    ``minimum``), seeded so a run is reproducible.

    A consortium of 1,000 simulated sites with 100 sampled per round asks 100 of them for
    feature statistics, not all 1,000.
    """
    nodes = sorted(nodes)
    if fraction >= 1.0:
        return nodes
    k = min(len(nodes), max(minimum, int(fraction * len(nodes))))
    return sorted(random.Random(seed).sample(nodes, k))


def final_query_nodes(cfg: RunConfig, strategy: Recording, nodes: Iterable[int]) -> list[int]:
    """The nodes asked for the audit and the final report: all of them; with sampled
    evaluation (``strategy.fraction-evaluate`` < 1), the sites that evaluated the final
    model, so the report, the audit and the final figures describe the same sites (a
    seeded sample when those are not known, as after a resume that trained no round)."""
    nodes = sorted(nodes)
    if cfg.strategy.fraction_evaluate >= 1.0:
        return nodes
    present = set(nodes)
    evaluated = sorted(n for n, name in strategy.node_sites.items()
                       if name in strategy.final_site_stats and n in present)
    return evaluated or sample_nodes(nodes, cfg.strategy.fraction_evaluate,
                                     minimum=cfg.strategy.min_round_nodes, seed=cfg.seed)


def query_feature_moments(grid: Grid, nodes: list[int], *, timeout: float, run_key: int
                          ) -> tuple[dict[str, FeatureMoments], dict[int, str]]:
    """Ask every node for its feature moments; a site that fails is left out and logged.

    Returns the moments by site and the node id -> site name map learnt from the replies.
    """
    messages = [
        Message(RecordDict({"config": ConfigRecord({"run-key": run_key})}),
                dst_node_id=node, message_type=f"query.{QUERY_FEATURE_MOMENTS}")
        for node in nodes
    ]
    out: dict[str, FeatureMoments] = {}
    names: dict[int, str] = {}
    for rep in grid.send_and_receive(messages, timeout=timeout):
        if rep.has_error():
            logger.warning("feature statistics: node %d failed: %s",
                           rep.metadata.src_node_id, rep.error.reason)
            continue
        names[rep.metadata.src_node_id] = site_of(rep)
        out[site_of(rep)] = moments_from_metrics(rep.content["metrics"])
    return out, names


def weight_key(cfg: RunConfig) -> str:
    """FedAvg weights sites by examples, or uniformly under central DP (whose noise is
    calibrated to one site's clipped update among equally weighted sites)."""
    return "site-weight" if cfg.privacy.central_noise_multiplier > 0 else "num-examples"


class CentralDP(DifferentialPrivacyServerSideFixedClipping):
    """Flower's server-side fixed clipping, aggregating only complete rounds.

    The noise is calibrated to ``num_sampled_clients`` equally weighted sites, so a round
    in which any site refused, failed, dropped out or sent an invalid update is recorded
    and *not* aggregated (its noise would be too small for fewer sites), instead of being
    skipped silently as the wrapper alone does. Updates are validated before clipping.
    """

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        rec: Recording = self.strategy
        server_round += rec.round_offset  # Recording's own methods add it themselves
        accepted = rec.record_train(server_round, list(replies))
        valid = [r for r in accepted if not r.has_error()]
        if len(valid) != self.num_sampled_clients:
            rec.unrecord_round(server_round, "central DP needs every site's valid update; "
                                             f"{len(valid)} of {self.num_sampled_clients}")
            return None, None
        return super().aggregate_train(server_round - rec.round_offset, valid)


def with_central_dp(strategy: Recording, cfg: RunConfig, *, num_sites: int):
    """Wrap ``strategy`` in server-side fixed-clipping central DP, if configured."""
    if cfg.privacy.central_noise_multiplier <= 0:
        return strategy
    return CentralDP(strategy, noise_multiplier=cfg.privacy.central_noise_multiplier,
                     clipping_norm=cfg.privacy.central_clipping_norm,
                     num_sampled_clients=num_sites)


def central_dp_report(cfg: RunConfig, strategy: Recording) -> dict[str, Any] | None:
    """Site-level (ε, δ) of the global model under central DP, from Opacus' accountant.

    Each aggregated round is one Gaussian mechanism on the sum of the sites' clipped
    updates (sensitivity: one site's clipping norm), with every site taking part (no
    sampling amplification): history ``[(z, 1, rounds)]``.
    """
    z = cfg.privacy.central_noise_multiplier
    if z <= 0:
        return None
    rounds = len({r for rs in strategy.rounds_trained.values() for r in rs})
    history = [(z, 1.0, rounds)] if rounds else []
    return {
        "unit": "site (a whole hospital's data)",
        "protects_against": "anyone who sees the global model; not the server, which "
                            "sees each site's update",
        "noise_multiplier": z, "clipping_norm": cfg.privacy.central_clipping_norm,
        "rounds": rounds, "delta": cfg.privacy.target_delta,
        "accountant": cfg.privacy.accountant,
        "epsilon": epsilon_from_history(history, delta=cfg.privacy.target_delta,
                                        accountant=cfg.privacy.accountant),
    }


def query_audit(grid: Grid, nodes: list[int], *, arrays: ArrayRecord, config: ConfigRecord,
                timeout: float) -> dict[str, AuditResult]:
    """Ask every node to run the membership-inference audit on the final model."""
    messages = [
        Message(RecordDict({"arrays": arrays, "config": ConfigRecord(dict(config))}),
                dst_node_id=node, message_type=f"query.{QUERY_AUDIT}")
        for node in nodes
    ]
    out: dict[str, AuditResult] = {}
    for rep in grid.send_and_receive(messages, timeout=timeout):
        if rep.has_error():
            logger.warning("audit: node %d failed: %s", rep.metadata.src_node_id,
                           rep.error.reason)
            continue
        out[site_of(rep)] = AuditResult.from_metrics(dict(rep.content["metrics"]))
    return out


def _finite(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


class Recording:
    """A mixin for any of Flower's FedAvg-family strategies: a per-round record of every
    site's train and eval results, and validation of every update before the strategy
    aggregates it (non-finite values, wrong shapes, and with ``norm_ratio`` > 0 an update
    whose distance from the global model is over ``norm_ratio`` times the round's median).

    Aggregation of arrays is the wrapped strategy's own. Evaluation replies carry
    sufficient statistics (see ``medfl.evaluation.stats``) that are pooled here into
    consortium-wide figures. ``on_round`` receives one JSON-ready dict per round.
    """

    def __init__(self, *, on_round: Callable[[dict[str, Any]], None],
                 node_sites: dict[int, str] | None = None, norm_ratio: float = 0.0,
                 min_round_nodes: int = 1, round_timeout: float = 600.0,
                 on_checkpoint: Callable[[int, ArrayRecord], None] | None = None,
                 compression: str = "none", **kwargs: Any) -> None:
        super().__init__(train_metrics_aggr_fn=_aggregate_train_metrics, **kwargs)
        self._compression = compression  # transport.compression: decoded before validation
        self._norm_ratio = norm_ratio
        self._min_round_nodes = min_round_nodes
        self._round_timeout = round_timeout
        self._on_checkpoint = on_checkpoint
        #: rounds completed by the run this one resumes (Flower's loop counts from 1)
        self.round_offset = 0
        self._round_arrays: ArrayRecord | None = None
        self._global: dict[str, np.ndarray] = {}
        self._on_round = on_round
        self._current: dict[str, Any] = {}
        self._sent: dict[str, list[Message]] = {"train": [], "evaluate": []}
        self._expected: dict[str, tuple[int, ...]] = {}
        self._t0 = time.monotonic()
        #: node id -> site name, learnt from replies (error replies carry no site name)
        self.node_sites: dict[int, str] = dict(node_sites or {})
        self.final_site_stats: dict[str, SiteEvalStats] = {}
        self.final_personal_stats: dict[str, SiteEvalStats] = {}
        self.final_train: dict[str, dict[str, Any]] = {}
        self.rounds_trained: dict[str, list[int]] = {}

    def _name(self, node: int) -> str:
        return self.node_sites.get(node, f"node-{node}")

    def records(self) -> dict[str, Any]:
        """The per-site records a resumed run continues (JSON-ready)."""
        return {"rounds_trained": self.rounds_trained, "final_train": self.final_train,
                "final_site_stats": {k: v.to_metrics() for k, v in
                                     self.final_site_stats.items()},
                "final_personal_stats": {k: v.to_metrics() for k, v in
                                         self.final_personal_stats.items()}}

    def restore(self, records: dict[str, Any], *, completed_rounds: int) -> None:
        """Continue after ``completed_rounds`` rounds recorded as ``records``."""
        self.round_offset = completed_rounds
        self.rounds_trained = {k: list(v) for k, v in records.get("rounds_trained", {}).items()}
        self.final_train = dict(records.get("final_train", {}))
        self.final_site_stats = {k: SiteEvalStats.from_metrics(v) for k, v in
                                 records.get("final_site_stats", {}).items()}
        self.final_personal_stats = {k: SiteEvalStats.from_metrics(v) for k, v in
                                     records.get("final_personal_stats", {}).items()}

    def _outcomes(self, kind: str, replies: list[Message]) -> tuple[list[Message], list[dict]]:
        """Split replies into successes and a record of failures, refusals and drop-outs.

        The SuperLink answers for a node that stopped sending heartbeats, so a reply is
        matched to the message it answers, not to its sender."""
        ok, problems = [], []
        sent = {m.metadata.message_id: m.metadata.dst_node_id for m in self._sent[kind]
                if m.metadata.message_id}
        answered = set()
        for rep in replies:
            node = sent.get(rep.metadata.reply_to_message_id, rep.metadata.src_node_id)
            answered.add(node)
            if rep.has_error():
                code = rep.error.code
                status = ("refused" if code == ERROR_CODES[PrivacyBudgetExceeded] else
                          "dropped" if code == ErrorCode.NODE_UNAVAILABLE else "failed")
                problems.append({"site": self._name(node), "status": status,
                                 "error_code": code, "reason": rep.error.reason})
            else:
                self.node_sites[node] = site_of(rep)
                ok.append(rep)
        problems += [{"site": self._name(m.metadata.dst_node_id), "status": "dropped",
                      "reason": f"no reply within the round timeout ({self._round_timeout:g} s)"}
                     for m in self._sent[kind] if m.metadata.dst_node_id not in answered]
        return ok, problems

    def _wait_for_round_nodes(self, grid: Grid, server_round: int) -> None:
        """Flower's sampling waits for ``min_available_nodes`` with no deadline: wait at most
        the round timeout, then fail clearly (the last checkpoint stays resumable)."""
        try:
            wait_for_nodes(grid, minimum=self._min_round_nodes, timeout=self._round_timeout)
        except MedflError:
            raise MedflError(
                f"round {server_round}: fewer than strategy.min-round-nodes="
                f"{self._min_round_nodes} sites connected within {self._round_timeout:g} s; "
                "restart the missing SuperNodes, then resume with resume-from") from None

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        server_round += self.round_offset
        self._wait_for_round_nodes(grid, server_round)
        self._expected = {k: tuple(v.shape) for k, v in arrays.items()}
        self._global = {k: v.numpy() for k, v in arrays.items()}
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self._sent["train"] = messages
        return messages

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord,
                           config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        server_round += self.round_offset
        self._round_arrays = arrays  # the round's global model, after any wrapper's noise
        self._wait_for_round_nodes(grid, server_round)
        messages = list(super().configure_evaluate(server_round, arrays, config, grid))
        self._sent["evaluate"] = messages
        return messages

    def record_train(self, server_round: int, replies: list[Message]) -> list[Message]:
        """Record a train round (per-site metrics, problems) and return the replies to
        aggregate: the valid updates plus error replies (FedAvg counts and logs those).
        Raises ``PrivacyBudgetExceeded`` when every site refused."""
        self._recorded_round = server_round
        ok, problems = self._outcomes("train", replies)
        refused = [p for p in problems if p["status"] == "refused"]
        if replies and len(refused) == len(replies):
            # Every site is out of budget: later rounds would only be refused again.
            self._on_round({"round": server_round, "train": {}, "train_problems": problems,
                            "stopped": "every site refused the round (privacy budget)"})
            raise PrivacyBudgetExceeded(
                f"every site refused round {server_round}; first reason: {refused[0]['reason']}")
        train: dict[str, dict[str, Any]] = {}
        accepted = [r for r in replies if r.has_error()]  # FedAvg counts and logs these
        valid: list[Message] = []
        for rep in ok:  # transport.compression: back to float32 weights before anything else
            compression.decode(self._compression, rep.content, self._global)
        # A rejected update has still left its site: the privacy it cost counts in the
        # summary (a site's ε is cumulative, so its latest report is its spend).
        spent = {site_of(rep): dict(rep.content["metrics"]) for rep in ok
                 if "metrics" in rep.content}

        def reject(rep: Message, reason: str) -> None:
            logger.warning("round %d: rejected the update of %s: %s", server_round,
                           site_of(rep), reason)
            problems.append({"site": site_of(rep), "status": "rejected", "reason": reason,
                             "epsilon": _finite(spent.get(site_of(rep), {}).get("epsilon"))})

        for rep in ok:
            reason = check_update(rep.content, self._expected)
            if reason is not None:
                reject(rep, reason)
                continue
            valid.append(rep)
        for rep, reason in self._norm_outliers(valid):
            reject(rep, reason)
            valid.remove(rep)
        for rep in valid:
            m = rep.content["metrics"]
            train[site_of(rep)] = {k: m[k] for k in m}
            self.rounds_trained.setdefault(site_of(rep), []).append(server_round)
            accepted.append(rep)
        self.final_train.update(spent)
        self._current = {"round": server_round, "train": train, "train_problems": problems}
        return accepted

    def _norm_outliers(self, replies: list[Message]) -> list[tuple[Message, str]]:
        """Updates whose distance from the global model is over ``norm_ratio`` times the
        round's median distance (needs three or more updates to have a median to trust)."""
        if self._norm_ratio <= 0 or len(replies) < 3:
            return []
        norms = []
        for rep in replies:
            arrays = rep.content["arrays"]
            sq = sum(float(np.sum((arrays[k].numpy().astype(np.float64) - g) ** 2))
                     for k, g in self._global.items())
            norms.append(math.sqrt(sq))
        median = float(np.median(norms))
        if median <= 0:
            return []
        return [(rep, f"update norm {n / median:.1f}x the round's median (limit "
                      f"{self._norm_ratio:g}x)")
                for rep, n in zip(replies, norms, strict=True) if n > self._norm_ratio * median]

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        server_round += self.round_offset
        replies = list(replies)
        if getattr(self, "_recorded_round", None) != server_round:  # not pre-recorded
            replies = self.record_train(server_round, replies)
        valid = sum(not r.has_error() for r in replies)
        if valid < self._min_round_nodes:
            reason = (f"{valid} valid update(s), fewer than strategy.min-round-nodes="
                      f"{self._min_round_nodes}; the global model is unchanged")
            logger.warning("round %d: not aggregated: %s", server_round, reason)
            self.unrecord_round(server_round, reason)
            return None, None
        return super().aggregate_train(server_round, replies)

    def unrecord_round(self, server_round: int, reason: str) -> None:
        """Mark a recorded round as not aggregated (its updates were not used)."""
        for rounds in self.rounds_trained.values():
            if server_round in rounds:
                rounds.remove(server_round)
        self._current["not_aggregated"] = reason

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]):
        server_round += self.round_offset
        replies = list(replies)
        self._check_and_log_replies(replies, is_train=False, validate=False)
        ok, problems = self._outcomes("evaluate", replies)
        stats = {site_of(rep): SiteEvalStats.from_metrics(rep.content["metrics"]) for rep in ok}
        # Personalised evaluation (evaluation.personal-epochs > 0): each site's fine-tuned copy
        personal = {site_of(rep): SiteEvalStats.from_metrics(rep.content["metrics"], PERSONAL)
                    for rep in ok if PERSONAL + "num-examples" in rep.content["metrics"]}
        pooled = pool_site_stats(list(stats.values()))
        record = {
            **self._current,
            "round": server_round,
            "evaluate": _site_figures(stats),
            "evaluate_problems": problems,
            "global": pooled,
            **({"evaluate_personal": _site_figures(personal),
                "global_personal": pool_site_stats(list(personal.values()))} if personal else {}),
            "elapsed_s": round(time.monotonic() - self._t0, 3),
        }
        if self.round_offset and server_round == self.round_offset + 1:
            record["resumed_after_round"] = self.round_offset  # the server had died
        if stats:  # a round every site dropped out of keeps the last known figures
            self.final_site_stats, self.final_personal_stats = stats, personal
        self._on_round(record)
        if self._on_checkpoint is not None and self._round_arrays is not None:
            self._on_checkpoint(server_round, self._round_arrays)
        metrics = {k: v for k, v in pooled.items() if _finite(v) is not None}
        return MetricRecord(metrics) if metrics else None


def _site_figures(stats: dict[str, SiteEvalStats]) -> dict[str, dict[str, Any]]:
    return {site: {"n": s.n, "accuracy": s.accuracy, "auroc": s.auroc, "loss": s.loss,
                   **({"dice": s.dice, "iou": s.iou} if s.dice_sum is not None else {})}
            for site, s in sorted(stats.items())}


class RecordingFedAvg(Recording, FedAvg):
    """Flower's FedAvg with MedFL's per-round record and update validation."""


def check_update(content: RecordDict, expected: dict[str, tuple[int, ...]]) -> str | None:
    """Why an update must not be aggregated, or ``None`` when it is acceptable.

    The arrays must carry exactly the global model's names and shapes, only finite values,
    and ``num-examples`` must be a positive number. The reason names the offending key,
    never a value.
    """
    if "arrays" not in content or "metrics" not in content:
        return "the reply has no arrays or no metrics"
    arrays = content["arrays"]
    names = set(arrays.keys())
    if names != set(expected):
        return (f"array names differ from the global model's (missing "
                f"{sorted(set(expected) - names)}, unexpected {sorted(names - set(expected))})")
    for name, arr in arrays.items():
        values = arr.numpy()
        if tuple(values.shape) != expected[name]:
            return f"array {name!r} has shape {tuple(values.shape)}, expected {expected[name]}"
        if not np.all(np.isfinite(values)):
            return f"array {name!r} holds non-finite values (NaN or infinity)"
    n = content["metrics"].get("num-examples")
    if not isinstance(n, (int, float)) or not math.isfinite(n) or n <= 0:
        return "num-examples is missing, not finite or not positive"
    return None


def _aggregate_train_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Training examples this round and the largest ε any site has spent (sites do not
    share their training loss: it is outside the DP-SGD mechanism)."""
    rows = [next(iter(r.metric_records.values())) for r in records]
    out = {"num-examples": sum(int(m[weight_key]) for m in rows)}
    eps = [float(m["epsilon"]) for m in rows]
    if all(math.isfinite(e) for e in eps):
        out["max-epsilon"] = max(eps)
    return MetricRecord(out)



def query_report(grid: Grid, nodes: list[int], *, arrays: ArrayRecord, config: ConfigRecord,
                 timeout: float) -> dict[str, dict[str, Any]]:
    """Ask every node for its report statistics on the final model (raw metric dicts, as
    received: the run directory keeps them so that ``medfl report`` can rebuild)."""
    messages = [
        Message(RecordDict({"arrays": arrays, "config": ConfigRecord(dict(config))}),
                dst_node_id=node, message_type=f"query.{QUERY_REPORT}")
        for node in nodes
    ]
    out: dict[str, dict[str, Any]] = {}
    for rep in grid.send_and_receive(messages, timeout=timeout):
        if rep.has_error():
            logger.warning("report: node %d failed: %s", rep.metadata.src_node_id,
                           rep.error.reason)
            continue
        m = rep.content["metrics"]
        out[site_of(rep)] = {key: m[key] for key in m}
    return out
