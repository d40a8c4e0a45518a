"""DP-SGD: noise calibration, accounting across rounds, clipping, budget refusal."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import run_config
from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier

from medfl import site as site_lib
from medfl import tasks
from medfl.config import ModelConfig, parse_run_config
from medfl.data.scaling import local_standardizer
from medfl.errors import PrivacyBudgetExceeded
from medfl.models import build_model
from medfl.privacy.audit import AUDIT_SIGMA
from medfl.privacy.dp import DPPlan, attach_dp, calibrate_noise, epsilon_from_history
from medfl.training import make_loader, train_epochs


def _opacus_epsilon(sigma: float, q: float, steps: int, delta: float,
                    accountant: str = "rdp") -> float:
    acc = create_accountant(accountant)
    for _ in range(steps):
        acc.step(noise_multiplier=sigma, sample_rate=q)
    return acc.get_epsilon(delta=delta)


def test_calibration_is_opacus_get_noise_multiplier():
    sigma = calibrate_noise(target_epsilon=3.0, delta=1e-3, sample_rate=1 / 7, steps=70,
                            accountant="rdp")
    assert sigma == get_noise_multiplier(target_epsilon=3.0, target_delta=1e-3,
                                         sample_rate=1 / 7, steps=70, accountant="rdp")


def test_calibration_with_a_prior_release_stays_within_target():
    prior = [(5.0, 1.0, 1)]
    sigma = calibrate_noise(target_epsilon=3.0, delta=1e-3, sample_rate=0.2, steps=50,
                            accountant="rdp", prior=prior)
    total = epsilon_from_history([*prior, (sigma, 0.2, 50)], delta=1e-3, accountant="rdp")
    assert 3.0 - 0.02 <= total <= 3.0
    alone = calibrate_noise(target_epsilon=3.0, delta=1e-3, sample_rate=0.2, steps=50,
                            accountant="rdp")
    assert sigma > alone  # the prior release costs budget, so DP-SGD needs more noise


def test_prior_that_spends_the_whole_budget_is_refused():
    with pytest.raises(PrivacyBudgetExceeded, match="already spend"):
        calibrate_noise(target_epsilon=0.5, delta=1e-3, sample_rate=0.2, steps=10,
                        accountant="rdp", prior=[(0.5, 1.0, 1)])


def test_plan_uses_opacus_poisson_rate_and_steps():
    plan = DPPlan.make(n_train=199, batch_size=32, local_epochs=2, rounds=5, target_epsilon=3.0,
                       delta=1e-3, max_grad_norm=1.0, accountant="rdp")
    assert plan.sample_rate == pytest.approx(1 / 7)  # ceil(199 / 32) = 7 batches
    assert plan.steps_per_round == 14
    eps = _opacus_epsilon(plan.noise_multiplier, plan.sample_rate, 70, 1e-3)
    assert 2.98 <= eps <= 3.0


def _fit_rounds(rounds: int, **overrides):
    cfg = parse_run_config(run_config(num_server_rounds=rounds, **overrides))
    data = site_lib.load_site(cfg, "hungarian")
    scaler = local_standardizer(data.x_train,
                                columns=tasks.task_for(cfg).feature_spec().numeric_idx)
    torch.manual_seed(0)
    weights = build_model(cfg.model, n_features=13).state_dict()
    plan, history, metrics = None, [], []
    for r in range(1, rounds + 1):
        res = site_lib.fit(cfg, data, weights=weights, scaler=scaler, server_round=r,
                           plan=plan, history=history, seed=r)
        plan, history, weights = res.plan, res.history, res.weights
        metrics.append(res.metrics.to_metrics())  # what leaves the site
    return cfg, plan, history, metrics, weights, data, scaler


def test_epsilon_is_cumulative_and_matches_an_independent_opacus_accountant():
    cfg, plan, history, metrics, *_ = _fit_rounds(3)
    eps = [m["epsilon"] for m in metrics]
    assert eps[0] < eps[1] < eps[2] <= cfg.privacy.target_epsilon
    last = metrics[-1]
    assert last["steps"] == 3 * math.ceil(172 / cfg.train.batch_size)  # Hungary: 172 rows
    independent = _opacus_epsilon(last["noise-multiplier"], last["sample-rate"], last["steps"],
                                  last["delta"], cfg.privacy.accountant)
    assert last["epsilon"] == pytest.approx(independent, rel=1e-9)
    # DP-SGD is calibrated so that, with the audit's members' histogram (one Gaussian
    # release at AUDIT_SIGMA, planned after training) composed, the run spends its target
    acc = create_accountant(cfg.privacy.accountant)
    for _ in range(last["steps"]):
        acc.step(noise_multiplier=last["noise-multiplier"], sample_rate=last["sample-rate"])
    acc.step(noise_multiplier=AUDIT_SIGMA, sample_rate=1.0)
    assert acc.get_epsilon(delta=last["delta"]) == pytest.approx(cfg.privacy.target_epsilon,
                                                                 abs=0.02)


def test_a_round_beyond_the_plan_is_refused_before_training():
    cfg, plan, history, _, weights, data, scaler = _fit_rounds(2)
    with pytest.raises(PrivacyBudgetExceeded, match="round 3 would raise ε from 2.9.* past "
                                                    "this run's target ε=3.0"):
        site_lib.fit(cfg, data, weights=weights, scaler=scaler, server_round=3, plan=plan,
                     history=history, seed=3)


def test_dp_off_reports_infinite_epsilon_never_zero():
    *_, metrics, _, _, _ = _fit_rounds(1, privacy__enabled=False)
    assert metrics[0]["epsilon"] == math.inf


def test_per_sample_gradients_are_clipped():
    # With (almost) no noise, one DP-SGD step moves the weights by at most lr * C, however
    # large the raw gradients are; plain SGD on the same batch moves them much further.
    x = np.random.default_rng(0).normal(0, 50, (64, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float32)
    lr, clip = 1.0, 0.01

    def one_step(private: bool) -> float:
        torch.manual_seed(0)
        model = build_model(ModelConfig("logreg", 0, 8), n_features=5)
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        loader = make_loader(x, y, batch_size=64, shuffle=False, seed=0)
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        if private:
            plan = DPPlan(1e-6, 1.0, 1, 1, clip, 1e-3, "rdp", 100.0)
            model, opt, loader, _ = attach_dp(model, opt, loader, plan=plan, history=[])
        train_epochs(model, loader, opt, epochs=1, device=torch.device("cpu"))
        after = torch.cat([p.detach().flatten() for p in model.parameters()])
        return float((after - before).norm())

    assert one_step(private=True) <= lr * clip * 1.001
    assert one_step(private=False) > 10 * lr * clip


def test_accountant_counts_every_optimizer_step():
    x = np.zeros((100, 3), np.float32)
    y = np.zeros(100, np.float32)
    model = build_model(ModelConfig("logreg", 0, 8), n_features=3)
    loader = make_loader(x, y, batch_size=10, shuffle=True, seed=0)
    plan = DPPlan(1.0, 0.1, 10, 1, 1.0, 1e-3, "rdp", 10.0)
    model, opt, loader, engine = attach_dp(model, torch.optim.SGD(model.parameters(), lr=0.1),
                                           loader, plan=plan, history=[(2.0, 1.0, 1)])
    result = train_epochs(model, loader, opt, epochs=2, device=torch.device("cpu"))
    assert result.steps == 20
    assert engine.accountant.history == [(2.0, 1.0, 1), (1.0, 0.1, 20)]


def test_models_are_made_dp_compatible():
    from torch import nn

    from medfl.privacy.dp import make_dp_compatible

    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(inplace=True),
                          nn.Linear(8, 1))
    fixed = make_dp_compatible(model)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in fixed.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in fixed.modules())
    assert not any(getattr(m, "inplace", False) for m in fixed.modules())
    lstm = make_dp_compatible(nn.Sequential(nn.LSTM(4, 4)))
    assert type(lstm[0]).__name__ == "DPLSTM"  # Opacus' per-sample-gradient LSTM


@pytest.mark.parametrize("mode", ["hooks", "ew", "functorch", "ghost"])
def test_every_grad_sample_mode_clips_the_same(mode):
    # the same one noiseless step under each mode moves the weights identically
    x = np.random.default_rng(1).normal(0, 3, (40, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float32)

    def step(m: str) -> torch.Tensor:
        torch.manual_seed(0)
        model = build_model(ModelConfig("logreg", 0, 8), n_features=4)
        loader = make_loader(x, y, batch_size=40, shuffle=False, seed=0)
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        plan = DPPlan(1e-9, 1.0, 1, 1, 0.5, 1e-3, "rdp", 100.0)
        model, opt, loader, _ = attach_dp(model, opt, loader, plan=plan, history=[],
                                          grad_sample_mode=m)
        train_epochs(model, loader, opt, epochs=1, device=torch.device("cpu"))
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    torch.testing.assert_close(step(mode), step("hooks"), rtol=1e-4, atol=1e-5)


def test_ew_on_densenet_clips_exactly_as_hooks_do():
    """DenseNet's concatenations hand its convolutions strided output gradients, which
    PyTorch's expanded weights alone refuse ("view size is not compatible"); attach_dp
    makes them contiguous, and the noiseless clipped step then equals Opacus' hooks'."""
    from medfl.privacy.dp import make_dp_compatible

    x = np.random.default_rng(1).normal(0, 1, (6, 1, 32, 32)).astype(np.float32)
    y = np.array([0, 1, 1, 0, 1, 0], dtype=np.float32)

    def bce(logits: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.binary_cross_entropy_with_logits(logits.reshape(t.shape), t)

    def step(mode: str) -> torch.Tensor:
        torch.manual_seed(0)
        model = make_dp_compatible(build_model(ModelConfig("densenet121", 0, 8),
                                               image_shape=(1, 32, 32)))
        loader = make_loader(x, y, batch_size=6, shuffle=False, seed=0)
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        plan = DPPlan(1e-9, 1.0, 1, 1, 0.5, 1e-3, "rdp", 100.0)  # q = 1: every image
        model, opt, loader, _ = attach_dp(model, opt, loader, plan=plan, history=[],
                                          grad_sample_mode=mode)
        train_epochs(model, loader, opt, epochs=1, device=torch.device("cpu"), criterion=bce)
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    torch.testing.assert_close(step("ew"), step("hooks"), rtol=1e-4, atol=1e-6)


def test_secure_mode_without_torchcsprng_is_a_clear_config_error():
    try:
        import torchcsprng  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("torchcsprng is installed here")
    from medfl.errors import ConfigError

    model = build_model(ModelConfig("logreg", 0, 8), n_features=3)
    loader = make_loader(np.zeros((20, 3), np.float32), np.zeros(20, np.float32),
                         batch_size=10, shuffle=True, seed=0)
    plan = DPPlan(1.0, 0.5, 2, 1, 1.0, 1e-3, "rdp", 10.0)
    with pytest.raises(ConfigError, match="secure-mode=true needs the torchcsprng"):
        attach_dp(model, torch.optim.SGD(model.parameters(), lr=0.1), loader, plan=plan,
                  history=[], secure_mode=True)


def test_a_sample_with_a_non_finite_gradient_adds_nothing_to_the_private_step():
    """Under DP a row whose gradient overflows is dropped before clipping: the step equals
    the one taken without that row, and no parameter becomes non-finite."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    from medfl.privacy.dp import drop_nonfinite_samples

    def step(x, y):
        torch.manual_seed(0)
        model = GradSampleModule(torch.nn.Linear(2, 1))
        opt = DPOptimizer(torch.optim.SGD(model.parameters(), lr=1.0), noise_multiplier=0.0,
                          max_grad_norm=1.0, expected_batch_size=3)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(-1), y)
        loss.backward()
        drop_nonfinite_samples(opt)
        opt.step()
        return [p.detach().clone() for p in model.parameters()]

    x = torch.tensor([[1.0, 2.0], [float("inf"), 0.0], [0.5, -1.0]])
    y = torch.tensor([1.0, 0.0, 1.0])
    with_row = step(x, y)
    without = step(x[[0, 2]], y[[0, 2]])
    assert all(torch.isfinite(p).all() for p in with_row)
    for a, b in zip(with_row, without, strict=True):
        assert torch.allclose(a, b)
