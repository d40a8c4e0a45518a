"""A hospital's own tabular data: a CSV per site and a schema the consortium declares.

The schema (JSON) names the binary label, the model's input features and the sensitive
attributes kept for subgroup evaluation::

    {"label": {"column": "outcome", "names": ["no event", "event"], "negative": "0",
               "positive": "1"},
     "features": [{"name": "age", "type": "numeric", "bounds": [18, 100]},
                  {"name": "smoker", "type": "binary"},
                  {"name": "cp", "type": "categorical", "levels": [1, 2, 3, 4]}],
     "sensitive": ["ethnicity", {"name": "sex", "levels": ["M", "F"]},
                   {"name": "age", "cuts": [50, 65]}]}

Numeric features need public bounds: values outside them are refused, and the feature
moments a site shares are computed on values clipped to them, which bounds one patient's
influence. Categorical levels come from the schema, never from a site's rows, so every site
encodes the same columns. Sensitive attributes are not model inputs unless also listed as
features. A sensitive entry with ``levels`` (categories, the first one the reference) or
``cuts`` (numeric band edges) is reported on as subgroups; a bare name is kept but not
reported on (its levels would otherwise have to come from a site's rows). The encoding is
heart-disease's: numeric, then binary, then one-hot categorical
with the first level dropped; :func:`encode_columns` is the one encoder, used for training
and, from a bundle's ``input_schema``, for serving.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from medfl.data.types import SiteData
from medfl.errors import ConfigError, DataError

__all__ = ["FEATURE_TYPES", "FeatureSpec", "TabularSchema", "encode_columns",
           "load_schema", "load_tabular_site", "read_table", "table_labels", "table_sites"]

logger = logging.getLogger(__name__)

FEATURE_TYPES = ("numeric", "binary", "categorical")
#: Cells read as a missing value (case-insensitive, after stripping blanks).
MISSING = frozenset({"", "na", "n/a", "nan", "null", "none", "?"})
#: Columns with a meaning of their own in the CSV; they cannot be features.
RESERVED = ("site", "split")
SPLITS = ("train", "test")


@dataclass(frozen=True, eq=False)
class FeatureSpec:
    """What the federated path needs to know about a tabular task's features.

    ``bounds`` has shape (len(numeric_idx), 2): public (low, high) per numeric feature, in
    ``numeric_idx`` order. ``input_schema`` is the bundle's (see :meth:`TabularSchema.
    input_schema`).
    """

    feature_names: tuple[str, ...]
    numeric_idx: tuple[int, ...]
    bounds: np.ndarray
    input_schema: dict[str, Any]


# --- the schema ------------------------------------------------------------------------------

def _fail(key: str, value: Any, valid: str) -> ConfigError:
    return ConfigError(f"data.schema: key {key!r} has value {value!r}; expected {valid}")


def _keys(obj: Any, key: str, *, required: tuple[str, ...], optional: tuple[str, ...] = ()
          ) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise _fail(key, obj, f"an object with keys {list(required + optional)}")
    for k in obj:
        if k not in required + optional:
            close = difflib.get_close_matches(str(k), required + optional, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"data.schema: unknown key {key + '.' + str(k)!r} (valid: "
                              f"{list(required + optional)}){hint}")
    missing = [k for k in required if k not in obj]
    if missing:
        raise ConfigError(f"data.schema: {key!r} lacks key(s) {missing}")
    return obj


def _name(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value.strip() or value != value.strip():
        raise _fail(key, value, "a non-empty column name without surrounding blanks")
    return value


def _number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


@dataclass(frozen=True)
class Feature:
    name: str
    type: str
    bounds: tuple[float, float] | None = None
    levels: tuple[Any, ...] | None = None


def _feature(obj: Any, key: str) -> Feature:
    ftype = _keys(obj, key, required=("name", "type"), optional=("bounds", "levels"))["type"]
    if ftype not in FEATURE_TYPES:
        close = difflib.get_close_matches(str(ftype), FEATURE_TYPES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise _fail(f"{key}.type", ftype, f"one of {', '.join(FEATURE_TYPES)}{hint}")
    name = _name(obj["name"], f"{key}.name")
    allowed = {"numeric": "bounds", "categorical": "levels", "binary": None}[ftype]
    for extra in ("bounds", "levels"):
        if extra in obj and extra != allowed:
            raise ConfigError(f"data.schema: {key + '.' + extra!r} does not apply to a "
                              f"{ftype} feature")
    if ftype == "numeric":
        b = obj.get("bounds")
        if not (isinstance(b, list) and len(b) == 2 and all(map(_number, b)) and b[0] < b[1]):
            raise _fail(f"{key}.bounds", b, "[low, high], two finite numbers with low < high "
                        "(public plausible range: it bounds one patient's influence)")
        return Feature(name, ftype, bounds=(float(b[0]), float(b[1])))
    if ftype == "categorical":
        lv = obj.get("levels")
        ok = isinstance(lv, list) and len(lv) >= 2 and len(set(lv)) == len(lv) and (
            all(map(_number, lv)) or all(isinstance(x, str) and x.strip() == x and x
                                         for x in lv))
        if not ok:
            raise _fail(f"{key}.levels", lv, "a list of at least 2 distinct levels, all "
                        "numbers or all non-empty strings (the first is the reference level)")
        return Feature(name, ftype, levels=tuple(lv))
    return Feature(name, ftype)


@dataclass(frozen=True)
class SensitiveAttribute:
    """A declared sensitive column and, optionally, its public subgroup levels or cuts."""

    name: str
    levels: tuple = ()
    cuts: tuple[float, ...] = ()


def _sensitive(entry: Any, key: str) -> SensitiveAttribute:
    if isinstance(entry, str):
        return SensitiveAttribute(_name(entry, key))
    _keys(entry, key, required=("name",), optional=("levels", "cuts"))
    name = _name(entry["name"], f"{key}.name")
    if "levels" in entry and "cuts" in entry:
        raise _fail(key, sorted(entry), "either 'levels' or 'cuts', not both")
    if "levels" in entry:
        lv = entry["levels"]
        if not (isinstance(lv, list) and len(lv) >= 2 and len(set(map(str, lv))) == len(lv)
                and all((isinstance(x, str) and x.strip()) or _number(x) for x in lv)):
            raise _fail(f"{key}.levels", lv, "a list of at least 2 distinct levels (the "
                        "first is the reference for fairness gaps)")
        return SensitiveAttribute(name, levels=tuple(lv))
    if "cuts" in entry:
        cuts = entry["cuts"]
        if not (isinstance(cuts, list) and cuts and all(_number(c) for c in cuts)
                and sorted(cuts) == cuts and len(set(cuts)) == len(cuts)):
            raise _fail(f"{key}.cuts", cuts, "an increasing list of numbers (band edges)")
        return SensitiveAttribute(name, cuts=tuple(float(c) for c in cuts))
    return SensitiveAttribute(name)


@dataclass(frozen=True)
class TabularSchema:
    """A consortium's declared table: label, features and sensitive attributes."""

    label_column: str
    label_names: tuple[str, str]
    positive: str
    features: tuple[Feature, ...]
    sensitive: tuple[str, ...] = ()
    negative: str = "0"
    #: the sensitive attributes with their declared subgroups (same order as ``sensitive``)
    subgroups: tuple[SensitiveAttribute, ...] = ()

    @classmethod
    def from_dict(cls, data: Any) -> TabularSchema:
        """Validate a parsed schema; ``ConfigError`` names the key and what is valid."""
        _keys(data, "schema", required=("label", "features"), optional=("sensitive",))
        label = _keys(data["label"], "label",
                      required=("column", "names", "negative", "positive"))
        column = _name(label["column"], "label.column")
        names = label["names"]
        if not (isinstance(names, list) and len(names) == 2
                and all(isinstance(n, str) and n.strip() for n in names)
                and names[0] != names[1]):
            raise _fail("label.names", names, "two distinct class names, negative first")
        positive, negative = label["positive"], label["negative"]
        for key, value in (("positive", positive), ("negative", negative)):
            if not (isinstance(value, str) and value.strip()) and not _number(value):
                raise _fail(f"label.{key}", value, f"the label value of the {key} class "
                            "(a string such as \"1\" or \"yes\")")
        if str(positive).strip() == str(negative).strip():
            raise _fail("label.negative", negative, "a value other than label.positive")
        feats = data["features"]
        if not isinstance(feats, list) or not feats:
            raise _fail("features", feats, "a non-empty list of features")
        features = tuple(_feature(f, f"features[{i}]") for i, f in enumerate(feats))
        sensitive = data.get("sensitive", [])
        if not isinstance(sensitive, list):
            raise _fail("sensitive", sensitive, "a list of column names or {name, levels | "
                        "cuts} objects")
        attrs = tuple(_sensitive(s, f"sensitive[{i}]") for i, s in enumerate(sensitive))
        sensitive = [a.name for a in attrs]
        seen: set[str] = set()
        for i, name in enumerate([f.name for f in features]):
            if name in seen or name == column or name in RESERVED:
                raise _fail(f"features[{i}].name", name, "a unique column name other than "
                            f"the label column and {list(RESERVED)}")
            seen.add(name)
        if len(set(sensitive)) != len(sensitive) or column in sensitive \
                or set(sensitive) & set(RESERVED):
            raise _fail("sensitive", sensitive, "distinct columns other than the label "
                        f"column and {list(RESERVED)}")
        return cls(column, (names[0], names[1]), str(positive).strip(), features,
                   tuple(sensitive), str(negative).strip(), attrs)

    # --- the encoding ------------------------------------------------------------------

    def columns(self) -> list[dict[str, Any]]:
        """The raw input columns, as a bundle's ``input_schema["columns"]``."""
        out = []
        for f in self.features:
            if f.type == "numeric":
                out.append({"name": f.name, "type": "numeric", "bounds": list(f.bounds)})
            else:
                levels = list(f.levels) if f.type == "categorical" else [0, 1]
                out.append({"name": f.name, "type": f.type, "levels": levels})
        return out

    @property
    def feature_names(self) -> tuple[str, ...]:
        return feature_names(self.columns())

    @property
    def numeric_idx(self) -> tuple[int, ...]:
        return tuple(range(sum(f.type == "numeric" for f in self.features)))

    @property
    def bounds(self) -> np.ndarray:
        """Shape (n_numeric, 2), in ``numeric_idx`` order."""
        rows = [f.bounds for f in self.features if f.type == "numeric"]
        return np.array(rows, dtype=np.float64).reshape(len(rows), 2)

    def encode(self, frame: pd.DataFrame) -> np.ndarray:
        """Raw columns -> unscaled feature matrix (n, len(feature_names)) float32.

        The frame's index is reported as the line number (:func:`read_table` sets it).
        """
        return encode_columns(frame, self.columns())

    def input_schema(self) -> dict[str, Any]:
        return {"columns": self.columns(), "features": list(self.feature_names),
                "sensitive_attributes": list(self.sensitive)}

    def spec(self) -> FeatureSpec:
        return FeatureSpec(self.feature_names, self.numeric_idx, self.bounds,
                           self.input_schema())


def load_schema(path: str | Path) -> TabularSchema:
    """Read and validate the schema JSON file named by ``data.schema``."""
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"data.schema does not name a readable UTF-8 JSON file "
                          f"({type(exc).__name__})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"data.schema is not valid JSON (line {exc.lineno}, column "
                          f"{exc.colno}: {exc.msg})") from None
    return TabularSchema.from_dict(data)


# --- one encoder for training and serving ----------------------------------------------------

def feature_names(columns: list[dict[str, Any]]) -> tuple[str, ...]:
    """Encoded feature names of input ``columns``: numeric, binary, then one-hot."""
    by = {t: [c for c in columns if c["type"] == t] for t in FEATURE_TYPES}
    return (*(c["name"] for c in by["numeric"] + by["binary"]),
            *(f"{c['name']}_{lvl}" for c in by["categorical"] for lvl in c["levels"][1:]))


def _cells(frame: pd.DataFrame, name: str, *, numbers: bool) -> np.ndarray:
    raw = frame[name]
    text = raw.astype(str).str.strip()
    missing = raw.isna().to_numpy() | text.str.lower().isin(MISSING).to_numpy()
    if missing.any():
        raise DataError(f"line {frame.index[missing.argmax()]}, column {name!r}: missing value "
                        "(every feature, label and sensitive cell must be filled)")
    if not numbers:
        return text.to_numpy()
    values = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        raise DataError(f"line {frame.index[bad.argmax()]}, column {name!r}: not a finite "
                        "number")
    return values


def encode_columns(frame: pd.DataFrame, columns: list[dict[str, Any]]) -> np.ndarray:
    """Map raw input columns to the model's unscaled feature matrix.

    Parameters
    ----------
    frame : one row per patient; cells may be numbers or text (a CSV read as text). Its
        index labels the rows in error messages (line numbers).
    columns : ``input_schema["columns"]``: dicts with ``name``, ``type`` and ``bounds``
        (numeric) or ``levels`` (binary, categorical).

    Returns
    -------
    array of shape (n, len(feature_names(columns))), float32, in that order.

    Raises ``DataError`` naming the line and column, and what would be valid, for a
    missing column or cell, a value outside the bounds or levels; never the value itself.
    """
    expected = [c["name"] for c in columns]
    missing = [c for c in expected if c not in frame.columns]
    if missing:
        raise DataError(f"missing input columns {missing}; expected {expected}")
    by = {t: [c for c in columns if c["type"] == t] for t in FEATURE_TYPES}
    parts = [np.zeros((len(frame), 0))]
    for col in by["numeric"] + by["binary"]:
        v = _cells(frame, col["name"], numbers=True)
        lo, hi = col["bounds"] if col["type"] == "numeric" else (0, 1)
        bad = (v < lo) | (v > hi) if col["type"] == "numeric" else ~np.isin(v, (0, 1))
        if bad.any():
            valid = f"between {lo} and {hi}" if col["type"] == "numeric" else "0 or 1"
            raise DataError(f"line {frame.index[bad.argmax()]}, column {col['name']!r}: "
                            f"value must be {valid}")
        parts.append(v[:, None])
    for col in by["categorical"]:
        levels = list(col["levels"])
        v = _cells(frame, col["name"], numbers=not isinstance(levels[0], str))
        bad = ~np.isin(v, levels)
        if bad.any():
            raise DataError(f"line {frame.index[bad.argmax()]}, column {col['name']!r}: "
                            f"value outside its levels {levels}")
        parts.append(np.stack([v == lvl for lvl in levels[1:]], axis=1).astype(np.float64))
    return np.concatenate(parts, axis=1).astype(np.float32)


# --- a site's CSV ------------------------------------------------------------------------------

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
    return tuple(sorted(set(_cells(frame, "site", numbers=False))))


def table_labels(rows: pd.DataFrame, schema: TabularSchema) -> np.ndarray:
    """1 for ``schema.positive``, 0 for ``schema.negative``; any other value is refused
    (a typo or an unknown outcome must not silently become a negative)."""
    text = _cells(rows, schema.label_column, numbers=False)
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
        _cells(rows, col, numbers=False)  # missing cells are refused here too
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
