"""Missing cells a schema declares ``"missing": "impute"``: the consortium's values.

The value of an imputed feature is the consortium's mean over present cells, from the
sites' clipped moments (:func:`~medfl.data.scaling.site_moments` with ``present``: each
site adds its count of present cells per column to the same accounted release). The
server pools them (:func:`pool_with_imputation`) into the standardiser it already sends;
a site checks what it receives (:func:`check_received`), since the server is not
trusted; the bundle's input schema carries the values (:func:`with_imputation`) so
serving fills a ``null`` as training filled a missing cell.

A binary feature's mean is its share of 1s (a fraction, not a class). The mean, not the
median: a federated median needs a histogram or rank query per feature, a second
accounted release, while the mean comes with the moments already shared. Under
``preprocessing.scaling = "site"`` or ``"none"`` no statistic is shared: a value that is
not the consortium's (a site's own mean, a bound's mid-point) would make each site, and
the served model, fill differently, so ``"impute"`` is refused there with a
``ConfigError`` (:meth:`medfl.tasks.tabular.TabularTask.feature_spec`).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np

from medfl.data.scaling import FeatureMoments, Standardizer, pool_moments
from medfl.data.tabular_schema import FeatureSpec
from medfl.errors import ConfigError, DataError

__all__ = ["check_received", "pool_with_imputation", "require_present", "value_columns",
           "with_imputation"]


def require_present(x: np.ndarray, spec: FeatureSpec, *, k: int) -> None:
    """Refuse to share moments of a column with fewer than ``k`` present cells: like the
    training rows' count, each column's statistics must describe at least ``k`` patients.

    ``x`` has shape (n, len(spec.moment_idx)), ``nan`` where a cell is missing.
    """
    for j in np.flatnonzero((~np.isnan(x)).sum(axis=0) < k):
        name = spec.feature_names[spec.moment_idx[j]]
        raise DataError(f"feature {name!r} has fewer present training cells than "
                        f"privacy.k-threshold={k}; the site cannot share its statistics "
                        "(fill the column, or leave the feature out of the schema)")


def pool_with_imputation(moments: list[FeatureMoments], spec: FeatureSpec) -> Standardizer:
    """The consortium's standardiser of the numeric features, with the means of the
    ``impute`` features (``spec.impute_idx``) as their fill values, all in original
    units and inside the public bounds (the pooled mean is clipped to them)."""
    pooled = pool_moments(moments, bounds=spec.moment_bounds, columns=spec.moment_idx)
    k = len(spec.numeric_idx)
    at = {col: i for i, col in enumerate(spec.moment_idx)}
    return Standardizer(spec.numeric_idx, pooled.mean[:k], pooled.std[:k],
                        spec.impute_idx, tuple(pooled.mean[at[c]] for c in spec.impute_idx))


def check_received(received: Standardizer, spec: FeatureSpec) -> Standardizer:
    """A site's check of the fill values the server sent: exactly this schema's ``impute``
    features, each value finite and inside the feature's public bounds (a binary one in
    [0, 1]); else ``ConfigError`` naming the key (never applied, nothing read)."""
    if received.impute_columns != spec.impute_idx:
        raise ConfigError(f"the server's standardiser has scaler-impute-columns "
                          f"{list(received.impute_columns)}; this site's schema imputes "
                          f"features at {list(spec.impute_idx)}")
    bounds = dict(zip(spec.moment_idx, spec.moment_bounds.tolist(), strict=True))
    for col, value in zip(received.impute_columns, received.impute_values, strict=True):
        low, high = bounds[col]
        if not (math.isfinite(value) and low <= value <= high):
            raise ConfigError(f"the server's standardiser has a scaler-impute-values entry "
                              f"for feature {spec.feature_names[col]!r} that is not a finite "
                              f"number in its public bounds [{low}, {high}]; refused")
    return received


def value_columns(columns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The numeric, then binary, input columns: the encoded features' first positions."""
    return ([c for c in columns if c["type"] == "numeric"]
            + [c for c in columns if c["type"] == "binary"])


def with_imputation(input_schema: dict[str, Any], scaler: Standardizer | None
                    ) -> dict[str, Any]:
    """A copy of a bundle's ``input_schema`` whose ``impute`` columns carry their value
    (``"impute"``) from the run's standardiser."""
    out = copy.deepcopy(input_schema)
    if scaler is None or not scaler.impute_columns:
        return out
    by_position = value_columns(out["columns"])
    for col, value in zip(scaler.impute_columns, scaler.impute_values, strict=True):
        by_position[col]["impute"] = float(value)
    return out
