"""The synthetic clinical-risk cohort (task = "tabular" without data)."""

from __future__ import annotations

import pytest
from sklearn.linear_model import LogisticRegression

from medfl.data.synthetic_tabular import COHORT_SITES, generate_cohort
from medfl.data.tabular import load_schema, load_tabular_site, read_table, table_sites
from medfl.errors import ConfigError


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return generate_cohort(tmp_path_factory.mktemp("cohort") / "c", seed=3,
                           patients_per_site=2000)


def test_the_cohort_loads_through_the_tabular_loader_with_its_schema(cohort):
    csv, schema_path = cohort
    schema = load_schema(schema_path)
    assert table_sites(csv) == tuple(sorted(name for name, *_ in COHORT_SITES))
    site = load_tabular_site(csv, schema, "north", test_fraction=0.3, seed=0)
    assert site.x_train.shape == (1400, len(schema.feature_names))
    assert site.x_test.shape[0] == 600
    assert "Every row is synthetic" in (csv.parent / "README.md").read_text()


def test_the_outcome_follows_the_documented_risk_factors(cohort):
    csv, schema_path = cohort
    schema = load_schema(schema_path)
    frame = read_table(csv)
    x, y = schema.encode(frame), (frame["event"] == "1").to_numpy()
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    coef = dict(zip(schema.feature_names,
                    LogisticRegression(max_iter=2000).fit(x, y).coef_[0], strict=True))
    # the generator's logistic model raises risk with each of these
    for name in ("age", "systolic_bp", "cholesterol", "hba1c", "sex", "smoker"):
        assert coef[name] > 0.05, (name, coef[name])
    # the hospitals' case mix differs: west (oldest) has more events than north (youngest)
    rate = frame.groupby("site")["event"].apply(lambda s: (s == "1").mean())
    assert rate["west"] > rate["north"] + 0.1


def test_the_cohort_is_deterministic_and_reused(tmp_path, cohort):
    a = generate_cohort(tmp_path / "a", seed=3, patients_per_site=2000)[0]
    assert a.read_bytes() == cohort[0].read_bytes()
    stamp = a.stat().st_mtime_ns
    assert generate_cohort(tmp_path / "a", seed=3, patients_per_site=2000)[0].stat() \
        .st_mtime_ns == stamp
    b = generate_cohort(tmp_path / "b", seed=4, patients_per_site=2000)[0]
    assert b.read_bytes() != a.read_bytes()
    with pytest.raises(ConfigError, match="not empty or a dataset"):
        generate_cohort(tmp_path / "a", seed=5, patients_per_site=2000)
    assert a.read_bytes() == cohort[0].read_bytes()  # the existing cohort is kept


def test_bad_sizes_are_refused():
    with pytest.raises(ConfigError, match="patients_per_site 5 is invalid"):
        generate_cohort("unused", patients_per_site=5)
