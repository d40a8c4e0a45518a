"""Secure aggregation's refusals: the run config's, the server's protocol settings, and the
site's own checks of the protocol messages (through the real ClientApp)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from conftest import run_config
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

from bench.inprocess import InProcessGrid, set_task_identity
from medfl.config import SecureAggregationConfig, parse_run_config
from medfl.errors import ConfigError
from medfl.federation.secure_agg import ERROR_SECAGG, protocol_settings, secure_train_round

# --- protocol_settings: what the server asks Flower's workflow for ---------------------------


def _sa(**changes: Any) -> SecureAggregationConfig:
    values = {"enabled": True, "num_shares": 0, "reconstruction_threshold": 0.67,
              "clipping_range": 4.0, "quantization_range": 2 ** 22, **changes}
    return SecureAggregationConfig(**values)


def test_four_sites_all_share_and_three_of_four_shares_unmask():
    s = protocol_settings(_sa(), 4)
    # Flower reads a float 1.0 as "every sampled site" and a float threshold as a
    # fraction of the shares, rounded: round(0.67 * 4) = round(2.68) = 3
    assert s["num_shares"] == 1.0 and isinstance(s["num_shares"], float)
    assert isinstance(s["reconstruction_threshold"], float)
    assert round(s["reconstruction_threshold"] * 4) == 3
    assert 0 < s["reconstruction_threshold"] <= 1
    assert (s["clipping_range"], s["quantization_range"], s["modulus_range"],
            s["max_weight"]) == (4.0, 2 ** 22, 2 ** 32, 1.0)


def test_a_hundred_sites_share_with_41_neighbours_and_27_unmask():
    s = protocol_settings(_sa(), 100)
    # at most 41 shares; round(0.67 * 41) = round(27.47) = 27, an integer below 41
    assert s["num_shares"] == 41 and type(s["num_shares"]) is int
    assert s["reconstruction_threshold"] == 27 and type(s["reconstruction_threshold"]) is int


def test_the_settings_are_valid_for_flowers_workflow():
    from flwr.server.workflow import SecAggPlusWorkflow

    for sites in (2, 3, 4, 40, 41, 42, 100):
        SecAggPlusWorkflow(**protocol_settings(_sa(), sites))  # raises on invalid ones


def test_the_sum_may_not_overflow_the_modulus():
    # 1000 x 2^22 = 4_194_304_000 < 2^32 = 4_294_967_296; 1024 x 2^22 = 2^32
    assert protocol_settings(_sa(), 1000)["num_shares"] == 41
    with pytest.raises(ValueError, match="secure-aggregation.quantization-range"):
        protocol_settings(_sa(), 1024)
    # a smaller range leaves room: 1024 x 2^21 = 2^31
    assert protocol_settings(_sa(quantization_range=2 ** 21), 1024)["num_shares"] == 41


# --- the run config's refusals ---------------------------------------------------------------

def _parse(**overrides: Any):
    return parse_run_config(run_config(**overrides))


SA = {"secure-aggregation.enabled": True, "strategy.min-round-nodes": 3}
DISTRIBUTED = {**SA, "privacy.mode": "distributed", "train.optimizer": "sgd",
               "train.momentum": 0.0}


@pytest.mark.parametrize("strategy", ["fedmedian", "fedtrimmedavg", "krum", "multikrum"])
def test_a_strategy_that_needs_each_update_is_refused(strategy):
    with pytest.raises(ConfigError, match="strategy.name"):
        _parse(**SA, **{"strategy.name": strategy})
    assert _parse(**{"strategy.name": strategy}).strategy.name == strategy  # without SecAgg


@pytest.mark.parametrize("strategy", ["fedavg", "fedadam", "fedprox", "fedavgm"])
def test_an_averaging_strategy_is_accepted(strategy):
    cfg = _parse(**SA, **{"strategy.name": strategy})
    assert cfg.secure_aggregation.enabled and cfg.strategy.name == strategy


def test_compression_is_refused():
    with pytest.raises(ConfigError, match="transport.compression"):
        _parse(**SA, **{"transport.compression": "int8"})


def test_central_dp_is_refused():
    with pytest.raises(ConfigError, match="central-noise-multiplier"):
        _parse(**SA, **{"privacy.central-noise-multiplier": 1.0})


@pytest.mark.parametrize("nodes", [1, 2])
def test_a_sum_of_fewer_than_three_sites_is_refused(nodes):
    # one site's sum is its update; two sites' hides each behind one 32-bit-seeded mask
    with pytest.raises(ConfigError, match="min-round-nodes >= 3"):
        _parse(**{**SA, "strategy.min-round-nodes": nodes})


def test_distributed_dp_needs_secure_aggregation_and_sgd():
    assert _parse(**DISTRIBUTED).privacy.mode == "distributed"
    with pytest.raises(ConfigError, match="secure-aggregation.enabled"):
        _parse(**{**DISTRIBUTED, "secure-aggregation.enabled": False})
    with pytest.raises(ConfigError, match="privacy.enabled"):
        _parse(**{**DISTRIBUTED, "privacy.enabled": False})
    with pytest.raises(ConfigError, match="train.optimizer"):
        _parse(**{**DISTRIBUTED, "train.optimizer": "adam"})
    with pytest.raises(ConfigError, match="train.momentum"):
        _parse(**{**DISTRIBUTED, "train.momentum": 0.9})


@pytest.mark.parametrize("key, value", [
    ("secure-aggregation.quantization-range", 1000),       # not a power of two
    ("secure-aggregation.quantization-range", 2 ** 7),     # too few levels
    ("secure-aggregation.quantization-range", 2 ** 25),    # too many
    ("secure-aggregation.num-shares", 2),
    ("secure-aggregation.num-shares", 1),
    ("secure-aggregation.reconstruction-threshold", 0.0),
    ("secure-aggregation.reconstruction-threshold", 1.5),
    ("secure-aggregation.clipping-range", 0.0),
    ("secure-aggregation.clipping-range", float("inf")),
])
def test_an_invalid_secure_aggregation_value_is_refused_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=key):
        _parse(**SA, **{key: value})


# --- the site's own checks, through the real ClientApp ---------------------------------------

#: fast runs: no DP calibration, no scaler in the train message
FAST = {"privacy.enabled": False, "preprocessing.scaling": "none", **SA}


class Sites:
    """Nodes answering through the real ClientApp, one Context each, kept across messages
    (as a SuperNode keeps it)."""

    def __init__(self, raw: dict[str, Any], num_nodes: int = 4) -> None:
        from client.app import app

        set_task_identity()
        self.app, self.raw = app, raw
        self.contexts = {
            1000 + i: Context(run_id=1, node_id=1000 + i, node_config={
                "partition-id": i, "num-partitions": num_nodes}, state=RecordDict(),
                run_config=dict(raw)) for i in range(num_nodes)}
        self._ids = itertools.count(1)

    def send(self, content: RecordDict, node: int = 1000) -> Message:
        msg = Message(content, dst_node_id=node, message_type="train")
        msg.metadata.__dict__["_message_id"] = f"m{next(self._ids)}"  # the SuperLink's job
        return self.app(msg, self.contexts[node])


def _global_model(raw: dict[str, Any]) -> ArrayRecord:
    from medfl import tasks

    state = tasks.task_for(parse_run_config(raw)).build_model().state_dict()
    return ArrayRecord({k: Array(v.detach().numpy().astype(np.float32))
                        for k, v in state.items()})


def _train_content(raw: dict[str, Any]) -> RecordDict:
    return RecordDict({"arrays": _global_model(raw),
                       "config": ConfigRecord({"server-round": 1})})


def _setup(**changes: Any) -> RecordDict:
    """A setup as Flower's workflow builds it for 4 sites under the default settings."""
    configs = {Key.STAGE: Stage.SETUP, Key.SAMPLE_NUMBER: 4, Key.SHARE_NUMBER: 4,
               Key.THRESHOLD: 3, Key.CLIPPING_RANGE: 4.0, Key.TARGET_RANGE: 2 ** 22,
               Key.MOD_RANGE: 2 ** 32, Key.MAX_WEIGHT: 1.0, **changes}
    return RecordDict({RECORD_KEY_CONFIGS: ConfigRecord(configs)})


def _refused(reply: Message, *needles: str) -> str:
    assert reply.has_error(), "the site answered"
    reason = str(reply.error.reason)
    assert reply.error.code == ERROR_SECAGG, reason
    assert reason.startswith("SecureAggregationRefused"), reason
    for needle in needles:
        assert needle in reason, reason
    return reason


@pytest.mark.parametrize("extra", [{}, DISTRIBUTED])
def test_a_plain_train_message_is_refused_when_updates_must_be_masked(extra):
    raw = run_config(**{**FAST, **extra, "privacy.enabled": bool(extra)})
    sites = Sites(raw)
    _refused(sites.send(_train_content(raw)), "secure-aggregation.enabled")
    # nothing was trained: the run's state holds no SecAgg+ or DP state either
    assert "secaggplus_state" not in sites.contexts[1000].state.config_records


def test_a_plain_train_message_is_answered_without_secure_aggregation():
    raw = run_config(**{**FAST, "secure-aggregation.enabled": False})
    reply = Sites(raw).send(_train_content(raw))
    assert not reply.has_error(), reply.error
    assert "arrays" in reply.content.array_records


def test_a_protocol_message_is_refused_in_a_run_without_secure_aggregation():
    raw = run_config(**{**FAST, "secure-aggregation.enabled": False})
    reason = _refused(Sites(raw).send(_setup()), "without secure-aggregation.enabled")
    assert "pk1" not in reason


def test_a_valid_setup_is_answered_with_the_two_public_keys_only():
    sites = Sites(run_config(**FAST))
    reply = sites.send(_setup())
    assert not reply.has_error(), reply.error
    assert set(reply.content.keys()) == {RECORD_KEY_CONFIGS}
    keys = dict(reply.content.config_records[RECORD_KEY_CONFIGS])
    assert set(keys) == {Key.PUBLIC_KEY_1, Key.PUBLIC_KEY_2}
    assert all(isinstance(v, bytes) and v for v in keys.values())
    assert keys[Key.PUBLIC_KEY_1] != keys[Key.PUBLIC_KEY_2]


@pytest.mark.parametrize("key, value", [
    (Key.CLIPPING_RANGE, 8.0),        # Flower's default, not the run's 4.0
    (Key.CLIPPING_RANGE, 1e9),
    (Key.TARGET_RANGE, 2 ** 24),
    (Key.TARGET_RANGE, 2),
    (Key.MOD_RANGE, 2 ** 16),
    (Key.MAX_WEIGHT, 1000.0),         # Flower's default: the weight would be quantised away
])
def test_a_setup_off_the_runs_settings_is_refused_naming_the_key(key, value):
    sites = Sites(run_config(**FAST))
    _refused(sites.send(_setup(**{key: value})), key)
    assert "secaggplus_state" not in sites.contexts[1000].state.config_records


@pytest.mark.parametrize("sample_num", [1, 2])
def test_a_setup_of_fewer_sites_than_a_round_needs_is_refused(sample_num):
    raw = run_config(**{**FAST, "strategy.min-round-nodes": 3})
    _refused(Sites(raw).send(_setup(**{Key.SAMPLE_NUMBER: sample_num})),
             "strategy.min-round-nodes=3")


def test_the_setup_of_exactly_min_round_nodes_sites_is_answered():
    raw = run_config(**{**FAST, "strategy.min-round-nodes": 3})
    reply = Sites(raw).send(_setup(**{Key.SAMPLE_NUMBER: 3, Key.SHARE_NUMBER: 3,
                                      Key.THRESHOLD: 2}))
    assert not reply.has_error(), reply.error


# --- a whole round through Flower's workflow, over the real apps ---------------------------


Edit = Callable[[list[int], list[int]], tuple[list[int], list[int]]]


def keep_first(n: int) -> Edit:
    """Each unmask message names only its first ``n`` active nodes (a server that asks a
    site to unmask a smaller sum than the round's)."""
    return lambda active, dead: (sorted(active)[:n], dead)


class EditUnmask:
    """The grid, with each unmask message's (active, dead) node lists edited."""

    def __init__(self, grid: InProcessGrid, edit: Edit | None) -> None:
        self.grid, self.edit = grid, edit
        self.unmask_sent: list[list[int]] = []

    def send_and_receive(self, messages: Any, *, timeout: float | None = None
                         ) -> list[Message]:
        sent = list(messages)
        for msg in sent:
            configs = msg.content.config_records[RECORD_KEY_CONFIGS]
            if configs[Key.STAGE] != Stage.UNMASK:
                continue
            if self.edit is not None:
                active, dead = self.edit(list(configs[Key.ACTIVE_NODE_ID_LIST]),
                                         list(configs[Key.DEAD_NODE_ID_LIST]))
                configs[Key.ACTIVE_NODE_ID_LIST] = active
                configs[Key.DEAD_NODE_ID_LIST] = dead
            self.unmask_sent.append(list(configs[Key.ACTIVE_NODE_ID_LIST]))
        return self.grid.send_and_receive(sent, timeout=timeout)


def _round(raw: dict[str, Any], model: ArrayRecord, edit: Edit | None = None
           ) -> tuple[list[Message], EditUnmask]:
    """One secure train round of the four hospitals on ``model``."""
    from client.app import app

    set_task_identity()
    grid = EditUnmask(InProcessGrid(app, raw, num_nodes=4), edit)
    messages = [Message(RecordDict({"arrays": model,
                                    "config": ConfigRecord({"server-round": 1})}),
                        dst_node_id=node, message_type="train")
                for node in grid.grid.get_node_ids()]
    cfg = parse_run_config(raw)
    replies = secure_train_round(grid, messages, cfg.secure_aggregation, run_id=1,
                                 timeout=None)
    return replies, grid


def _plain_updates(raw: dict[str, Any], model: ArrayRecord) -> list[dict[str, np.ndarray]]:
    """Each hospital's own update of ``model`` in a plain round (the reference)."""
    sites = Sites({**raw, "secure-aggregation.enabled": False})
    out = []
    for node in sites.contexts:
        content = RecordDict({"arrays": model, "config": ConfigRecord({"server-round": 1})})
        reply = sites.send(content, node)
        assert not reply.has_error(), reply.error
        got = reply.content.array_records["arrays"]
        out.append({k: got[k].numpy().astype(np.float64) - model[k].numpy() for k in model})
    return out


def test_a_full_round_unmasks_the_mean_of_the_clipped_updates():
    raw = run_config(**{**FAST, "strategy.min-round-nodes": 4})
    model = _global_model(raw)
    replies, grid = _round(raw, model)
    assert [len(active) for active in grid.unmask_sent] == [4, 4, 4, 4]
    assert all(not r.has_error() for r in replies), [r.error for r in replies
                                                     if r.has_error()]
    # the reference: the mean of the hospitals' updates, each clipped to the run's
    # clipping-range (4.0); SecAgg+ quantises each value to 2^22 levels over [-4, 4]
    clip = 4.0
    updates = _plain_updates(raw, model)
    step = 2 * clip / (2 ** 22 - 1)
    for reply in replies:  # every site's reply carries the same aggregate
        got = reply.content.array_records["arrays"]
        assert list(got.keys()) == list(model.keys())
        for name in model.keys():
            expected = np.mean([np.clip(u[name], -clip, clip) for u in updates], axis=0)
            delta = got[name].numpy().astype(np.float64) - model[name].numpy()
            scale = np.abs(model[name].numpy()).max() + clip
            np.testing.assert_allclose(delta, expected,
                                       atol=2 * step + 4 * np.finfo(np.float32).eps * scale)
    assert all("num-examples" in r.content["metrics"] for r in replies)
    assert len({str(r.content["site"]["name"]) for r in replies}) == 4


def _unmask_replies(grid: EditUnmask) -> list[Message]:
    asked = {m.metadata.message_id for m in grid.grid.sent
             if m.content.config_records[RECORD_KEY_CONFIGS].get(Key.STAGE) == Stage.UNMASK}
    return [r for r in grid.grid.replies if r.metadata.reply_to_message_id in asked]


def test_a_site_refuses_to_unmask_a_sum_of_fewer_than_min_round_nodes():
    raw = run_config(**{**FAST, "strategy.min-round-nodes": 4})
    replies, grid = _round(raw, _global_model(raw), keep_first(3))
    assert [len(active) for active in grid.unmask_sent] == [3, 3, 3, 3]
    # every site refused at the unmask stage: the sum was never unmasked
    for reply in replies:
        _refused(reply, "fewer than 4 sites", "strategy.min-round-nodes")
    unmask_replies = _unmask_replies(grid)
    assert len(unmask_replies) == 4 and all(r.has_error() for r in unmask_replies)


def _pad_with_duplicates(active: list[int], dead: list[int]) -> tuple[list[int], list[int]]:
    """Three of the four sites, the third named twice: four entries, three sites."""
    kept = sorted(active)[:3]
    return kept + kept[-1:], dead


def _both_active_and_dead(active: list[int], dead: list[int]) -> tuple[list[int], list[int]]:
    """One site named as contributing and as dropped: asks for its mask seed's share and
    its key's share at once, the two a server needs to unmask that site alone."""
    return active, dead + [max(active)]


@pytest.mark.parametrize("edit", [_pad_with_duplicates, _both_active_and_dead])
def test_a_site_refuses_an_unmask_naming_a_site_twice(edit):
    raw = run_config(**{**FAST, "strategy.min-round-nodes": 4})
    replies, grid = _round(raw, _global_model(raw), edit)
    unmask_replies = _unmask_replies(grid)
    assert len(unmask_replies) == 4
    for reply in unmask_replies:  # no site sent a single share
        _refused(reply, "more than once")
    assert all(r.has_error() for r in replies)


def _this_site_dropped(active: list[int], dead: list[int]) -> tuple[list[int], list[int]]:
    """The largest node id, which did send its masked vector, named as dropped out."""
    return [n for n in active if n != max(active)], dead + [max(active)]


def test_a_site_named_as_dropped_after_sending_refuses_to_hand_over_its_key():
    raw = run_config(**{**FAST, "strategy.min-round-nodes": 3})
    replies, grid = _round(raw, _global_model(raw), _this_site_dropped)
    named = max(grid.grid.contexts)
    (reply,) = [r for r in _unmask_replies(grid) if r.metadata.src_node_id == named]
    _refused(reply, "dropped out after it sent its masked vector")
    # the server, missing that share, aggregates nothing (and does not crash)
    assert all(r.has_error() for r in replies)


@pytest.mark.parametrize("changes", [{Key.SHARE_NUMBER: 3}, {Key.THRESHOLD: 2},
                                     {Key.THRESHOLD: 1}, {Key.SHARE_NUMBER: 2,
                                                          Key.THRESHOLD: 2}])
def test_a_setup_with_fewer_shares_or_a_lower_threshold_is_refused(changes):
    # 4 sites at the defaults: every site shares with all 4, round(0.67 x 4) = 3 unmask;
    # fewer shares would lower the sum a site insists on, a lower threshold its secrecy
    reply = Sites(run_config(**FAST)).send(_setup(**changes))
    _refused(reply, "share_num / threshold differ", "(4 / 3)")
