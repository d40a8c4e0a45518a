"""Mixed ghost clipping (privacy.grad-sample-mode = ghost) and the measured ``auto``.

References: per-sample gradients from autograd one sample at a time, and Opacus' own
``hooks`` step (per-sample gradients materialised, clipped, noised) for the same batch and
noise seed.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss
from torch import nn

from medfl.config import ModelConfig
from medfl.errors import ConfigError
from medfl.models import build_model
from medfl.privacy.dp import (
    DPPlan,
    attach_dp,
    dp_generator,
    drop_nonfinite_samples,
    make_dp_compatible,
)
from medfl.privacy.ghost import conv_norms, prelu_norms
from medfl.privacy.modes import choose_grad_sample_mode, probe_batch
from medfl.training import make_loader, train_epochs

CPU = torch.device("cpu")


def _bce(logits: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return nn.functional.binary_cross_entropy_with_logits(logits.reshape(t.shape), t)


def _per_sample_norms(layer: nn.Module, x: torch.Tensor, g: torch.Tensor) -> dict:
    """Each parameter's per-sample gradient norm of <g, layer(x)>, one sample at a time."""
    out: dict = {p: [] for p in layer.parameters()}
    for i in range(len(x)):
        layer.zero_grad()
        (layer(x[i:i + 1]) * g[i:i + 1]).sum().backward()
        for p in layer.parameters():
            out[p].append(float(p.grad.norm()))
    return {p: torch.tensor(v) for p, v in out.items()}


@pytest.mark.parametrize("layer, size", [
    (nn.Conv2d(3, 16, 3, padding=1), 4),  # T = 16: T^2 < D P, the ghost norm
    (nn.Conv2d(3, 4, 3, stride=2, padding=2, dilation=2), 20),  # T^2 >= D P: instantiated
    (nn.Conv2d(8, 8, 1, bias=False), 3),
    (nn.ConvTranspose2d(6, 4, 3, stride=2, padding=1, output_padding=1), 3),  # ghost
    (nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1), 16),  # instantiated
    (nn.Conv2d(4, 4, 3, groups=2, padding="same"), 5),  # grouped: Opacus' per-sample path
])
def test_convolution_norms_equal_per_sample_gradient_norms(layer, size):
    from medfl.privacy.ghost import _dispatch

    torch.manual_seed(0)
    x = torch.randn(5, layer.in_channels, size, size)
    g = torch.randn_like(layer(x))
    expected = _per_sample_norms(layer, x, g)
    got = _dispatch(layer, [x], g) if layer.groups > 1 else conv_norms(layer, [x], g)
    assert set(got) == set(expected)
    for p, norms in got.items():
        torch.testing.assert_close(norms, expected[p], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", [(5, 7), (5, 3, 7), (5, 20, 7)])  # rows; sequences
def test_linear_norms_equal_per_sample_gradient_norms(shape):
    from medfl.privacy.ghost import linear_norms

    torch.manual_seed(0)
    layer = nn.Linear(7, 4)
    x = torch.randn(*shape)
    g = torch.randn_like(layer(x))
    expected = _per_sample_norms(layer, x, g)
    for p, norms in linear_norms(layer, [x], g).items():
        torch.testing.assert_close(norms, expected[p], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("channels", [1, 6])
def test_prelu_norms_equal_per_sample_gradient_norms(channels):
    torch.manual_seed(0)
    layer = nn.PReLU(channels, init=0.3)
    x = torch.randn(4, 6, 5, 5)
    g = torch.randn_like(x)
    got = prelu_norms(layer, [x], g)
    torch.testing.assert_close(got[layer.weight],
                               _per_sample_norms(layer, x, g)[layer.weight], rtol=1e-5, atol=1e-6)


def _step(name: str, mode: str, *, sigma: float = 1.0, poison: bool = False) -> torch.Tensor:
    """One DP-SGD step (q = 1, noise seed 5) of the shipped model ``name``: its weights."""
    rng = np.random.default_rng(1)
    if name == "mlp":
        x = rng.normal(0, 3, (16, 13)).astype(np.float32)
        y = (x[:, 0] > 0).astype(np.float32)
        model = build_model(ModelConfig(name, 16, 8), n_features=13)
    else:
        torch.manual_seed(0)
        x = rng.normal(0, 1, (6, 1, 32, 32)).astype(np.float32)
        y = ((x > 1).astype(np.float32) if name == "unet"
             else np.array([0, 1, 1, 0, 1, 0], np.float32))
        model = build_model(ModelConfig(name, 0, 8), image_shape=(1, 32, 32))
    if poison:
        x[2] = np.inf  # a row whose gradient overflows: dropped, never a failed round
    torch.manual_seed(0)
    model = make_dp_compatible(model)
    for p in model.parameters():  # a fixed start, so both modes begin from equal weights
        p.data = torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * .1
    loader = make_loader(x, y, batch_size=len(x), shuffle=False, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    plan = DPPlan(sigma, 1.0, 1, 1, 0.5, 1e-3, "rdp", 100.0)
    model, opt, loader, _ = attach_dp(model, opt, loader, plan=plan, history=[],
                                      grad_sample_mode=mode, noise_generator=dp_generator(5))
    criterion = DiceCELoss(sigmoid=True, batch=False) if name == "unet" else _bce
    train_epochs(model, loader, opt, epochs=1, device=CPU, criterion=criterion,
                 before_step=lambda: drop_nonfinite_samples(opt))
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("name", ["mlp", "resnet", "densenet121", "unet"])
def test_a_ghost_step_equals_the_hooks_step_for_each_shipped_model(name):
    # clipped, noised (sigma = 1, the same generator seed) and applied: the same weights
    ghost, hooks = _step(name, "ghost"), _step(name, "hooks")
    torch.testing.assert_close(ghost, hooks, rtol=1e-4, atol=2e-6)
    if name in ("mlp", "unet"):  # (cheap ones) the noise was added
        assert not torch.allclose(_step(name, "ghost", sigma=0.0), ghost, atol=1e-3)


def test_a_sample_with_a_non_finite_gradient_is_dropped_as_in_hooks_mode():
    ghost, hooks = _step("resnet", "ghost", poison=True), _step("resnet", "hooks", poison=True)
    assert bool(torch.isfinite(ghost).all())
    torch.testing.assert_close(ghost, hooks, rtol=1e-4, atol=2e-6)


class _Tied(nn.Module):
    """One linear layer applied twice: ghost clipping cannot split its two uses."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.head = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc(self.fc(x)))


class _TiedConv(nn.Module):
    """One convolution applied twice."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.relu(self.conv(x))).mean(dim=(1, 2, 3)).unsqueeze(1)


def test_a_model_ghost_clipping_cannot_handle_falls_back_to_hooks_with_the_reason(caplog):
    caplog.set_level(logging.INFO, logger="medfl.privacy.modes")
    shapes = {"x_shape": (8, 4), "y_shape": (8,)}
    assert choose_grad_sample_mode(_Tied(), "ghost", **shapes) == "hooks"
    warning = next(r for r in caplog.records if r.levelno == logging.WARNING)
    assert "'ghost'" in warning.getMessage() and "tying" in warning.getMessage()
    assert choose_grad_sample_mode(_Tied(), "auto", **shapes) in ("hooks", "ew")
    caplog.clear()
    assert choose_grad_sample_mode(_TiedConv(), "ghost", x_shape=(4, 1, 6, 6),
                                   y_shape=(4,), criterion=_bce) == "hooks"
    assert "tying" in next(r.getMessage() for r in caplog.records
                           if r.levelno == logging.WARNING)


def test_auto_measures_each_candidate_and_picks_one_that_trains(caplog):
    caplog.set_level(logging.INFO, logger="medfl.privacy.modes")
    model = build_model(ModelConfig("resnet", 0, 4), image_shape=(1, 16, 16))
    model = make_dp_compatible(model)
    state = torch.random.get_rng_state()
    mode = choose_grad_sample_mode(model, "auto", x_shape=(4, 1, 16, 16), y_shape=(4,),
                                   criterion=_bce)
    assert torch.equal(torch.random.get_rng_state(), state)  # the probe drew nothing of ours
    measured = next(r.getMessage() for r in caplog.records if "measured" in r.getMessage())
    assert "ghost " in measured and "hooks " in measured and repr(mode) in measured
    x = np.random.default_rng(0).normal(size=(8, 1, 16, 16)).astype(np.float32)
    loader = make_loader(x, np.arange(8) % 2, batch_size=4, shuffle=True, seed=0)
    plan = DPPlan(1.0, 0.5, 2, 1, 1.0, 1e-3, "rdp", 10.0)
    model, opt, loader, engine = attach_dp(
        model, torch.optim.SGD(model.parameters(), lr=0.1), loader, plan=plan, history=[],
        grad_sample_mode=mode)
    assert train_epochs(model, loader, opt, epochs=1, device=CPU, criterion=_bce).steps == 2
    assert engine.accountant.history == [(1.0, 0.5, 2)]
    # without a batch shape to measure on, auto is hooks (runs on every model)
    assert choose_grad_sample_mode(nn.Linear(2, 1), "auto") == "hooks"
    assert choose_grad_sample_mode(nn.Linear(2, 1), "functorch") == "functorch"


def test_the_probe_shapes_come_from_the_tensors_not_from_an_augmented_row():
    def refuse(*_):
        raise AssertionError("augmentation drawn")

    x = np.zeros((10, 1, 8, 8), np.float32)
    y = np.zeros((10, 1, 8, 8), np.float32)
    augmented = make_loader(x, y, batch_size=4, shuffle=True, seed=0, transform=refuse)
    assert probe_batch(augmented, 32) == {"x_shape": (32, 1, 8, 8), "y_shape": (32, 1, 8, 8)}
    plain = make_loader(x[:, 0, 0], y[:, 0, 0, 0], batch_size=4, shuffle=True, seed=0)
    assert probe_batch(plain, 5) == {"x_shape": (5, 8), "y_shape": (5,)}


def test_the_config_accepts_ghost_and_names_it_when_refusing_a_mode():
    from conftest import run_config

    from medfl.config import parse_run_config

    assert parse_run_config(run_config(privacy__grad_sample_mode="ghost")) \
        .privacy.grad_sample_mode == "ghost"
    with pytest.raises(ConfigError, match="privacy.grad-sample-mode.*ghost"):
        parse_run_config(run_config(privacy__grad_sample_mode="fast"))


# --- GPU habits, checked on the CPU: bf16 autocast with float32 clipping, channels-last --


def _bf16_step(bf16: bool, *, sigma: float = 0.0, channels_last: bool = False,
               mode: str = "ghost") -> tuple[torch.Tensor, torch.Tensor]:
    """(weights before, after) one DP-SGD step (lr 1, C = 0.5) of the residual CNN on
    images with large gradients."""
    x = np.random.default_rng(2).normal(0, 5, (6, 1, 32, 32)).astype(np.float32)
    y = np.array([0, 1, 1, 0, 1, 0], np.float32)
    torch.manual_seed(0)
    model = make_dp_compatible(build_model(ModelConfig("resnet", 0, 8), image_shape=(1, 32, 32)))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    loader = make_loader(x, y, batch_size=6, shuffle=False, seed=0)
    plan = DPPlan(sigma, 1.0, 1, 1, 0.5, 1e-3, "rdp", 100.0)
    model, opt, loader, _ = attach_dp(model, torch.optim.SGD(model.parameters(), lr=1.0),
                                      loader, plan=plan, history=[], grad_sample_mode=mode,
                                      noise_generator=dp_generator(5))
    train_epochs(model, loader, opt, epochs=1, device=CPU, criterion=_bce, bf16=bf16)
    return before, torch.cat([p.detach().flatten() for p in model.parameters()])


def test_a_bf16_step_is_clipped_in_float32_and_close_to_the_float32_step():
    before, fp32 = _bf16_step(False)
    _, bf16 = _bf16_step(True)
    # no noise, q = 1: the step is lr * (sum of clipped gradients) / 6, so its norm is at
    # most lr * C (each sample's clipped gradient has norm <= C = 0.5)
    assert float((bf16 - before).norm()) <= 0.5 * (1 + 1e-4)
    assert float((fp32 - before).norm()) > 0.05  # a real step
    # bf16 activations change the step a little, not its direction
    cosine = torch.nn.functional.cosine_similarity(bf16 - before, fp32 - before, dim=0)
    assert float(cosine) > 0.98


def test_a_channels_last_model_takes_the_same_ghost_step_as_hooks():
    _, ghost = _bf16_step(False, sigma=1.0, channels_last=True)
    _, hooks = _bf16_step(False, sigma=1.0, channels_last=True, mode="hooks")
    torch.testing.assert_close(ghost, hooks, rtol=1e-4, atol=2e-6)


def test_bf16_under_dp_only_with_ghost_clipping_and_auto_only_on_a_gpu(caplog):
    from medfl.privacy.modes import autocast_bf16
    from medfl.training import memory_format

    assert autocast_bf16("bf16", CPU, "ghost") and autocast_bf16("bf16", CPU)  # no DP
    assert not autocast_bf16("bf16", CPU, "hooks")
    assert "trains in float32" in caplog.text
    assert not autocast_bf16("auto", CPU, "ghost") and not autocast_bf16("fp32", CPU)
    assert memory_format("true", CPU) == torch.channels_last
    assert memory_format("auto", CPU) == memory_format("false", CPU) == torch.preserve_format


def test_a_simulated_site_keeps_to_its_fraction_of_a_shared_gpu():
    from medfl.training import claim_gpu_share, gpu_share

    # what Ray assigns an actor under client-resources-num-gpus = 0.25, or a whole GPU
    assert gpu_share({"CPU": 1.0, "GPU": 0.25}) == 0.25
    assert gpu_share({"CPU": 1.0, "GPU": 1.0}) is None and gpu_share({"CPU": 1.0}) is None
    claim_gpu_share(CPU)  # nothing to cap on the CPU, and no error


@pytest.mark.parametrize("mode", ["ghost", "hooks"])
def test_a_batch_split_into_physical_parts_is_the_same_single_step(mode):
    # train.max-physical-batch-size: a logical batch of 6 in parts of <= 4 rows (Opacus'
    # BatchMemoryManager): one step, accounted once, equal to the whole batch's
    x = np.random.default_rng(1).normal(0, 1, (6, 1, 16, 16)).astype(np.float32)
    y = np.array([0, 1, 1, 0, 1, 0], np.float32)

    def step(physical: int) -> tuple[torch.Tensor, int, list]:
        torch.manual_seed(0)
        model = make_dp_compatible(build_model(ModelConfig("resnet", 0, 4),
                                               image_shape=(1, 16, 16)))
        loader = make_loader(x, y, batch_size=6, shuffle=False, seed=0)
        plan = DPPlan(1.0, 1.0, 1, 1, 0.5, 1e-3, "rdp", 100.0)  # q = 1: all six rows
        model, opt, loader, engine = attach_dp(
            model, torch.optim.SGD(model.parameters(), lr=1.0), loader, plan=plan,
            history=[], grad_sample_mode=mode, noise_generator=dp_generator(5),
            physical_batch=physical)
        result = train_epochs(model, loader, opt, epochs=1, device=CPU, criterion=_bce,
                              proximal_mu=0.1)
        weights = torch.cat([p.detach().flatten() for p in model.parameters()])
        return weights, result.steps, engine.accountant.history

    whole, split = step(0), step(4)
    assert split[1] == whole[1] == 1 and split[2] == whole[2] == [(1.0, 1.0, 1)]
    torch.testing.assert_close(split[0], whole[0], rtol=1e-4, atol=2e-6)


def test_empty_poisson_batches_leave_nothing_behind_and_match_hooks():
    # q = 0.1 on 20 rows: some of the 30 Poisson batches are empty; their step adds the
    # noise alone, and their forward pass must not count as a second use of a layer
    x = np.random.default_rng(0).normal(size=(20, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float32)

    def run(mode: str, count_empty: bool = False):
        torch.manual_seed(0)
        model = build_model(ModelConfig("mlp", 8, 8), n_features=5)
        loader = make_loader(x, y, batch_size=2, shuffle=True, seed=0)
        plan = DPPlan(1.0, 0.1, 10, 1, 1.0, 1e-3, "rdp", 100.0)
        model, opt, loader, engine = attach_dp(
            model, torch.optim.SGD(model.parameters(), lr=0.1), loader, plan=plan,
            history=[], grad_sample_mode=mode, noise_generator=dp_generator(1))
        if count_empty:
            return sum(len(yb) == 0 for _ in range(3) for _, yb in loader)
        assert train_epochs(model, loader, opt, epochs=3, device=CPU).steps == 30
        assert engine.accountant.history == [(1.0, 0.1, 30)]
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    assert run("ghost", count_empty=True) >= 1
    torch.testing.assert_close(run("ghost"), run("hooks"), rtol=1e-4, atol=1e-5)
