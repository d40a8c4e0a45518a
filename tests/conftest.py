"""Shared fixtures: the run config as Flower builds it, and a Ray-free in-process grid."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Context, Error, Message, RecordDict
from flwr.common.config import flatten_dict, get_project_config, parse_config_args

ROOT = Path(__file__).resolve().parents[1]


def default_run_config() -> dict[str, Any]:
    """The defaults exactly as Flower reads them from pyproject.toml (flattened)."""
    return dict(flatten_dict(get_project_config(ROOT)["tool"]["flwr"]["app"]["config"]))


def run_config(**overrides: Any) -> dict[str, Any]:
    """Defaults plus overrides given as ``privacy__target_epsilon=1.0`` style kwargs."""
    cfg = default_run_config()
    for key, value in overrides.items():
        flat = key.replace("__", ".").replace("_", "-")
        assert flat in cfg, f"test uses unknown config key {flat}"
        cfg[flat] = value
    return cfg


def scenario_run_config(path: Path) -> dict[str, Any]:
    """Defaults fused with a scenario TOML, parsed by Flower's own parser."""
    cfg = default_run_config()
    cfg.update(parse_config_args([str(path)]))
    return cfg


class InProcessGrid:
    """A Ray-free stand-in for Flower's Grid: delivers each message to a real ``ClientApp``
    in this process and returns its reply (or an error reply, as the runtime does).

    Nodes keep their ``Context`` (and so ``context.state``) across messages, as real
    SuperNodes do. This is a test harness for the real apps, not a replacement runtime.
    """

    def __init__(self, client_app, run_cfg: dict[str, Any], num_nodes: int = 4,
                 node_configs: list[dict[str, Any]] | None = None) -> None:
        self.client_app = client_app
        self.sent: list[Message] = []
        self.replies: list[Message] = []
        configs = node_configs or [
            {"partition-id": i, "num-partitions": num_nodes} for i in range(num_nodes)
        ]
        self.contexts = {
            1000 + i: Context(run_id=1, node_id=1000 + i, node_config=cfg, state=RecordDict(),
                              run_config=dict(run_cfg))
            for i, cfg in enumerate(configs)
        }
        self._ids = itertools.count(1)

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def send_and_receive(self, messages, *, timeout: float | None = None) -> list[Message]:
        out = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = f"m{next(self._ids)}"  # the SuperLink sets it
            self.sent.append(msg)
            try:
                reply = self.client_app(msg, self.contexts[msg.metadata.dst_node_id])
            except Exception as exc:  # the runtime turns ClientApp exceptions into errors
                reply = Message(Error(code=2, reason=f"{type(exc).__name__}: {exc}"),
                                reply_to=msg)
            self.replies.append(reply)
            out.append(reply)
        return out


@pytest.fixture(autouse=True, scope="session")
def _task_identity():
    """Building a ``Message`` outside a Flower runtime needs these ids (private API)."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield


@pytest.fixture
def server_context():
    def make(run_cfg: dict[str, Any]) -> Context:
        return Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                       run_config=dict(run_cfg))

    return make


@pytest.fixture
def run_inprocess(server_context, tmp_path):
    """Run the real ServerApp over the real ClientApp in-process; return (run_path, grid)."""
    from client.app import app as client_app
    from server.app import main as server_main

    def run(**overrides: Any):
        overrides.setdefault("output_dir", str(tmp_path / "outputs"))
        overrides.setdefault("run_name", "t")
        cfg = run_config(**overrides)
        grid = InProcessGrid(client_app, cfg)
        server_main(grid, server_context(cfg))
        return Path(cfg["output-dir"]) / cfg["run-name"], grid

    return run
