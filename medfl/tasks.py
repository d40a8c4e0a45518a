"""What differs between tasks, in one place.

A task decides where a site's data comes from, the model's input shape, the training loss
and what evaluation computes. Everything else (DP-SGD, the ledger, the egress contract,
FedAvg, the run directory) is shared by all tasks.

| task | data | model input | loss | evaluation |
| --- | --- | --- | --- | --- |
| heart-disease | embedded UCI files (or a site's export) | 13 features | BCE | classification |
| tabular | a CSV + JSON schema (or the synthetic cohort) | schema features | BCE | classification |
| image-classification | a manifest (or synthetic hospitals) | (1, S, S) | BCE | classification |
| segmentation | a manifest with masks (or synthetic) | (1, S, S) | Dice + BCE | Dice, IoU |
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medfl.config import RunConfig
from medfl.data import heart
from medfl.data.images import ImagePreprocessing
from medfl.data.tabular import (
    FeatureSpec,
    TabularSchema,
    load_schema,
    load_tabular_site,
    table_sites,
)
from medfl.data.types import SiteData
from medfl.errors import ConfigError, DataError
from medfl.models import build_model

logger = logging.getLogger(__name__)

#: The synthetic hospitals are generated once per (task, size) with this seed, so runs
#: with different training seeds are compared on the same data.
SYNTHETIC_SEED = 2026
#: Patients at each of the synthetic cohort's four hospitals (task = "tabular" without
#: data): 100,000 in all, enough for 1,000 simulated sites of 100.
COHORT_SIZE = 25_000
#: Per-site train/test split seed for manifests without a split column.
SPLIT_SEED = 43


def kind(cfg: RunConfig) -> str:
    """``tabular``, ``classification`` (binary, images) or ``segmentation``."""
    return {"heart-disease": "tabular", "tabular": "tabular",
            "image-classification": "classification", "segmentation": "segmentation"}[cfg.task]


def image_preprocessing(cfg: RunConfig) -> ImagePreprocessing:
    d = cfg.data
    return ImagePreprocessing(size=d.image_size, intensity=d.intensity,
                              window_center=d.window_center, window_width=d.window_width)


@functools.lru_cache(maxsize=8)
def _schema(path: str, mtime_ns: int) -> TabularSchema:
    # Keyed on mtime: the ClientApp asks every round, and an edited schema is re-read.
    return load_schema(path)


def tabular_schema(cfg: RunConfig) -> TabularSchema:
    """The consortium's schema of a ``task = "tabular"`` run (``data.schema``, or the
    built-in synthetic cohort's)."""
    path = Path(cfg.data.schema).expanduser() if cfg.data.schema else tabular_files(cfg)[1]
    if not path.is_file():
        raise ConfigError("data.schema does not name a readable JSON file")
    return _schema(str(path.resolve()), path.stat().st_mtime_ns)


def tabular_files(cfg: RunConfig) -> tuple[Path, Path]:
    """(CSV, schema) of a simulated ``task = "tabular"`` run: ``data.manifest`` and
    ``data.schema``, or, when both are empty, the synthetic cohort (generated on first use
    under ``<state root>/_synthetic/``, then reused)."""
    if cfg.data.manifest:
        return Path(cfg.data.manifest).expanduser(), Path(cfg.data.schema).expanduser()
    if cfg.data.schema:  # a deployment's config: each site reads its own CSV
        raise ConfigError("task='tabular' needs data.manifest (the CSV with a 'site' column) "
                          "beside data.schema to simulate sites, or neither (the built-in "
                          "synthetic cohort); a deployed site names its CSV in node-config "
                          "data-path")
    from medfl.data.synthetic_tabular import cohort_key, generate_cohort

    out = state_root(cfg) / "_synthetic" / f"tabular-{cohort_key(SYNTHETIC_SEED, COHORT_SIZE)}"
    return generate_cohort(out, seed=SYNTHETIC_SEED, patients_per_site=COHORT_SIZE)


def feature_spec(cfg: RunConfig) -> FeatureSpec:
    """The feature names, numeric columns, public bounds and input schema of a tabular run."""
    if cfg.task == "heart-disease":
        numeric_idx = tuple(heart.FEATURE_NAMES.index(c) for c in heart.NUMERIC_COLUMNS)
        bounds = np.array([heart.PUBLIC_BOUNDS[c] for c in heart.NUMERIC_COLUMNS],
                          dtype=np.float64)
        return FeatureSpec(heart.FEATURE_NAMES, numeric_idx, bounds, heart.input_schema())
    if cfg.task == "tabular":
        return tabular_schema(cfg).spec()
    raise ConfigError(f"task {cfg.task!r} is not tabular; it has no feature spec")


def label_names(cfg: RunConfig) -> tuple[str, ...]:
    if cfg.task == "heart-disease":
        return heart.LABEL_NAMES
    if cfg.task == "tabular":
        return tabular_schema(cfg).label_names
    return cfg.data.label_names if cfg.task == "image-classification" else ("background",
                                                                              "lesion")


def build_task_model(cfg: RunConfig) -> nn.Module:
    """The task's model, untrained (seed torch first for reproducible weights)."""
    if cfg.is_tabular:
        return build_model(cfg.model, n_features=len(feature_spec(cfg).feature_names))
    return build_model(cfg.model, image_shape=(1, cfg.data.image_size, cfg.data.image_size))


def make_loss(cfg: RunConfig) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The training loss: a mean over samples of per-sample losses, as DP-SGD's per-sample
    clipping assumes. Classification weighs positives by ``train.pos-weight`` (a public
    constant, so the loss does not depend on the site's data)."""
    if kind(cfg) == "segmentation":
        from monai.losses import DiceCELoss

        # batch=False: Dice per image, then the mean over images.
        return DiceCELoss(sigmoid=True, batch=False)
    bce = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(cfg.train.pos_weight))

    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return bce(logits.reshape(-1), y.reshape(-1).to(logits.dtype))

    return loss


# --- where the data is -------------------------------------------------------------------

def state_root(cfg: RunConfig) -> Path:
    """``state-dir``, or ``$MEDFL_HOME/state``, or ``<project>/state``: simulated sites'
    ledgers and the generated synthetic hospitals live below it."""
    if cfg.state_dir:
        return Path(cfg.state_dir).expanduser()
    home = os.environ.get("MEDFL_HOME")
    return (Path(home) if home else Path(__file__).resolve().parents[1]) / "state"


def dataset_manifest(cfg: RunConfig) -> Path:
    """The manifest CSV of an imaging run: ``data.manifest``, or the synthetic hospitals
    (generated on first use under ``<state root>/_synthetic/``, then reused)."""
    if cfg.data.manifest:
        path = Path(cfg.data.manifest).expanduser()
        if not path.is_file():
            raise DataError("data.manifest does not name a readable CSV file")
        return path
    from medfl.data.synthetic import dataset_key, default_sites, generate_hospitals

    sites = default_sites(cfg.task)
    key = dataset_key(cfg.task, SYNTHETIC_SEED, cfg.data.image_size, sites)
    out = state_root(cfg) / "_synthetic" / f"{cfg.task}-{key}"
    return generate_hospitals(out, task=cfg.task, seed=SYNTHETIC_SEED,
                              size=cfg.data.image_size, sites=sites)


def _table(cfg: RunConfig, data_path: str | None) -> Path:
    """The CSV of a tabular run: the site's own (``data_path``), or the run's dataset."""
    path = Path(data_path).expanduser() if data_path is not None else tabular_files(cfg)[0]
    if not path.is_file():
        raise DataError("the tabular CSV (data.manifest or node-config data-path) is not a "
                        "readable file")
    return path


@functools.lru_cache(maxsize=1)
def _frame(path: str, mtime_ns: int):
    # A simulation actor serves many sites of one table: read it once per process (keyed
    # on mtime, so an edited file is re-read). One table at a time, whatever the sites.
    from medfl.data.tabular import read_table

    return read_table(path)


def _table_frame(path: Path):
    return _frame(str(path.resolve()), path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=2)
def _table_partition(cfg: RunConfig, path: str, mtime_ns: int, schema: TabularSchema,
                     num_partitions: int) -> tuple[np.ndarray, ...]:
    # Keyed on the table's mtime and the schema itself (its labels decide the split).
    from medfl.data.partition import partition_indices
    from medfl.data.tabular import table_labels

    return tuple(partition_indices(table_labels(_frame(path, mtime_ns), schema),
                                   num_partitions=num_partitions, scheme=cfg.data.partition,
                                   alpha=cfg.data.dirichlet_alpha, seed=cfg.seed))


def _partition_number(site: str, num_partitions: int) -> int:
    number = site.removeprefix("part-")
    i = int(number) - 1 if site.startswith("part-") and number.isdigit() else -1
    if not 0 <= i < num_partitions:
        raise ConfigError(f"site {site!r} is not one of this simulation's partitions "
                          f"part-1 .. part-{num_partitions}")
    return i


def _load_tabular(cfg: RunConfig, site: str, data_path: str | None,
                  num_partitions: int | None) -> SiteData:
    path = _table(cfg, data_path)
    if data_path is not None:  # a deployed site: its own CSV, as it is
        if cfg.data.partition != "natural":
            raise ConfigError("data.partition re-partitions a simulated dataset; a deployed "
                              "site reads its own CSV (use data.partition='natural')")
        return load_tabular_site(path, tabular_schema(cfg), site,
                                 test_fraction=cfg.data.test_fraction, seed=SPLIT_SEED)
    key = (str(path.resolve()), path.stat().st_mtime_ns)  # one stat: frame and split agree
    frame = _frame(*key)
    if cfg.data.partition == "natural":
        return load_tabular_site(frame, tabular_schema(cfg), site,
                                 test_fraction=cfg.data.test_fraction, seed=SPLIT_SEED)
    if not num_partitions:
        raise ConfigError(f"data.partition={cfg.data.partition!r} needs the number of "
                          "partitions (the federation's num-supernodes)")
    parts = _table_partition(cfg, *key, tabular_schema(cfg), num_partitions)
    rows = frame.iloc[parts[_partition_number(site, len(parts))]].assign(site=site)
    return load_tabular_site(rows, tabular_schema(cfg), site,
                             test_fraction=cfg.data.test_fraction, seed=SPLIT_SEED)


def _read(cfg: RunConfig, path: Path, default_site: str | None = None):
    from medfl.data.manifest import read_manifest

    labels = cfg.data.label_names if cfg.task == "image-classification" else ()
    return read_manifest(path, task=cfg.task, label_names=labels, default_site=default_site)


def sites(cfg: RunConfig, *, num_partitions: int | None = None) -> tuple[str, ...]:
    """The sites of a simulated federation, in partition-id order."""
    if cfg.data.partition != "natural":
        if not num_partitions:
            raise ConfigError(f"data.partition={cfg.data.partition!r} needs the number of "
                              "partitions (the federation's num-supernodes)")
        return tuple(f"part-{i + 1}" for i in range(num_partitions))
    if cfg.task == "heart-disease":
        return heart.HEART_SITES
    if cfg.task == "tabular":
        return table_sites(_table_frame(_table(cfg, None)))
    return _read(cfg, dataset_manifest(cfg)).sites


def _partitioned(cfg: RunConfig, manifest, site: str, num_partitions: int):
    from medfl.data.partition import partition_indices

    frame = manifest.frame  # its index is the manifest line number, kept for errors
    labels = (frame["label"].astype(str).map(manifest.label_names.index).to_numpy()
              if cfg.task == "image-classification" else np.zeros(len(frame), np.int64))
    parts = partition_indices(labels, num_partitions=num_partitions, scheme=cfg.data.partition,
                              alpha=cfg.data.dirichlet_alpha, seed=cfg.seed)
    rows = frame.iloc[parts[_partition_number(site, num_partitions)]].copy()
    rows["site"] = site
    return replace(manifest, frame=rows)


@functools.lru_cache(maxsize=4)
def _load_image_site(cfg: RunConfig, path: str, mtime_ns: int, site: str,
                     num_partitions: int | None, data_path_given: bool) -> SiteData:
    # Cached per process: a simulated ClientApp is called every round, and decoding a few
    # hundred images each time would dominate a CPU round. The key holds the manifest's
    # mtime, so an edited manifest is re-read (an image replaced in place under an
    # unchanged manifest is not: touch the manifest). Four sites at most per process: a
    # simulation actor serves several sites; at large image sizes each costs memory.
    from medfl.data.manifest import load_manifest_site

    manifest = _read(cfg, Path(path), default_site=site if data_path_given else None)
    if cfg.data.partition != "natural":
        if data_path_given:
            raise ConfigError("data.partition re-partitions a simulated dataset; a deployed "
                              "site reads its own manifest (use data.partition='natural')")
        manifest = _partitioned(cfg, manifest, site, num_partitions or 0)
    return load_manifest_site(manifest, site, prep=image_preprocessing(cfg),
                              test_fraction=cfg.data.test_fraction, seed=SPLIT_SEED)


def load_site(cfg: RunConfig, site: str, *, data_path: str | None = None, verify: bool = True,
              num_partitions: int | None = None) -> SiteData:
    """One constructor for a site's data, whatever the task.

    ``data_path`` is the site's own data (deployment: ``node_config`` ``data-path``):
    heart-disease, a folder holding ``processed.<site>.data`` (sha256-verified unless
    ``verify`` is false); imaging, the site's manifest CSV (its rows without a ``site``
    column belong to this site); tabular, the site's CSV (likewise). Without it, the run's
    dataset (simulation).
    """
    if cfg.task == "tabular":
        return _load_tabular(cfg, site, data_path, num_partitions)
    if cfg.task == "heart-disease":
        if data_path is not None and not Path(data_path).is_dir():
            raise DataError("node-config data-path is not a folder; it must be the folder "
                            f"holding processed.{site}.data")
        if not verify:
            logger.warning("site %s: data checksum verification is off (own data export)",
                           site)
        return heart.load_heart_site(site, directory=Path(data_path) if data_path else None,
                                     verify=verify)
    path = Path(data_path) if data_path is not None else dataset_manifest(cfg)
    if not path.is_file():
        raise DataError("node-config data-path must name this site's manifest CSV file")
    return _load_image_site(cfg, str(path.resolve()), path.stat().st_mtime_ns, site,
                            num_partitions, data_path is not None)
