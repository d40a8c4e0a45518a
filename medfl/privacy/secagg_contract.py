"""The egress contract of the SecAgg+ protocol's replies (Flower-free).

Under secure aggregation a site's train round is four protocol replies (Flower's SecAgg+,
``flwr.client.mod.secaggplus_mod``). Each may hold exactly the protocol's record and
keys for its stage, of the protocol's types, and nothing else; the "collect masked
vectors" reply also carries the site's clear training metrics (checked by the train
contract) and the empty legacy ``FitRes`` records Flower's workflow reads back:

* setup: ``pk1``, ``pk2``, the site's two public keys (bytes);
* share_keys: ``dsts`` (node ids) and ``ctxts`` (encrypted key shares), one each per
  neighbour the server named;
* collect_masked_vectors: ``masked_params``, one masked integer vector per model array
  plus the weight (a report request: the weight and one vector of the report's declared
  length); beside it ``metrics``, ``site`` and the ``fitres.*`` records, empty or
  fixed;
* unmask: ``nids`` and ``shares``, one share per node the server asked about.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: The protocol's record (Flower's ``RECORD_KEY_CONFIGS``).
PROTOCOL_RECORD = "secaggplus_configs"
#: Per stage: key -> ("bytes" | "ints" | "bytes-list").
STAGE_KEYS: dict[str, dict[str, str]] = {
    "setup": {"pk1": "bytes", "pk2": "bytes"},
    "share_keys": {"dsts": "ints", "ctxts": "bytes-list"},
    "collect_masked_vectors": {"masked_params": "bytes-list"},
    "unmask": {"nids": "ints", "shares": "bytes-list"},
}
#: Records besides the protocol's, in the "collect masked vectors" reply.
COLLECT_RECORDS = {"metrics": "metrics", "site": "config", "fitres.parameters": "arrays",
                   "fitres.num_examples": "metrics", "fitres.metrics": "config",
                   "fitres.status": "config"}
#: A public key's largest encoding (Flower's P-384 keys take 215 bytes).
MAX_KEY_BYTES = 512


@dataclass(frozen=True)
class ProtocolReply:
    """One protocol reply as the egress guard sees it.

    ``records``: record name -> type; ``configs``: the protocol record's contents;
    ``legacy``: the ``fitres.*`` records' contents (and ``fitres.parameters``' array
    count under that name); ``asked``: the node ids the server's message named (the
    neighbours' keys in share_keys, the active and dropped nodes in unmask);
    ``n_arrays``: the model's arrays (collect stage); ``weight``: the fixed weight;
    ``vector_sizes``: where given, each masked vector's declared number of values (after
    the weight, in order).
    """

    stage: str
    records: dict[str, str]
    configs: dict[str, Any]
    legacy: dict[str, Any] = field(default_factory=dict)
    asked: frozenset[int] = frozenset()
    n_arrays: int = 0
    weight: int = 1
    vector_sizes: tuple[int, ...] | None = None


def _typed(key: str, value: Any, kind: str) -> list[str]:
    if kind == "bytes":
        ok = isinstance(value, bytes) and 0 < len(value) <= MAX_KEY_BYTES
    elif kind == "ints":
        ok = isinstance(value, list) and all(type(v) is int for v in value)
    else:
        ok = isinstance(value, list) and all(isinstance(v, bytes) for v in value)
    return [] if ok else [f"protocol key {key!r} must be {kind}"]


def _records(reply: ProtocolReply) -> list[str]:
    allowed = {PROTOCOL_RECORD: "config"}
    if reply.stage == "collect_masked_vectors":
        allowed.update(COLLECT_RECORDS)
    return [f"record {name!r} ({rtype}) is not allowed in a {reply.stage} reply"
            for name, rtype in reply.records.items() if allowed.get(name) != rtype]


def _lengths(reply: ProtocolReply) -> list[str]:
    c, out = reply.configs, []
    if reply.stage in ("share_keys", "unmask"):
        ids_key, values_key = ("dsts", "ctxts") if reply.stage == "share_keys" else (
            "nids", "shares")
        ids, values = c.get(ids_key, []), c.get(values_key, [])
        if len(ids) != len(values):
            out.append(f"protocol keys {ids_key!r} and {values_key!r} differ in length")
        if not set(ids) <= reply.asked:
            out.append(f"protocol key {ids_key!r} names a node the server did not ask about")
    if reply.stage == "collect_masked_vectors":
        if len(c.get("masked_params", [])) != reply.n_arrays + 1:
            out.append(f"protocol key 'masked_params' must hold {reply.n_arrays + 1} vectors "
                       "(the model's arrays and the weight)")
        out += _sizes(reply)
        expected = {"fitres.parameters": 0, "fitres.num_examples": {"num_examples":
                                                                     reply.weight},
                    "fitres.metrics": {}, "fitres.status": {"code": 0, "message": ""}}
        for name, value in expected.items():
            if reply.legacy.get(name) != value:
                out.append(f"record {name!r} must be {value!r}")
    return out


def _size(encoded: Any) -> int | None:
    """The number of values of one masked vector (NumPy's ``.npy`` form, as Flower
    encodes it), or None when it is not one."""
    if not isinstance(encoded, bytes):
        return None
    try:
        return int(np.load(io.BytesIO(encoded), allow_pickle=False).size)
    except (ValueError, OSError, EOFError):
        return None


def _sizes(reply: ProtocolReply) -> list[str]:
    """Each masked vector holds its declared number of values (where declared)."""
    if reply.vector_sizes is None:
        return []
    got = [_size(v) for v in reply.configs.get("masked_params", [])[1:]]
    if got != list(reply.vector_sizes):
        return [f"protocol key 'masked_params' must hold vectors of "
                f"{list(reply.vector_sizes)} values after the weight"]
    return []


def check_protocol_reply(reply: ProtocolReply) -> list[str]:
    """Violations of the SecAgg+ egress contract by one reply (empty: it may leave)."""
    keys = STAGE_KEYS.get(reply.stage)
    if keys is None:
        return [f"SecAgg+ stage {reply.stage!r} has no egress contract"]
    out = _records(reply)
    for key, value in reply.configs.items():
        if key not in keys:
            out.append(f"protocol key {key!r} is not allowed in a {reply.stage} reply")
        else:
            out += _typed(key, value, keys[key])
    missing = sorted(set(keys) - set(reply.configs))
    if missing:
        out.append(f"protocol keys {missing} are missing from the {reply.stage} reply")
    return out + _lengths(reply)
