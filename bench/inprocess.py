"""Run the real ServerApp over the real ClientApp in one process, without Ray.

``InProcessGrid`` implements the two Grid methods the apps use (``get_node_ids`` and
``send_and_receive``) by calling the ``ClientApp`` directly, keeping one ``Context`` per
node across messages as SuperNodes do. It drives Flower's real strategy and the real apps
in about a second per few rounds, which makes it the harness for the app tests and the
utility benchmark. `flwr run` remains the product path (tested end to end in tests/e2e).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.common.config import flatten_dict, get_project_config

ROOT = Path(__file__).resolve().parents[1]


def set_task_identity() -> None:
    """Building a ``Message`` outside a Flower runtime needs these ids (private API)."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1


def default_run_config() -> dict[str, Any]:
    """The defaults exactly as Flower reads them from pyproject.toml (flattened)."""
    return dict(flatten_dict(get_project_config(ROOT)["tool"]["flwr"]["app"]["config"]))


class InProcessGrid:
    """A Ray-free stand-in for Flower's Grid (see the module docstring)."""

    def __init__(self, client_app, run_cfg: dict[str, Any], num_nodes: int = 4,
                 node_configs: list[dict[str, Any]] | None = None, run_id: int = 1,
                 measure_bytes: bool = False) -> None:
        self.client_app = client_app
        self.sent: list[Message] = []
        self.replies: list[Message] = []
        #: with ``measure_bytes``: (message type, serialized size of the reply as the site
        #: sent it, in bytes: Flower's protobuf Message, what travels inside gRPC)
        self.reply_bytes: list[tuple[str, int]] | None = [] if measure_bytes else None
        configs = node_configs or [
            {"partition-id": i, "num-partitions": num_nodes} for i in range(num_nodes)
        ]
        self.contexts = {
            1000 + i: Context(run_id=run_id, node_id=1000 + i, node_config=cfg, state=RecordDict(),
                              run_config=dict(run_cfg))
            for i, cfg in enumerate(configs)
        }
        self._ids = itertools.count(1)

    def get_node_ids(self) -> list[int]:
        """The simulated nodes' ids."""
        return list(self.contexts)

    def send_and_receive(self, messages, *, timeout: float | None = None) -> list[Message]:
        """Deliver each message to the ClientApp in turn; an exception becomes an
        error reply, as Flower's runtime does."""
        from flwr.common.serde import message_from_proto, message_to_proto

        out = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = f"m{next(self._ids)}"  # the SuperLink's job
            self.sent.append(msg)
            # each site gets its own copy, as off the wire (a server may send one content
            # object to many sites, and a mod may change what it receives)
            delivered = message_from_proto(message_to_proto(msg))
            try:
                reply = self.client_app(delivered, self.contexts[msg.metadata.dst_node_id])
            except Exception as exc:  # the runtime turns ClientApp exceptions into errors
                reply = Message(Error(code=2, reason=f"{type(exc).__name__}: {exc}"),
                                reply_to=msg)
            if self.reply_bytes is not None:
                self.reply_bytes.append((msg.metadata.message_type,
                                         message_to_proto(reply).ByteSize()))
            self.replies.append(reply)
            out.append(reply)
        return out


def run(run_cfg: dict[str, Any], *, run_id: int | None = None,
        **grid_kwargs: Any) -> InProcessGrid:
    """One federated run with ``run_cfg`` (a full flattened run config). Each run gets a
    fresh random run id unless one is given, as Flower's SuperLink does: sites key their
    ledger entries and DP state by it."""
    import secrets

    from client.app import app as client_app
    from server.app import main

    run_id = secrets.randbits(62) if run_id is None else run_id
    set_task_identity()
    grid = InProcessGrid(client_app, run_cfg, run_id=run_id, **grid_kwargs)
    main(grid, Context(run_id=run_id, node_id=0, node_config={}, state=RecordDict(),
                       run_config=dict(run_cfg)))
    return grid
