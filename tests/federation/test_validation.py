"""Norm outliers: an update much further from the global model than the round's median."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from medfl.federation import norm_outliers

GLOBAL = {"w": np.zeros(2, np.float32)}


def _update(node: int, w: list[float]) -> Message:
    ins = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=node,
                  message_type="train")
    content = RecordDict({"arrays": ArrayRecord({"w": Array(np.asarray(w, np.float32))})})
    return Message(content, reply_to=ins)


def test_an_update_over_ratio_times_the_median_distance_is_named():
    # distances 1, 1, 5 (a 3-4-5 triangle): median 1, so 5x; limit 3x
    updates = [_update(1, [1, 0]), _update(2, [0, 1]), _update(3, [3, 4])]

    outliers = norm_outliers(updates, GLOBAL, ratio=3.0)

    assert outliers == [(updates[2], "update norm 5.0x the round's median (limit 3x)")]


def test_no_outliers_when_off_or_with_fewer_than_three_updates():
    updates = [_update(1, [1, 0]), _update(2, [0, 1]), _update(3, [30, 40])]
    assert norm_outliers(updates, GLOBAL, ratio=0.0) == []
    assert norm_outliers(updates[1:], GLOBAL, ratio=3.0) == []
