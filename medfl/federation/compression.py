"""Compressed updates (``transport.compression``): encoded at the site, decoded by the
server before validation and aggregation, so every strategy sees float32 weights.

- ``float16``: the trained weights in half precision (half the bytes).
- ``int8``: the *update* (trained weights minus the global model the site received),
  quantised per array to 8-bit integers with a symmetric scale ``max |update| / 127``; the
  scales travel as the train metric ``int8-scales`` (one per array, in the arrays' order).
  A quarter of the bytes; the rounding error per value is at most half a scale step.

Both are post-processing of the DP-SGD output, so they cost no privacy. Non-float arrays
(integer buffers) are sent as they are.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from numpy.typing import NDArray

from medfl.config import RunConfig
from medfl.federation.records import array_values, from_array_record
from medfl.site.metrics import INT8_SCALES, TrainMetrics

SCALES_KEY = INT8_SCALES
_LEVELS = 127.0


def _tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(a)) for k, a in arrays.items()}


def encode(mode: str, received: dict[str, torch.Tensor], weights: dict[str, torch.Tensor]
           ) -> tuple[dict[str, torch.Tensor], dict[str, list[float]]]:
    """Site side: the arrays to send and any extra train metrics (the int8 scales)."""
    if mode == "none":
        return weights, {}
    arrays = {k: v.detach().cpu().numpy() for k, v in weights.items()}
    if mode == "float16":
        return _tensors({k: a.astype(np.float16) if a.dtype.kind == "f" else a
                         for k, a in arrays.items()}), {}
    if mode != "int8":
        raise ValueError(f"unknown transport.compression {mode!r}")
    out, scales = {}, []
    for k, a in arrays.items():
        if a.dtype.kind != "f":
            out[k], scale = a, 1.0
        else:
            delta = a.astype(np.float64) - received[k].detach().cpu().numpy()
            peak = float(np.max(np.abs(delta))) if delta.size else 0.0
            if not np.isfinite(peak):  # a non-finite update stays non-finite: rejected later
                out[k], scale = np.zeros(a.shape, dtype=np.int8), float("nan")
            else:
                scale = peak / _LEVELS if peak > 0 else 1.0
                out[k] = np.clip(np.rint(delta / scale), -_LEVELS, _LEVELS).astype(np.int8)
        scales.append(scale)
    return _tensors(out), {SCALES_KEY: scales}


def decode(mode: str, content: RecordDict, global_arrays: dict[str, NDArray[Any]]) -> None:
    """Server side, in place: turn a train reply's arrays back into float32 weights (given
    the global model sent this round) and drop the scales from its metrics. A reply that
    cannot be decoded is left as it is, for validation to reject with a reason."""
    record, metrics = content.get("arrays"), content.get("metrics")
    if mode == "none" or not isinstance(record, ArrayRecord) \
            or not isinstance(metrics, MetricRecord):
        return
    arrays = {k: array_values(v) for k, v in record.items()}
    if mode == "float16":
        decoded = {k: a.astype(np.float32) if a.dtype.kind == "f" else a
                   for k, a in arrays.items()}
    else:
        scales: Any = metrics.get(SCALES_KEY, [])  # as the site sent it: checked here
        if not isinstance(scales, list) or len(scales) != len(arrays) \
                or set(arrays) != set(global_arrays):
            return
        decoded = {}
        for (k, a), scale in zip(arrays.items(), scales, strict=True):
            if a.dtype == np.int8:
                a = (global_arrays[k].astype(np.float64) + a.astype(np.float64) * scale)
                a = a.astype(global_arrays[k].dtype)
            decoded[k] = a
        del metrics[SCALES_KEY]
    content["arrays"] = ArrayRecord(_tensors(decoded))


def train_payload(cfg: RunConfig, msg: Message, metrics: TrainMetrics,
                  weights: dict[str, torch.Tensor]
                  ) -> tuple[dict[str, torch.Tensor], TrainMetrics]:
    """A train reply's weights and metrics, encoded as configured against the global model
    as received (not as modified locally, e.g. by FedBN); int8 adds its scales."""
    received = from_array_record(msg.content.array_records["arrays"])
    arrays, extra = encode(cfg.transport.compression, received, weights)
    if SCALES_KEY in extra:
        metrics = replace(metrics, int8_scales=tuple(extra[SCALES_KEY]))
    return arrays, metrics
