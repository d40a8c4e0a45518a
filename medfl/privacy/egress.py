"""The egress contract: what a site's reply may contain (DESIGN.md, PRIVACY.md).

:func:`check_reply` is Flower-free and returns the list of violations, each naming the
offending record or key and never its value. The Flower client mod in
``medfl.federation`` applies it to every outgoing reply and fails closed.
"""

from __future__ import annotations

import math
from typing import Any

from medfl.evaluation.stats import PERSONAL, SUPPRESSED  # SUPPRESSED: the one sentinel

SCALAR, LIST = "scalar", "list"

#: Declared metrics per message type: key -> "scalar" | "list".
DECLARED: dict[str, dict[str, str]] = {
    "query.moments": {"count": SCALAR, "sums": LIST, "sumsq": LIST},
    "query.audit": {"attack-auc": SCALAR, "attack-tpr-at-fpr10": SCALAR, "members": SCALAR,
                    "non-members": SCALAR},
    "train": {
        "num-examples": SCALAR, "steps": SCALAR, "epsilon": SCALAR, "delta": SCALAR,
        "noise-multiplier": SCALAR, "sample-rate": SCALAR, "max-grad-norm": SCALAR,
        "prior-noise-multipliers": LIST, "epsilon-lifetime": SCALAR, "site-weight": SCALAR,
        "int8-scales": LIST,  # transport.compression = "int8": one scale per array
    },
    "evaluate": {
        "num-examples": SCALAR, "n-correct": SCALAR, "loss-sum": SCALAR, "auroc": SCALAR,
        "neg-n": LIST, "neg-mean": LIST, "neg-var": LIST,
        "pos-n": LIST, "pos-mean": LIST, "pos-var": LIST,
        "dice-sum": SCALAR, "dice-sqsum": SCALAR, "iou-sum": SCALAR,
    },
    # (evaluate also carries these keys prefixed PERSONAL: the statistics of the site's
    # locally fine-tuned model, evaluation.personal-epochs > 0; added below.)
    # The final report (medfl.evaluation.cellstats): per-cell lists (cell 0 = whole test
    # set, then each declared subgroup), the score groups, and an explanation vector.
    "query.report": {
        "cell-n": LIST, "cell-loss-sum": LIST, "cell-brier-sum": LIST, "cell-auroc": LIST,
        "g-cell": LIST, "g-class": LIST, "g-n": LIST, "g-mean": LIST, "g-var": LIST,
        "g-side": LIST,
        "cell-dice-sum": LIST, "cell-dice-sqsum": LIST, "cell-iou-sum": LIST,
        "cell-iou-sqsum": LIST, "cell-hd-n": LIST, "cell-hd-sum": LIST, "cell-hd-sqsum": LIST,
        "explain": LIST, "explain-n": SCALAR,
    },
}
DECLARED["evaluate"].update({PERSONAL + k: v for k, v in DECLARED["evaluate"].items()})
#: Keys whose values count patients: each must be >= k or the suppression sentinel.
COUNT_KEYS = {"count", "num-examples", "neg-n", "pos-n", "members", "non-members",
              "cell-n", "g-n", "cell-hd-n", "explain-n",
              *(PERSONAL + k for k in ("num-examples", "neg-n", "pos-n"))}

#: Lists whose length is fixed by the model/schema, not by the data.
FIXED_LENGTH = {"sums": "n_numeric", "sumsq": "n_numeric", "explain": "n_explain",
                **{f"cell-{x}": "n_cells" for x in (
                    "n", "loss-sum", "brier-sum", "auroc", "dice-sum", "dice-sqsum", "iou-sum",
                    "iou-sqsum", "hd-n", "hd-sum", "hd-sqsum")},
                "int8-scales": "n_arrays"}
#: Lists with a small fixed bound (a site makes at most a few accounted releases a run).
MAX_LENGTH = {"prior-noise-multipliers": 8}


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
    declared = DECLARED[kind]
    for key, value in metrics.items():
        if key not in declared:
            out.append(f"metric {key!r} is not declared for {kind} replies")
            continue
        values = value if isinstance(value, list) else [value]
        if (declared[key] == LIST) != isinstance(value, list):
            out.append(f"metric {key!r} must be a {declared[key]}")
            continue
        if not all(_is_number(v) for v in values):
            out.append(f"metric {key!r} holds a non-numeric value")
            continue
        if key in COUNT_KEYS and any(v != SUPPRESSED and (v < k or not math.isfinite(v))
                                     for v in values):
            out.append(f"metric {key!r} holds a count below k={k}")
        sizes = {"n_numeric": n_numeric, "n_cells": n_cells, "n_explain": n_explain,
                 "n_arrays": len(expected_arrays or {})}
        if key in FIXED_LENGTH and len(values) != sizes[FIXED_LENGTH[key]] \
                and not (key == "explain" and not values):
            out.append(f"metric {key!r} must have {sizes[FIXED_LENGTH[key]]} entries")
        if key in MAX_LENGTH and len(values) > MAX_LENGTH[key]:
            out.append(f"metric {key!r} may have at most {MAX_LENGTH[key]} entries")
    if kind == "evaluate":
        out += _check_groups(metrics, k)
        sums = [x for x in ("dice-sum", "dice-sqsum", "iou-sum") if x in metrics]
        if sums and not (_is_number(metrics.get("num-examples"))
                         and metrics["num-examples"] >= k):
            out.append(f"metrics {sums} need 'num-examples' of at least k={k}")
    if kind == "query.report":
        out += _check_cells(metrics, k, attribute_cells or [])
    if kind == "train":
        if arrays is None:
            out.append("a train reply must carry the model arrays")
        elif arrays != expected_arrays:
            out.append("arrays differ from the global model's names or shapes")
    elif arrays is not None:
        out.append(f"a {kind} reply may not carry arrays")
    return out


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
    out = []
    sizes = m.get("cell-n", [])
    per_class: dict[int, list[float]] = {}
    for c, cls, n, side in zip(m.get("g-cell", []), m.get("g-class", []), m.get("g-n", []),
                               m.get("g-side", []), strict=True):
        if not (float(c).is_integer() and 0 <= c < len(sizes)):
            return ["'g-cell' names a cell that is not declared"]
        if cls not in (0, 1) or side not in (-1, 0, 1):
            return ["'g-class' must be 0 or 1 and 'g-side' -1, 0 or 1"]
        per_class.setdefault(int(c), [0.0, 0.0])[int(cls)] += n
    for c, (neg, pos) in per_class.items():
        if sizes[c] == SUPPRESSED or neg + pos != sizes[c]:
            out.append(f"score groups of cell {c} do not add up to its 'cell-n'")
        elif min(neg, pos) < k:
            out.append(f"score groups of cell {c} describe a class under k={k}")
    for key in [x for x in m if x.startswith("cell-") and x != "cell-n"]:
        if any(v != SUPPRESSED for v, n in zip(m[key], sizes, strict=False) if n == SUPPRESSED):
            out.append(f"metric {key!r} holds a value for a cell whose size is suppressed")
    small = (lambda v: 0 < v < k)  # noqa: E731
    for idx in attribute_cells:
        if not idx or max(idx) >= len(sizes) or not sizes:
            continue
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
    if m.get("explain") and m.get("explain-n", SUPPRESSED) == SUPPRESSED:
        out.append("'explain' needs its count 'explain-n' (at least k)")
    return out
