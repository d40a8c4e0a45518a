"""One-off queries: ``ask`` sends one message per node and keeps the successful replies."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, RecordDict

from medfl.federation import ask, reply


class FakeGrid:
    """A stand-in for Flower's Grid: each node answers with its site name, except the
    nodes in ``failing``, which answer with an error (as the runtime does for a site that
    raised)."""

    def __init__(self, sites: dict[int, str], failing: set[int]) -> None:
        self.sites, self.failing = sites, failing
        self.sent: list[Message] = []

    def get_node_ids(self) -> list[int]:
        return list(self.sites)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None
                         ) -> list[Message]:
        replies = []
        for i, msg in enumerate(messages):
            msg.metadata.__dict__["_message_id"] = f"m{i}"  # the SuperLink's job
            self.sent.append(msg)
            node = msg.metadata.dst_node_id
            if node in self.failing:
                replies.append(Message(Error(code=2, reason="DataError: no data"),
                                       reply_to=msg))
            else:
                replies.append(reply(msg, site=self.sites[node], metrics={"count": node}))
        return replies


def test_ask_returns_the_replies_by_site_and_logs_and_leaves_out_a_failed_node(caplog):
    # Prepare
    grid = FakeGrid({11: "cleveland", 12: "va", 13: "hungarian"}, failing={12})
    content = RecordDict({"arrays": ArrayRecord({"w": Array(np.zeros(2, np.float32))}),
                          "config": ConfigRecord({"run-key": 7})})
    caplog.set_level(logging.WARNING, logger="medfl.federation.queries")

    # Execute
    replies = ask(grid, [11, 12, 13], "query.report", content, timeout=5.0)

    # Assert
    assert sorted(replies) == ["cleveland", "hungarian"]
    assert replies["hungarian"].metadata.src_node_id == 13
    assert replies["cleveland"].content["metrics"]["count"] == 11
    assert [r.getMessage() for r in caplog.records] == [
        "query.report: node 12 failed: DataError: no data"]
    assert [m.metadata.message_type for m in grid.sent] == ["query.report"] * 3
    assert [m.metadata.dst_node_id for m in grid.sent] == [11, 12, 13]


def test_each_node_gets_its_own_config_record():
    grid = FakeGrid({1: "a", 2: "b"}, failing=set())
    content = RecordDict({"config": ConfigRecord({"run-key": 7})})

    ask(grid, [1, 2], "query.moments", content, timeout=5.0)

    first, second = (m.content["config"] for m in grid.sent)
    assert first is not second and first is not content["config"]
    assert dict(first) == dict(second) == {"run-key": 7}
