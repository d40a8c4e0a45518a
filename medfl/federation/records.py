"""Records on the wire: MedFL values <-> Flower records, and the node's memory."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

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
from medfl.site import metrics as site_metrics

QUERY_FEATURE_MOMENTS = "moments"  # message type "query.moments"
QUERY_AUDIT = "audit"  # message type "query.audit"
QUERY_REPORT = "report"  # message type "query.report"
Handler = Callable[[Message, Context], Message]


# --- arrays -------------------------------------------------------------------------------

def to_array_record(weights: dict[str, torch.Tensor]) -> ArrayRecord:
    """Model arrays as a Flower ``ArrayRecord`` (detached, on the CPU)."""
    return ArrayRecord({k: v.detach().cpu() for k, v in weights.items()})


def from_array_record(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """A Flower ``ArrayRecord`` as a PyTorch state dict."""
    return dict(record.to_torch_state_dict())


# --- the standardiser travels in every train/evaluate ConfigRecord ---------------------

def scaler_to_config(scaler: Standardizer | None) -> dict[str, list[Any]]:
    """A standardiser as ConfigRecord entries (none: no entries)."""
    if scaler is None:
        return {}
    return {"scaler-columns": list(scaler.columns), "scaler-mean": list(scaler.mean),
            "scaler-std": list(scaler.std)}


def scaler_from_config(config: Mapping[str, Any]) -> Standardizer | None:
    """The standardiser in a message's config, if the server sent one."""
    if "scaler-mean" not in config:
        return None
    return Standardizer(tuple(int(c) for c in config["scaler-columns"]),
                        tuple(float(v) for v in config["scaler-mean"]),
                        tuple(float(v) for v in config["scaler-std"]))


# --- the node's memory across messages of a run ------------------------------------------

class StateMemory:
    """:class:`medfl.site.NodeMemory` over a Flower ``context.state``: each record a
    ``ConfigRecord`` under its key. ``context.state`` lives as long as the SuperNode
    process (per run); what must outlive it the site also writes to its own state folder."""

    def __init__(self, state: RecordDict) -> None:
        self.state = state

    def get(self, key: str) -> dict[str, Any] | None:
        """The record under ``key`` as a plain dict, or ``None``."""
        if key not in self.state.config_records:
            return None
        return dict(self.state.config_records[key])

    def put(self, key: str, record: dict[str, Any]) -> None:
        """Keep ``record`` under ``key`` as a ``ConfigRecord``."""
        self.state[key] = ConfigRecord(record)


def run_key(config: Mapping[str, Any], run_id: int) -> int:
    """The run's identity at the site: the server's ``run-key`` (kept when a run is
    resumed), else Flower's run id."""
    return int(config.get("run-key", run_id))


# --- replies ---------------------------------------------------------------------------

def reply(msg: Message, *, site: str, metrics: dict[str, Any],
          weights: dict[str, torch.Tensor] | None = None) -> Message:
    """A reply carrying only arrays, declared metrics, and the site's public name."""
    content = RecordDict({"metrics": MetricRecord(metrics), "site": ConfigRecord({"name": site})})
    if weights is not None:
        content["arrays"] = to_array_record(weights)
    return Message(content=content, reply_to=msg)


def site_of(msg: Message) -> str:
    """The replying site's public name (``node-<id>`` when it sent none)."""
    if "site" in msg.content:
        return str(msg.content["site"]["name"])
    return f"node-{msg.metadata.src_node_id}"


def moments_to_metrics(m: FeatureMoments) -> dict[str, Any]:
    """Feature moments on the wire (:func:`medfl.site.metrics.moments_to_metrics`)."""
    return site_metrics.moments_to_metrics(m)


def moments_from_metrics(r: Mapping[str, Any]) -> FeatureMoments:
    """A moments reply's metrics back as :class:`FeatureMoments`."""
    return site_metrics.moments_from_metrics(r)
