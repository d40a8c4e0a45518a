"""The embedded UCI heart-disease data and FLamby's Fed-Heart-Disease protocol."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import train_test_split

from medfl.data.heart import (
    FEATURE_NAMES,
    HEART_SITES,
    data_dir,
    encode_features,
    load_heart_site,
    load_site_frame,
)
from medfl.errors import DataError

# Published by FLamby (Fed-Heart-Disease) and restated in issue 2.
EXPECTED_SIZES = {"cleveland": (199, 104), "hungarian": (172, 89),
                  "switzerland": (30, 16), "va": (85, 45)}


@pytest.mark.parametrize("site", HEART_SITES)
def test_split_sizes_match_flamby(site):
    data = load_heart_site(site)
    assert (data.n_train, data.n_test) == EXPECTED_SIZES[site]
    assert data.x_train.shape == (data.n_train, len(FEATURE_NAMES)) == (data.n_train, 13)


def test_740_complete_rows_remain():
    sites = [load_heart_site(s) for s in HEART_SITES]
    assert sum(d.n_train + d.n_test for d in sites) == 740


def test_split_is_sklearn_stratified_split_of_raw_rows():
    # Recompute Cleveland's split independently from the raw file with pandas + sklearn.
    raw = pd.read_csv(data_dir() / "processed.cleveland.data", header=None, na_values="?")
    raw = raw.drop(columns=[10, 11, 12]).dropna().reset_index(drop=True)
    y = (raw[13] > 0).astype(int).to_numpy()
    _, test_rows, _, y_test = train_test_split(raw, y, test_size=0.34, random_state=43,
                                               shuffle=True, stratify=y)
    data = load_heart_site("cleveland")
    np.testing.assert_array_equal(data.y_test, y_test)
    np.testing.assert_array_equal(data.x_test[:, FEATURE_NAMES.index("age")],
                                  test_rows[0].to_numpy(dtype=np.float32))


def test_target_is_num_greater_than_zero():
    frame = load_site_frame("hungarian").drop(columns=["slope", "ca", "thal"]).dropna()
    data = load_heart_site("hungarian")
    assert int(data.y_train.sum() + data.y_test.sum()) == int((frame["num"] > 0).sum())


def test_one_hot_drops_first_level():
    frame = pd.DataFrame({"age": [50], "sex": [1], "cp": [1], "trestbps": [120], "chol": [200],
                          "fbs": [0], "restecg": [2], "thalach": [150], "exang": [0],
                          "oldpeak": [1.0]})
    x = encode_features(frame)[0]
    row = dict(zip(FEATURE_NAMES, x, strict=True))
    assert (row["cp_2"], row["cp_3"], row["cp_4"]) == (0, 0, 0)  # cp=1 is the dropped level
    assert (row["restecg_1"], row["restecg_2"]) == (0, 1)


def test_unknown_category_is_named():
    frame = pd.DataFrame({c: [1] for c in ("age", "sex", "trestbps", "chol", "fbs",
                                           "restecg", "thalach", "exang", "oldpeak")})
    frame["cp"] = [7]
    with pytest.raises(DataError, match="'cp'.*levels"):
        encode_features(frame)


def test_checksum_mismatch_is_a_clear_error(tmp_path):
    for f in data_dir().iterdir():
        shutil.copy(f, tmp_path / f.name)
    target = tmp_path / "processed.va.data"
    target.write_bytes(target.read_bytes().replace(b"63", b"64", 1))
    with pytest.raises(DataError, match="checksum mismatch for processed.va.data"):
        load_site_frame("va", directory=tmp_path)
    # the other sites are untouched and still load
    assert len(load_site_frame("cleveland", directory=tmp_path)) == 303


def test_unknown_site_lists_valid_sites():
    with pytest.raises(DataError, match="cleveland, hungarian, switzerland, va"):
        load_heart_site("boston")
