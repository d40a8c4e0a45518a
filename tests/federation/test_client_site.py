"""The client adapter opens a message's site once: the egress guard reuses its config."""

from __future__ import annotations

import numpy as np
from conftest import InProcessGrid, run_config
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

import medfl.federation.client as fed_client
import medfl.site.site as site_module
from medfl import tasks
from medfl.config import parse_run_config


def _evaluate_message(raw, node_id):
    model = tasks.task_for(parse_run_config(raw)).build_model()
    arrays = {k: Array(np.asarray(v.detach().numpy())) for k, v in model.state_dict().items()}
    return Message(RecordDict({"arrays": ArrayRecord(arrays),
                               # a monitoring round (evaluation.monitor-every = 5)
                               "config": ConfigRecord({"server-round": 5})}),
                   dst_node_id=node_id, message_type="evaluate")


def test_one_message_parses_the_run_config_once(monkeypatch):
    from client.app import app

    calls = []
    real = parse_run_config

    def counting(where):
        def parse(raw):
            calls.append(where)
            return real(raw)
        return parse

    monkeypatch.setattr(site_module, "parse_run_config", counting("site"))
    monkeypatch.setattr(fed_client, "parse_run_config", counting("guard"))
    raw = run_config(preprocessing__scaling="site", evaluation__personal_epochs=0)
    grid = InProcessGrid(app, raw, num_nodes=4)
    reply = grid.send_and_receive([_evaluate_message(raw, grid.get_node_ids()[0])])[0]
    assert not reply.has_error(), reply.error
    assert calls == ["site"]
    assert reply.content["site"]["name"] == "cleveland"
