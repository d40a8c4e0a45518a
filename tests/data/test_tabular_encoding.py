"""The shared encoder against an independent pandas reference, on random tables.

The reference is the pandas encoder the project used before the plain-Python one (per
column Series, ``pd.to_numeric``): the rewrite must give the same matrix, or the same
error message, for every table, valid or not; and a served record must encode as its
CSV text does.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medfl.data.heart import input_schema
from medfl.data.tabular_encoding import MISSING, encode_columns
from medfl.errors import DataError

COLUMNS = [
    {"name": "age", "type": "numeric", "bounds": [18.0, 100.0]},
    {"name": "smoker", "type": "binary", "levels": [0, 1]},
    {"name": "cp", "type": "categorical", "levels": [1, 2, 3, 4]},
    {"name": "ward", "type": "categorical", "levels": ["a", "b", "c"]},
]


def _reference(frame: pd.DataFrame, columns: list[dict]) -> np.ndarray:
    """The former pandas encoder, restated (missing-cell, number and range checks)."""
    def cells(name, numbers):
        raw = frame[name]
        text = raw.astype(str).str.strip()
        missing = raw.isna().to_numpy() | text.str.lower().isin(MISSING).to_numpy()
        if missing.any():
            raise DataError(f"line {frame.index[missing.argmax()]}, column {name!r}: missing "
                            "value (every feature, label and sensitive cell must be filled)")
        if not numbers:
            return text.to_numpy()
        values = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            raise DataError(f"line {frame.index[bad.argmax()]}, column {name!r}: not a "
                            "finite number")
        return values

    parts = [np.zeros((len(frame), 0))]
    for col in ([c for c in columns if c["type"] == "numeric"]
                + [c for c in columns if c["type"] == "binary"]):
        v = cells(col["name"], True)
        lo, hi = col["bounds"] if col["type"] == "numeric" else (0, 1)
        bad = (v < lo) | (v > hi) if col["type"] == "numeric" else ~np.isin(v, (0, 1))
        if bad.any():
            valid = f"between {lo} and {hi}" if col["type"] == "numeric" else "0 or 1"
            raise DataError(f"line {frame.index[bad.argmax()]}, column {col['name']!r}: "
                            f"value must be {valid}")
        parts.append(v[:, None])
    for col in [c for c in columns if c["type"] == "categorical"]:
        levels = list(col["levels"])
        v = cells(col["name"], not isinstance(levels[0], str))
        bad = ~np.isin(v, levels)
        if bad.any():
            raise DataError(f"line {frame.index[bad.argmax()]}, column {col['name']!r}: "
                            f"value outside its levels {levels}")
        parts.append(np.stack([v == lvl for lvl in levels[1:]], axis=1).astype(np.float64))
    return np.concatenate(parts, axis=1).astype(np.float32)


CELLS = {
    "age": ["18", "100", "54.5", " 63 ", "1e2", "+40", "17.9", "101", "abc", "inf", "NaN",
            "", "?", "1_00", "0x20"],
    "smoker": ["0", "1", "1.0", " 0 ", "2", "-1", "0.5", "yes", "NA", "none"],
    "cp": ["1", "2", "3", "4", "4.0", "5", "0", "x", "null", "n/a"],
    "ward": ["a", "b", "c", " c ", "A", "d", "", "N/A", "1"],
}


def _random_table(rng: np.random.Generator, n: int, p_bad: float) -> pd.DataFrame:
    good = {"age": 7, "smoker": 4, "cp": 5, "ward": 4}  # the first entries are valid
    data = {}
    for name, cells in CELLS.items():
        pick = np.where(rng.random(n) < p_bad, rng.integers(0, len(cells), n),
                        rng.integers(0, good[name], n))
        data[name] = [cells[i] for i in pick]
    frame = pd.DataFrame(data, dtype=str)
    frame.index = pd.RangeIndex(2, n + 2)
    return frame


def _outcome(fn):
    try:
        return fn()
    except DataError as exc:
        return str(exc)


@pytest.mark.parametrize("seed", range(40))
def test_the_encoder_equals_the_pandas_reference_on_random_tables(seed):
    rng = np.random.default_rng(seed)
    frame = _random_table(rng, int(rng.integers(1, 6)), p_bad=[0.0, 0.05, 0.3][seed % 3])
    got = _outcome(lambda: encode_columns(frame, COLUMNS))
    want = _outcome(lambda: _reference(frame, COLUMNS))
    if isinstance(want, str):
        assert got == want
    else:
        np.testing.assert_array_equal(got, want)


def test_a_mapping_of_python_values_encodes_as_its_csv_text():
    rng = np.random.default_rng(0)
    records = [{"age": float(rng.uniform(18, 100)), "smoker": int(rng.integers(0, 2)),
                "cp": int(rng.integers(1, 5)), "ward": str(rng.choice(["a", "b", "c"]))}
               for _ in range(50)]
    table = {c["name"]: [r[c["name"]] for r in records] for c in COLUMNS}
    text = pd.DataFrame({k: [repr(v) if isinstance(v, float) else str(v) for v in cells]
                         for k, cells in table.items()})
    np.testing.assert_array_equal(encode_columns(table, COLUMNS),
                                  _reference(text, COLUMNS))


def test_a_mapping_names_rows_from_zero_or_as_told():
    table = {"age": [50, 500]} | {c: [0, 0] for c in ("smoker",)} | {"cp": [1, 1],
                                                                    "ward": ["a", "a"]}
    with pytest.raises(DataError, match=r"^line 1, column 'age': value must be between"):
        encode_columns(table, COLUMNS)
    with pytest.raises(DataError, match=r"^line 7, column 'age'"):
        encode_columns(table, COLUMNS, lines=[6, 7])


def test_serving_validates_random_heart_records_as_their_csv_text_encodes():
    from medfl.data.scaling import Standardizer
    from medfl.serving.tabular import InputError, TabularModel

    columns = input_schema()["columns"]
    model = TabularModel.__new__(TabularModel)
    model.columns, model.scaler = columns, Standardizer((), (), ())
    rng = np.random.default_rng(1)
    for _ in range(100):
        rec = {}
        for c in columns:
            if c["type"] == "numeric":
                lo, hi = c["bounds"]
                rec[c["name"]] = round(float(rng.uniform(lo - 5, hi + 5)), 1)
            else:
                rec[c["name"]] = int(rng.choice([*c["levels"], 9]))
        text = pd.DataFrame({k: [str(v)] for k, v in rec.items()}, dtype=str)
        want = _outcome(lambda text=text: _reference(text, columns))
        try:
            got = model.validate([rec])
        except InputError as exc:
            assert isinstance(want, str), exc  # refused by serving: refused by the reference
            continue
        np.testing.assert_array_equal(got, want)
