"""Records on the wire: MedFL values <-> Flower records, and the node's memory."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)

from medfl.config import RunConfig
from medfl.data.prevalence import checked_prevalence
from medfl.data.scaling import FeatureMoments, Standardizer
from medfl.errors import ConfigError
from medfl.site import metrics as site_metrics

QUERY_FEATURE_MOMENTS = "moments"  # message type "query.moments"
QUERY_AUDIT = "audit"  # message type "query.audit"
QUERY_REPORT = "report"  # message type "query.report"
Handler = Callable[[Message, Context], Message]


# --- arrays -------------------------------------------------------------------------------

def to_array_record(weights: dict[str, torch.Tensor]) -> ArrayRecord:
    """Model arrays as a Flower ``ArrayRecord`` (detached, on the CPU)."""
    return ArrayRecord({k: v.detach().cpu() for k, v in weights.items()})


#: One decode at a time in a process. Flower decodes an ``Array`` with ``np.load``, which
#: reads the header with ``ast.literal_eval``; CPython 3.11's AST constructor keeps its
#: recursion depth per interpreter, not per thread, so two threads decoding at once can
#: fail with "SystemError: AST constructor recursion depth mismatch" (python/cpython#106905;
#: seen in CI with eight runs training at once at one site).
_DECODING = threading.Lock()


def from_array_record(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """A Flower ``ArrayRecord`` as a PyTorch state dict."""
    with _DECODING:
        return dict(record.to_torch_state_dict())


def array_values(array: Array) -> np.ndarray:
    """One Flower ``Array`` as a NumPy array (decoded as :func:`from_array_record` does)."""
    with _DECODING:
        return array.numpy()


# --- the standardiser travels in every train/evaluate ConfigRecord ---------------------

def scaler_to_config(scaler: Standardizer | None) -> dict[str, Any]:
    """A standardiser as ConfigRecord entries (none: no entries), with the consortium's
    prevalence when it carries one."""
    if scaler is None:
        return {}
    out: dict[str, Any] = {"scaler-columns": list(scaler.columns),
                           "scaler-mean": list(scaler.mean), "scaler-std": list(scaler.std)}
    if scaler.impute_columns:  # the consortium's values of the features to impute
        out |= {"scaler-impute-columns": list(scaler.impute_columns),
                "scaler-impute-values": list(scaler.impute_values)}
    if scaler.prevalence is not None:
        out["scaler-prevalence"] = scaler.prevalence
    return out


def scaler_from_config(config: Mapping[str, Any]) -> Standardizer | None:
    """The standardiser in a message's config, if the server sent one; its prevalence is
    untrusted input, refused when not finite and clipped (:func:`checked_prevalence`)."""
    if "scaler-mean" not in config:
        return None
    columns = tuple(int(c) for c in config.get("scaler-impute-columns", ()))
    values = tuple(float(v) for v in config.get("scaler-impute-values", ()))
    if len(columns) != len(values):
        raise ConfigError("the server's scaler-impute-columns and scaler-impute-values "
                          "differ in length; refused")
    prevalence = config.get("scaler-prevalence")
    return Standardizer(tuple(int(c) for c in config["scaler-columns"]),
                        tuple(float(v) for v in config["scaler-mean"]),
                        tuple(float(v) for v in config["scaler-std"]), columns, values,
                        checked_prevalence(prevalence) if prevalence is not None else None)


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


def _imaging(cfg: RunConfig) -> bool:
    from medfl import tasks  # the task registry imports the federation's records

    return not tasks.task_for(cfg).is_tabular


def image_size_to_config(cfg: RunConfig) -> dict[str, Any]:
    """The image size the server's model and bundle are for (imaging runs; none else)."""
    return {"image-size": cfg.data.image_size} if _imaging(cfg) else {}


def check_image_size(cfg: RunConfig, config: Mapping[str, Any]) -> None:
    """Refuse a message whose server works at another image size than this site: each
    process reduces ``data.image-size`` to ``data.cpu-image-size`` when it has no GPU, so
    a server and a site that see different devices would train one model at two sizes
    and label the bundle with the server's."""
    sent = config.get("image-size")
    if sent is None or not _imaging(cfg) or int(sent) == cfg.data.image_size:
        return
    reason = (f" (data.cpu-image-size: this site has no GPU; data.image-size is "
              f"{cfg.data.reduced_from})" if cfg.data.reduced_from else "")
    raise ConfigError(
        f"the server's model is for {int(sent)}x{int(sent)} images, this site's are "
        f"{cfg.data.image_size}x{cfg.data.image_size}{reason}; give every site and the "
        "server the same devices (in a simulation, a GPU share for the ClientApps) or set "
        "data.cpu-image-size = 0")


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
