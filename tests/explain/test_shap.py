"""SHAP values of tabular logits against closed forms and the Shapley definition."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from medfl.explain import mean_abs_shap, shap_values


def _linear(w: list[float], b: float) -> nn.Linear:
    layer = nn.Linear(len(w), 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([w]))
        layer.bias.fill_(b)
    return layer


def _logits(model: nn.Module, rows: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(rows, dtype=torch.float32)).reshape(-1).double().numpy()


def _mlp(n_features: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(n_features, 8), nn.ReLU(), nn.Linear(8, 1))


W = [0.5, -2.0, 1.25, 0.0, 3.0]


@pytest.mark.parametrize("model", [
    _linear(W, 0.7),
    nn.Sequential(_linear(W, 0.7)),  # build_model's logreg
    # Two stacked linear layers: still linear (weights W), but not one nn.Linear, so this
    # goes through the exact coalition enumeration instead of the linear shortcut.
    nn.Sequential(_linear(W, 0.7), _linear([1.0], 0.0)),
])
def test_linear_logit_shap_is_weight_times_distance_from_background_mean(model):
    # Prepare
    rng = np.random.default_rng(0)
    background = rng.normal(2.0, 1.5, size=(30, 5))
    x = rng.normal(size=(7, 5))
    mu = background.mean(axis=0)
    w = np.array(W)
    # Execute
    values = shap_values(model, x, background=background)
    importance = mean_abs_shap(model, x, background=background)
    # Assert
    np.testing.assert_allclose(values, w * (x - mu), atol=1e-5)
    np.testing.assert_allclose(importance, np.abs(w) * np.abs(x - mu).mean(axis=0), atol=1e-5)
    assert values.shape == (7, 5)


def test_large_background_is_subsampled_to_max_background_distinct_rows_by_seed():
    # Row i of the background is 2**i in feature 0, so 10 x (the mean of the rows used) is
    # an integer whose set bits are exactly the rows used.
    background = np.zeros((40, 2))
    background[:, 0] = 2.0 ** np.arange(40)
    x = np.zeros((1, 2))
    model = _linear([1.0, 1.0], 0.0)
    values = shap_values(model, x, background=background, max_background=10, seed=3)
    used = round(-values[0, 0] * 10)  # SHAP = 1 * (0 - mean)
    assert bin(used).count("1") == 10
    again = shap_values(model, x, background=background, max_background=10, seed=3)
    np.testing.assert_array_equal(values, again)


def test_mlp_shap_values_add_up_to_logit_minus_mean_background_logit():
    rng = np.random.default_rng(1)
    background, x = rng.normal(size=(20, 6)), rng.normal(size=(5, 6))
    model = _mlp(6, seed=0).train()
    values = shap_values(model, x, background=background)
    expected_value = _logits(model, background).mean()
    np.testing.assert_allclose(values.sum(axis=1) + expected_value, _logits(model, x),
                               atol=1e-4)
    assert model.training  # the caller's mode is restored


def test_mlp_shap_values_match_the_shapley_formula():
    # Reference: phi_i = sum over S not containing i of |S|! (M-|S|-1)! / M!
    # * (v(S + i) - v(S)), with v(S) = mean over background rows b of f(x_S, b_rest).
    rng = np.random.default_rng(2)
    m = 4
    background, x = rng.normal(size=(5, m)), rng.normal(size=(3, m))
    model = _mlp(m, seed=1)

    def v(row: np.ndarray, subset: tuple[int, ...]) -> float:
        mixed = background.copy()
        mixed[:, list(subset)] = row[list(subset)]
        return float(_logits(model, mixed).mean())

    expected = np.zeros((len(x), m))
    for r, row in enumerate(x):
        for i in range(m):
            others = [j for j in range(m) if j != i]
            for size in range(m):
                weight = math.factorial(size) * math.factorial(m - size - 1) / math.factorial(m)
                for s in itertools.combinations(others, size):
                    expected[r, i] += weight * (v(row, tuple(sorted(s + (i,)))) - v(row, s))
    np.testing.assert_allclose(shap_values(model, x, background=background), expected,
                               atol=1e-5)


def test_bad_inputs_are_refused_with_the_shape_received():
    model = _mlp(3, seed=0)
    background = np.zeros((4, 3))
    with pytest.raises(ValueError, match=r"x has 0 rows \(shape \(0, 3\)\)"):
        shap_values(model, np.zeros((0, 3)), background=background)
    with pytest.raises(ValueError, match="background has 2 features but x has 3"):
        shap_values(model, np.zeros((1, 3)), background=np.zeros((4, 2)))
    with pytest.raises(ValueError, match="2-D"):
        mean_abs_shap(model, np.zeros(3), background=background)
