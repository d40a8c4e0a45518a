"""``task = "heart-disease"``: the embedded UCI files, four hospitals, 13 features."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn
from typing_extensions import override

from medfl.config import TaskName
from medfl.data import heart
from medfl.data.missing import with_imputation
from medfl.data.scaling import Standardizer
from medfl.data.tabular import FeatureSpec
from medfl.data.types import SiteData
from medfl.errors import ConfigError, DataError
from medfl.evaluation.subgroups import Cell, cut_cells, sex_cells
from medfl.models import build_model
from medfl.tasks.base import Task, partition_sites

logger = logging.getLogger(__name__)


def tabular_model_io(task: Task, scaler: Standardizer | None, encoding: str) -> dict[str, Any]:
    """A tabular bundle's architecture, input schema and preprocessing."""
    cfg, spec = task.cfg, task.feature_spec()
    return {
        "architecture": {"name": cfg.model.name, "hidden": cfg.model.hidden,
                         "n_features": len(spec.feature_names), "n_outputs": 1,
                         "output": f"logit of P({task.label_names()[1]})"},
        "input_schema": with_imputation(spec.input_schema, scaler),
        "preprocessing": {
            "encoding": encoding,
            "scaling": cfg.preprocessing.scaling,
            "standardizer": scaler.to_dict() if scaler is not None else None,
        },
    }


class HeartDiseaseTask(Task):
    """The embedded UCI heart-disease hospitals (or a deployed site's own export)."""

    name = TaskName.HEART_DISEASE
    is_tabular = True

    @override
    def sites(self, *, num_partitions: int | None = None) -> tuple[str, ...]:
        if self.cfg.data.partition != "natural":
            return partition_sites(self.cfg, num_partitions)
        return heart.HEART_SITES

    @override
    def load_site(self, site: str, *, data_path: str | None = None, verify: bool = True,
                  num_partitions: int | None = None) -> SiteData:
        """``data_path``: a folder holding ``processed.<site>.data`` (sha256-verified
        unless ``verify`` is false)."""
        if data_path is not None and not Path(data_path).is_dir():
            raise DataError("node-config data-path is not a folder; it must be the folder "
                            f"holding processed.{site}.data")
        if not verify:
            logger.warning("site %s: data checksum verification is off (own data export)",
                           site)
        return heart.load_heart_site(site, directory=Path(data_path) if data_path else None,
                                     verify=verify)

    @override
    def check_site_name(self, site: str) -> None:
        if site not in heart.HEART_SITES:
            raise ConfigError(f"node-config site={site!r} is unknown; valid: "
                              f"{list(heart.HEART_SITES)}")

    @override
    def build_model(self) -> nn.Module:
        return build_model(self.cfg.model, n_features=len(heart.FEATURE_NAMES))

    @override
    def feature_spec(self) -> FeatureSpec:
        numeric_idx = tuple(heart.FEATURE_NAMES.index(c) for c in heart.NUMERIC_COLUMNS)
        bounds = np.array([heart.PUBLIC_BOUNDS[c] for c in heart.NUMERIC_COLUMNS],
                          dtype=np.float64)
        return FeatureSpec(heart.FEATURE_NAMES, numeric_idx, bounds, heart.input_schema())

    @override
    def label_names(self) -> tuple[str, ...]:
        return heart.LABEL_NAMES

    @override
    def model_io(self, scaler: Standardizer | None) -> dict[str, Any]:
        return tabular_model_io(self, scaler,
                                "one-hot cp and restecg, first level dropped (FLamby)")

    @override
    def subgroups(self) -> list[Cell]:
        # UCI codes sex 1 = male; the age bands split at 55 years.
        return sex_cells(male=("1", "1.0"), female=("0", "0.0")) + cut_cells("age", [55])

    @override
    def dataset_id(self) -> str:
        return "uci-heart-disease"

    @override
    def dataset_card(self) -> dict[str, Any]:
        return {"name": "UCI Heart Disease, four hospitals (FLamby Fed-Heart-Disease split)",
                "provenance": "Janosi, Steinbrunn, Pfisterer, Detrano (1988), UCI Machine "
                              "Learning Repository, doi:10.24432/C52P4X; embedded unmodified",
                "licence": "CC BY 4.0"}

    @override
    def report_caveats(self) -> list[str]:
        return ["UCI heart disease is small (four hospitals, 1988) and mostly male at VA "
                "and Switzerland."]
