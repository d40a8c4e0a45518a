"""The embedded UCI heart-disease dataset: four hospitals, FLamby's Fed-Heart-Disease protocol.

The raw files ship unmodified inside the package (CC BY 4.0, attribution in
``uci_heart_disease/README.md`` and ``LICENSE``) and are verified by sha256 before use.
Preprocessing follows FLamby so results are comparable with the published benchmark:
drop ``slope``, ``ca``, ``thal``; drop rows with a missing value; one-hot ``cp`` and
``restecg`` with the first level dropped; target ``num > 0``; a per-site 66/34 split with
``train_test_split(random_state=43, shuffle=True)``, stratified when both classes have more
than two rows.
"""

from __future__ import annotations

import hashlib
import logging
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from medfl.data.types import SiteData
from medfl.errors import DataError

logger = logging.getLogger(__name__)

RAW_COLUMNS = (
    "age", "sex", "cp", "trestbps", "chol", "fbs", "restecg",
    "thalach", "exang", "oldpeak", "slope", "ca", "thal", "num",
)
DROPPED_COLUMNS = ("slope", "ca", "thal")
#: Raw input columns a caller provides (the serving schema uses exactly these names).
INPUT_COLUMNS = (
    "age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalach", "exang", "oldpeak",
)
NUMERIC_COLUMNS = ("age", "trestbps", "chol", "thalach", "oldpeak")
BINARY_COLUMNS = ("sex", "fbs", "exang")
#: Categorical levels are fixed by the data dictionary, not read from a site's rows, so
#: every site produces the same columns even when it lacks a level.
CATEGORICAL_LEVELS = {"cp": (1, 2, 3, 4), "restecg": (0, 1, 2)}
FEATURE_NAMES = (
    *NUMERIC_COLUMNS,
    *BINARY_COLUMNS,
    *(f"{col}_{lvl}" for col, lvls in CATEGORICAL_LEVELS.items() for lvl in lvls[1:]),
)
#: Publicly known plausible ranges (data dictionary / physiology), used to clip values
#: before any statistic leaves a site, which bounds one patient's influence.
PUBLIC_BOUNDS = {
    "age": (18.0, 100.0),
    "trestbps": (60.0, 220.0),
    "chol": (0.0, 650.0),
    "thalach": (50.0, 220.0),
    "oldpeak": (-3.0, 7.0),
}
LABEL_NAMES = ("no disease", "disease")
SENSITIVE_ATTRIBUTES = ("sex", "age")

HEART_SITES = ("cleveland", "hungarian", "switzerland", "va")
_FILES = {site: f"processed.{site}.data" for site in HEART_SITES}
_SHA256 = {
    "cleveland": "a74b7efa387bc9d108d7d0115d831fe9b414b29ae7124f331b622b4efa0427c8",
    "hungarian": "d1ad108f785768cd3d7e82dc522e6f5a61eea93cccfb3a46ee8076f73fc3d796",
    "switzerland": "834a405ccf5b66ab4056bb77794adc8df0b7125186454c0a1d002d33c6c3b314",
    "va": "e7c93d8d0d2acdadfa4c5e8de768e2191e7f618b952e29623f1f0d5949ff6b8f",
}
TEST_SIZE = 0.34
SPLIT_SEED = 43


def data_dir() -> Path:
    """Folder holding the embedded raw files (inside the installed package)."""
    return Path(str(resources.files("medfl.data") / "uci_heart_disease"))


def site_file_name(site: str) -> str:
    """The raw file a hospital's data folder holds (deployment: node-config data-path)."""
    _check_site(site)
    return _FILES[site]


def _check_site(site: str) -> None:
    if site not in HEART_SITES:
        raise DataError(
            f"unknown heart-disease site {site!r}; valid sites are {', '.join(HEART_SITES)}"
        )


def load_site_frame(site: str, *, directory: Path | None = None,
                    verify: bool = True) -> pd.DataFrame:
    """Read one hospital's raw file after verifying its sha256.

    Returns all 14 raw columns, ``?`` parsed as NaN, in file order. ``verify=False`` is
    for a hospital's own export in the same format (a ``directory`` is then required):
    the published checksum cannot apply to it.
    """
    if not verify and directory is None:
        raise DataError("the embedded data is always verified; verify=False needs a folder")
    _check_site(site)
    path = (directory or data_dir()) / _FILES[site]
    if not path.is_file():
        raise DataError(f"heart-disease file for site {site!r} is missing ({_FILES[site]})")
    try:
        raw = path.read_bytes()
    except OSError as exc:  # the OS message would carry the path: name the file only
        raise DataError(f"cannot read {_FILES[site]} ({type(exc).__name__})") from None
    if verify and hashlib.sha256(raw).hexdigest() != _SHA256[site]:
        # The digest of the file actually read is not quoted: it would fingerprint it.
        raise DataError(
            f"checksum mismatch for {_FILES[site]}: its sha256 is not the published "
            f"{_SHA256[site]}; the file was modified or corrupted (reinstall medfl, or "
            "restore the original file)"
        )
    try:
        frame = pd.read_csv(path, header=None, names=list(RAW_COLUMNS), na_values="?")
    except (pd.errors.ParserError, ValueError) as exc:  # pandas' text may quote the data
        raise DataError(f"{_FILES[site]} is not a 14-column comma-separated file "
                        f"({type(exc).__name__})") from None
    if frame.shape[1] != len(RAW_COLUMNS):
        raise DataError(f"{_FILES[site]} has {frame.shape[1]} columns, expected 14")
    return frame


def encode_features(frame: pd.DataFrame) -> np.ndarray:
    """Map raw input columns to the model's unscaled feature matrix (FEATURE_NAMES order).

    Raises ``DataError`` naming the column when a categorical value is outside its levels.
    """
    missing = [c for c in INPUT_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"missing input columns {missing}; expected {list(INPUT_COLUMNS)}")
    parts = [frame[list(NUMERIC_COLUMNS + BINARY_COLUMNS)].to_numpy(dtype=np.float64)]
    for col, levels in CATEGORICAL_LEVELS.items():
        values = frame[col].to_numpy()
        bad = ~np.isin(values, levels)
        if bad.any():
            raise DataError(f"column {col!r} has values outside its levels {list(levels)}")
        parts.append(np.stack([(values == lvl) for lvl in levels[1:]], axis=1).astype(np.float64))
    return np.concatenate(parts, axis=1).astype(np.float32)


def load_heart_site(site: str, *, directory: Path | None = None,
                    verify: bool = True) -> SiteData:
    """Load one hospital with FLamby's Fed-Heart-Disease preprocessing and split."""
    frame = load_site_frame(site, directory=directory, verify=verify)
    frame = frame.drop(columns=list(DROPPED_COLUMNS)).dropna().reset_index(drop=True)
    y = (frame["num"].to_numpy() > 0).astype(np.int64)
    x = encode_features(frame)
    sensitive = frame[list(SENSITIVE_ATTRIBUTES)].reset_index(drop=True)
    counts = np.bincount(y, minlength=2)
    stratify = y if counts.min() > 2 else None
    idx = np.arange(len(y))
    idx_train, idx_test = train_test_split(
        idx, test_size=TEST_SIZE, random_state=SPLIT_SEED, shuffle=True, stratify=stratify
    )
    logger.debug("loaded site %s: %d train / %d test rows", site, len(idx_train), len(idx_test))
    return SiteData.from_split(site, x, y, sensitive, idx_train, idx_test)


def input_schema() -> dict:
    """The raw input columns a caller sends, with types, levels and public bounds."""
    cols = []
    for c in INPUT_COLUMNS:
        if c in CATEGORICAL_LEVELS:
            cols.append({"name": c, "type": "categorical", "levels": list(CATEGORICAL_LEVELS[c])})
        elif c in BINARY_COLUMNS:
            cols.append({"name": c, "type": "binary", "levels": [0, 1]})
        else:
            cols.append({"name": c, "type": "numeric", "bounds": list(PUBLIC_BOUNDS[c])})
    return {"columns": cols, "features": list(FEATURE_NAMES),
            "sensitive_attributes": list(SENSITIVE_ATTRIBUTES)}
