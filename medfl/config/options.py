"""The config's option sets: the tasks and the allowed values of each choice key."""

from __future__ import annotations

from enum import Enum

__all__ = ["ACCOUNTANTS", "AUGMENTATIONS", "COMPRESSIONS", "DEVICES", "GRAD_SAMPLE_MODES",
           "INTENSITIES", "PRECISIONS", "MODELS", "OPTIMIZERS", "PARTITIONS", "SCALINGS",
           "STRATEGIES", "TASKS", "TASK_MODELS", "ATTACKS", "PRIVACY_MODES", "TaskName"]


class TaskName(str, Enum):
    """The four tasks (``task`` in the run config); their behaviour is in ``medfl.tasks``."""

    HEART_DISEASE = "heart-disease"
    TABULAR = "tabular"
    IMAGE_CLASSIFICATION = "image-classification"
    SEGMENTATION = "segmentation"

    def __str__(self) -> str:
        return self.value

    @property
    def is_tabular(self) -> bool:
        """Heart disease (embedded) or a consortium's own table."""
        return self in (TaskName.HEART_DISEASE, TaskName.TABULAR)


TASKS = tuple(t.value for t in TaskName)
MODELS = ("logreg", "mlp", "resnet", "densenet121", "unet")
#: Which models fit which task (checked once, when the config is parsed).
TASK_MODELS = {
    "heart-disease": ("logreg", "mlp"),
    "tabular": ("logreg", "mlp"),
    "image-classification": ("resnet", "densenet121"),
    "segmentation": ("unet",),
}
INTENSITIES = ("minmax", "window", "zscore")
PARTITIONS = ("natural", "iid", "dirichlet", "dirichlet-mix", "quantity")
AUGMENTATIONS = ("none", "light", "standard")
STRATEGIES = ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "fedmedian",
              "fedtrimmedavg", "krum", "multikrum")
ATTACKS = ("none", "scale", "sign-flip", "nan", "label-flip", "secagg-dropout")
PRIVACY_MODES = ("local", "distributed")
#: How a site encodes its update for the wire (decoded by the server before aggregation).
COMPRESSIONS = ("none", "float16", "int8")
# Opacus' "gdp" accountant is left out on purpose: it reads only the last history entry
# (so it would drop an earlier release from the total) and is an approximation, not a bound.
ACCOUNTANTS = ("rdp", "prv")
SCALINGS = ("federated", "site", "none")
DEVICES = ("auto", "cpu", "cuda")
OPTIMIZERS = ("sgd", "adam")
GRAD_SAMPLE_MODES = ("auto", "ghost", "hooks", "ew", "functorch")  # Opacus per-sample gradients
PRECISIONS = ("fp32", "bf16", "auto")  # the forward pass (bf16: autocast; clipping stays fp32)
