"""A hostile coordinator: drive the real ClientApp in-process with any message.

The threat model (issue 18, DESIGN.md) is a coordinator that sends a site ANY message, any
weights and any run config, any number of times, concurrently. This harness plays that
coordinator against one deployed site, without a SuperLink:

* the REAL ``client.app`` ClientApp (its egress guard on, its ``guarded`` error vetting,
  the real Opacus accountant and the site's real ledger under ``site-dir``);
* one node config as ``deploy/start-site.sh`` sets it (:func:`deployed_node_config`);
* one Flower ``Context`` per run id, kept across that run's messages as a SuperNode keeps
  it (its ``state`` is the site's ``NodeMemory`` for the run), shared by every thread that
  sends into the same run;
* every reply comes back as a :class:`Reply`, whether the site answered or refused.

Typical use::

    site = SiteUnderAttack(deployed_node_config(tmp_path))
    raw = run_config(**{"privacy.target-delta": 0.5})
    reply = site.send("train", run_id=7, run_config=raw,
                      weights=model_weights(raw, "normal", seed=1),
                      config={"server-round": 1, "run-key": 3})
    assert reply.ok, reply.error

Nothing here patches the library: what a test observes is what a hospital would send.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from bench.inprocess import default_run_config, set_task_identity
from medfl import tasks
from medfl.config import parse_run_config
from medfl.data import heart

#: Every message type a MedFL ClientApp answers (``medfl.federation.records`` and the
#: ServerApp's queries: ``query.<name>``).
MESSAGE_TYPES = ("train", "evaluate", "query.moments", "query.audit", "query.report")

#: A tiny, fast run: one local epoch of logistic regression with the RDP accountant, the
#: secure noise a deployed site requires, and none of the releases outside DP that a
#: deployed site refuses by default (audit, personalised evaluation, exact moments, site
#: scaling). Any key can be overridden per run.
TINY_RUN = {
    "num-server-rounds": 3,
    "train.local-epochs": 1,
    "train.batch-size": 64,
    "model.name": "logreg",
    "privacy.accountant": "rdp",
    "privacy.secure-noise": True,
    "privacy.target-delta": 1e-5,  # under 1/(10 n) at every heart-disease site
    "privacy.enabled": True,
    "preprocessing.scaling": "none",
    "preprocessing.stats-noise-multiplier": 5.0,
    "privacy.audit": False,
    "evaluation.personal-epochs": 0,
    "device": "cpu",
}

#: How a hostile coordinator may choose the model it sends (see :func:`model_weights`).
WEIGHT_KINDS = ("init", "zeros", "normal", "huge", "tiny-bias", "big-bias", "nan", "inf")


def deployed_node_config(site_dir: Path, *, site: str = "cleveland", max_epsilon: float = 3.0,
                         min_k: int = 10, lifetime_epsilon: float = 10.0) -> dict[str, Any]:
    """A node config exactly as ``deploy/start-site.sh`` builds it (its defaults), with
    ``data-path`` the embedded heart-disease folder and ``site-dir`` the given folder."""
    return {"site": site, "data-path": str(heart.data_dir()), "site-dir": str(site_dir),
            "max-epsilon": max_epsilon, "min-k": min_k, "lifetime-epsilon": lifetime_epsilon}


def run_config(**overrides: Any) -> dict[str, Any]:
    """A full flattened run config: pyproject's defaults, :data:`TINY_RUN`, then
    ``overrides`` given by their dotted keys (``run_config(**{"privacy.k-threshold": 1})``).
    An unknown key raises, so a typo cannot silently test the default."""
    raw = default_run_config()
    for key, value in {**TINY_RUN, **overrides}.items():
        if key not in raw:
            raise KeyError(f"unknown run-config key {key!r}")
        raw[key] = value
    return raw


def model_weights(raw: dict[str, Any], kind: str, *, seed: int = 0,
                  scale: float = 1.0) -> dict[str, np.ndarray]:
    """Weights of the run's model, chosen as a hostile coordinator might.

    ``kind``: ``init`` (the model's own initialisation), ``zeros``, ``normal`` (Gaussian,
    ``scale``), ``huge`` (±1e30), ``tiny-bias`` / ``big-bias`` (zeros with every bias at
    ±``scale`` or ±1e6: a constant prediction), ``nan``, ``inf`` (every value non-finite).
    """
    torch_state = tasks.task_for(parse_run_config(raw)).build_model().state_dict()
    rng = np.random.default_rng(seed)
    out = {}
    for name, tensor in torch_state.items():
        base = tensor.detach().numpy().astype(np.float32)
        value = {
            "init": base,
            "zeros": np.zeros_like(base),
            "normal": rng.normal(0.0, abs(scale), base.shape),
            "huge": np.sign(rng.normal(size=base.shape)) * 1e30,
            "tiny-bias": np.full_like(base, scale if name.endswith("bias") else 0.0),
            "big-bias": np.full_like(base, 1e6 * np.sign(scale) if name.endswith("bias")
                                     else 0.0),
            "nan": np.full_like(base, np.nan),
            "inf": np.full_like(base, np.inf),
        }[kind]
        out[name] = np.asarray(value, dtype=np.float32)
    return out


def public_scaler(*, mean: float = 0.0, std: float = 1.0) -> dict[str, list[Any]]:
    """A standardiser in a message's config (what ``preprocessing.scaling=federated``
    needs): the same ``mean`` and ``std`` for every numeric heart-disease column."""
    columns = [heart.FEATURE_NAMES.index(c) for c in heart.NUMERIC_COLUMNS]
    return {"scaler-columns": columns, "scaler-mean": [float(mean)] * len(columns),
            "scaler-std": [float(std)] * len(columns)}


@dataclass(frozen=True)
class Reply:
    """What came back for one message: the metrics (``ok``) or the error (a refusal).

    ``arrays_digest`` is a sha256 of the returned arrays (train replies), so that a test
    can tell a new release from the same update sent again.
    """

    kind: str
    run_id: int
    run_config: dict[str, Any]
    config: dict[str, Any]
    metrics: dict[str, Any] | None = None
    arrays_digest: str | None = None
    error_code: int | None = None
    error: str | None = None
    site: str | None = field(default=None)

    @property
    def ok(self) -> bool:
        """Whether the site answered (no error)."""
        return self.error_code is None


def _digest(record: ArrayRecord) -> str:
    h = hashlib.sha256()
    for name in sorted(record):
        h.update(name.encode())
        h.update(np.ascontiguousarray(record[name].numpy()).tobytes())
    return h.hexdigest()


class SiteUnderAttack:
    """One deployed site (its node config), answering through the real ClientApp.

    Thread-safe: concurrent :meth:`send` calls run the ClientApp concurrently, as a
    SuperNode runs several runs' ClientApps at once; calls for the same ``run_id`` share
    that run's ``Context`` (and so its node memory).
    """

    def __init__(self, node_config: dict[str, Any]) -> None:
        from client.app import app  # the real ClientApp, with its egress guard

        set_task_identity()  # building a Message outside a Flower runtime needs it
        self.app = app
        self.node_config = dict(node_config)
        self._contexts: dict[int, Context] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    def context(self, run_id: int, run_config: dict[str, Any]) -> Context:
        """The run's ``Context`` (created on its first message, with that run config)."""
        with self._lock:
            if run_id not in self._contexts:
                self._contexts[run_id] = Context(
                    run_id=run_id, node_id=1, node_config=dict(self.node_config),
                    state=RecordDict(), run_config=dict(run_config))
            return self._contexts[run_id]

    def send(self, kind: str, *, run_id: int, run_config: dict[str, Any],
             weights: dict[str, np.ndarray] | None = None,
             config: dict[str, Any] | None = None) -> Reply:
        """Deliver one ``kind`` message (arrays ``weights``, ConfigRecord ``config``) in
        run ``run_id`` and return the site's reply or refusal."""
        context = self.context(run_id, run_config)
        content = RecordDict({"config": ConfigRecord(dict(config or {}))})
        if weights is not None:
            content["arrays"] = ArrayRecord({k: Array(v) for k, v in weights.items()})
        msg = Message(content, dst_node_id=1, message_type=kind)
        with self._lock:
            msg.metadata.__dict__["_message_id"] = f"m{next(self._ids)}"  # the SuperLink's
        sent = {"kind": kind, "run_id": run_id, "run_config": dict(context.run_config),
                "config": dict(config or {})}
        try:
            out = self.app(msg, context)
        except Exception as exc:  # noqa: BLE001 - Flower's runtime makes it an error reply
            return Reply(**sent, error_code=2, error=f"{type(exc).__name__}")
        if out.has_error():
            return Reply(**sent, error_code=int(out.error.code), error=str(out.error.reason))
        content = out.content
        metrics = {k: list(v) if isinstance(v, list) else v
                   for k, v in content.metric_records.get("metrics", {}).items()}
        arrays = content.array_records.get("arrays")
        site = content.config_records["site"]["name"] if "site" in content else None
        return Reply(**sent, metrics=metrics, site=str(site) if site is not None else None,
                     arrays_digest=_digest(arrays) if arrays is not None else None)
