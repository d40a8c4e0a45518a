"""Local training and evaluation loops (no Flower, no I/O)."""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from medfl.config import TrainConfig
from medfl.errors import ConfigError

logger = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks the site's GPU when one is visible, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was requested but no CUDA GPU is visible; use 'auto'")
    return torch.device(name)


class AugmentedDataset(Dataset):
    """``(x[i], y[i])`` passed through a per-sample random ``transform`` on each access.

    Augmentation is per-sample preprocessing at the site, so it composes with DP-SGD:
    the sampler, the clipping and the accountant are unchanged.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor,
                 transform: Callable[[torch.Tensor, torch.Tensor],
                                     tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.x[i], self.y[i])


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether the forward pass runs under bf16 autocast: ``train.precision`` is bf16, or
    auto on a GPU that supports bf16."""
    if precision == "auto":
        return device.type == "cuda" and torch.cuda.is_bf16_supported()
    return precision == "bf16"


def memory_format(channels_last: str, device: torch.device) -> torch.memory_format:
    """The image models' memory format: channels-last when ``train.channels-last`` is
    true, or auto on a GPU (where convolution kernels prefer it)."""
    on = channels_last == "true" or (channels_last == "auto" and device.type == "cuda")
    return torch.channels_last if on else torch.preserve_format


def gpu_share(resources: dict[str, float] | None = None) -> float | None:
    """The fraction of a GPU this process was given: Flower's simulation engine (Ray)
    assigns each ClientApp ``client-resources-num-gpus`` of one; None for a whole GPU or
    outside a Ray actor. ``resources``: the assigned resources (default: asked of Ray)."""
    if resources is None:
        try:
            import ray

            if not ray.is_initialized():
                return None
            resources = ray.get_runtime_context().get_assigned_resources()
        except (ImportError, RuntimeError, AttributeError):
            return None
    share = resources.get("GPU")
    return float(share) if share is not None and 0 < share < 1 else None


def claim_gpu_share(device: torch.device) -> None:
    """Cap PyTorch's allocator at this process's share of the GPU (:func:`gpu_share`), so
    that simulated sites sharing one GPU cannot starve one another of memory."""
    share = gpu_share() if device.type == "cuda" else None
    if share is not None:
        torch.cuda.set_per_process_memory_fraction(share, device)


def make_loader(x: np.ndarray, y: np.ndarray, *, batch_size: int, shuffle: bool,
                seed: int, transform: Callable | None = None,
                pin_memory: bool = False) -> DataLoader:
    """A DataLoader over float32 inputs (n, ...) and float32 targets (labels (n,) or
    masks (n, 1, H, W)); ``transform`` augments each sample when given; ``pin_memory``
    (for a GPU) makes its batches' copies to the device asynchronous."""
    xt = torch.as_tensor(x, dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.float32)
    dataset = AugmentedDataset(xt, yt, transform) if transform else TensorDataset(xt, yt)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=min(batch_size, len(dataset)), shuffle=shuffle,
                      generator=generator, pin_memory=pin_memory)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """``train.optimizer`` over ``model``'s parameters: SGD (with momentum) or Adam."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train_epochs` did: optimizer steps taken and the mean training loss."""

    steps: int
    mean_loss: float


def _one_logit_bce() -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    bce = nn.BCEWithLogitsLoss()

    def criterion(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return bce(logits.squeeze(-1), y)
    return criterion


def _forward_backward(model: nn.Module, optimizer: torch.optim.Optimizer, xb: torch.Tensor,
                      yb: torch.Tensor,
                      criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *,
                      device: torch.device, bf16: bool) -> torch.Tensor:
    """One batch's forward pass (bf16 autocast when asked) and backward pass: the loss.
    Under ghost clipping the optimizer carries the backward pass, which runs to the batch
    instead of the weights (:mod:`medfl.privacy.ghost`)."""
    clipped_backward = getattr(optimizer, "clipped_backward", None)
    xb = xb.to(device, non_blocking=True).requires_grad_(clipped_backward is not None)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(xb)
    logits = logits.float()
    loss = criterion(logits, yb) if len(yb) else logits.sum() * 0.0
    if clipped_backward is None:
        loss.backward()
    else:
        clipped_backward(loss, logits, xb)
    return loss


@torch.no_grad()
def _pull(params: Sequence[torch.Tensor], anchors: Sequence[torch.Tensor], rate: float) -> None:
    """FedProx's step ``params -= rate * (params - anchors)`` (none without anchors)."""
    if not anchors:
        return
    for p, a in zip(params, anchors, strict=True):
        p.sub_(rate * (p - a))


def train_epochs(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, *,
                 epochs: int, device: torch.device,
                 criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                 proximal_mu: float = 0.0, before_step: Callable[[], None] | None = None,
                 max_steps: int | None = None, bf16: bool = False) -> TrainResult:
    """Run ``epochs`` passes of training; one optimizer step per batch, and at most
    ``max_steps`` steps in all when given (distributed DP's one DP-SGD step a round).

    ``criterion(logits, targets)`` defaults to binary cross-entropy on one logit.
    ``proximal_mu`` > 0 adds FedProx's term (mu / 2) ||w - w_start||^2 as a step of
    ``lr * mu * (w - w_start)`` after each optimizer step. It is applied outside the loss
    on purpose: under DP-SGD the optimizer rebuilds gradients from per-sample gradients,
    which a parameter-only loss term never reaches; the term holds no data, so applying it
    after the private step costs no privacy.

    Works with plain and Opacus-wrapped model/optimizer/loader. Under Poisson sampling a
    batch may be empty: the step is still taken (Opacus adds noise and the accountant
    counts it), with a zero loss. A logical batch split into physical ones
    (``train.max-physical-batch-size``) is one step.

    ``bf16``: the forward pass under bf16 autocast, the loss (and under DP the clipping,
    :mod:`medfl.privacy.ghost`) in float32.

    ``before_step`` runs between each ``backward()`` and ``optimizer.step()``; under DP it
    drops non-finite per-sample gradients (:func:`medfl.privacy.dp.drop_nonfinite_samples`),
    and a non-finite loss is then no error: the loss stays at the site, and a round must
    not fail or succeed depending on a row's value. Without it a non-finite loss raises.
    """
    model.train()
    loss_fn = criterion or _one_logit_bce()
    steps, loss_sum, loss_n = 0, 0.0, 0
    params = [p for p in model.parameters() if p.requires_grad]
    anchors = [p.detach().clone() for p in params] if proximal_mu > 0 else []
    for xb, yb in itertools.chain.from_iterable(loader for _ in range(epochs)):
        optimizer.zero_grad()
        loss = _forward_backward(model, optimizer, xb, yb.to(device, non_blocking=True),
                                 loss_fn, device=device, bf16=bf16)
        if before_step is not None:
            before_step()
        optimizer.step()
        if len(yb) and (before_step is None or math.isfinite(float(loss.item()))):
            loss_sum += float(loss.item()) * len(yb)
            loss_n += len(yb)
        if getattr(optimizer, "_is_last_step_skipped", False):
            continue  # a physical part of a logical batch (Opacus' BatchMemoryManager)
        _pull(params, anchors, optimizer.param_groups[0]["lr"] * proximal_mu)
        steps += 1
        if steps == max_steps:
            break
    mean_loss = loss_sum / loss_n if loss_n else math.nan
    if not math.isfinite(mean_loss) and loss_n and before_step is None:
        raise FloatingPointError("training loss is not finite; lower train.lr")
    return TrainResult(steps=steps, mean_loss=mean_loss)


@torch.no_grad()
def predict_proba(model: nn.Module, x: np.ndarray, *, device: torch.device,
                  batch_size: int = 64) -> np.ndarray:
    """Sigmoid of the model's output, in batches of ``batch_size``.

    Classification: P(class 1) per sample, (n, d) or (n, C, H, W) → (n,) float64.
    Segmentation: P(foreground) per pixel, (n, C, H, W) → (n, 1, H, W) float64.
    """
    model.eval()
    out = []
    for start in range(0, len(x), batch_size):
        xb = torch.as_tensor(x[start:start + batch_size], dtype=torch.float32, device=device)
        logits = model(xb)
        if logits.ndim == 2:
            logits = logits.squeeze(-1)
        # in float64: float32 saturates at 1.0 for logits above ~17, tying confident scores
        out.append(torch.sigmoid(logits.double()).cpu())
    if not out:
        return np.zeros((0,), np.float64)
    return torch.cat(out).numpy()
