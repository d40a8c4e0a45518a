"""What differs between tasks, one class each behind one interface (:class:`Task`).

A task decides where a site's data comes from, the model's input shape, the training loss,
what evaluation computes and what the reports say about the data. Everything else (DP-SGD,
the ledger, the egress contract, FedAvg, the run directory) is shared by all tasks.
:func:`task_for` is the one lookup; nothing outside this package branches on a task name.

| task | class | data | model input | loss | evaluation |
| --- | --- | --- | --- | --- | --- |
| heart-disease | HeartDiseaseTask | embedded UCI files (or a site's export) | 13 features | BCE | classification |
| tabular | TabularTask | a CSV + JSON schema (or the synthetic cohort) | schema features | BCE | classification |
| image-classification | ImageClassificationTask | a manifest (or synthetic hospitals) | (1, S, S) | BCE | classification |
| segmentation | SegmentationTask | a manifest with masks (or synthetic) | (1, S, S) | Dice + BCE | Dice, IoU |
"""  # noqa: E501

from __future__ import annotations

from medfl.config import RunConfig, TaskName
from medfl.tasks.base import SPLIT_SEED, SYNTHETIC_SEED, EvalKind, Task, state_root
from medfl.tasks.heart import HeartDiseaseTask
from medfl.tasks.imaging import (
    ImageClassificationTask,
    ImagingTask,
    SegmentationTask,
    image_preprocessing,
)
from medfl.tasks.tabular import COHORT_SIZE, TabularTask

__all__ = [
    "COHORT_SIZE", "SPLIT_SEED", "SYNTHETIC_SEED", "EvalKind", "HeartDiseaseTask",
    "ImageClassificationTask", "ImagingTask", "SegmentationTask", "TabularTask", "Task",
    "TaskName", "evaluation_of", "image_preprocessing", "state_root", "task_for",
]

_TASKS: dict[TaskName, type[Task]] = {
    TaskName.HEART_DISEASE: HeartDiseaseTask,
    TaskName.TABULAR: TabularTask,
    TaskName.IMAGE_CLASSIFICATION: ImageClassificationTask,
    TaskName.SEGMENTATION: SegmentationTask,
}


def evaluation_of(name: str) -> EvalKind:
    """What evaluation computes for the task called ``name`` (e.g. a bundle's ``task``)."""
    return _TASKS[TaskName(name)].evaluation


def task_for(cfg: RunConfig) -> Task:
    """The task of ``cfg``, bound to it (``cfg.task`` was validated by ``parse_run_config``)."""
    return _TASKS[TaskName(cfg.task)](cfg)
