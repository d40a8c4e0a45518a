"""The one module of ``medfl`` that speaks Flower: records <-> MedFL types, and the strategy.

``server/`` and ``client/`` are thin adapters over this module and the Flower-free
library; nothing else in ``medfl`` imports ``flwr``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from medfl.data.scaling import FeatureMoments, Standardizer
from medfl.errors import MedflError
from medfl.evaluation.stats import SiteEvalStats, pool_site_stats
from medfl.privacy.dp import DPPlan, History

logger = logging.getLogger(__name__)

QUERY_FEATURE_MOMENTS = "feature-moments"
DP_STATE_KEY = "medfl.dp"


# --- arrays -------------------------------------------------------------------------------

def to_array_record(weights: dict[str, torch.Tensor]) -> ArrayRecord:
    return ArrayRecord({k: v.detach().cpu() for k, v in weights.items()})


def from_array_record(record: ArrayRecord) -> dict[str, torch.Tensor]:
    return dict(record.to_torch_state_dict())


# --- the standardiser travels in every train/evaluate ConfigRecord ---------------------

def scaler_to_config(scaler: Standardizer | None) -> dict[str, list]:
    if scaler is None:
        return {}
    return {"scaler-columns": list(scaler.columns), "scaler-mean": list(scaler.mean),
            "scaler-std": list(scaler.std)}


def scaler_from_config(config: ConfigRecord) -> Standardizer | None:
    if "scaler-mean" not in config:
        return None
    return Standardizer(tuple(int(c) for c in config["scaler-columns"]),
                        tuple(float(v) for v in config["scaler-mean"]),
                        tuple(float(v) for v in config["scaler-std"]))


# --- DP state kept in the node's context.state across rounds -----------------------------

def save_dp_state(state: RecordDict, plan: DPPlan | None, history: History) -> None:
    record = ConfigRecord({
        "history-sigma": [float(s) for s, _, _ in history],
        "history-rate": [float(q) for _, q, _ in history],
        "history-steps": [int(n) for _, _, n in history],
    })
    if plan is not None:
        record.update({
            "noise-multiplier": plan.noise_multiplier, "sample-rate": plan.sample_rate,
            "steps-per-round": plan.steps_per_round, "rounds": plan.rounds,
            "max-grad-norm": plan.max_grad_norm, "delta": plan.delta,
            "accountant": plan.accountant, "target-epsilon": plan.target_epsilon,
            "prior-sigma": [float(s) for s, _, _ in plan.prior],
            "prior-rate": [float(q) for _, q, _ in plan.prior],
            "prior-steps": [int(n) for _, _, n in plan.prior],
        })
    state[DP_STATE_KEY] = record


def load_dp_state(state: RecordDict) -> tuple[DPPlan | None, History]:
    if DP_STATE_KEY not in state:
        return None, []
    r = state[DP_STATE_KEY]
    history = list(zip(map(float, r["history-sigma"]), map(float, r["history-rate"]),
                       map(int, r["history-steps"]), strict=True))
    if "noise-multiplier" not in r:
        return None, history
    prior = tuple(zip(map(float, r["prior-sigma"]), map(float, r["prior-rate"]),
                      map(int, r["prior-steps"]), strict=True))
    plan = DPPlan(float(r["noise-multiplier"]), float(r["sample-rate"]),
                  int(r["steps-per-round"]), int(r["rounds"]), float(r["max-grad-norm"]),
                  float(r["delta"]), str(r["accountant"]), float(r["target-epsilon"]), prior)
    return plan, history


# --- replies -------------------------------------------------------------------------------

def reply(msg: Message, *, site: str, metrics: dict[str, Any],
          weights: dict[str, torch.Tensor] | None = None) -> Message:
    """A reply carrying only arrays, declared metrics, and the site's public name."""
    content = RecordDict({"metrics": MetricRecord(metrics), "site": ConfigRecord({"name": site})})
    if weights is not None:
        content["arrays"] = to_array_record(weights)
    return Message(content=content, reply_to=msg)


def site_of(msg: Message) -> str:
    if "site" in msg.content:
        return str(msg.content["site"]["name"])
    return f"node-{msg.metadata.src_node_id}"


def moments_to_metrics(m: FeatureMoments) -> dict[str, Any]:
    return {"count": m.count, "sums": [float(v) for v in m.sums],
            "sumsq": [float(v) for v in m.sumsq]}


def moments_from_metrics(r: MetricRecord) -> FeatureMoments:
    return FeatureMoments(float(r["count"]), np.asarray(r["sums"], dtype=np.float64),
                          np.asarray(r["sumsq"], dtype=np.float64))


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


def query_feature_moments(grid: Grid, nodes: list[int], *,
                          timeout: float) -> dict[str, FeatureMoments]:
    """Ask every node for its feature moments; a site that fails is left out and logged."""
    messages = [
        Message(RecordDict({"config": ConfigRecord({"query": QUERY_FEATURE_MOMENTS})}),
                dst_node_id=node, message_type="query")
        for node in nodes
    ]
    out: dict[str, FeatureMoments] = {}
    for rep in grid.send_and_receive(messages, timeout=timeout):
        if rep.has_error():
            logger.warning("feature statistics: node %d failed (error code %d)",
                           rep.metadata.src_node_id, rep.error.code)
            continue
        out[site_of(rep)] = moments_from_metrics(rep.content["metrics"])
    return out


def _finite(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


class RecordingFedAvg(FedAvg):
    """Flower's FedAvg, plus a per-round record of every site's train and eval results.

    Aggregation of arrays is FedAvg's own. Evaluation replies carry sufficient statistics
    (see ``medfl.evaluation.stats``) that are pooled here into consortium-wide figures.
    ``on_round`` receives one JSON-ready dict per round.
    """

    def __init__(self, *, on_round: Callable[[dict[str, Any]], None], **kwargs: Any) -> None:
        super().__init__(train_metrics_aggr_fn=_aggregate_train_metrics, **kwargs)
        self._on_round = on_round
        self._current: dict[str, Any] = {}
        self._t0 = time.monotonic()
        self.final_site_stats: dict[str, SiteEvalStats] = {}
        self.final_train: dict[str, dict[str, Any]] = {}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._expected = {k: tuple(v.shape) for k, v in arrays.items()}
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        train: dict[str, dict[str, Any]] = {}
        failed: list[dict[str, Any]] = []
        rejected: list[dict[str, Any]] = []
        accepted: list[Message] = []
        for rep in replies:
            if rep.has_error():
                failed.append({"node": rep.metadata.src_node_id, "error_code": rep.error.code})
                accepted.append(rep)  # FedAvg counts and logs failures itself
                continue
            reason = check_update(rep.content, self._expected)
            if reason is not None:
                logger.warning("round %d: rejected the update of %s: %s", server_round,
                               site_of(rep), reason)
                rejected.append({"site": site_of(rep), "reason": reason})
                continue
            m = rep.content["metrics"]
            train[site_of(rep)] = {k: m[k] for k in m}
            accepted.append(rep)
        self.final_train.update(train)
        self._current = {"round": server_round, "train": train, "train_failed": failed,
                         "train_rejected": rejected}
        return super().aggregate_train(server_round, accepted)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]):
        valid, errors = self._check_and_log_replies(list(replies), is_train=False)
        stats = {site_of(rep): SiteEvalStats.from_metrics(rep.content["metrics"])
                 for rep in valid}
        pooled = pool_site_stats(list(stats.values()))
        record = {
            **self._current,
            "round": server_round,
            "evaluate": {
                site: {"n": s.n, "accuracy": s.accuracy, "auroc": s.auroc,
                       "loss": s.loss_sum / s.n if s.n else None}
                for site, s in sorted(stats.items())
            },
            "evaluate_failed": [{"node": e.metadata.src_node_id, "error_code": e.error.code}
                                for e in errors],
            "global": pooled,
            "elapsed_s": round(time.monotonic() - self._t0, 3),
        }
        self.final_site_stats = stats
        self._on_round(record)
        metrics = {k: v for k, v in pooled.items() if _finite(v) is not None}
        return MetricRecord(metrics) if metrics else None


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
