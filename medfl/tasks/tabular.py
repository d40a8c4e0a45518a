"""``task = "tabular"``: a consortium's CSV + JSON schema, or the synthetic cohort."""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn
from typing_extensions import override

from medfl.config import RunConfig, TaskName
from medfl.data.scaling import Standardizer
from medfl.data.tabular import FeatureSpec, TabularSchema, load_schema, load_tabular_site
from medfl.data.tabular import table_sites as _table_sites
from medfl.data.types import SiteData
from medfl.errors import ConfigError, DataError
from medfl.evaluation.subgroups import Cell, cut_cells, level_cells
from medfl.models import build_model
from medfl.tasks.base import (
    CONSORTIUM_DATA_CARD,
    SPLIT_SEED,
    SYNTHETIC_SEED,
    Task,
    partition_number,
    partition_sites,
    state_root,
)
from medfl.tasks.heart import tabular_model_io

#: Patients at each of the synthetic cohort's four hospitals (task = "tabular" without
#: data): 100,000 in all, enough for 1,000 simulated sites of 100.
COHORT_SIZE = 25_000


@functools.lru_cache(maxsize=8)
def _schema(path: str, mtime_ns: int) -> TabularSchema:
    # Keyed on mtime: the ClientApp asks every round, and an edited schema is re-read.
    return load_schema(path)


@functools.lru_cache(maxsize=1)
def _frame(path: str, mtime_ns: int) -> pd.DataFrame:
    # A simulation actor serves many sites of one table: read it once per process (keyed
    # on mtime, so an edited file is re-read). One table at a time, whatever the sites.
    from medfl.data.tabular import read_table

    return read_table(path)


@functools.lru_cache(maxsize=2)
def _table_partition(cfg: RunConfig, path: str, mtime_ns: int, schema: TabularSchema,
                     num_partitions: int) -> tuple[np.ndarray, ...]:
    # Keyed on the table's mtime and the schema itself (its labels decide the split).
    from medfl.data.partition import partition_indices
    from medfl.data.tabular import table_labels

    return tuple(partition_indices(table_labels(_frame(path, mtime_ns), schema),
                                   num_partitions=num_partitions, scheme=cfg.data.partition,
                                   alpha=cfg.data.dirichlet_alpha, seed=cfg.seed))


class TabularTask(Task):
    """One row per patient: the schema's features, label and sensitive columns."""

    name = TaskName.TABULAR
    is_tabular = True

    # --- files -------------------------------------------------------------------------

    def schema(self) -> TabularSchema:
        """The consortium's schema (``data.schema``, or the synthetic cohort's)."""
        cfg = self.cfg
        path = Path(cfg.data.schema).expanduser() if cfg.data.schema else self.files()[1]
        if not path.is_file():
            raise ConfigError("data.schema does not name a readable JSON file")
        return _schema(str(path.resolve()), path.stat().st_mtime_ns)

    def files(self) -> tuple[Path, Path]:
        """(CSV, schema) of a simulated run: ``data.manifest`` and ``data.schema``, or,
        when both are empty, the synthetic cohort (generated on first use under
        ``<state root>/_synthetic/``, then reused)."""
        data = self.cfg.data
        if data.manifest:
            return Path(data.manifest).expanduser(), Path(data.schema).expanduser()
        if data.schema:  # a deployment's config: each site reads its own CSV
            raise ConfigError("task='tabular' needs data.manifest (the CSV with a 'site' "
                              "column) beside data.schema to simulate sites, or neither (the "
                              "built-in synthetic cohort); a deployed site names its CSV in "
                              "node-config data-path")
        from medfl.data.synthetic_tabular import cohort_key, generate_cohort

        out = (state_root(self.cfg) / "_synthetic"
               / f"tabular-{cohort_key(SYNTHETIC_SEED, COHORT_SIZE)}")
        return generate_cohort(out, seed=SYNTHETIC_SEED, patients_per_site=COHORT_SIZE)

    def _table(self, data_path: str | None) -> Path:
        """The site's own CSV (``data_path``), or the run's dataset."""
        path = Path(data_path).expanduser() if data_path is not None else self.files()[0]
        if not path.is_file():
            raise DataError("the tabular CSV (data.manifest or node-config data-path) is not "
                            "a readable file")
        return path

    # --- the Task interface ---------------------------------------------------------------

    @override
    def sites(self, *, num_partitions: int | None = None) -> tuple[str, ...]:
        if self.cfg.data.partition != "natural":
            return partition_sites(self.cfg, num_partitions)
        path = self._table(None)
        return _table_sites(_frame(str(path.resolve()), path.stat().st_mtime_ns))

    @override
    def load_site(self, site: str, *, data_path: str | None = None, verify: bool = True,
                  num_partitions: int | None = None) -> SiteData:
        """``data_path``: the site's CSV (its rows without a ``site`` column are its own)."""
        cfg, path = self.cfg, self._table(data_path)

        def split(table: Path | pd.DataFrame) -> SiteData:
            return load_tabular_site(table, self.schema(), site,
                                     test_fraction=cfg.data.test_fraction, seed=SPLIT_SEED)

        if data_path is not None:  # a deployed site: its own CSV, as it is
            if cfg.data.partition != "natural":
                raise ConfigError("data.partition re-partitions a simulated dataset; a "
                                  "deployed site reads its own CSV (use "
                                  "data.partition='natural')")
            return split(path)
        key = (str(path.resolve()), path.stat().st_mtime_ns)  # one stat: frame and split agree
        frame = _frame(*key)
        if cfg.data.partition == "natural":
            return split(frame)
        if not num_partitions:
            raise ConfigError(f"data.partition={cfg.data.partition!r} needs the number of "
                              "partitions (the federation's num-supernodes)")
        parts = _table_partition(cfg, *key, self.schema(), num_partitions)
        rows = frame.iloc[parts[partition_number(site, len(parts))]].assign(site=site)
        return split(rows)

    @override
    def deployed_config(self, node_config: dict[str, Any]) -> RunConfig:
        """A deployed site reads its own CSV (``data-path``) and its copy of the
        consortium's schema (``schema-path``), never paths the server names."""
        if "data-path" not in node_config:
            raise ConfigError("a deployed tabular site needs node-config data-path (its own "
                              "manifest or CSV file)")
        if "schema-path" not in node_config:
            raise ConfigError("a deployed tabular site needs node-config schema-path (its "
                              "copy of the consortium's JSON schema)")
        schema = str(node_config["schema-path"])
        return replace(self.cfg, data=replace(self.cfg.data, manifest="", schema=schema))

    @override
    def build_model(self) -> nn.Module:
        return build_model(self.cfg.model, n_features=len(self.feature_spec().feature_names))

    @override
    def feature_spec(self) -> FeatureSpec:
        spec = self.schema().spec()
        scaling = self.cfg.preprocessing.scaling
        if spec.impute_idx and scaling != "federated":
            names = [spec.feature_names[i] for i in spec.impute_idx]
            raise ConfigError(f"preprocessing.scaling={scaling!r}, but data.schema declares "
                              f"\"missing\": \"impute\" for {names}: the consortium's value "
                              "comes from the shared feature moments, so it needs "
                              "preprocessing.scaling='federated' (or impute before the run "
                              "and declare \"missing\": \"refuse\")")
        return spec

    @override
    def label_names(self) -> tuple[str, ...]:
        return self.schema().label_names

    @override
    def model_io(self, scaler: Standardizer | None) -> dict[str, Any]:
        return tabular_model_io(self, scaler, "numeric, binary, then one-hot categorical "
                                "features (first level dropped), in input_schema.features "
                                "order")

    @override
    def subgroups(self) -> list[Cell]:
        out: list[Cell] = []
        for entry in self.schema().subgroups:
            if entry.levels:
                out += level_cells(entry.name, list(entry.levels))
            elif entry.cuts:
                out += cut_cells(entry.name, list(entry.cuts))
        return out

    @override
    def dataset_id(self) -> str:
        return "tabular-csv" if self.cfg.data.manifest else "synthetic-cohort"

    @override
    def dataset_card(self) -> dict[str, Any]:
        if self.cfg.data.manifest:
            return dict(CONSORTIUM_DATA_CARD)
        return {"name": "synthetic clinical-risk cohort (100,000 patients, four hospitals)",
                "provenance": "generated by medfl.data.synthetic_tabular; no real patients",
                "licence": None}
