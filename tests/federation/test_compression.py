"""Compressed updates (transport.compression): encoding at the site, decoding at the
server, by hand and through the real apps in-process."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, MetricRecord, RecordDict

from bench.inprocess import set_task_identity
from medfl.federation.compression import SCALES_KEY, decode, encode
from medfl.privacy.egress import check_reply
from medfl.serving.bundle import load_bundle
from medfl.wire import ReplyBounds


def _content(arrays, metrics):
    set_task_identity()
    return RecordDict({"arrays": ArrayRecord(arrays), "metrics": MetricRecord(metrics)})


def test_int8_quantises_the_update_with_one_scale_per_array_as_computed_by_hand():
    received = {"w": torch.tensor([1.0, 2.0, 3.0]), "b": torch.tensor([0.5])}
    trained = {"w": torch.tensor([1.0, 3.27, 2.365]), "b": torch.tensor([0.5])}
    arrays, extra = encode("int8", received, trained)
    # update w: [0, 1.27, -0.635]; scale 1.27 / 127 = 0.01; levels [0, 127, -64 (rint(-63.5))]
    assert arrays["w"].dtype == torch.int8
    assert arrays["w"].tolist() == [0, 127, -64]
    assert extra[SCALES_KEY] == pytest.approx([0.01, 1.0])  # a zero update keeps scale 1
    content = _content(arrays, {"num-examples": 3, **extra})
    decode("int8", content, {k: v.numpy() for k, v in received.items()})
    back = content["arrays"]["w"].numpy()
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, [1.0, 3.27, 2.36], atol=1e-6)
    assert np.max(np.abs(back - trained["w"].numpy())) <= 0.01 / 2 + 1e-6
    assert SCALES_KEY not in content["metrics"]


def test_float16_halves_the_weights_and_decodes_to_their_float16_values():
    w = {"w": torch.tensor([0.1, -2.5, 1e-4])}
    arrays, extra = encode("float16", w, w)
    assert arrays["w"].dtype == torch.float16 and extra == {}
    content = _content(arrays, {"num-examples": 3})
    decode("float16", content, {"w": w["w"].numpy()})
    np.testing.assert_array_equal(content["arrays"]["w"].numpy(),
                                  w["w"].numpy().astype(np.float16).astype(np.float32))


def test_a_non_finite_update_stays_non_finite_after_int8():
    received = {"w": torch.zeros(3)}
    arrays, extra = encode("int8", received, {"w": torch.tensor([0.0, float("nan"), 1.0])})
    content = _content(arrays, {"num-examples": 3, **extra})
    decode("int8", content, {"w": np.zeros(3, dtype=np.float32)})
    assert not np.all(np.isfinite(content["arrays"]["w"].numpy()))


def test_the_egress_contract_wants_one_int8_scale_per_array():
    shapes = {"w": (3,), "b": (1,)}

    def check(scales):
        return check_reply("train", records={"metrics": "metrics", "site": "config",
                                             "arrays": "arrays"},
                           metrics={"num-examples": 30, SCALES_KEY: scales},
                           site_record={"name": "va"}, arrays=shapes, expected_arrays=shapes,
                           bounds=ReplyBounds(k=10, n_numeric=5))

    assert check([0.01, 1.0]) == []
    assert any("must have 2 entries" in v for v in check([0.01, 1.0, 3.0]))


def test_int8_updates_travel_smaller_and_the_server_aggregates_decoded_weights(
        run_inprocess):
    common = dict(num_server_rounds=2, privacy__enabled=False, privacy__audit=False,
                  model__name="mlp", model__hidden=64, evaluation__personal_epochs=0)
    plain, g0 = run_inprocess(run_name="none", measure_bytes=True, **common)
    packed, g1 = run_inprocess(run_name="int8", transport__compression="int8",
                               measure_bytes=True, **common)
    sent = {name: [b for kind, b in g.reply_bytes if kind == "train"]
            for name, g in (("none", g0), ("int8", g1))}
    # 961 parameters: 3,844 bytes as float32, 961 as int8 (plus names, headers, metrics)
    assert len(sent["int8"]) == 8 and max(sent["int8"]) < 0.5 * min(sent["none"])
    # what the server kept after decoding is float32 again
    reply = next(r for r in g1.replies if r.metadata.message_type == "train")
    assert all(a.numpy().dtype == np.float32 for a in reply.content["arrays"].values())
    rounds = [json.loads(x) for x in (packed / "rounds.jsonl").read_text().splitlines()]
    assert all(SCALES_KEY not in m for r in rounds for m in r["train"].values())
    assert all(r["train_problems"] == [] for r in rounds)
    a, b = load_bundle(plain).weights, load_bundle(packed).weights
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert 0 < diff < 0.05  # quantisation moved the model a little, not a lot
