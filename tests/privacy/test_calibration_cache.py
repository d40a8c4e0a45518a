"""Noise calibrations remembered on disk: the same σ as Opacus computes, and a remembered
σ that would not meet the target (planted, corrupted) is never used."""

from __future__ import annotations

import json

import pytest
from opacus.accountants.utils import get_noise_multiplier

from medfl.privacy.calibration_cache import CACHE_ENV, remembered_noise
from medfl.privacy.dp import calibrate_noise, epsilon_from_history

# cheap for the PRV accountant (well under a second), and a σ far from the bisection's bounds
CASE = dict(target_epsilon=3.0, delta=1e-3, sample_rate=1.0, steps=2, accountant="prv",
            tolerance=0.01)


@pytest.fixture(scope="module")
def reference() -> float:
    """Opacus' own calibration of CASE."""
    return get_noise_multiplier(target_epsilon=3.0, target_delta=1e-3, sample_rate=1.0,
                                steps=2, accountant="prv", epsilon_tolerance=0.01)


@pytest.fixture
def counted():
    """Opacus' calibration, counting its calls."""
    calls = []

    def calibrate(eps, delta, rate, steps, accountant, tolerance):
        calls.append(1)
        return get_noise_multiplier(target_epsilon=eps, target_delta=delta, sample_rate=rate,
                                    steps=steps, accountant=accountant,
                                    epsilon_tolerance=tolerance)

    return calibrate, calls


def _remembered(calibrate) -> float:
    return remembered_noise(calibrate, spends=epsilon_from_history, **CASE)


def test_a_calibration_is_made_once_and_remembered_as_opacus_made_it(tmp_path, monkeypatch,
                                                                     counted, reference):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    calibrate, calls = counted
    assert _remembered(calibrate) == reference
    assert _remembered(calibrate) == reference
    assert len(calls) == 1
    (entry,) = tmp_path.glob("*.json")
    assert json.loads(entry.read_text())["noise_multiplier"] == reference
    assert [p.name for p in tmp_path.iterdir()] == [entry.name]  # no temporary file left


@pytest.mark.parametrize("planted", [0.5, 2.0, "not a number", None])
def test_a_remembered_sigma_that_misses_the_target_is_recalibrated(tmp_path, monkeypatch,
                                                                   counted, reference,
                                                                   planted):
    # half the noise spends far more than ε=3; twice the noise far less (outside the
    # tolerance the bisection guarantees); a corrupted entry is a miss
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    calibrate, calls = counted
    _remembered(calibrate)
    (entry,) = tmp_path.glob("*.json")
    stored = json.loads(entry.read_text())
    stored["noise_multiplier"] = (reference * planted if isinstance(planted, float)
                                  else planted)
    entry.write_text(json.dumps(stored) if planted is not None else "{trunc")
    assert _remembered(calibrate) == reference
    assert len(calls) == 2
    assert json.loads(entry.read_text())["noise_multiplier"] == reference


def test_another_calibrations_entry_is_not_used(tmp_path, monkeypatch, counted, reference):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    calibrate, calls = counted
    _remembered(calibrate)
    (entry,) = tmp_path.glob("*.json")
    stored = json.loads(entry.read_text())
    stored["key"]["steps"] = 3
    entry.write_text(json.dumps(stored))
    assert _remembered(calibrate) == reference and len(calls) == 2


def test_without_the_variable_nothing_is_remembered(tmp_path, monkeypatch, counted, reference):
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    calibrate, calls = counted
    assert _remembered(calibrate) == reference and _remembered(calibrate) == reference
    assert len(calls) == 2 and list(tmp_path.iterdir()) == []


def test_calibrate_noise_goes_through_the_cache(tmp_path, monkeypatch, reference):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    sigma = calibrate_noise(target_epsilon=3.0, delta=1e-3, sample_rate=1.0, steps=2,
                            accountant="prv")
    assert sigma == reference
    (entry,) = tmp_path.glob("*.json")
    assert json.loads(entry.read_text())["key"] == CASE
