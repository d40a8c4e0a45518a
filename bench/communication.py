"""Bytes a site sends per round, against the model's parameter bytes, with and without
``transport.compression``; and what compression costs in accuracy.

Sizes: one train reply exactly as a site builds it (``medfl.federation.train_payload`` and
``reply``: arrays, the DP metrics, the site's name), serialized with Flower's own protobuf
``message_to_proto`` (what travels inside gRPC). A round's evaluate reply is listed apart:
it holds no arrays. Accuracy: the default heart-disease scenario (DP-SGD, ε ≤ 3, seeded
noise) over 5 seeds per mode, and the imaging-classification scenario (1 seed per mode).

    .venv/bin/python -m bench.communication              # the published numbers
    .venv/bin/python -m bench.communication --quick      # sizes and 1 heart seed only
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import tempfile
from pathlib import Path

import torch
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.serde import message_to_proto

from bench import inprocess
from bench.imaging_utility import scenario_config
from bench.report import mean_sd, write_section
from medfl import federation as fed
from medfl import tasks
from medfl.config import COMPRESSIONS, parse_run_config
from medfl.models import state_arrays
from medfl.site.metrics import TrainMetrics

MODELS = {
    "logistic regression (heart disease)": ("default", {}),
    "MLP, 64 hidden (heart disease)": ("default", {"model.name": "mlp", "model.hidden": 64}),
    "MONAI residual CNN 64x64 (imaging-classification)": ("imaging-classification", {}),
    "MONAI DenseNet121 64x64": ("imaging-classification", {"model.name": "densenet121"}),
    "MONAI UNet 64x64 (segmentation)": ("segmentation", {}),
}
#: What a DP site sends beside its arrays in every train reply (medfl.site.fit).
TRAIN_METRICS = TrainMetrics(num_examples=199, epsilon=1.234567, delta=1e-3,
                             noise_multiplier=1.1, sample_rate=0.16, max_grad_norm=1.0,
                             steps=60, epsilon_lifetime=1.234567)


def _config(scenario: str, overrides: dict, **extra) -> dict:
    raw = inprocess.default_run_config() if scenario == "default" else scenario_config(scenario)
    return {**raw, **overrides, **extra}


def reply_bytes(raw: dict) -> tuple[int, dict[str, int]]:
    """(parameter bytes, serialized train-reply bytes per compression mode)."""
    inprocess.set_task_identity()
    torch.manual_seed(0)
    received = state_arrays(tasks.task_for(parse_run_config(raw)).build_model())
    trained = {k: v + 0.01 * torch.randn_like(v) for k, v in received.items()}
    request = Message(RecordDict({"arrays": fed.to_array_record(received),
                                  "config": ConfigRecord({"server-round": 1})}),
                      dst_node_id=1, message_type="train")
    params = sum(v.numel() * v.element_size() for v in received.values())
    sizes = {}
    for mode in COMPRESSIONS:
        cfg = parse_run_config({**raw, "transport.compression": mode})
        weights, metrics = fed.train_payload(cfg, request, TRAIN_METRICS, trained)
        reply = fed.reply(request, site="cleveland", metrics=metrics.to_metrics(),
                          weights=weights)
        sizes[mode] = message_to_proto(reply).ByteSize()
    return params, sizes


def accuracy(raw: dict, seed: int, tmp: str) -> tuple[float, float]:
    """(mean per-site accuracy, mean train-reply bytes) of one in-process run."""
    cfg = {**raw, "seed": seed, "output-dir": tmp, "privacy.secure-noise": False,
           "privacy.audit": False, "state-dir": str(Path(tmp) / f"state-{raw['run-name']}"),
           "evaluation.personal-epochs": 0}
    grid = inprocess.run(cfg, num_nodes=len(tasks.task_for(parse_run_config(cfg)).sites()),
                         measure_bytes=True)
    s = json.loads((Path(tmp) / cfg["run-name"] / "summary.json").read_text())
    sent = [b for kind, b in grid.reply_bytes if kind == "train"]
    return s["mean_site_accuracy"], statistics.mean(sent)


def main() -> None:
    """Measure reply bytes and compression's accuracy cost; write the section."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="sizes and one heart seed")
    parser.add_argument("--out", type=Path, default=inprocess.ROOT / "BENCHMARKS.md")
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    size_rows = []
    for label, (scenario, overrides) in MODELS.items():
        params, sizes = reply_bytes(_config(scenario, overrides))
        size_rows.append((label, f"{params:,}", *(
            f"{sizes[m]:,} ({sizes[m] / params:.2f}x)" for m in COMPRESSIONS)))
        print(size_rows[-1], flush=True)
    heart_seeds = range(1 if args.quick else 5)
    acc_rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = {m: [accuracy(_config("default", {}, **{"transport.compression": m,
                                                        "run-name": f"h-{m}-{s}"}), s, tmp)
                    for s in heart_seeds] for m in COMPRESSIONS}
        base = [a for a, _ in runs["none"]]
        for m in COMPRESSIONS:
            accs = [a for a, _ in runs[m]]
            acc_rows.append(("heart disease (default, ε ≤ 3)", m, mean_sd(accs),
                             mean_sd([a - b for a, b in zip(accs, base, strict=True)]),
                             f"{statistics.mean(b for _, b in runs[m]):,.0f}"))
            print(acc_rows[-1], flush=True)
        if not args.quick:
            img = {m: accuracy(_config("imaging-classification", {}, **{
                "transport.compression": m, "run-name": f"i-{m}"}), 0, tmp)
                for m in COMPRESSIONS}
            for m in COMPRESSIONS:
                acc_rows.append(("imaging-classification (ε ≤ 8), seed 0", m,
                                 f"{img[m][0]:.3f}", f"{img[m][0] - img['none'][0]:+.3f}",
                                 f"{img[m][1]:,.0f}"))
                print(acc_rows[-1], flush=True)
    command = ".venv/bin/python -m bench.communication" + (" --quick" if args.quick else "")
    write_section(
        args.out, "communication-bytes", heading="Communication: bytes per site per round",
        intro=(f"Command: `{command}` ({platform.machine()}). One train reply as a site "
               "sends it (arrays, DP metrics, site name), serialized with Flower's protobuf "
               "`message_to_proto`, against the model's float32 parameter bytes. An "
               "evaluate reply carries no arrays (about 0.5-1 KB of statistics)."),
        columns=["model", "parameter bytes", "none", "float16", "int8"], rows=size_rows)
    write_section(
        args.out, "communication-accuracy", heading="Communication: accuracy under compression",
        intro=(f"Command: `{command}`. Mean per-site accuracy of the global model (seeds "
               f"0..{len(heart_seeds) - 1} for heart disease; DP noise seeded from the run "
               "seed, so a difference is the compression's alone); bytes are the mean "
               "serialized train reply in those runs."),
        columns=["scenario", "compression", "mean per-site accuracy", "difference to none",
                 "bytes / train reply"], rows=acc_rows)


if __name__ == "__main__":
    main()
