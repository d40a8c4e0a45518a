"""A consortium's tabular schema: the label, the features and the sensitive attributes.

The schema (JSON, named by ``data.schema``)::

    {"label": {"column": "outcome", "names": ["no event", "event"], "negative": "0",
               "positive": "1"},
     "features": [{"name": "age", "type": "numeric", "bounds": [18, 100]},
                  {"name": "bmi", "type": "numeric", "bounds": [12, 70],
                   "missing": "impute", "indicator": true},
                  {"name": "smoker", "type": "binary"},
                  {"name": "cp", "type": "categorical", "levels": [1, 2, 3, 4],
                   "missing": "level"}],
     "sensitive": ["ethnicity", {"name": "sex", "levels": ["M", "F"]},
                   {"name": "age", "cuts": [50, 65]}]}

Numeric features need public bounds: values outside them are refused, and the feature
moments a site shares are computed on values clipped to them, which bounds one patient's
influence. Categorical levels come from the schema, never from a site's rows, so every site
encodes the same columns. Sensitive attributes are not model inputs unless also listed as
features. A sensitive entry with ``levels`` (categories, the first one the reference) or
``cuts`` (numeric band edges) is reported on as subgroups; a bare name is kept but not
reported on (its levels would otherwise have to come from a site's rows).

Missing cells (empty, ``NA``, ``?``, ... in a CSV; ``null`` in a ``/predict`` record)
are handled as each feature declares in ``"missing"``: ``"refuse"`` (the default: the
row is refused, naming line and column); ``"impute"`` (numeric and binary features: the
consortium's mean over present cells, from the accounted feature moments; it needs
``preprocessing.scaling = "federated"``, else a ``ConfigError``: impute before the run),
optionally with ``"indicator": true`` (a 0/1 feature ``<name>_missing``, after all
others); ``"level"`` (categorical: a level of its own, one more one-hot column
``<name>_missing``). See :mod:`medfl.data.missing` for why the mean, not the median.
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd

from medfl.data.tabular_encoding import FEATURE_TYPES, MISSING_MODES, encode_columns, feature_names
from medfl.errors import ConfigError

__all__ = ["RESERVED", "Feature", "FeatureSpec", "SensitiveAttribute", "TabularSchema",
           "load_schema"]

#: Columns with a meaning of their own in the CSV; they cannot be features.
RESERVED = ("site", "split")


@dataclass(frozen=True, eq=False)
class FeatureSpec:
    """What the federated path needs to know about a tabular task's features.

    ``bounds`` has shape (len(numeric_idx), 2): public (low, high) per numeric feature, in
    ``numeric_idx`` order. ``input_schema`` is the bundle's (see :meth:`TabularSchema.
    input_schema`). ``impute_idx``: positions of the ``missing: impute`` features.
    """

    feature_names: tuple[str, ...]
    numeric_idx: tuple[int, ...]
    bounds: np.ndarray
    input_schema: dict[str, Any]
    impute_idx: tuple[int, ...] = ()

    @property
    def moment_idx(self) -> tuple[int, ...]:
        """The columns whose clipped moments a site shares: the numeric features, then
        the binary ones to impute (their mean is the share of 1s)."""
        return self.numeric_idx + tuple(i for i in self.impute_idx
                                        if i not in self.numeric_idx)

    @property
    def moment_bounds(self) -> np.ndarray:
        """Shape (len(moment_idx), 2): ``bounds``, then (0, 1) per binary column."""
        extra = len(self.moment_idx) - len(self.numeric_idx)
        return np.vstack([self.bounds.reshape(-1, 2), np.tile([0.0, 1.0], (extra, 1))])


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
    """One declared model input: its column, type and public bounds (numeric) or levels."""

    name: str
    type: str
    bounds: tuple[float, float] | None = None
    levels: tuple[Any, ...] | None = None
    missing: str = "refuse"  # "refuse", "impute" or "level" (see the module doc)
    indicator: bool = False  # with "impute": a 0/1 "was missing" feature too


def _missing(obj: dict[str, Any], key: str, ftype: str) -> tuple[str, bool]:
    """A feature's ``missing`` and ``indicator`` keys, checked against its type."""
    mode = obj.get("missing", "refuse")
    if mode not in MISSING_MODES:
        close = difflib.get_close_matches(str(mode), MISSING_MODES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise _fail(f"{key}.missing", mode, f"one of {', '.join(MISSING_MODES)}{hint}")
    valid = {"numeric": ("refuse", "impute"), "binary": ("refuse", "impute"),
             "categorical": ("refuse", "level")}[ftype]
    if mode not in valid:
        raise _fail(f"{key}.missing", mode, f"for a {ftype} feature one of {list(valid)} "
                    "(\"impute\" is for numeric and binary features, \"level\" for "
                    "categorical ones)")
    indicator = obj.get("indicator", False)
    if not isinstance(indicator, bool) or (indicator and mode != "impute"):
        raise _fail(f"{key}.indicator", indicator, "true or false, and true only with "
                    "\"missing\": \"impute\"")
    return mode, indicator


def _feature(obj: Any, key: str) -> Feature:
    ftype = _keys(obj, key, required=("name", "type"),
                  optional=("bounds", "levels", "missing", "indicator"))["type"]
    if ftype not in FEATURE_TYPES:
        close = difflib.get_close_matches(str(ftype), FEATURE_TYPES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise _fail(f"{key}.type", ftype, f"one of {', '.join(FEATURE_TYPES)}{hint}")
    name = _name(obj["name"], f"{key}.name")
    mode, indicator = _missing(obj, key, ftype)
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
        return Feature(name, ftype, bounds=(float(b[0]), float(b[1])), missing=mode,
                       indicator=indicator)
    if ftype == "categorical":
        lv = obj.get("levels")
        ok = isinstance(lv, list) and len(lv) >= 2 and len(set(lv)) == len(lv) and (
            all(map(_number, lv)) or all(isinstance(x, str) and x.strip() == x and x
                                         for x in lv))
        if not ok:
            raise _fail(f"{key}.levels", lv, "a list of at least 2 distinct levels, all "
                        "numbers or all non-empty strings (the first is the reference level)")
        return Feature(name, ftype, levels=tuple(lv), missing=mode)
    return Feature(name, ftype, missing=mode, indicator=indicator)


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
        schema = cls(column, (names[0], names[1]), str(positive).strip(), features,
                     tuple(sensitive), str(negative).strip(), attrs)
        encoded = schema.feature_names
        clash = sorted({n for n in encoded if encoded.count(n) > 1})
        if clash:
            raise _fail("features", clash, "encoded feature names that are unique (a "
                        "\"<name>_missing\" feature or one-hot \"<name>_<level>\" "
                        "repeats another name: rename a feature or a level)")
        return schema

    # --- the encoding ------------------------------------------------------------------

    def columns(self) -> list[dict[str, Any]]:
        """The raw input columns, as a bundle's ``input_schema["columns"]``."""
        out: list[dict[str, Any]] = []
        for f in self.features:  # _feature sets bounds on numeric, levels on categorical
            if f.type == "numeric":
                bounds = cast(tuple[float, float], f.bounds)
                out.append({"name": f.name, "type": "numeric", "bounds": list(bounds)})
            else:
                levels = (list(cast(tuple[Any, ...], f.levels)) if f.type == "categorical"
                          else [0, 1])
                out.append({"name": f.name, "type": f.type, "levels": levels})
            if f.missing != "refuse":  # absent: refuse (bundles made before the key)
                out[-1]["missing"] = f.missing
            if f.indicator:
                out[-1]["indicator"] = True
        return out

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The encoded features' names (see :func:`feature_names`)."""
        return feature_names(self.columns())

    @property
    def numeric_idx(self) -> tuple[int, ...]:
        """Positions of the numeric features: the encoding puts them first."""
        return tuple(range(sum(f.type == "numeric" for f in self.features)))

    @property
    def impute_idx(self) -> tuple[int, ...]:
        """Positions of the ``missing: impute`` features (numeric, then binary ones)."""
        values = ([f for f in self.features if f.type == "numeric"]
                  + [f for f in self.features if f.type == "binary"])
        return tuple(i for i, f in enumerate(values) if f.missing == "impute")

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
        """A bundle's ``input_schema``: raw columns, encoded feature names, sensitive ones."""
        return {"columns": self.columns(), "features": list(self.feature_names),
                "sensitive_attributes": list(self.sensitive)}

    def spec(self) -> FeatureSpec:
        """What the federated path needs about these features (:class:`FeatureSpec`)."""
        return FeatureSpec(self.feature_names, self.numeric_idx, self.bounds,
                           self.input_schema(), self.impute_idx)


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
