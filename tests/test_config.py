"""Run config: parsed once, validated with errors that name the key and what is valid."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ROOT, default_run_config, run_config, scenario_run_config

from medfl.config import KNOWN_KEYS, parse_run_config
from medfl.errors import ConfigError

SCENARIOS = sorted((ROOT / "simulations").glob("*.toml"))
SCENARIOS = [p for p in SCENARIOS if p.name != "flwr-config.toml"]


def test_pyproject_defaults_parse_into_typed_config():
    cfg = parse_run_config(default_run_config())
    assert cfg.privacy.enabled is True
    assert cfg.privacy.target_epsilon == 3.0
    assert cfg.train.batch_size == 128 and cfg.train.lr == 1.0  # tuned for DP (BENCHMARKS.md)
    assert cfg.evaluation.personal_epochs == 1 and cfg.transport.compression == "none"
    assert cfg.model.name == "logreg"


def test_pyproject_declares_every_schema_key_and_no_other():
    assert set(default_run_config()) == set(KNOWN_KEYS)


def test_unknown_key_suggests_the_nearest_valid_one():
    raw = default_run_config()
    raw["privacy.target-epsilom"] = 1.0
    with pytest.raises(ConfigError, match="'privacy.target-epsilom'.*did you mean "
                                          "'privacy.target-epsilon'"):
        parse_run_config(raw)


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("privacy.target-epsilon", -1.0, "a number > 0"),
    ("privacy.target-delta", 1.5, r"a number in \(0, 1\)"),
    ("privacy.accountant", "gdp", "one of rdp, prv"),
    ("seed", -1, "an integer >= 0"),
    ("num-server-rounds", 0, "an integer >= 1"),
    ("num-server-rounds", 2.5, "an integer >= 1"),
    ("privacy.enabled", "yes", "true or false"),
    ("run-name", "../escape", "a name without '/'"),
])
def test_invalid_value_names_key_value_and_what_is_valid(key, value, expected):
    raw = default_run_config()
    raw[key] = value
    with pytest.raises(ConfigError, match=rf"{key!r} has value .*expected {expected}"):
        parse_run_config(raw)


def test_missing_key_points_at_pyproject():
    raw = default_run_config()
    del raw["seed"]
    with pytest.raises(ConfigError, match=r"missing: \['seed'\].*pyproject.toml"):
        parse_run_config(raw)


def test_int_is_accepted_for_float_keys():
    # `--run-config "privacy.target-epsilon=1"` arrives as an int from Flower's parser.
    assert parse_run_config(run_config(privacy__target_epsilon=1)).privacy.target_epsilon == 1.0


def test_config_is_frozen():
    cfg = parse_run_config(default_run_config())
    with pytest.raises(AttributeError):
        cfg.seed = 3  # type: ignore[misc]


def test_scenarios_exist():
    assert len(SCENARIOS) >= 3


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_every_scenario_overrides_only_known_keys_and_parses(path: Path):
    from flwr.common.config import parse_config_args

    overrides = parse_config_args([str(path)])
    unknown = set(overrides) - set(default_run_config())
    assert not unknown, f"{path.name} sets keys missing from pyproject: {sorted(unknown)}"
    parse_run_config(scenario_run_config(path))
