"""The egress contract: what a site's reply may contain (DESIGN.md, PRIVACY.md).

:func:`check_reply` is Flower-free and returns the list of violations, each naming the
offending record or key and never its value. The Flower client mod in
``medfl.federation`` applies it to every outgoing reply and fails closed.

Exact counts that still leave a site (the training-set size) are held to ``k``. The
test-set releases (the monitoring evaluation, the report, the audit's histograms) are noisy
sums through an accounted Gaussian mechanism: nothing in them is checked as a count, but
every value must be finite, every list must have the length the run's public settings
fix, and every noise standard deviation must be positive unless the run asked for exact
test-set figures (``privacy.test-epsilon = 0``, which the site's policy must allow).
"""

from __future__ import annotations

import math
from typing import Any

from medfl.evaluation.release import ReportStats
from medfl.evaluation.stats import PERSONAL, SUPPRESSED, SiteEvalStats  # one sentinel
from medfl.privacy.audit import AuditRelease
from medfl.site.metrics import MOMENTS_WIRE, TrainMetrics
from medfl.wire import LIST, SCALAR, ReplyBounds, WireKeys

__all__ = ["COUNT_KEYS", "DECLARED", "FIXED_LENGTH", "LIST", "MAX_LENGTH", "NOISE", "REPLIES",
           "SCALAR", "TEST_RELEASES", "check_metrics", "check_reply"]

#: What each message type's reply carries, by the wire types that build it. An evaluate
#: reply also carries its keys prefixed ``personal-``: the statistics of the site's locally
#: fine-tuned model (``evaluation.personal-epochs`` > 0).
REPLIES: dict[str, WireKeys] = {
    "query.moments": MOMENTS_WIRE,
    "query.audit": AuditRelease.WIRE,
    "train": TrainMetrics.WIRE,
    "evaluate": SiteEvalStats.WIRE | SiteEvalStats.WIRE.prefixed(PERSONAL),
    "query.report": ReportStats.WIRE,
}
#: The replies that are test-set releases: every value finite, noise checked.
TEST_RELEASES = frozenset({"evaluate", "query.report", "query.audit"})
#: Declared metrics per message type: key -> "scalar" | "list".
DECLARED: dict[str, dict[str, str]] = {kind: keys.declared() for kind, keys in REPLIES.items()}
#: Keys whose values count patients exactly: each must be >= k or the suppression sentinel.
COUNT_KEYS: dict[str, frozenset[str]] = {kind: keys.counts for kind, keys in REPLIES.items()}
#: Per message type, lists whose length is fixed by the model/schema, not by the data.
FIXED_LENGTH: dict[str, dict[str, str]] = {kind: dict(keys.fixed_length)
                                           for kind, keys in REPLIES.items()}
#: Per message type, lists with a small fixed bound.
MAX_LENGTH: dict[str, dict[str, int]] = {kind: dict(keys.max_length)
                                         for kind, keys in REPLIES.items()}
#: Per message type, noise standard deviation key -> the key of the values it describes.
NOISE: dict[str, dict[str, str]] = {kind: dict(keys.noise) for kind, keys in REPLIES.items()}


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
    bounds: ReplyBounds,
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
    bounds : the sizes the site's run fixes (``k``, the lengths of every list, and
        whether the run asked for exact test-set figures); see
        :class:`medfl.wire.ReplyBounds`.
    """
    if kind not in DECLARED:
        return [f"message type {kind!r} has no egress contract"]
    out = _check_records(kind, records, site_record)
    out += check_metrics(kind, metrics, bounds=bounds, n_arrays=len(expected_arrays or {}))
    return out + _check_arrays(kind, arrays, expected_arrays)


def check_metrics(kind: str, metrics: dict[str, Any], *, bounds: ReplyBounds,
                  n_arrays: int) -> list[str]:
    """Violations by a reply's metrics record alone (``kind``'s declared keys, shapes,
    counts at k, lengths, and noise in a test-set release)."""
    out = []
    sizes = {**vars(bounds), "n_arrays": n_arrays}
    for key, value in metrics.items():
        out += _check_metric(kind, key, value, k=bounds.k, sizes=sizes)
    if kind in TEST_RELEASES and not bounds.exact:
        out += _check_noise(kind, metrics)
    return out


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
                  sizes: dict[str, Any]) -> list[str]:
    """One metric: declared, of its declared shape, numeric (finite in a test-set
    release), exact counts at k, and its length."""
    declared = DECLARED[kind]
    if key not in declared:
        return [f"metric {key!r} is not declared for {kind} replies"]
    values = value if isinstance(value, list) else [value]
    if (declared[key] == LIST) != isinstance(value, list):
        return [f"metric {key!r} must be a {declared[key]}"]
    if not all(_is_number(v) for v in values):
        return [f"metric {key!r} holds a non-numeric value"]
    out = []
    # a stated test ε is infinite after an exact release (an exact run: test-epsilon = 0)
    infinite_ok = (sizes.get("exact") and key.endswith("test-epsilon")
                   and all(v == math.inf for v in values))
    if kind in TEST_RELEASES and not infinite_ok and not all(math.isfinite(v) for v in values):
        out.append(f"metric {key!r} holds a value that is not finite")
    if key in COUNT_KEYS[kind] and any(v != SUPPRESSED and (v < k or not math.isfinite(v))
                                       for v in values):
        out.append(f"metric {key!r} holds a count below k={k}")
    fixed, most = FIXED_LENGTH[kind].get(key), MAX_LENGTH[kind].get(key)
    if fixed is not None and len(values) != sizes[fixed]:
        out.append(f"metric {key!r} must have {sizes[fixed]} entries")
    if most is not None and len(values) > most:
        out.append(f"metric {key!r} may have at most {most} entries")
    return out


def _check_noise(kind: str, metrics: dict[str, Any]) -> list[str]:
    """Each noise standard deviation beside released values is present and positive: a
    test-set release without noise is an exact release the run did not ask for."""
    out = []
    for std_key, values_key in NOISE[kind].items():
        if not metrics.get(values_key):
            continue
        std: Any = metrics.get(std_key)
        stds: list[Any] = std if isinstance(std, list) else [std]
        if not stds or not all(_is_number(s) and s > 0 for s in stds):
            out.append(f"metric {std_key!r} must be positive beside {values_key!r}: this "
                       "run's test-set releases are noised (privacy.test-epsilon > 0)")
    return out


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
