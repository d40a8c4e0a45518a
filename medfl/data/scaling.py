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

    ``sums`` and ``sumsq`` have shape (n_columns,), in the column order they were made with;
    ``present``, where columns may hold missing cells, the count of present cells per
    column (the sums are over those only), else ``None`` (every row counts).
    ``positives``: the (noised) count of positive training labels, released with them only
    when the run derives its class weight from the consortium's prevalence (else None).
    """

    count: float
    sums: np.ndarray
    sumsq: np.ndarray
    present: np.ndarray | None = None
    positives: float | None = None


@dataclass(frozen=True)
class Standardizer:
    """``(x - mean) / std`` on the columns in ``columns`` (indices into the feature matrix),
    after filling the missing (``nan``) cells of ``impute_columns`` with ``impute_values``
    (the consortium's means, :mod:`medfl.data.missing`)."""

    columns: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    impute_columns: tuple[int, ...] = ()
    impute_values: tuple[float, ...] = ()
    #: the consortium's released share of positive training labels, sent with the
    #: standardiser when ``train.pos-weight = "auto"`` (:mod:`medfl.data.prevalence`)
    prevalence: float | None = None

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Return a filled, standardised float32 copy of ``x`` (shape (n, n_features))."""
        out = np.array(x, dtype=np.float32, copy=True)
        for col, value in zip(self.impute_columns, self.impute_values, strict=True):
            out[np.isnan(out[:, col]), col] = value
        if self.columns:
            cols = list(self.columns)
            out[:, cols] = (out[:, cols] - np.asarray(self.mean, np.float32)) / np.asarray(
                self.std, np.float32
            )
        return out

    def to_dict(self) -> dict[str, list[float] | list[int]]:
        """JSON-ready form: ``columns``, ``mean`` and ``std`` as lists (e.g. for the
        manifest), ``impute_columns`` / ``impute_values`` where there are any, and
        ``prevalence`` when there is one."""
        out: dict = {"columns": list(self.columns), "mean": list(self.mean),
                     "std": list(self.std)}
        if self.impute_columns:
            out |= {"impute_columns": list(self.impute_columns),
                    "impute_values": list(self.impute_values)}
        if self.prevalence is not None:
            out["prevalence"] = self.prevalence
        return out

    @classmethod
    def from_dict(cls, data: dict) -> Standardizer:
        """Inverse of :meth:`to_dict`."""
        prevalence = data.get("prevalence")
        return cls(tuple(int(c) for c in data["columns"]), tuple(map(float, data["mean"])),
                   tuple(map(float, data["std"])),
                   tuple(int(c) for c in data.get("impute_columns", ())),
                   tuple(map(float, data.get("impute_values", ()))),
                   float(prevalence) if prevalence is not None else None)


def moments_sensitivity(d: int, *, present: bool = False, labels: bool = False) -> float:
    """L2 sensitivity of one site's moments release over ``d`` columns rescaled to [0, 1]:
    one patient adds at most 1 to each column's sum and sum of squares, (``present``) to
    its count of present cells, and (``labels``) to the count of positives: so
    ``sqrt(2 d)``, ``sqrt(3 d)`` with the counts, plus 1 under the root with the labels."""
    return float(np.sqrt((3 if present else 2) * d + (1 if labels else 0)))


def site_moments(
    x: np.ndarray,
    *,
    bounds: np.ndarray,
    labels: np.ndarray | None = None,
    noise_multiplier: float = 0.0,
    rng: np.random.Generator | None = None,
    present: bool = False,
) -> FeatureMoments:
    """Sufficient statistics of one site's numeric columns, clipped to public bounds.

    Parameters
    ----------
    x : array of shape (n, d), the numeric columns only.
    bounds : array of shape (d, 2), public (low, high) per column.
    labels : optional array of shape (n,), the 0/1 training labels: their sum (the count
        of positives) is released too, as one more [0, 1] column of which only the sum
        leaves (a 0/1 label's square is itself).
    noise_multiplier : Gaussian noise std in units of the L2 sensitivity
        (:func:`moments_sensitivity`). The statistics are computed on values rescaled to
        [0, 1], where one patient changes each released entry by at most 1.
    present : whether ``x`` may hold missing cells (``nan``): they add nothing to the
        sums, and the per-column counts of present cells join the vector (noised with
        it; the sensitivity grows to ``sqrt(3 d)``).
    """
    if x.ndim != 2 or x.shape[1] != bounds.shape[0]:
        raise DataError(f"expected numeric columns of shape (n, {bounds.shape[0]}), got {x.shape}")
    low, high = bounds[:, 0], bounds[:, 1]
    seen = ~np.isnan(x)
    u = np.where(seen, (np.clip(x, low, high) - low) / (high - low), 0.0)
    sums, sumsq = u.sum(axis=0), (u**2).sum(axis=0)
    counts = seen.sum(axis=0).astype(np.float64) if present else None
    positives = None if labels is None else float(np.clip(labels, 0, 1).sum())
    if noise_multiplier > 0:
        rng = rng or np.random.default_rng()
        scale = noise_multiplier * moments_sensitivity(x.shape[1], present=present,
                                                       labels=labels is not None)
        sums = sums + rng.normal(0.0, scale, size=sums.shape)
        sumsq = sumsq + rng.normal(0.0, scale, size=sumsq.shape)
        if counts is not None:
            counts = counts + rng.normal(0.0, scale, size=counts.shape)
        if positives is not None:
            positives += float(rng.normal(0.0, scale))
    return FeatureMoments(count=float(x.shape[0]), sums=sums, sumsq=sumsq, present=counts,
                          positives=positives)


def pool_moments(
    moments: list[FeatureMoments], *, bounds: np.ndarray, columns: tuple[int, ...]
) -> Standardizer:
    """Pool sites' moments into a consortium-wide standardiser (original units).

    The pooled variance is floored at (1% of the public range)^2 so that noise can never
    produce a zero or negative variance. Where the sites counted present cells
    (``present``), means and variances are over those cells.
    """
    if not moments:
        raise DataError("no site reported feature statistics; cannot fit the standardiser")
    # Over present cells where sites counted them; a noised count is floored at one cell.
    n = np.maximum(sum(m.count if m.present is None else m.present for m in moments), 1.0)
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
