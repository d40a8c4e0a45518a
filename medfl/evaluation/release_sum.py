"""The report release under secure aggregation: one vector per site, one sum for the server.

With ``secure-aggregation.enabled`` a site's report release (:class:`ReportStats`) leaves
in two parts (:func:`split_release`): its values (the histograms or segmentation sums and
the explanation sum, flattened in :data:`VALUE_KEYS` order) as one vector that Flower's
SecAgg+ masks, and in the clear everything else: the noise standard deviations and the
site's test-set ε, which depend only on public settings and the site's own policy.

SecAgg+ clips each value to ``[-clipping-range, clipping-range]`` and quantises it
(stochastically) to ``quantization-range`` levels, so a value travels divided by the public
:data:`REPORT_SCALE`: a count up to 2^18 (with the default range 4) passes unclipped, and
each site's value moves by less than ``REPORT_SCALE * 2 * clipping-range /
quantization-range`` (0.125 with the defaults), without bias.

The server rebuilds one pooled release (:func:`pooled_release`): the values are the sum
over the contributing sites; each noise standard deviation is the root of the sum of the
sites' variances (the noises are independent); the stated test ε is the largest site's
(each site's own stays in ``site-metrics``). ``evaluation.json`` keeps it under
:data:`SECURE_SUM_KEY`, a name no site can have, so that the reports pool it as if it
were one site's release and show no per-site report figures (:func:`site_releases`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from medfl.evaluation.release import ReportStats
from medfl.wire import ReplyBounds

#: The ``evaluation.json`` key of the secure sum (not a plain folder name: no site's).
SECURE_SUM_KEY = "*secure-sum*"
#: The report's value lists, in vector order (the keys its noise stds describe).
VALUE_KEYS: tuple[str, ...] = tuple(ReportStats.WIRE.noise.values())
#: A report value is divided by this public constant before SecAgg+ clips and quantises it.
REPORT_SCALE = 2.0 ** 16


@dataclass(frozen=True)
class ReportLayout:
    """The lengths of the report vector's parts (public: the task and its cells):
    ``n_hist`` histogram counts, ``n_sums`` segmentation sums, ``n_explain`` the
    explanation sum's components, ``n_seg`` one cell's segmentation sums."""

    n_hist: int
    n_sums: int
    n_explain: int
    n_seg: int = 0

    @classmethod
    def of(cls, bounds: ReplyBounds) -> ReportLayout:
        """The layout a site's reply bounds declare."""
        return cls(bounds.n_hist, bounds.n_sums, bounds.n_explain, bounds.n_seg)

    @property
    def length(self) -> int:
        """The report vector's length."""
        return self.n_hist + self.n_sums + self.n_explain

    def parts(self, vector: np.ndarray) -> dict[str, list[float]]:
        """``vector`` cut into the value lists, by :data:`VALUE_KEYS`."""
        if vector.shape != (self.length,):
            raise ValueError(f"a report vector of shape {vector.shape}; this run's has "
                             f"({self.length},) values")
        ends = np.cumsum([self.n_hist, self.n_sums, self.n_explain])
        chunks = np.split(vector.astype(np.float64), ends[:-1])
        return {key: [float(v) for v in chunk] for key, chunk in zip(VALUE_KEYS, chunks,
                                                                      strict=True)}


def split_release(metrics: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    """A report release in wire form -> (its values flattened in :data:`VALUE_KEYS` order,
    divided by :data:`REPORT_SCALE`; the clear metrics: every other key)."""
    values = [np.asarray(metrics.get(key, []), dtype=np.float64).reshape(-1)
              for key in VALUE_KEYS]
    clear = {k: v for k, v in metrics.items() if k not in VALUE_KEYS}
    return np.concatenate(values) / REPORT_SCALE, clear


def _root_sum_squares(values: list[float]) -> float:
    return math.sqrt(sum(float(v) ** 2 for v in values))


def pooled_release(total: np.ndarray, clear: dict[str, dict[str, Any]], *,
                   layout: ReportLayout) -> dict[str, Any]:
    """The consortium's report release in wire form from the unmasked sum.

    Parameters
    ----------
    total : (layout.length,) the sum over the contributing sites of their vectors, in
        vector units (multiplied back by :data:`REPORT_SCALE` here).
    clear : each contributing site's clear metrics (its stds and test ε).
    layout : the vector's parts.

    Raises ``ValueError`` when a site's clear metrics lack a standard deviation or
    state ``sums-std`` of another length than one cell's sums.
    """
    out: dict[str, Any] = layout.parts(np.asarray(total, dtype=np.float64) * REPORT_SCALE)
    for key in ("hist-std", "explain-std"):
        out[key] = _root_sum_squares([float(m[key]) for m in clear.values()])
    sums_std = [[float(v) for v in m["sums-std"]] for m in clear.values()]
    if any(len(s) != (layout.n_seg if layout.n_sums else 0) for s in sums_std):
        raise ValueError("a site's sums-std does not have one cell's sums")
    out["sums-std"] = [_root_sum_squares(list(col)) for col in zip(*sums_std, strict=True)]
    out["test-epsilon"] = max((float(m["test-epsilon"]) for m in clear.values()),
                              default=0.0)
    return out


def secure_entry(release: dict[str, Any], clear: dict[str, dict[str, Any]]
                 ) -> dict[str, Any]:
    """``evaluation.json``'s content for a secure sum: the pooled release, the sites in it
    and each one's clear metrics (no values)."""
    return {SECURE_SUM_KEY: {"sites": list(clear), "release": release,
                             "site-metrics": clear}}


def site_releases(raw: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], list[str] | None]:
    """``evaluation.json``'s content -> (the releases the reports pool, by name; the sites
    in a secure sum, or None without one).

    Without secure aggregation: each site's release as received. With it: the one pooled
    release under :data:`SECURE_SUM_KEY`.
    """
    entry = raw.get(SECURE_SUM_KEY)
    if entry is None:
        return raw, None
    return {SECURE_SUM_KEY: entry["release"]}, [str(s) for s in entry["sites"]]


def site_report_metrics(raw: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Each site's report metrics that the summary reads (its ``test-epsilon``): as
    received, or under secure aggregation its clear metrics."""
    raw = raw or {}
    entry = raw.get(SECURE_SUM_KEY)
    return dict(entry["site-metrics"]) if entry is not None else raw
