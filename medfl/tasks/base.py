"""The interface every task implements, and what all tasks share (where state lives)."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from medfl.config import RunConfig, TaskName
from medfl.errors import ConfigError
from medfl.evaluation.subgroups import whole_test_set

if TYPE_CHECKING:
    from medfl.data.scaling import Standardizer
    from medfl.data.tabular import FeatureSpec
    from medfl.data.types import SiteData
    from medfl.evaluation.subgroups import Cell

#: The synthetic hospitals are generated once per (task, size) with this seed, so runs
#: with different training seeds are compared on the same data.
SYNTHETIC_SEED = 2026
#: Per-site train/test split seed for manifests without a split column.
SPLIT_SEED = 43

#: The report's dataset card for a consortium's own files (``data.manifest``).
CONSORTIUM_DATA_CARD: dict[str, Any] = {
    "name": "the consortium's own data (data.manifest)",
    "provenance": "declared by the consortium", "licence": None}

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class EvalKind(str, Enum):
    """What evaluation computes: binary classification figures, or Dice/IoU per image."""

    CLASSIFICATION = "classification"
    SEGMENTATION = "segmentation"

    def __str__(self) -> str:
        return self.value


def state_root(cfg: RunConfig) -> Path:
    """``state-dir``, or ``$MEDFL_HOME/state``, or ``<project>/state``: simulated sites'
    ledgers and the generated synthetic hospitals live below it."""
    if cfg.state_dir:
        return Path(cfg.state_dir).expanduser()
    home = os.environ.get("MEDFL_HOME")
    return (Path(home) if home else Path(__file__).resolve().parents[2]) / "state"


def partition_number(site: str, num_partitions: int) -> int:
    """The 0-based index of a re-partitioned simulation's site ``part-<i+1>``."""
    number = site.removeprefix("part-")
    i = int(number) - 1 if site.startswith("part-") and number.isdigit() else -1
    if not 0 <= i < num_partitions:
        raise ConfigError(f"site {site!r} is not one of this simulation's partitions "
                          f"part-1 .. part-{num_partitions}")
    return i


def partition_sites(cfg: RunConfig, num_partitions: int | None) -> tuple[str, ...]:
    """``part-1 .. part-N`` of a re-partitioned simulation (``data.partition``)."""
    if not num_partitions:
        raise ConfigError(f"data.partition={cfg.data.partition!r} needs the number of "
                          "partitions (the federation's num-supernodes)")
    return tuple(f"part-{i + 1}" for i in range(num_partitions))


class Task(ABC):
    """One task of a run, bound to its config: where a site's data comes from, the model,
    the loss, what evaluation computes and what the reports say about it.

    Build it with :func:`medfl.tasks.task_for`; everything task-specific goes through it.
    """

    name: TaskName
    evaluation: EvalKind = EvalKind.CLASSIFICATION
    is_tabular: bool = False

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg

    @property
    def segmentation(self) -> bool:
        """Whether the model predicts a mask (Dice/IoU) rather than one label."""
        return self.evaluation is EvalKind.SEGMENTATION

    # --- data -------------------------------------------------------------------------

    @abstractmethod
    def sites(self, *, num_partitions: int | None = None) -> tuple[str, ...]:
        """The sites of a simulated federation, in partition-id order."""

    @abstractmethod
    def load_site(self, site: str, *, data_path: str | None = None, verify: bool = True,
                  num_partitions: int | None = None) -> SiteData:
        """One site's data. ``data_path`` is the site's own data (deployment: node-config
        ``data-path``); without it, the run's dataset (simulation)."""

    def check_site_name(self, site: str) -> None:
        """Refuse a deployed site name this task cannot serve (default: any name)."""
        return None

    def deployed_config(self, node_config: dict[str, Any]) -> RunConfig:
        """The run config as a deployed site applies it (default: as sent)."""
        return self.cfg

    # --- model ------------------------------------------------------------------------

    @abstractmethod
    def build_model(self) -> nn.Module:
        """The task's model, untrained (seed torch first for reproducible weights)."""

    def make_loss(self) -> Loss:
        """The training loss: a mean over samples of per-sample losses, as DP-SGD's
        per-sample clipping assumes. Classification weighs positives by
        ``train.pos-weight``: a fixed constant, or at a site the weight it derived from the
        consortium's released prevalence (:func:`medfl.site.moments.training_config`);
        ``"auto"`` where no prevalence was released (imaging, site-local scaling) trains
        unweighted."""
        setting = self.cfg.train.pos_weight
        weight = setting if isinstance(setting, float) else 1.0
        bce = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(weight))

        def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            value: torch.Tensor = bce(logits.reshape(-1), y.reshape(-1).to(logits.dtype))
            return value

        return loss

    def feature_spec(self) -> FeatureSpec:
        """Feature names, numeric columns, public bounds and input schema (tabular only)."""
        raise ConfigError(f"task {self.name.value!r} is not tabular; it has no feature spec")

    @abstractmethod
    def label_names(self) -> tuple[str, ...]:
        """The two class names, negative first."""

    @abstractmethod
    def model_io(self, scaler: Standardizer | None) -> dict[str, Any]:
        """The bundle's architecture, input schema and preprocessing: what a caller needs
        to rebuild the model and reproduce training-time inputs exactly."""

    # --- evaluation and reports ----------------------------------------------------------

    @abstractmethod
    def subgroups(self) -> list[Cell]:
        """The declared subgroup cells (without cell 0, the whole test set)."""

    def cells(self) -> list[Cell]:
        """The run's evaluation cells, in wire order: cell 0 is the whole test set, then
        the task's declared subgroups."""
        return [whole_test_set(), *self.subgroups()]

    @abstractmethod
    def dataset_id(self) -> str:
        """A short name of the run's data for ``summary.json``."""

    @abstractmethod
    def dataset_card(self) -> dict[str, Any]:
        """Name, provenance and licence of the run's data for the report."""

    def report_caveats(self) -> list[str]:
        """Caveats about this task's data that the report always states."""
        return []
