"""Feature standardisation from federated sufficient statistics.

Each site clips its numeric columns to public bounds and reports, per column, the
count, sum and sum of squares over its training rows (optionally with Gaussian noise,
accounted in the site's DP budget). The server pools them into consortium-wide means
and standard deviations. No row and no per-patient value leaves a site.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medfl.errors import DataError


@dataclass(frozen=True)
class FeatureMoments:
    """Per-column sufficient statistics of one site (or pooled over sites).

    ``sums`` and ``sumsq`` have shape (n_columns,), in the column order they were made with.
    """

    count: float
    sums: np.ndarray
    sumsq: np.ndarray


@dataclass(frozen=True)
class Standardizer:
    """``(x - mean) / std`` on the columns in ``columns`` (indices into the feature matrix)."""

    columns: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Return a standardised float32 copy of ``x`` (shape (n, n_features))."""
        out = np.array(x, dtype=np.float32, copy=True)
        if self.columns:
            cols = list(self.columns)
            out[:, cols] = (out[:, cols] - np.asarray(self.mean, np.float32)) / np.asarray(
                self.std, np.float32
            )
        return out

    def to_dict(self) -> dict[str, list[float] | list[int]]:
        """JSON-ready form: ``columns``, ``mean`` and ``std`` as lists (e.g. for the manifest)."""
        return {"columns": list(self.columns), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict) -> Standardizer:
        """Inverse of :meth:`to_dict`."""
        return cls(tuple(int(c) for c in data["columns"]), tuple(map(float, data["mean"])),
                   tuple(map(float, data["std"])))


def site_moments(
    x: np.ndarray,
    *,
    bounds: np.ndarray,
    noise_multiplier: float = 0.0,
    rng: np.random.Generator | None = None,
) -> FeatureMoments:
    """Sufficient statistics of one site's numeric columns, clipped to public bounds.

    Parameters
    ----------
    x : array of shape (n, d), the numeric columns only.
    bounds : array of shape (d, 2), public (low, high) per column.
    noise_multiplier : Gaussian noise std in units of the L2 sensitivity. The statistics
        are computed on values rescaled to [0, 1], where one patient changes the
        concatenated (sums, sumsq) vector by at most ``sqrt(2 d)`` in L2 norm.
    """
    if x.ndim != 2 or x.shape[1] != bounds.shape[0]:
        raise DataError(f"expected numeric columns of shape (n, {bounds.shape[0]}), got {x.shape}")
    low, high = bounds[:, 0], bounds[:, 1]
    u = (np.clip(x, low, high) - low) / (high - low)
    sums, sumsq = u.sum(axis=0), (u**2).sum(axis=0)
    if noise_multiplier > 0:
        rng = rng or np.random.default_rng()
        sensitivity = np.sqrt(2 * x.shape[1])
        sums = sums + rng.normal(0.0, noise_multiplier * sensitivity, size=sums.shape)
        sumsq = sumsq + rng.normal(0.0, noise_multiplier * sensitivity, size=sumsq.shape)
    return FeatureMoments(count=float(x.shape[0]), sums=sums, sumsq=sumsq)


def pool_moments(
    moments: list[FeatureMoments], *, bounds: np.ndarray, columns: tuple[int, ...]
) -> Standardizer:
    """Pool sites' moments into a consortium-wide standardiser (original units).

    The pooled variance is floored at (1% of the public range)^2 so that noise can never
    produce a zero or negative variance.
    """
    if not moments:
        raise DataError("no site reported feature statistics; cannot fit the standardiser")
    n = sum(m.count for m in moments)
    mean_u = np.clip(sum(m.sums for m in moments) / n, 0.0, 1.0)
    var_u = sum(m.sumsq for m in moments) / n - mean_u**2
    var_u = np.maximum(var_u, 1e-4)
    low, high = bounds[:, 0], bounds[:, 1]
    mean = low + mean_u * (high - low)
    std = np.sqrt(var_u) * (high - low)
    return Standardizer(columns, tuple(float(v) for v in mean), tuple(float(v) for v in std))


def local_standardizer(x: np.ndarray, *, columns: tuple[int, ...]) -> Standardizer:
    """Site-local standardiser (no communication), for the ``scaling = "site"`` baseline."""
    sub = x[:, list(columns)].astype(np.float64)
    std = sub.std(axis=0)
    std[std == 0] = 1.0
    return Standardizer(columns, tuple(map(float, sub.mean(axis=0))), tuple(map(float, std)))
