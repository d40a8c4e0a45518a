"""The egress contract: what a site's reply may contain (DESIGN.md, PRIVACY.md).

:func:`check_reply` is Flower-free and returns the list of violations, each naming the
offending record or key and never its value. The Flower client mod in
``medfl.federation`` applies it to every outgoing reply and fails closed.
"""

from __future__ import annotations

import math
from typing import Any

from medfl.evaluation.cellstats import ReportStats
from medfl.evaluation.stats import PERSONAL, SUPPRESSED, SiteEvalStats  # one sentinel
from medfl.privacy.audit import AuditResult
from medfl.site.metrics import MOMENTS_WIRE, TrainMetrics
from medfl.wire import LIST, SCALAR, WireKeys

__all__ = ["COUNT_KEYS", "DECLARED", "FIXED_LENGTH", "LIST", "MAX_LENGTH", "REPLIES",
           "SCALAR", "check_reply"]

#: What each message type's reply carries, by the wire types that build it. An evaluate
#: reply also carries its keys prefixed ``personal-``: the statistics of the site's locally
#: fine-tuned model (``evaluation.personal-epochs`` > 0).
REPLIES: dict[str, WireKeys] = {
    "query.moments": MOMENTS_WIRE,
    "query.audit": AuditResult.WIRE,
    "train": TrainMetrics.WIRE,
    "evaluate": SiteEvalStats.WIRE | SiteEvalStats.WIRE.prefixed(PERSONAL),
    "query.report": ReportStats.WIRE,
}
#: Declared metrics per message type: key -> "scalar" | "list".
DECLARED: dict[str, dict[str, str]] = {kind: keys.declared() for kind, keys in REPLIES.items()}
#: Keys whose values count patients: each must be >= k or the suppression sentinel.
COUNT_KEYS: set[str] = {key for keys in REPLIES.values() for key in keys.counts}
#: Lists whose length is fixed by the model/schema, not by the data.
FIXED_LENGTH: dict[str, str] = {key: size for keys in REPLIES.values()
                                for key, size in keys.fixed_length.items()}
#: Lists with a small fixed bound.
MAX_LENGTH: dict[str, int] = {key: most for keys in REPLIES.values()
                              for key, most in keys.max_length.items()}


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_reply(
    kind: str,
    *,
    records: dict[str, str],
    metrics: dict[str, Any],
    site_record: dict[str, Any] | None,
    arrays: dict[str, tuple[int, ...]] | None,
    expected_arrays: dict[str, tuple[int, ...]] | None,
    k: int,
    n_numeric: int,
    n_cells: int = 0,
    n_explain: int = 0,
    attribute_cells: list[list[int]] | None = None,
) -> list[str]:
    """Violations of the egress contract by one reply (empty list: it may leave).

    Parameters
    ----------
    kind : the message type ("query.moments", "train", "evaluate", ...).
    records : record name -> record type ("metrics", "config", "arrays") in the reply.
    metrics : the MetricRecord's contents.
    site_record : the "site" ConfigRecord's contents (only ``name`` is allowed).
    arrays, expected_arrays : name -> shape of the reply's arrays and of the arrays the
        server sent (train replies must match them exactly; other replies carry none).
    k : the suppression threshold; n_numeric : number of numeric features; n_cells : number
        of declared evaluation cells; n_explain : length of the explanation vector (features
        or saliency cells; it may also be empty); attribute_cells : the cell indices of each
        declared attribute's levels (complementary suppression is checked on them).
    """
    if kind not in DECLARED:
        return [f"message type {kind!r} has no egress contract"]
    out = _check_records(kind, records, site_record)
    sizes = {"n_numeric": n_numeric, "n_cells": n_cells, "n_explain": n_explain,
             "n_arrays": len(expected_arrays or {})}
    for key, value in metrics.items():
        out += _check_metric(kind, key, value, k=k, sizes=sizes)
    if kind == "evaluate":
        for prefix in ("", PERSONAL):  # the personalised model's keys meet the same rules
            part = {key.removeprefix(prefix): v for key, v in metrics.items()
                    if key.startswith(prefix)}
            label = "personalised model: " if prefix else ""
            out += [label + v for v in _check_groups(part, k)
                    + _check_segmentation_sums(part, k) + _check_correct(part, k)]
    if kind == "query.report":
        out += _check_cells(metrics, k, attribute_cells or [])
    return out + _check_arrays(kind, arrays, expected_arrays)


def _check_records(kind: str, records: dict[str, str],
                   site_record: dict[str, Any] | None) -> list[str]:
    """Only a metrics record, the site's name, and (train) the model arrays."""
    out = []
    allowed_records = {"metrics": "metrics", "site": "config"}
    if kind == "train":
        allowed_records["arrays"] = "arrays"
    for name, rtype in records.items():
        if allowed_records.get(name) != rtype:
            out.append(f"record {name!r} ({rtype}) is not allowed in a {kind} reply")
    if site_record is not None and (set(site_record) != {"name"}
                                    or not isinstance(site_record.get("name"), str)):
        out.append("record 'site' may hold only the site's name")
    return out


def _check_metric(kind: str, key: str, value: Any, *, k: int,
                  sizes: dict[str, int]) -> list[str]:
    """One metric: declared, of its declared shape, numeric, counts at k, and its length."""
    declared = DECLARED[kind]
    if key not in declared:
        return [f"metric {key!r} is not declared for {kind} replies"]
    values = value if isinstance(value, list) else [value]
    if (declared[key] == LIST) != isinstance(value, list):
        return [f"metric {key!r} must be a {declared[key]}"]
    if not all(_is_number(v) for v in values):
        return [f"metric {key!r} holds a non-numeric value"]
    out = []
    if key in COUNT_KEYS and any(v != SUPPRESSED and (v < k or not math.isfinite(v))
                                 for v in values):
        out.append(f"metric {key!r} holds a count below k={k}")
    if key in FIXED_LENGTH and len(values) != sizes[FIXED_LENGTH[key]] \
            and not (key == "explain" and not values):
        out.append(f"metric {key!r} must have {sizes[FIXED_LENGTH[key]]} entries")
    if key in MAX_LENGTH and len(values) > MAX_LENGTH[key]:
        out.append(f"metric {key!r} may have at most {MAX_LENGTH[key]} entries")
    return out


def _check_segmentation_sums(m: dict[str, Any], k: int) -> list[str]:
    """Dice and IoU sums only beside a test-set size of at least k."""
    sums = [x for x in ("dice-sum", "dice-sqsum", "iou-sum") if x in m]
    if sums and not (_is_number(m.get("num-examples")) and m["num-examples"] >= k):
        return [f"metrics {sums} need 'num-examples' of at least k={k}"]
    return []


def _check_correct(m: dict[str, Any], k: int) -> list[str]:
    """'n-correct' only beside a shown test-set size, with at least k incorrect too (the
    incorrect count is as much a count of patients as the correct one)."""
    correct, n = m.get("n-correct", SUPPRESSED), m.get("num-examples", SUPPRESSED)
    if not _is_number(correct) or correct == SUPPRESSED:
        return []
    if not _is_number(n) or n == SUPPRESSED or n - correct < k:
        return [f"metric 'n-correct' leaves fewer than k={k} incorrect predictions or "
                "stands beside a suppressed 'num-examples'"]
    return []


def _check_arrays(kind: str, arrays: dict[str, tuple[int, ...]] | None,
                  expected: dict[str, tuple[int, ...]] | None) -> list[str]:
    """A train reply carries exactly the global model's arrays; other replies none."""
    if kind == "train":
        if arrays is None:
            return ["a train reply must carry the model arrays"]
        if arrays != expected:
            return ["arrays differ from the global model's names or shapes"]
    elif arrays is not None:
        return [f"a {kind} reply may not carry arrays"]
    return []


def _check_groups(m: dict[str, Any], k: int) -> list[str]:
    """Score groups: aligned lists, both classes or neither, and the other class >= k."""
    out = []
    for cls in ("neg", "pos"):
        lengths = {len(m.get(f"{cls}-{part}", [])) for part in ("n", "mean", "var")}
        if len(lengths) != 1:
            out.append(f"metrics '{cls}-n', '{cls}-mean', '{cls}-var' differ in length")
    has = [bool(m.get("neg-n")), bool(m.get("pos-n"))]
    if any(has) and not all(has):
        out.append("score groups of only one class would reveal the other class's size")
    n = m.get("num-examples")
    if all(has) and _is_number(n):
        total = sum(m["neg-n"]) + sum(m["pos-n"])
        if total != n:
            out.append("score group sizes do not add up to 'num-examples'")
    return out


def _check_cells(m: dict[str, Any], k: int, attribute_cells: list[list[int]]) -> list[str]:
    """Report cells: aligned group lists that add up to their cell's size, groups only for
    a shown cell with both classes at k or more, nothing beside a suppressed size, the
    complementary suppression of each attribute (all its levels or none; the rows in no
    level 0 or at least k, per class too), and an explanation only with its count."""
    parts = ("cell", "class", "n", "mean", "var", "side")
    if len({len(m.get(f"g-{p}", [])) for p in parts}) != 1:
        return ["score group lists ('g-*') differ in length"]
    out: list[str] = []
    sizes = m.get("cell-n", [])
    per_class = _class_totals(m, len(sizes))
    if isinstance(per_class, str):
        return [per_class]
    for c, (neg, pos) in per_class.items():
        if sizes[c] == SUPPRESSED or neg + pos != sizes[c]:
            out.append(f"score groups of cell {c} do not add up to its 'cell-n'")
        elif min(neg, pos) < k:
            out.append(f"score groups of cell {c} describe a class under k={k}")
    for key in [x for x in m if x.startswith("cell-") and x != "cell-n"]:
        if any(v != SUPPRESSED for v, n in zip(m[key], sizes, strict=False) if n == SUPPRESSED):
            out.append(f"metric {key!r} holds a value for a cell whose size is suppressed")
    for idx in attribute_cells:
        if idx and sizes and max(idx) < len(sizes):
            out += _check_attribute(idx, sizes, per_class, k)
    if m.get("explain") and m.get("explain-n", SUPPRESSED) == SUPPRESSED:
        out.append("'explain' needs its count 'explain-n' (at least k)")
    return out


def _class_totals(m: dict[str, Any], n_cells: int) -> dict[int, list[float]] | str:
    """Cell -> [negatives, positives] summed over its score groups, or what is wrong."""
    per_class: dict[int, list[float]] = {}
    for c, cls, n, side in zip(m.get("g-cell", []), m.get("g-class", []), m.get("g-n", []),
                               m.get("g-side", []), strict=True):
        if not (float(c).is_integer() and 0 <= c < n_cells):
            return "'g-cell' names a cell that is not declared"
        if cls not in (0, 1) or side not in (-1, 0, 1):
            return "'g-class' must be 0 or 1 and 'g-side' -1, 0 or 1"
        per_class.setdefault(int(c), [0.0, 0.0])[int(cls)] += n
    return per_class


def _check_attribute(idx: list[int], sizes: list[float], per_class: dict[int, list[float]],
                     k: int) -> list[str]:
    """Complementary suppression of one attribute whose levels are cells ``idx``: sizes
    and score groups of all its levels or none, and the rows in no level 0 or at least k
    (per class too), so that no suppressed level is the whole minus the others."""
    def small(v: float) -> bool:
        return 0 < v < k

    out = []
    shown = [sizes[i] != SUPPRESSED for i in idx]
    if any(shown) and not all(shown):
        out.append(f"cells {idx} show some levels of an attribute but not all")
    elif all(shown) and sizes[0] != SUPPRESSED and small(sizes[0] - sum(sizes[i] for i in idx)):
        out.append(f"cells {idx}: the rows in no level number under k={k}")
    grouped = [i in per_class for i in idx]
    if any(grouped) and not all(grouped):
        out.append(f"cells {idx} show some levels' score groups but not all")
    elif all(grouped) and 0 in per_class:
        for cls in (0, 1):
            if small(per_class[0][cls] - sum(per_class[i][cls] for i in idx)):
                out.append(f"cells {idx}: class {cls} rows in no level number under k={k}")
    return out
