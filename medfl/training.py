"""Local training and evaluation loops (no Flower, no I/O)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

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


def make_loader(x: np.ndarray, y: np.ndarray, *, batch_size: int, shuffle: bool,
                seed: int) -> DataLoader:
    """A DataLoader over float32 features (n, d) and float32 0/1 labels (n,)."""
    dataset = TensorDataset(torch.as_tensor(x, dtype=torch.float32),
                            torch.as_tensor(y, dtype=torch.float32))
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=min(batch_size, len(dataset)), shuffle=shuffle,
                      generator=generator)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


@dataclass(frozen=True)
class TrainResult:
    steps: int
    mean_loss: float


def train_epochs(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, *,
                 epochs: int, device: torch.device) -> TrainResult:
    """Run ``epochs`` passes of binary cross-entropy training; one optimizer step per batch.

    Works with plain and Opacus-wrapped model/optimizer/loader. Under Poisson sampling a
    batch may be empty: the step is still taken (Opacus adds noise and the accountant
    counts it), with a zero loss.
    """
    model.train()
    criterion = nn.BCEWithLogitsLoss()
    steps, loss_sum, loss_n = 0, 0.0, 0
    for _ in range(epochs):
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            optimizer.zero_grad()
            logits = model(xb).squeeze(-1)
            loss = criterion(logits, yb) if len(yb) else logits.sum() * 0.0
            loss.backward()
            optimizer.step()
            steps += 1
            if len(yb):
                loss_sum += float(loss.item()) * len(yb)
                loss_n += len(yb)
    mean_loss = loss_sum / loss_n if loss_n else math.nan
    if not math.isfinite(mean_loss) and loss_n:
        raise FloatingPointError("training loss is not finite; lower train.lr")
    return TrainResult(steps=steps, mean_loss=mean_loss)


@torch.no_grad()
def predict_proba(model: nn.Module, x: np.ndarray, *, device: torch.device) -> np.ndarray:
    """P(class 1) for each row of ``x`` (n, d) → (n,) float64."""
    model.eval()
    logits = model(torch.as_tensor(x, dtype=torch.float32, device=device)).squeeze(-1)
    return torch.sigmoid(logits).double().cpu().numpy()
