"""The imaging tasks: ``image-classification`` and ``segmentation`` over a manifest of
PNG/JPEG/DICOM/NIfTI files, or MONAI-generated synthetic hospitals."""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn
from typing_extensions import override

from medfl.config import RunConfig, TaskName
from medfl.data.images import ImagePreprocessing
from medfl.data.scaling import Standardizer
from medfl.data.types import SiteData
from medfl.errors import ConfigError, DataError
from medfl.evaluation.subgroups import Cell, cut_cells, sex_cells
from medfl.models import build_model
from medfl.tasks.base import (
    CONSORTIUM_DATA_CARD,
    SPLIT_SEED,
    SYNTHETIC_SEED,
    EvalKind,
    Loss,
    Task,
    partition_number,
    partition_sites,
    state_root,
)


def image_preprocessing(cfg: RunConfig) -> ImagePreprocessing:
    """How a site turns a file into the model's input (``data.image-size``, intensity)."""
    d = cfg.data
    return ImagePreprocessing(size=d.image_size, intensity=d.intensity,
                              window_center=d.window_center, window_width=d.window_width,
                              window_preset=d.window_preset)


def _read(cfg: RunConfig, path: Path, default_site: str | None = None) -> Any:
    from medfl.data.manifest import read_manifest

    task = task_for_imaging(cfg)
    return read_manifest(path, task=cfg.task.value, label_names=task.manifest_labels(),
                         default_site=default_site)


def _partitioned(cfg: RunConfig, manifest: Any, site: str, num_partitions: int) -> Any:
    from medfl.data.partition import partition_indices

    frame = manifest.frame  # its index is the manifest line number, kept for errors
    labels = task_for_imaging(cfg).partition_labels(manifest)
    parts = partition_indices(labels, num_partitions=num_partitions, scheme=cfg.data.partition,
                              alpha=cfg.data.dirichlet_alpha, seed=cfg.seed)
    rows = frame.iloc[parts[partition_number(site, num_partitions)]].copy()
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


class ImagingTask(Task):
    """What both imaging tasks share: manifests, synthetic hospitals, 2-D models."""

    def manifest(self) -> Path:
        """The manifest CSV: ``data.manifest``, or the synthetic hospitals (generated on
        first use under ``<state root>/_synthetic/``, then reused)."""
        cfg = self.cfg
        if cfg.data.manifest:
            path = Path(cfg.data.manifest).expanduser()
            if not path.is_file():
                raise DataError("data.manifest does not name a readable CSV file")
            return path
        from medfl.data.synthetic import dataset_key, default_sites, generate_hospitals

        task = cfg.task.value
        sites = default_sites(task)
        key = dataset_key(task, SYNTHETIC_SEED, cfg.data.image_size, sites)
        out = state_root(cfg) / "_synthetic" / f"{task}-{key}"
        return generate_hospitals(out, task=task, seed=SYNTHETIC_SEED,
                                  size=cfg.data.image_size, sites=sites)

    def manifest_labels(self) -> tuple[str, ...]:
        """The class names a manifest's ``label`` column holds (none: masks instead)."""
        return ()

    def partition_labels(self, manifest: Any) -> np.ndarray:
        """Per-row labels a re-partitioning balances (default: all one class)."""
        return np.zeros(len(manifest.frame), np.int64)

    @override
    def sites(self, *, num_partitions: int | None = None) -> tuple[str, ...]:
        if self.cfg.data.partition != "natural":
            return partition_sites(self.cfg, num_partitions)
        return tuple(_read(self.cfg, self.manifest()).sites)

    @override
    def load_site(self, site: str, *, data_path: str | None = None, verify: bool = True,
                  num_partitions: int | None = None) -> SiteData:
        """``data_path``: the site's manifest CSV (its rows without a ``site`` column
        belong to this site)."""
        path = Path(data_path) if data_path is not None else self.manifest()
        if not path.is_file():
            raise DataError("node-config data-path must name this site's manifest CSV file")
        return _load_image_site(self.cfg, str(path.resolve()), path.stat().st_mtime_ns, site,
                                num_partitions, data_path is not None)

    @override
    def deployed_config(self, node_config: dict[str, Any]) -> RunConfig:
        """A deployed site reads its own manifest (``data-path``), never the server's."""
        if "data-path" not in node_config:
            raise ConfigError(f"a deployed {self.name.value} site needs node-config data-path "
                              "(its own manifest or CSV file)")
        return replace(self.cfg, data=replace(self.cfg.data, manifest="", schema=""))

    @override
    def build_model(self) -> nn.Module:
        size = self.cfg.data.image_size
        return build_model(self.cfg.model, image_shape=(1, size, size))

    @override
    def subgroups(self) -> list[Cell]:
        # Synthetic hospitals and manifests with sex (M/F) and age columns.
        return sex_cells(male=("M", "MALE"), female=("F", "FEMALE")) + cut_cells("age", [65])

    @override
    def dataset_id(self) -> str:
        return "manifest" if self.cfg.data.manifest else "synthetic-hospitals"

    @override
    def dataset_card(self) -> dict[str, Any]:
        if self.cfg.data.manifest:
            return dict(CONSORTIUM_DATA_CARD)
        return {"name": "synthetic hospitals (MONAI create_test_image_2d)",
                "provenance": "generated by medfl.data.synthetic; no real patients",
                "licence": None}

    @override
    def model_io(self, scaler: Standardizer | None) -> dict[str, Any]:
        cfg, size = self.cfg, self.cfg.data.image_size
        output = ("logit of P(lesion) per pixel" if self.segmentation else
                  f"logit of P({self.label_names()[1]})")
        return {
            "architecture": {"name": cfg.model.name, "width": cfg.model.width,
                             "image_shape": [1, size, size], "n_outputs": 1,
                             "output": output},
            "input_schema": {"type": "image", "formats": ["png", "jpeg", "dicom", "nifti"],
                             "channels": 1, "dimensions": 2,
                             "sensitive_attributes": ["sex", "age"]},
            "preprocessing": {"image": image_preprocessing(cfg).to_dict(),
                              "order": "read (DICOM modality LUT), intensity, resize"},
        }


class ImageClassificationTask(ImagingTask):
    """One binary label per image (``data.labels``: negative first)."""

    name = TaskName.IMAGE_CLASSIFICATION

    @override
    def label_names(self) -> tuple[str, ...]:
        return self.cfg.data.label_names

    @override
    def manifest_labels(self) -> tuple[str, ...]:
        return self.cfg.data.label_names

    @override
    def partition_labels(self, manifest: Any) -> np.ndarray:
        labels: np.ndarray = (manifest.frame["label"].astype(str)
                              .map(manifest.label_names.index).to_numpy())
        return labels


class SegmentationTask(ImagingTask):
    """A lesion mask per image: Dice + BCE loss, Dice and IoU in evaluation."""

    name = TaskName.SEGMENTATION
    evaluation = EvalKind.SEGMENTATION

    @override
    def label_names(self) -> tuple[str, ...]:
        return ("background", "lesion")

    @override
    def make_loss(self) -> Loss:
        from monai.losses import DiceCELoss

        # batch=False: Dice per image, then the mean over images.
        return DiceCELoss(sigmoid=True, batch=False)


def task_for_imaging(cfg: RunConfig) -> ImagingTask:
    """The imaging task of ``cfg`` (used by the module's cached loaders)."""
    imaging: dict[TaskName, type[ImagingTask]] = {
        TaskName.IMAGE_CLASSIFICATION: ImageClassificationTask,
        TaskName.SEGMENTATION: SegmentationTask}
    if cfg.task not in imaging:
        raise ConfigError(f"task {cfg.task.value!r} is not an imaging task")
    return imaging[cfg.task](cfg)
