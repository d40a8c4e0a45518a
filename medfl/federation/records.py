"""Records on the wire: MedFL values <-> Flower records, and the node's DP state."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)

from medfl.data.scaling import FeatureMoments, Standardizer
from medfl.io import atomic_write_json
from medfl.privacy.dp import DPPlan, History

logger = logging.getLogger(__name__)

QUERY_FEATURE_MOMENTS = "moments"  # message type "query.moments"
QUERY_AUDIT = "audit"  # message type "query.audit"
QUERY_REPORT = "report"  # message type "query.report"
Handler = Callable[[Message, Context], Message]
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
# ``context.state`` lives as long as the SuperNode process. A copy in the site's own state
# folder (``backup``) lets a restarted SuperNode, or a resumed run (same ``run-key``),
# continue the same accountant history instead of starting a fresh one.

def run_key(config: ConfigRecord, run_id: int) -> int:
    """The run's identity at the site: the server's ``run-key`` (kept when a run is
    resumed), else Flower's run id."""
    return int(config.get("run-key", run_id))


def save_dp_state(state: RecordDict, plan: DPPlan | None, history: History,
                  backup: Path | None = None) -> None:
    record = {
        "history-sigma": [float(s) for s, _, _ in history],
        "history-rate": [float(q) for _, q, _ in history],
        "history-steps": [int(n) for _, _, n in history],
    }
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
    state[DP_STATE_KEY] = ConfigRecord(record)
    if backup is not None:
        atomic_write_json(backup, record)


def load_dp_state(state: RecordDict, backup: Path | None = None
                  ) -> tuple[DPPlan | None, History]:
    if DP_STATE_KEY in state:
        r: Any = state[DP_STATE_KEY]
    elif backup is not None and backup.is_file():
        r = json.loads(backup.read_text())
    else:
        return None, []
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




def answer_once(state: RecordDict, what: str) -> None:
    """Refuse a second request of ``what`` in this run (the node's context state is per
    run): a site answers the final report query once, whatever arrays it is sent."""
    key = f"medfl.once.{what}"
    if key in state.config_records:
        from medfl.errors import ConfigError

        raise ConfigError(f"this site already answered this run's {what} query; it answers "
                          "once per run")
    state[key] = ConfigRecord({"answered": 1})
