"""Local training and evaluation loops (no Flower, no I/O)."""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable
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


def make_loader(x: np.ndarray, y: np.ndarray, *, batch_size: int, shuffle: bool,
                seed: int, transform: Callable | None = None) -> DataLoader:
    """A DataLoader over float32 inputs (n, ...) and float32 targets (labels (n,) or
    masks (n, 1, H, W)); ``transform`` augments each sample when given."""
    xt = torch.as_tensor(x, dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.float32)
    dataset = AugmentedDataset(xt, yt, transform) if transform else TensorDataset(xt, yt)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=min(batch_size, len(dataset)), shuffle=shuffle,
                      generator=generator)


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


def train_epochs(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, *,
                 epochs: int, device: torch.device,
                 criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                 proximal_mu: float = 0.0,
                 before_step: Callable[[], None] | None = None,
                 max_steps: int | None = None) -> TrainResult:
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
    counts it), with a zero loss.

    ``before_step`` runs between each ``backward()`` and ``optimizer.step()``; under DP it
    drops non-finite per-sample gradients (:func:`medfl.privacy.dp.drop_nonfinite_samples`),
    and a non-finite loss is then no error: the loss stays at the site, and a round must
    not fail or succeed depending on a row's value. Without it a non-finite loss raises.
    """
    model.train()
    if criterion is None:
        bce = nn.BCEWithLogitsLoss()

        def criterion(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return bce(logits.squeeze(-1), y)
    steps, loss_sum, loss_n = 0, 0.0, 0
    params = [p for p in model.parameters() if p.requires_grad]
    anchors = [p.detach().clone() for p in params] if proximal_mu > 0 else []
    batches = itertools.chain.from_iterable(loader for _ in range(epochs))
    for xb, yb in itertools.islice(batches, max_steps):
        xb, yb = xb.to(device), yb.to(device)
        optimizer.zero_grad()
        logits = model(xb)
        loss = criterion(logits, yb) if len(yb) else logits.sum() * 0.0
        loss.backward()
        if before_step is not None:
            before_step()
        optimizer.step()
        if anchors:
            pull = optimizer.param_groups[0]["lr"] * proximal_mu
            with torch.no_grad():
                for p, a in zip(params, anchors, strict=True):
                    p.sub_(pull * (p - a))
        steps += 1
        if len(yb) and (before_step is None or math.isfinite(float(loss.item()))):
            loss_sum += float(loss.item()) * len(yb)
            loss_n += len(yb)
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
