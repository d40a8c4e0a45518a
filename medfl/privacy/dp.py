"""DP-SGD with Opacus, planned once per run and accounted across rounds.

A site's privacy loss is tracked by an Opacus accountant whose *history* — a list of
``(noise_multiplier, sample_rate, steps)`` entries — is the whole state. The client keeps
that history between rounds (in Flower's ``context.state``) and restores it into a fresh
``PrivacyEngine`` every round, so ε is cumulative over the run (a fresh engine per round
would under-report it). Any other noised release (e.g. feature statistics) is added to the
same history as a Gaussian mechanism with ``sample_rate = 1`` and one step.
"""

from __future__ import annotations

import functools
import math
import secrets
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.accountants import create_accountant
from opacus.accountants.accountant import IAccountant
from opacus.accountants.utils import get_noise_multiplier
from opacus.utils.batch_memory_manager import wrap_data_loader
from torch import nn, optim
from torch.utils.data import DataLoader

from medfl.config import ACCOUNTANTS
from medfl.errors import ConfigError, PrivacyBudgetExceeded
from medfl.privacy import calibration_cache
from medfl.privacy.ghost import GhostBackward, book_keep

History = list[tuple[float, float, int]]

_MAX_SIGMA = 1e4


def dp_seed(run_seed: int, *, secure: bool) -> int:
    """Seed for DP noise and Poisson sampling.

    ``secure``: 63 bits from the operating system's CSPRNG, so nobody who knows the run's
    configuration (the server does) can regenerate the noise and subtract it. Otherwise
    the run seed itself (reproducible experiments; the DP guarantee then holds only
    against parties who do not know the seed).
    """
    return secrets.randbits(63) if secure else run_seed


def extend_history(history: History, sigma: float, rate: float, steps: int) -> History:
    """``history`` plus ``steps`` steps at (σ, rate), merged the way Opacus' accountants merge."""
    if history and history[-1][0] == sigma and history[-1][1] == rate:
        return [*history[:-1], (sigma, rate, history[-1][2] + steps)]
    return [*history, (sigma, rate, steps)]


def dp_generator(seed: int) -> torch.Generator:
    """A torch generator for DP noise or Poisson sampling, seeded with ``seed`` (from
    :func:`dp_seed`: OS entropy unless ``privacy.secure-noise`` is off)."""
    return torch.Generator().manual_seed(seed)


def make_accountant(name: str, history: History | None = None) -> IAccountant:
    """An Opacus accountant (``rdp`` or ``prv``) holding ``history``."""
    if name not in ACCOUNTANTS:
        raise ConfigError(f"unknown accountant {name!r}; valid: {', '.join(ACCOUNTANTS)}")
    accountant = create_accountant(name)
    accountant.history = [(float(s), float(q), int(n)) for s, q, n in (history or [])]
    return accountant


def epsilon_from_history(history: History, *, delta: float, accountant: str) -> float:
    """ε spent by ``history`` at ``delta``; ``inf`` is never returned for an empty history (0)."""
    if not history:
        return 0.0
    return _epsilon(tuple((float(s), float(q), int(n)) for s, q, n in history), float(delta),
                    accountant)


# The accountants are deterministic functions of these numbers, and a PRV evaluation takes
# a fraction of a second. A simulation actor serving many sites of the same size (or a site
# asked again) would otherwise repeat the same computations every round: remember them.
@functools.lru_cache(maxsize=4096)
def _epsilon(history: tuple[tuple[float, float, int], ...], delta: float,
             accountant: str) -> float:
    with np.errstate(divide="ignore"):  # PRV takes log(1 - q), -inf at q = 1, harmlessly
        return float(make_accountant(accountant, list(history)).get_epsilon(delta=delta))


def calibrate_noise(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str,
    prior: History | None = None,
    tolerance: float = 0.01,
) -> float:
    """Smallest noise multiplier σ such that ``prior`` + ``steps`` DP-SGD steps at ``sample_rate``
    spend at most ``target_epsilon``.

    Without ``prior`` this is exactly Opacus' ``get_noise_multiplier`` (what
    ``make_private_with_epsilon`` uses); with it, a bisection on the composed history.
    Raises ``PrivacyBudgetExceeded`` when ``prior`` alone already spends the target.
    """
    if steps < 1:
        raise ConfigError(f"DP-SGD needs at least one step, got steps={steps}")
    if not prior:  # the same numbers give the same σ: a machine may remember it on disk
        return calibration_cache.remembered_noise(
            _opacus_noise, spends=epsilon_from_history, target_epsilon=target_epsilon,
            delta=delta, sample_rate=sample_rate, steps=steps, accountant=accountant,
            tolerance=tolerance)
    spent = epsilon_from_history(prior, delta=delta, accountant=accountant)
    if spent >= target_epsilon:
        raise PrivacyBudgetExceeded(
            f"the releases before training already spend ε={spent:.3f} of the target "
            f"ε={target_epsilon}; lower preprocessing.stats-noise-multiplier's cost "
            "(raise it) or raise privacy.target-epsilon"
        )

    def eps(sigma: float) -> float:
        history = [*prior, (sigma, sample_rate, steps)]
        return epsilon_from_history(history, delta=delta, accountant=accountant)

    low, high = 0.0, 10.0
    while eps(high) > target_epsilon:
        low, high = high, 2 * high
        if high > _MAX_SIGMA:
            raise PrivacyBudgetExceeded(
                f"no noise multiplier up to {_MAX_SIGMA} reaches ε={target_epsilon}"
            )
    while eps(high) < target_epsilon - tolerance:
        mid = (low + high) / 2
        if eps(mid) > target_epsilon:
            low = mid
        else:
            high = mid
    return float(high)


@functools.lru_cache(maxsize=1024)
def _opacus_noise(target_epsilon: float, delta: float, sample_rate: float, steps: int,
                  accountant: str, tolerance: float) -> float:
    with np.errstate(divide="ignore"):
        return float(get_noise_multiplier(
            target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
            steps=steps, accountant=accountant, epsilon_tolerance=tolerance,
        ))


def make_dp_compatible(model: nn.Module) -> nn.Module:
    """Return a DP-SGD-compatible version of ``model`` or raise ``ConfigError``.

    Opacus' ``ModuleValidator.fix`` replaces BatchNorm (which mixes samples, breaking
    per-sample gradients) with GroupNorm; in-place activations are turned off because
    they break Opacus' backward hooks (e.g. MONAI's ``ReLU(inplace=True)``). Whatever the
    validator still rejects is named in the error.
    """
    from opacus.validators import ModuleValidator

    if ModuleValidator.validate(model, strict=False):
        model = ModuleValidator.fix(model)
    for module in model.modules():
        if getattr(module, "inplace", False) is True:
            cast(Any, module).inplace = False  # nn.Module types attributes as Tensor | Module
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise ConfigError("model is not DP-SGD compatible even after fixing: "
                          + "; ".join(sorted({type(e).__name__ + ": " + str(e) for e in errors})))
    return model


class _ContiguousGrad(torch.autograd.Function):
    """Identity on the way forward; makes the gradient contiguous on the way back."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: ARG004 - autograd's signature
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ARG004
        return grad.contiguous()


def _contiguous_conv_grads(model: nn.Module) -> None:
    """Let PyTorch's expanded weights (``ew``) run on networks that concatenate features.

    Its convolution backward reshapes the output gradient with ``view``, which fails when
    that gradient is a strided slice, as it is behind DenseNet's concatenations ("view
    size is not compatible with input tensor's size and stride"). An identity after each
    convolution hands it a contiguous copy instead; nothing else changes.
    """
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            module.register_forward_hook(lambda _m, _i, out: _ContiguousGrad.apply(out))


def drop_nonfinite_samples(optimizer: optim.Optimizer) -> None:
    """Zero the per-sample gradients of every sample whose gradient is not finite.

    Called between ``backward()`` and Opacus' ``optimizer.step()``: a sample whose loss or
    gradient overflows (weights a server crafted to probe a row's value) then adds nothing
    to the clipped sum, and the step still adds the noise, so a failing row changes only a
    noised update, never whether the round answers. Zeroing a sample's gradient is within
    the mechanism: clipping already allows any per-sample gradient of norm up to C.
    """
    params = [p for p in getattr(optimizer, "params", [])
              if getattr(p, "grad_sample", None) is not None]
    flats = [torch.cat(p.grad_sample, dim=0) if isinstance(p.grad_sample, list)
             else p.grad_sample for p in params]
    if not flats or len(flats[0]) == 0:
        return
    bad = torch.zeros(len(flats[0]), dtype=torch.bool, device=flats[0].device)
    for g in flats:
        bad |= ~torch.isfinite(g.reshape(len(g), -1)).all(dim=1).to(bad.device)
    if not bool(bad.any()):
        return
    for p, g in zip(params, flats, strict=True):
        p.grad_sample = torch.where(bad.to(g.device).reshape(-1, *[1] * (g.ndim - 1)),
                                    torch.zeros_like(g), g)


@dataclass(frozen=True)
class DPPlan:
    """What a site decided, once, for the whole run.

    ``steps_per_round`` DP-SGD steps per round for ``rounds`` rounds at ``sample_rate``
    and ``noise_multiplier``; ``prior`` is any release made before training.
    """

    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    rounds: int
    max_grad_norm: float
    delta: float
    accountant: str
    target_epsilon: float
    prior: tuple[tuple[float, float, int], ...] = ()

    @classmethod
    def make(
        cls,
        *,
        n_train: int,
        batch_size: int,
        local_epochs: int,
        rounds: int,
        target_epsilon: float,
        delta: float,
        max_grad_norm: float,
        accountant: str,
        prior: History | None = None,
        after: History | None = None,
        one_step: bool = False,
    ) -> DPPlan:
        """Plan the run so that the last round ends exactly at (≤) ``target_epsilon``,
        with ``prior`` (releases made before training) and ``after`` (releases planned
        after it, e.g. the audit's) composed; the plan records ``prior`` only.

        Opacus' Poisson loader samples each record with rate ``1 / len(loader)``, where
        the loader has ``ceil(n / batch_size)`` batches; an epoch is that many steps.
        ``one_step``: a round is one DP-SGD step whatever ``local_epochs`` (DP-FedSGD, as
        distributed DP needs: :mod:`medfl.privacy.distributed`).
        """
        batches = max(1, math.ceil(n_train / batch_size))
        sample_rate = 1.0 / batches
        steps_per_round = 1 if one_step else batches * local_epochs
        sigma = calibrate_noise(
            target_epsilon=target_epsilon, delta=delta, sample_rate=sample_rate,
            steps=steps_per_round * rounds, accountant=accountant,
            prior=[*(prior or ()), *(after or ())],
        )
        return cls(sigma, sample_rate, steps_per_round, rounds, max_grad_norm, delta,
                   accountant, target_epsilon, tuple(prior or ()))


def attach_dp(
    model: nn.Module,
    optimizer: optim.Optimizer,
    loader: DataLoader,
    *,
    plan: DPPlan,
    history: History,
    noise_generator: torch.Generator | None = None,
    grad_sample_mode: str = "hooks",
    secure_mode: bool = False,
    physical_batch: int = 0,
) -> tuple[nn.Module, optim.Optimizer, DataLoader, PrivacyEngine]:
    """Make model/optimizer/loader private with Opacus, restoring the accountant history.

    Poisson sampling is on (the accounting assumes it) and draws from the loader's own
    generator; the Gaussian noise draws from ``noise_generator``. Both must be secret to
    the server (see :func:`dp_generator`). The returned engine's ``accountant.history``
    grows with every ``optimizer.step()``. ``physical_batch`` > 0 splits each Poisson
    batch into parts of at most that many rows (Opacus' BatchMemoryManager): one step,
    accounted once, in bounded memory.
    """
    try:
        engine = PrivacyEngine(accountant=plan.accountant, secure_mode=secure_mode)
    except ImportError:
        raise ConfigError(
            "privacy.secure-mode=true needs the torchcsprng package (Opacus' secure RNG), "
            "which is not installed (and has no build for current torch); set it to false: "
            "privacy.secure-noise=true still keeps the noise secret from the server"
        ) from None
    if secure_mode:
        noise_generator = None  # Opacus then draws noise and batches from its CSPRNG
    engine.accountant.history = [(float(s), float(q), int(n)) for s, q, n in history]
    if grad_sample_mode == "ew":
        _contiguous_conv_grads(model)
    ghost = grad_sample_mode == "ghost"
    model, optimizer, *_, dp_loader = engine.make_private(
        module=model, optimizer=optimizer, data_loader=loader,
        noise_multiplier=plan.noise_multiplier, max_grad_norm=plan.max_grad_norm,
        poisson_sampling=True, noise_generator=noise_generator,
        grad_sample_mode=grad_sample_mode, criterion=nn.MSELoss(),  # criterion: ghost only
    )
    if ghost:  # train_epochs backpropagates through it (medfl.privacy.ghost)
        cast(Any, optimizer).clipped_backward = GhostBackward(book_keep(model), optimizer)
    if abs(dp_loader.sample_rate - plan.sample_rate) > 1e-12:
        raise ConfigError(
            f"loader sample rate {dp_loader.sample_rate} differs from the planned "
            f"{plan.sample_rate}; the training set size changed during the run"
        )
    if physical_batch > 0:
        dp_loader = wrap_data_loader(data_loader=dp_loader, max_batch_size=physical_batch,
                                     optimizer=cast(Any, optimizer))
    return model, optimizer, dp_loader, engine
