"""What a site sends beside its model arrays, typed: a training reply's metrics and the
feature moments' wire form. Flower-free; the server reads them back with ``from_metrics``.

Each type declares its keys (:class:`medfl.wire.WireKeys`); the egress contract is built
from these declarations.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from medfl.data.scaling import FeatureMoments
from medfl.wire import WireKeys

#: The train metric of ``transport.compression = "int8"``: one scale per array.
INT8_SCALES = "int8-scales"


@dataclass(frozen=True)
class TrainMetrics:
    """A training round's reply metrics: the example count and the DP accounting.

    ``epsilon`` is the run's cumulative ε after the round (``inf`` without DP);
    ``steps`` the DP-SGD steps of the run so far (without DP: this round's steps);
    ``prior_noise_multipliers`` the noise of each other accounted release (one Gaussian step
    at sample rate 1 each), so that ε can be recomputed from what the site reports.
    ``site_weight`` is a constant, so that central DP can average sites uniformly.
    ``epsilon_lifetime`` (every run in the site's ledger composed with this one) is set by
    the ledger-checked round; ``int8_scales`` by transport compression.
    ``epsilon_local`` (distributed DP only) is the run's unconditional ε: what the site's
    own noise share guarantees even against a coordinator that unmasks its update alone
    (:mod:`medfl.privacy.distributed`); ``epsilon`` is then the binding ε of the sum.
    """

    num_examples: int
    epsilon: float
    delta: float
    noise_multiplier: float
    sample_rate: float
    max_grad_norm: float
    steps: int
    prior_noise_multipliers: tuple[float, ...] = ()
    site_weight: float = 1.0
    epsilon_lifetime: float | None = None
    int8_scales: tuple[float, ...] | None = None
    epsilon_local: float | None = None

    WIRE: ClassVar[WireKeys] = WireKeys(
        scalars=("num-examples", "site-weight", "epsilon", "delta", "noise-multiplier",
                 "sample-rate", "max-grad-norm", "steps", "epsilon-lifetime",
                 "epsilon-local"),
        lists=("prior-noise-multipliers", INT8_SCALES),
        counts=frozenset({"num-examples"}),
        fixed_length={INT8_SCALES: "n_arrays"},
        # a site makes at most a few accounted releases a run
        max_length={"prior-noise-multipliers": 8},
    )

    def to_metrics(self) -> dict[str, Any]:
        """The wire form: kebab-case keys, in the order a site has always sent them."""
        out: dict[str, Any] = {
            "num-examples": self.num_examples, "site-weight": self.site_weight,
            "epsilon": self.epsilon, "delta": self.delta,
            "noise-multiplier": self.noise_multiplier, "sample-rate": self.sample_rate,
            "max-grad-norm": self.max_grad_norm, "steps": self.steps,
            "prior-noise-multipliers": list(self.prior_noise_multipliers),
        }
        if self.epsilon_lifetime is not None:
            out["epsilon-lifetime"] = self.epsilon_lifetime
        if self.int8_scales is not None:
            out[INT8_SCALES] = list(self.int8_scales)
        if self.epsilon_local is not None:
            out["epsilon-local"] = self.epsilon_local
        return out

    @classmethod
    def from_metrics(cls, m: Mapping[str, Any]) -> TrainMetrics:
        """Parse :meth:`to_metrics`' form (``epsilon-lifetime``, ``int8-scales`` and
        ``epsilon-local`` optional)."""
        return cls(
            num_examples=int(m["num-examples"]), epsilon=float(m["epsilon"]),
            delta=float(m["delta"]), noise_multiplier=float(m["noise-multiplier"]),
            sample_rate=float(m["sample-rate"]), max_grad_norm=float(m["max-grad-norm"]),
            steps=int(m["steps"]),
            prior_noise_multipliers=tuple(float(v) for v in m["prior-noise-multipliers"]),
            site_weight=float(m["site-weight"]),
            epsilon_lifetime=(float(m["epsilon-lifetime"]) if "epsilon-lifetime" in m
                              else None),
            int8_scales=(tuple(float(v) for v in m[INT8_SCALES]) if INT8_SCALES in m
                         else None),
            epsilon_local=float(m["epsilon-local"]) if "epsilon-local" in m else None,
        )


#: The feature moments' wire form (``query.moments``): a count and per-column sums, and
#: under ``train.pos-weight = "auto"`` the count of positive labels (noised with the sums
#: in a DP run, so not an exact count).
MOMENTS_WIRE = WireKeys(
    scalars=("count", "positives"), lists=("sums", "sumsq", "present"),
    counts=frozenset({"count"}),
    fixed_length={"sums": "n_numeric", "sumsq": "n_numeric", "present": "n_numeric"},
)


def moments_to_metrics(m: FeatureMoments) -> dict[str, Any]:
    """:class:`FeatureMoments` on the wire (see :data:`MOMENTS_WIRE`)."""
    out: dict[str, Any] = {"count": m.count, "sums": [float(v) for v in m.sums],
                           "sumsq": [float(v) for v in m.sumsq]}
    if m.present is not None:  # noised with the sums: not an exact count
        out["present"] = [float(v) for v in m.present]
    if m.positives is not None:
        out["positives"] = float(m.positives)
    return out


def moments_from_metrics(m: Mapping[str, Any]) -> FeatureMoments:
    """:func:`moments_to_metrics`' form back as :class:`FeatureMoments`."""
    present = np.asarray(m["present"], dtype=np.float64) if "present" in m else None
    return FeatureMoments(float(m["count"]), np.asarray(m["sums"], dtype=np.float64),
                          np.asarray(m["sumsq"], dtype=np.float64), present,
                          float(m["positives"]) if "positives" in m else None)
