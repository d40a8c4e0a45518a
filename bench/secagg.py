"""SecAgg+ overhead per round: time and bytes of Flower's protocol against a plain round,
at 4, 100 and 1,000 sites.

Every site of a round takes part (the protocol's cost grows with the sites in it, not
with the consortium). Both rounds run the real message path in one process: the server's
:func:`medfl.federation.secure_agg.secure_sum` (Flower's ``SecAggPlusWorkflow``) against
a plain ``send_and_receive``, and at each site the real ``secure_aggregation_mod`` around
Flower's ``secaggplus_mod``, on a Flower ``Context`` kept per node. The site's training is
the one thing left out (it is the same with or without secure aggregation): each site's
handler returns the global model plus a fixed random update of the heart-disease model's
shape, with valid training metrics. Bytes are Flower's serialised ``Message`` (protobuf,
what travels inside gRPC), server to sites and back, summed over the round. Time is wall
time with the sites run one after another on one core, so it is the round's total CPU
work; ``server`` is the part outside the sites (Flower's workflow: routing, and unmasking
with one PRG per site and per dropped neighbour).

Usage: ``python -m bench.secagg [--sites 4 100 1000] [--out BENCHMARKS.md]``.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.serde import message_from_proto, message_to_proto

from bench.inprocess import default_run_config, set_task_identity
from bench.report import write_section
from medfl import tasks
from medfl.config import parse_run_config
from medfl.federation.secure_agg import secure_sum
from medfl.federation.secure_client import secure_aggregation_mod
from medfl.models import state_arrays
from medfl.site.metrics import TrainMetrics

SECTION = "secagg-overhead"


def _client_app() -> ClientApp:
    app = ClientApp()

    @app.train(mods=[secure_aggregation_mod])
    def train(msg: Message, context: Context) -> Message:
        sent = msg.content.array_records["arrays"]
        rng = np.random.default_rng(context.node_id)
        new = {k: Array(v.numpy() + rng.normal(0, 0.01, v.numpy().shape)
                        .astype(v.numpy().dtype)) for k, v in sent.items()}
        metrics = TrainMetrics(num_examples=100, epsilon=1.0, delta=1e-4,
                               noise_multiplier=1.0, sample_rate=0.1, max_grad_norm=1.0,
                               steps=10)
        return Message(RecordDict({"arrays": ArrayRecord(new),
                                   "metrics": MetricRecord(metrics.to_metrics()),
                                   "site": ConfigRecord({"name": f"site-{context.node_id}"})}),
                       reply_to=msg)

    return app


class CountingGrid:
    """In-process delivery (a copy per site, as off the wire) that counts bytes and the
    time spent at the sites."""

    def __init__(self, app: ClientApp, run_config: dict[str, Any], n: int) -> None:
        self.app, self.ids = app, itertools.count(1)
        self.contexts = {1000 + i: Context(run_id=1, node_id=1000 + i, node_config={},
                                           state=RecordDict(), run_config=dict(run_config))
                         for i in range(n)}
        self.bytes_down = self.bytes_up = 0
        self.site_s = 0.0

    def send_and_receive(self, messages, *, timeout=None) -> list[Message]:
        """Deliver each message in turn."""
        out = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = f"m{next(self.ids)}"
            proto = message_to_proto(msg)
            self.bytes_down += proto.ByteSize()
            start = time.perf_counter()
            reply = self.app(message_from_proto(proto), self.contexts[msg.metadata.dst_node_id])
            self.site_s += time.perf_counter() - start
            self.bytes_up += message_to_proto(reply).ByteSize()
            out.append(reply)
        return out


def _messages(nodes: list[int], arrays: ArrayRecord) -> list[Message]:
    return [Message(RecordDict({"arrays": arrays,
                                "config": ConfigRecord({"server-round": 1, "run-key": 1})}),
                    dst_node_id=node, message_type="train") for node in nodes]


def measure(n: int) -> dict[str, float]:
    """One plain and one secure round with ``n`` sites: seconds and bytes of each."""
    raw = default_run_config()
    cfg = parse_run_config(raw)
    arrays = ArrayRecord({k: Array(v.numpy()) for k, v in
                          state_arrays(tasks.task_for(cfg).build_model()).items()})
    out: dict[str, float] = {"params": float(sum(a.numpy().size for a in arrays.values()))}
    for mode, extra in (("plain", {}), ("secure", {"secure-aggregation.enabled": True})):
        grid = CountingGrid(_client_app(), {**raw, **extra}, n)
        nodes = list(grid.contexts)
        start = time.perf_counter()
        if mode == "plain":
            replies = grid.send_and_receive(_messages(nodes, arrays))
            assert not any(r.has_error() for r in replies)
        else:
            result = secure_sum(grid, _messages(nodes, arrays),
                                parse_run_config({**raw, **extra}).secure_aggregation,
                                run_id=1, timeout=None)
            assert result.count == n, result.errors
        total = time.perf_counter() - start
        out.update({f"{mode}_s": total, f"{mode}_server_s": total - grid.site_s,
                    f"{mode}_bytes": float(grid.bytes_down + grid.bytes_up)})
    return out


def main() -> None:
    """Measure each size and write the BENCHMARKS.md section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, nargs="+", default=[4, 100, 1000])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    set_task_identity()
    rows = []
    for n in args.sites:
        m = measure(n)
        print(n, m, flush=True)
        rows.append((str(n), f"{m['plain_s']:.2f}", f"{m['secure_s']:.2f}",
                     f"{m['secure_server_s']:.2f}",
                     f"{m['plain_bytes'] / n / 1024:.1f}", f"{m['secure_bytes'] / n / 1024:.1f}",
                     f"{m['secure_bytes'] / m['plain_bytes']:.1f}x"))
    if args.out:
        write_section(
            args.out, SECTION, heading="Secure aggregation (SecAgg+): overhead per round",
            intro=(f"`python -m bench.secagg --sites {' '.join(map(str, args.sites))} --out "
                   f"BENCHMARKS.md` on {platform.machine()}, {platform.python_version()}: "
                   "every site in the round, heart-disease model "
                   f"({int(m['params'])} parameters), sites run one after another in one "
                   "process (time = the round's total CPU work, training excluded). Shares: "
                   "every site up to 41 neighbours, threshold 0.67."),
            columns=["sites", "plain round s", "SecAgg+ round s", "of which server s",
                     "plain KiB per site", "SecAgg+ KiB per site", "bytes ratio"],
            rows=rows)


if __name__ == "__main__":
    main()
