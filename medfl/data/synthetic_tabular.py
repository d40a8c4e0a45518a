"""A synthetic clinical-risk cohort: the built-in data of ``task = "tabular"``.

Simulating a large consortium needs more patients than the 920 of the UCI heart-disease
files: 1,000 virtual sites of ~100 patients each. This module writes a deterministic cohort
of synthetic patients (no real person behind any row) as a hospital would export it, a CSV
plus the consortium's JSON schema, so it goes through the same loader, encoder and
egress contract as a real table.

Each patient has age, sex, systolic blood pressure, total cholesterol, BMI, HbA1c, smoking
and physical activity; the binary outcome ``event`` (a 10-year cardiovascular event) is
drawn from a logistic model of those risk factors with the usual signs. The four synthetic
hospitals differ in case mix (age, BMI and smoking), so the natural split is non-IID;
``data.partition`` re-splits the pooled rows into any number of sites.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from medfl.errors import ConfigError
from medfl.io import publish_dataset

__all__ = ["COHORT_SITES", "GENERATOR_VERSION", "SCHEMA", "cohort_key", "generate_cohort"]

logger = logging.getLogger(__name__)

#: Bumped whenever the same arguments would write different rows (invalidates caches).
GENERATOR_VERSION = "1"
_PARAMS_FILE = "generator.json"

#: The consortium's schema of the cohort (the format of :mod:`medfl.data.tabular`).
SCHEMA = {
    "label": {"column": "event", "names": ["no event", "event"], "negative": "0",
              "positive": "1"},
    "features": [
        {"name": "age", "type": "numeric", "bounds": [18, 100]},
        {"name": "systolic_bp", "type": "numeric", "bounds": [70, 250]},
        {"name": "cholesterol", "type": "numeric", "bounds": [1.5, 15.0]},
        {"name": "bmi", "type": "numeric", "bounds": [12, 70]},
        {"name": "hba1c", "type": "numeric", "bounds": [3.0, 20.0]},
        {"name": "sex", "type": "binary"},
        {"name": "smoker", "type": "binary"},
        {"name": "activity", "type": "categorical", "levels": ["high", "moderate", "low"]},
    ],
    "sensitive": [{"name": "sex", "levels": [0, 1]}, {"name": "age", "cuts": [50, 65]}],
}

#: (name, mean age, mean BMI, smoking rate): the four hospitals' case mix.
COHORT_SITES = (("north", 52.0, 26.0, 0.15), ("south", 61.0, 28.5, 0.22),
                ("east", 57.0, 30.0, 0.30), ("west", 66.0, 27.0, 0.12))


def cohort_key(seed: int, patients_per_site: int) -> str:
    """Identify a cohort: 12 hex digits of the sha256 of the generator version, its
    arguments, the sites' case mix and the schema (equal keys mean equal rows)."""
    params = {"version": GENERATOR_VERSION, "seed": seed, "per_site": patients_per_site,
              "sites": COHORT_SITES, "schema": SCHEMA}
    return hashlib.sha256(json.dumps(params).encode()).hexdigest()[:12]


def _holds(out_dir: Path, key: str) -> bool:
    try:
        return (json.loads((out_dir / _PARAMS_FILE).read_text()).get("key") == key
                and (out_dir / "cohort.csv").is_file() and (out_dir / "schema.json").is_file())
    except (OSError, ValueError):
        return False


def _site_rows(name: str, mean_age: float, mean_bmi: float, smoking: float, n: int,
               rng: np.random.Generator) -> pd.DataFrame:
    age = np.clip(rng.normal(mean_age, 11.0, n), 18, 100).round()
    sex = (rng.random(n) < 0.5).astype(int)  # 1: male
    sbp = np.clip(rng.normal(118 + 0.45 * (age - 40) + 4 * sex, 16.0), 70, 250).round()
    chol = np.clip(rng.normal(5.2 - 0.2 * sex, 1.0, n), 1.5, 15.0).round(1)
    bmi = np.clip(rng.normal(mean_bmi, 4.5, n), 12, 70).round(1)
    hba1c = np.clip(rng.normal(5.4 + 0.04 * (bmi - 25), 0.6, n), 3.0, 20.0).round(1)
    smoker = (rng.random(n) < smoking).astype(int)
    activity = rng.choice(["high", "moderate", "low"], size=n, p=[0.3, 0.4, 0.3])
    logit = (-1.1 + 0.06 * (age - 58) + 0.5 * sex + 0.02 * (sbp - 135)
             + 0.3 * (chol - 5.1) + 0.05 * (bmi - 28) + 0.45 * (hba1c - 5.6) + 0.8 * smoker
             + np.select([activity == "moderate", activity == "low"], [0.3, 0.6], 0.0))
    event = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(int)
    return pd.DataFrame({"site": name, "age": age.astype(int), "sex": sex, "systolic_bp":
                         sbp.astype(int), "cholesterol": chol, "bmi": bmi, "hba1c": hba1c,
                         "smoker": smoker, "activity": activity, "event": event})


def generate_cohort(out_dir: Path, *, seed: int = 0, patients_per_site: int = 25_000
                    ) -> tuple[Path, Path]:
    """Write the cohort (``cohort.csv``, ``schema.json``, ``README.md``) into ``out_dir``.

    Site ``i`` draws from ``np.random.default_rng([seed, i])``. The folder is created
    atomically and reused when it already holds a cohort with the same parameters.
    Returns the paths of the CSV and the schema.
    """
    out_dir = Path(out_dir)
    for name, value, low in (("seed", seed, 0), ("patients_per_site", patients_per_site, 20)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"synthetic cohort {name} {value!r} is invalid; use an integer "
                              f">= {low}")
    key = cohort_key(seed, patients_per_site)

    def render(tmp: Path) -> None:
        start = time.perf_counter()
        frame = pd.concat([_site_rows(*site, patients_per_site, np.random.default_rng([seed, i]))
                           for i, site in enumerate(COHORT_SITES)], ignore_index=True)
        frame.to_csv(tmp / "cohort.csv", index=False)
        (tmp / "schema.json").write_text(json.dumps(SCHEMA, indent=2) + "\n")
        (tmp / _PARAMS_FILE).write_text(json.dumps(
            {"key": key, "version": GENERATOR_VERSION, "seed": seed,
             "patients_per_site": patients_per_site}, indent=2) + "\n")
        (tmp / "README.md").write_text(
            "# Synthetic clinical-risk cohort (MedFL)\n\nGenerated by "
            "`medfl.data.synthetic_tabular` (version "
            f"{GENERATOR_VERSION}, seed {seed}, {patients_per_site} patients at each of "
            f"{len(COHORT_SITES)} hospitals). Every row is synthetic: no real patient is "
            "behind any value. The outcome follows a logistic model of the risk factors; it "
            "is for testing federated pipelines, not for any clinical conclusion.\n")
        logger.info("wrote a synthetic cohort of %d patients in %.1f s", len(frame),
                    time.perf_counter() - start)

    if not _holds(out_dir, key):
        publish_dataset(out_dir, key, render, holds=_holds)
    return out_dir / "cohort.csv", out_dir / "schema.json"
