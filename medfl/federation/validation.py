"""Checks on a site's training update before the strategy aggregates it.

Plain functions over Flower records: an update must carry the global model's array names
and shapes, finite values and a positive ``num-examples`` (:func:`check_update`), and with
``strategy.norm-ratio`` > 0 it must not lie much further from the global model than the
round's other updates (:func:`norm_outliers`). Reasons name the offending key, never a
value.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from numpy.typing import NDArray

from medfl.federation.records import array_values


def finite(value: Any) -> float | None:
    """``value`` as a float when it is a finite number, else ``None``."""
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def check_update(content: RecordDict, expected: dict[str, tuple[int, ...]]) -> str | None:
    """Why an update must not be aggregated, or ``None`` when it is acceptable.

    The arrays must carry exactly the global model's names and shapes, only finite values,
    and ``num-examples`` must be a positive number. The reason names the offending key,
    never a value.
    """
    arrays, metrics = content.get("arrays"), content.get("metrics")
    if not isinstance(arrays, ArrayRecord) or not isinstance(metrics, MetricRecord):
        return "the reply has no arrays or no metrics"
    names = set(arrays.keys())
    if names != set(expected):
        return (f"array names differ from the global model's (missing "
                f"{sorted(set(expected) - names)}, unexpected {sorted(names - set(expected))})")
    for name, arr in arrays.items():
        values = array_values(arr)
        if tuple(values.shape) != expected[name]:
            return f"array {name!r} has shape {tuple(values.shape)}, expected {expected[name]}"
        if not np.all(np.isfinite(values)):
            return f"array {name!r} holds non-finite values (NaN or infinity)"
    n = metrics.get("num-examples")
    if not isinstance(n, (int, float)) or not math.isfinite(n) or n <= 0:
        return "num-examples is missing, not finite or not positive"
    return None


def update_distance(content: RecordDict, global_arrays: dict[str, NDArray[Any]]) -> float:
    """Euclidean distance between an update's arrays and the global model's (float64)."""
    arrays = content.array_records["arrays"]
    squared: float = sum(
        float(np.sum((array_values(arrays[name]).astype(np.float64) - values) ** 2))
        for name, values in global_arrays.items())
    return math.sqrt(squared)


def norm_outliers(replies: list[Message], global_arrays: dict[str, NDArray[Any]], *,
                  ratio: float) -> list[tuple[Message, str]]:
    """Updates whose distance from the global model is over ``ratio`` times the round's
    median distance, each with the reason; none when ``ratio`` <= 0 or with fewer than
    three updates (too few for a median to trust)."""
    if ratio <= 0 or len(replies) < 3:
        return []
    norms = [update_distance(rep.content, global_arrays) for rep in replies]
    median = float(np.median(norms))
    if median <= 0:
        return []
    return [(rep, f"update norm {norm / median:.1f}x the round's median (limit {ratio:g}x)")
            for rep, norm in zip(replies, norms, strict=True) if norm > ratio * median]
