"""A hospital's own tabular data: a CSV per site, read as the consortium's schema declares.

The schema is :mod:`medfl.data.tabular_schema` (label, features with types and public
bounds or levels, sensitive attributes); the encoding, shared by training and serving, is
:mod:`medfl.data.tabular_encoding`. This module reads a site's CSV, encodes its rows and
splits them into train and test. The names of both modules are re-exported here.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from medfl.data.tabular_encoding import (
    FEATURE_TYPES,
    MISSING,
    column_cells,
    encode_columns,
    feature_names,
)
from medfl.data.tabular_schema import (
    RESERVED,
    Feature,
    FeatureSpec,
    SensitiveAttribute,
    TabularSchema,
    load_schema,
)
from medfl.data.types import SiteData
from medfl.errors import DataError

__all__ = ["FEATURE_TYPES", "MISSING", "RESERVED", "Feature", "FeatureSpec",
           "SensitiveAttribute", "TabularSchema", "encode_columns", "feature_names",
           "load_schema", "load_tabular_site", "read_table", "table_labels", "table_sites"]

logger = logging.getLogger(__name__)

SPLITS = ("train", "test")


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a tabular CSV as text, indexed by line number (the header is line 1)."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False,
                            skip_blank_lines=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError,
            ValueError) as exc:  # pandas' text may quote a path or a cell: type only
        raise DataError(f"data.manifest is not a readable CSV file ({type(exc).__name__})"
                        ) from None
    frame.columns = [str(c).strip() for c in frame.columns]
    frame.index = pd.RangeIndex(2, len(frame) + 2)
    return frame


def table_sites(table: str | Path | pd.DataFrame) -> tuple[str, ...]:
    """The sorted distinct values of the CSV's ``site`` column (a simulated federation);
    ``table`` is the CSV's path or its :func:`read_table` frame."""
    frame = table if isinstance(table, pd.DataFrame) else read_table(table)
    if "site" not in frame.columns:
        raise DataError("data.manifest has no 'site' column; a simulated federation needs "
                        "one (a deployed site reads its own CSV, which may omit it)")
    return tuple(sorted(set(column_cells(frame, "site", numbers=False))))


def table_labels(rows: pd.DataFrame, schema: TabularSchema) -> np.ndarray:
    """1 for ``schema.positive``, 0 for ``schema.negative``; any other value is refused
    (a typo or an unknown outcome must not silently become a negative)."""
    text = column_cells(rows, schema.label_column, numbers=False)
    numeric = pd.to_numeric(pd.Series(text), errors="coerce").to_numpy(dtype=np.float64)
    try:
        pos_value, neg_value = float(schema.positive), float(schema.negative)
    except ValueError:
        pos_value = neg_value = math.nan
    if math.isfinite(pos_value) and math.isfinite(neg_value) and np.isfinite(numeric).all():
        pos, neg = numeric == pos_value, numeric == neg_value  # "1" and "1.0" are one label
    else:
        pos, neg = text == schema.positive, text == schema.negative
    bad = ~(pos | neg)
    if bad.any():
        raise DataError(f"line {rows.index[bad.argmax()]}, column {schema.label_column!r}: "
                        f"the label is neither label.negative nor label.positive of the schema")
    return pos.astype(np.int64)


def _split(rows: pd.DataFrame, y: np.ndarray, site: str, *, test_fraction: float,
           seed: int) -> tuple[np.ndarray, np.ndarray]:
    position = np.arange(len(rows))
    if "split" in rows.columns:
        split = rows["split"].str.strip().str.lower()
        bad = ~split.isin(SPLITS).to_numpy()
        if bad.any():
            raise DataError(f"line {rows.index[bad.argmax()]}, column 'split': must be one "
                            f"of {list(SPLITS)}")
        is_test = (split == "test").to_numpy()
        return position[~is_test], position[is_test]
    counts = np.bincount(y, minlength=2)
    n_test = math.ceil(test_fraction * len(rows))
    # sklearn refuses to stratify when a part is smaller than the number of classes.
    stratify = y if counts.min() >= 2 and min(n_test, len(rows) - n_test) >= 2 else None
    idx_train, idx_test = train_test_split(position, test_size=test_fraction,
                                           random_state=seed, shuffle=True, stratify=stratify)
    return np.sort(idx_train), np.sort(idx_test)


def load_tabular_site(table: str | Path | pd.DataFrame, schema: TabularSchema, site: str, *,
                      test_fraction: float, seed: int) -> SiteData:
    """Load one site's rows of a tabular CSV, encoded by ``schema`` and split train/test.

    Parameters
    ----------
    table : the CSV (its path, or its :func:`read_table` frame): the schema's label,
        feature and sensitive columns, optionally ``site`` (this site's rows are those
        with ``site == site``; without the column every row is this site's, as in
        deployment) and ``split`` (train/test).
    schema : the consortium's :class:`TabularSchema`.
    site : this site's name.
    test_fraction, seed : without a ``split`` column, ``train_test_split(test_size=
        test_fraction, random_state=seed, shuffle=True)``, stratified by label when each
        class and each part has at least 2 rows. Both parts keep file order.

    Returns
    -------
    SiteData with ``x_*`` (n, len(schema.feature_names)) float32, unscaled; ``y_*`` int64,
    1 where the label equals ``schema.positive``; ``sensitive_*`` the sensitive columns.

    Raises ``DataError`` naming line numbers and columns (never values or paths): a missing
    column or cell, a value outside its bounds or levels, a site with no rows, one class,
    or an empty split part.
    """
    frame = table if isinstance(table, pd.DataFrame) else read_table(table)
    needed = [schema.label_column, *(f.name for f in schema.features), *schema.sensitive]
    missing = [c for c in dict.fromkeys(needed) if c not in frame.columns]
    if missing:
        raise DataError(f"data.manifest lacks column(s) {missing}; the schema needs "
                        f"{list(dict.fromkeys(needed))}, optionally 'site' and 'split'")
    rows = frame
    if "site" in frame.columns:
        rows = frame[frame["site"].str.strip() == site]
    if rows.empty:
        raise DataError(f"site {site!r} has no rows in data.manifest")
    y = table_labels(rows, schema)
    if len(np.unique(y)) < 2:
        raise DataError(f"site {site!r} has only class {schema.label_names[y[0]]!r}; a binary "
                        "model needs both")
    x = schema.encode(rows)
    for col in schema.sensitive:
        column_cells(rows, col, numbers=False)  # missing cells are refused here too
    idx_train, idx_test = _split(rows, y, site, test_fraction=test_fraction, seed=seed)
    for part, idx in (("train", idx_train), ("test", idx_test)):
        if len(idx) == 0:
            raise DataError(f"site {site!r} has no {part} rows; each site needs both parts")
    if len(np.unique(y[idx_train])) < 2:
        raise DataError(f"site {site!r} has one class only in its training split; a binary "
                        "model needs both")
    sensitive = rows[list(schema.sensitive)].reset_index(drop=True)
    logger.debug("loaded site %s: %d train / %d test rows", site, len(idx_train), len(idx_test))
    return SiteData.from_split(site, x, y, sensitive, idx_train, idx_test)
