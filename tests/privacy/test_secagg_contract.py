"""The SecAgg+ egress contract: what each protocol reply may carry, and the guard that
blocks a reply breaking it (medfl.privacy.secagg_contract, medfl.federation.client)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from conftest import run_config
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.supercore.primitives.asymmetric import generate_key_pairs, public_key_to_bytes

from bench.inprocess import set_task_identity
from medfl import federation as fed
from medfl.federation.client import ERROR_EGRESS
from medfl.privacy.secagg_contract import (
    MAX_KEY_BYTES,
    PROTOCOL_RECORD,
    ProtocolReply,
    check_protocol_reply,
)


def _public_key() -> bytes:
    return public_key_to_bytes(generate_key_pairs()[1])


PK1, PK2 = _public_key(), _public_key()
PROTOCOL = {PROTOCOL_RECORD: "config"}
#: the records Flower's compat layer writes for a FitRes (checked in
#: test_flowers_fitres_records_are_the_declared_legacy_records)
COLLECT_RECORDS = {**PROTOCOL, "metrics": "metrics", "site": "config",
                   "fitres.parameters": "arrays", "fitres.num_examples": "metrics",
                   "fitres.metrics": "config", "fitres.status": "config"}
#: an empty FitRes of weight 1 (one array record of no arrays)
LEGACY = {"fitres.parameters": 0, "fitres.num_examples": {"num_examples": 1},
          "fitres.metrics": {}, "fitres.status": {"code": 0, "message": ""}}

VALID = {
    "setup": ProtocolReply(stage="setup", records=PROTOCOL,
                           configs={"pk1": PK1, "pk2": PK2}),
    "share_keys": ProtocolReply(stage="share_keys", records=PROTOCOL,
                                configs={"dsts": [12, 13], "ctxts": [b"c12", b"c13"]},
                                asked=frozenset({11, 12, 13})),
    "collect_masked_vectors": ProtocolReply(
        stage="collect_masked_vectors", records=COLLECT_RECORDS,
        configs={"masked_params": [b"w0", b"b0", b"weight"]}, legacy=LEGACY, n_arrays=2,
        weight=1),
    "unmask": ProtocolReply(stage="unmask", records=PROTOCOL,
                            configs={"nids": [11, 12, 14], "shares": [b"s", b"t", b"u"]},
                            asked=frozenset({11, 12, 13, 14})),
}


def _with(stage: str, **changes: Any) -> ProtocolReply:
    return replace(VALID[stage], **changes)


def _configs(stage: str, **changes: Any) -> dict[str, Any]:
    return {**VALID[stage].configs, **changes}


def _only(violations: list[str], *needles: str) -> str:
    """The single violation, which names every needle."""
    assert len(violations) == 1, violations
    for needle in needles:
        assert needle in violations[0], violations
    return violations[0]


# --- the contract, Flower-free -------------------------------------------------------------

@pytest.mark.parametrize("stage", sorted(VALID))
def test_a_valid_reply_of_each_stage_may_leave(stage):
    assert check_protocol_reply(VALID[stage]) == []


def test_real_public_keys_fit_the_key_size_bound():
    assert 0 < len(PK1) <= MAX_KEY_BYTES and PK1 != PK2


@pytest.mark.parametrize("stage, key", [("setup", "params"), ("setup", "sk1"),
                                        ("share_keys", "srcs"), ("unmask", "masked_params"),
                                        ("collect_masked_vectors", "params")])
def test_an_undeclared_protocol_key_is_a_violation(stage, key):
    reply = _with(stage, configs=_configs(stage, **{key: [b"model"]}))
    _only(check_protocol_reply(reply), repr(key), stage)


@pytest.mark.parametrize("stage, record, rtype", [
    ("setup", "debug", "config"), ("setup", "metrics", "metrics"),
    ("share_keys", "arrays", "arrays"), ("unmask", "site", "config"),
    ("collect_masked_vectors", "arrays", "arrays"),
    ("collect_masked_vectors", "debug", "config"),
])
def test_an_undeclared_record_is_a_violation(stage, record, rtype):
    reply = _with(stage, records={**VALID[stage].records, record: rtype})
    _only(check_protocol_reply(reply), repr(record), stage)


def test_a_declared_record_of_another_type_is_a_violation():
    # the protocol record as arrays, the metrics as a config record
    assert check_protocol_reply(_with("setup", records={PROTOCOL_RECORD: "arrays"}))
    records = {**COLLECT_RECORDS, "metrics": "config"}
    _only(check_protocol_reply(_with("collect_masked_vectors", records=records)), "'metrics'")


@pytest.mark.parametrize("stage, key", [("setup", "pk2"), ("share_keys", "ctxts"),
                                        ("collect_masked_vectors", "masked_params"),
                                        ("unmask", "nids")])
def test_a_missing_key_is_a_violation(stage, key):
    configs = {k: v for k, v in VALID[stage].configs.items() if k != key}
    violations = check_protocol_reply(_with(stage, configs=configs))
    assert any(repr(key) in v and "missing" in v for v in violations), violations


@pytest.mark.parametrize("stage, key, value", [
    ("setup", "pk1", PK1.hex()),            # str, not bytes
    ("setup", "pk1", b""),                  # empty
    ("setup", "pk2", b"k" * (MAX_KEY_BYTES + 1)),  # a payload posing as a key
    ("setup", "pk2", [PK2]),
    ("share_keys", "dsts", [True, 13]),     # bools are not node ids
    ("share_keys", "dsts", [12.0, 13]),
    ("share_keys", "ctxts", ["c12", "c13"]),
    ("share_keys", "ctxts", b"c12c13"),
    ("collect_masked_vectors", "masked_params", ["w0", "b0", "weight"]),
    ("unmask", "nids", [11, False, 14]),
    ("unmask", "shares", [b"s", "t", b"u"]),
])
def test_a_wrong_type_is_a_violation(stage, key, value):
    violations = check_protocol_reply(_with(stage, configs=_configs(stage, **{key: value})))
    assert any(f"protocol key {key!r} must be" in v for v in violations), violations


def test_share_keys_may_name_only_the_neighbours_the_server_asked_about():
    reply = _with("share_keys", configs=_configs("share_keys", dsts=[12, 99]))
    _only(check_protocol_reply(reply), "'dsts'", "did not ask")


def test_unmask_may_name_only_the_nodes_the_server_asked_about():
    reply = _with("unmask", configs=_configs("unmask", nids=[11, 12, 99]))
    _only(check_protocol_reply(reply), "'nids'", "did not ask")


@pytest.mark.parametrize("stage, changes", [
    ("share_keys", {"ctxts": [b"c12"]}),
    ("share_keys", {"ctxts": [b"c12", b"c13", b"extra"]}),
    ("unmask", {"shares": [b"s", b"t"]}),
    ("unmask", {"nids": [11, 12], "shares": [b"s", b"t", b"u"]}),
])
def test_ids_and_values_of_unequal_lengths_are_a_violation(stage, changes):
    violations = check_protocol_reply(_with(stage, configs=_configs(stage, **changes)))
    assert any("differ in length" in v for v in violations), violations


@pytest.mark.parametrize("count", [0, 2, 4, 30])
def test_collect_needs_one_masked_vector_per_array_plus_the_weight(count):
    # two model arrays: exactly three vectors may leave
    configs = {"masked_params": [b"v"] * count}
    reply = _with("collect_masked_vectors", configs=configs)
    _only(check_protocol_reply(reply), "'masked_params'", "3 vectors")


@pytest.mark.parametrize("name, value", [
    ("fitres.parameters", 2),                              # the clear update
    ("fitres.num_examples", {"num_examples": 199}),        # the site's size, unmasked
    ("fitres.num_examples", {"num_examples": 1, "n": 5}),
    ("fitres.metrics", {"loss": 0.3}),
    ("fitres.status", {"code": 0, "message": "cleveland, 303 rows"}),
])
def test_collect_legacy_records_must_be_empty_or_fixed(name, value):
    reply = _with("collect_masked_vectors", legacy={**LEGACY, name: value})
    _only(check_protocol_reply(reply), repr(name))


def test_collect_legacy_records_must_be_present():
    legacy = {k: v for k, v in LEGACY.items() if k != "fitres.num_examples"}
    reply = _with("collect_masked_vectors", legacy=legacy)
    _only(check_protocol_reply(reply), "'fitres.num_examples'")


def test_the_weight_is_the_runs_fixed_weight():
    reply = _with("collect_masked_vectors", weight=2)
    _only(check_protocol_reply(reply), "'fitres.num_examples'", "2")


@pytest.mark.parametrize("stage", ["params", "", "SETUP", "train"])
def test_an_unknown_stage_is_a_violation(stage):
    reply = ProtocolReply(stage=stage, records=PROTOCOL, configs={})
    _only(check_protocol_reply(reply), repr(stage), "no egress contract")


def test_flowers_fitres_records_are_the_declared_legacy_records():
    """The records Flower's compat layer writes for the site's empty FitRes are those the
    contract expects (so a valid collect reply is not blocked)."""
    import numpy as np
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
    from flwr.compat.common import recorddict_compat as compat

    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([np.zeros(3)]),
                    num_examples=1, metrics={})
    content = compat.fitres_to_recorddict(fitres, keep_input=False)
    for record in content.array_records.values():
        record.clear()  # as secaggplus_mod does once it has masked the update
    records = {**{n: "metrics" for n in content.metric_records},
               **{n: "config" for n in content.config_records},
               **{n: "arrays" for n in content.array_records}}
    assert records == {k: v for k, v in COLLECT_RECORDS.items() if k.startswith("fitres.")}
    legacy: dict[str, Any] = {n: dict(r) for n, r in content.config_records.items()}
    legacy.update({n: dict(r) for n, r in content.metric_records.items()})
    legacy.update({n: len(r) for n, r in content.array_records.items()})
    assert legacy == LEGACY


# --- the egress guard (the real mod) on protocol replies -----------------------------------

NODE = 7


def _context() -> Context:
    return Context(run_id=1, node_id=NODE, node_config={"partition-id": 0,
                                                        "num-partitions": 4},
                   state=RecordDict(),
                   run_config=run_config(**{"secure-aggregation.enabled": True,
                                             "strategy.min-round-nodes": 3}))


def _setup_message() -> Message:
    set_task_identity()
    configs = ConfigRecord({"stage": "setup", "sample_num": 4, "share_num": 4,
                            "threshold": 3, "clipping_range": 4.0,
                            "target_range": 2 ** 22, "mod_range": 2 ** 32,
                            "max_weight": 1.0})
    msg = Message(RecordDict({PROTOCOL_RECORD: configs}), dst_node_id=NODE,
                  message_type="train")
    msg.metadata.__dict__["_message_id"] = "m1"  # the SuperLink's job
    return msg


def _answering(**extra: Any):
    """A ``call_next`` answering a setup with both public keys and ``extra`` records."""

    def call_next(msg: Message, context: Context) -> Message:
        content = RecordDict({PROTOCOL_RECORD: ConfigRecord({"pk1": PK1, "pk2": PK2}),
                              **extra})
        return Message(content, reply_to=msg)

    return call_next


def test_the_guard_passes_a_valid_setup_reply():
    out = fed.egress_guard(_setup_message(), _context(), _answering())
    assert not out.has_error(), out.error
    assert dict(out.content.config_records[PROTOCOL_RECORD]) == {"pk1": PK1, "pk2": PK2}
    assert set(out.content.keys()) == {PROTOCOL_RECORD}


@pytest.mark.parametrize("name, record", [
    ("debug", ConfigRecord({"rows": 303})),
    ("metrics", MetricRecord({"num-examples": 303})),
])
def test_the_guard_blocks_a_setup_reply_with_an_extra_record(name, record):
    out = fed.egress_guard(_setup_message(), _context(), _answering(**{name: record}))
    assert out.has_error()
    assert out.error.code == ERROR_EGRESS
    assert out.error.reason.startswith("EgressBlocked"), out.error.reason
    assert repr(name) in out.error.reason
    assert "303" not in out.error.reason  # the guard names keys, never values


def test_the_guard_blocks_a_setup_reply_with_an_undeclared_key():
    def call_next(msg: Message, context: Context) -> Message:
        configs = ConfigRecord({"pk1": PK1, "pk2": PK2, "params": [b"the update"]})
        return Message(RecordDict({PROTOCOL_RECORD: configs}), reply_to=msg)

    out = fed.egress_guard(_setup_message(), _context(), call_next)
    assert out.has_error() and out.error.reason.startswith("EgressBlocked")
    assert "'params'" in out.error.reason and "the update" not in out.error.reason


def test_the_guard_checks_the_stage_the_server_sent_not_the_one_left():
    """Flower's mod pops the stage from the message it receives: the guard keeps the
    stage it saw, so a reply is still checked against the setup contract."""
    def call_next(msg: Message, context: Context) -> Message:
        msg.content.config_records[PROTOCOL_RECORD].pop("stage")
        content = RecordDict({PROTOCOL_RECORD: ConfigRecord({"dsts": [1], "ctxts": [b"c"]})})
        return Message(content, reply_to=msg)

    out = fed.egress_guard(_setup_message(), _context(), call_next)
    assert out.has_error() and out.error.reason.startswith("EgressBlocked")
    assert "'dsts'" in out.error.reason
