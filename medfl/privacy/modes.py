"""Which per-sample-gradient mode a site's DP-SGD uses: requested, or measured (``auto``).

``privacy.grad-sample-mode`` names Opacus' mode (``hooks``, ``ew``, ``functorch``) or
MedFL's mixed ghost clipping (``ghost``, :mod:`medfl.privacy.ghost`). ``auto`` times each
mode that can apply on the site's own device, model and batch shape, on random inputs (no
patient row is touched, nothing is released, no privacy is spent), and keeps the fastest
that ran. A mode that fails on the model (ghost clipping refuses tied parameters, expanded
weights refuse PReLU) is skipped, or when it was asked for by name replaced by ``hooks``,
with the reason in the log. The choice is cached per process.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from medfl.privacy.dp import DPPlan, attach_dp
from medfl.training import AugmentedDataset, make_loader, train_epochs, use_bf16

logger = logging.getLogger(__name__)

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
_CHOSEN: dict[tuple, str] = {}
_PROBING = threading.Lock()
#: A noiseless plan that samples every probe row each step (q = 1).
_PROBE_PLAN = DPPlan(1e-6, 1.0, 1, 1, 1.0, 1e-5, "rdp", 1e6)


def _linear_only(model: nn.Module) -> bool:
    with_params = [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]
    return bool(with_params) and all(isinstance(m, nn.Linear) for m in with_params)


def candidates(model: nn.Module) -> tuple[str, ...]:
    """The modes ``auto`` times on ``model``: ghost clipping and Opacus' hooks always,
    expanded weights on models of linear layers (on convolutional networks it measured
    slower than hooks: BENCHMARKS.md, "DP-SGD throughput")."""
    return ("ghost", "hooks", "ew") if _linear_only(model) else ("ghost", "hooks")


def probe_seconds(model: nn.Module, mode: str, *, x_shape: Sequence[int],
                  y_shape: Sequence[int], criterion: Loss | None, device: torch.device,
                  steps: int = 2) -> float:
    """Seconds per DP-SGD step of a copy of ``model`` in ``mode`` on a random batch of
    ``x_shape`` inputs and ``y_shape`` 0/1 targets, after one warm-up step; raises what
    the mode raises on this model."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=tuple(x_shape)).astype(np.float32)
    y = rng.integers(0, 2, size=tuple(y_shape)).astype(np.float32)
    with torch.random.fork_rng(devices=[]):
        twin = copy.deepcopy(model).to(device)
        loader = make_loader(x, y, batch_size=len(x), shuffle=False, seed=0)
        opt: torch.optim.Optimizer = torch.optim.SGD(twin.parameters(), lr=0.0)
        twin, opt, loader, _ = attach_dp(twin, opt, loader, plan=_PROBE_PLAN, history=[],
                                         grad_sample_mode=mode)
        train_epochs(twin, loader, opt, epochs=1, device=device, criterion=criterion)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        train_epochs(twin, loader, opt, epochs=steps, device=device, criterion=criterion)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - start) / steps


def choose_grad_sample_mode(model: nn.Module, requested: str, *,
                            x_shape: Sequence[int] | None = None,
                            y_shape: Sequence[int] | None = None,
                            criterion: Loss | None = None,
                            device: torch.device | None = None) -> str:
    """The mode to train ``model`` with (see the module docstring). Without ``x_shape``
    (no batch to measure on) ``auto`` means ``hooks``, which runs on every model."""
    if requested not in ("auto", "ghost") or x_shape is None:
        return "hooks" if requested == "auto" else requested
    device = device or torch.device("cpu")
    y_shape = tuple(y_shape or (x_shape[0],))
    key = (type(model).__name__, tuple(tuple(p.shape) for p in model.parameters()),
           tuple(x_shape), y_shape, device.type, requested)
    with _PROBING:  # one probe at a time: concurrent rounds of a site wait for its answer
        if key not in _CHOSEN:
            _CHOSEN[key] = _measure(model, requested, x_shape=x_shape, y_shape=y_shape,
                                    criterion=criterion, device=device)
    return _CHOSEN[key]


def _measure(model: nn.Module, requested: str, *, x_shape: Sequence[int],
             y_shape: Sequence[int], criterion: Loss | None, device: torch.device) -> str:
    """Time each candidate of ``requested`` on ``model``; the fastest that ran (hooks if
    none did). A probe never fails a round: whatever it raises only rules its mode out."""
    modes = candidates(model) if requested == "auto" else ("ghost",)
    times: dict[str, float] = {}
    for mode in modes:
        try:
            times[mode] = probe_seconds(model, mode, x_shape=x_shape, y_shape=y_shape,
                                        criterion=criterion, device=device)
        except Exception as exc:  # noqa: BLE001 - see the docstring
            logger.warning("DP-SGD mode %r cannot train %s here (%s: %s); not used",
                           mode, type(model).__name__, type(exc).__name__, exc)
    chosen = min(times, key=times.__getitem__) if times else "hooks"
    logger.info("DP-SGD per-sample clipping for %s: %r (seconds per step measured: %s)",
                type(model).__name__, chosen,
                ", ".join(f"{m} {t:.4f}" for m, t in times.items()) or "none ran")
    return chosen


def probe_batch(loader: DataLoader, batch_size: int) -> dict[str, tuple[int, ...]]:
    """The shapes of a ``batch_size`` batch of ``loader``'s inputs and targets, as
    :func:`choose_grad_sample_mode` takes them (none for a dataset of another kind). Read
    from the dataset's tensors, not from a row: a row of an augmented dataset would draw
    augmentation randomness."""
    data = loader.dataset
    if isinstance(data, AugmentedDataset):
        xs, ys = data.x, data.y
    elif isinstance(data, TensorDataset) and len(data.tensors) == 2:
        xs, ys = data.tensors
    else:
        return {}
    return {"x_shape": (batch_size, *xs.shape[1:]), "y_shape": (batch_size, *ys.shape[1:])}


def autocast_bf16(precision: str, device: torch.device, mode: str | None = None) -> bool:
    """bf16 autocast of the forward pass as ``train.precision`` asks; under DP (``mode``
    given) only with ghost clipping, whose norms and sums are float32: the other modes
    would clip bf16 per-sample gradients, so they train in float32, with a warning."""
    wanted = use_bf16(precision, device)
    if wanted and mode not in (None, "ghost"):
        logger.warning("train.precision=%s: DP-SGD in %r mode trains in float32 (bf16 "
                       "needs ghost clipping, which clips in float32)", precision, mode)
        return False
    return wanted
