"""The image size a run uses: ``data.image-size``, or ``data.cpu-image-size`` on a CPU.

A clinical-resolution scenario (224x224 DenseNet121, 256x256 UNet) is meant for a site's
GPU; on a CPU-only machine one round would take hours. ``data.cpu-image-size`` (0: off) is
the size such a machine uses instead. The decision is made once, where the config is
parsed, so every consumer of the parsed config (the synthetic hospitals, preprocessing,
the model and its bundle's input schema) sees the same size. Each process decides for
itself, so they agree only where they see the same devices: a consortium whose machines
differ in GPUs leaves the key at 0, and a simulation on a GPU machine gives its ClientApps
a GPU share (Ray hides the GPU from an actor that asks for none). Where they disagree, the
server's messages carry its size and a site refuses another
(:func:`medfl.federation.records.check_image_size`), naming both.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import replace

from medfl.config.sections import RunConfig

__all__ = ["device_type", "effective_image_size", "with_effective_image_size"]

logger = logging.getLogger(__name__)


def effective_image_size(device_type: str, *, image_size: int, cpu_image_size: int) -> int:
    """The side in pixels a run trains at: ``cpu_image_size`` when the run's device is the
    CPU and it is set (> 0) and smaller than ``image_size``; else ``image_size``.

    Parameters
    ----------
    device_type : where the model trains, ``"cpu"`` or ``"cuda"`` (see :func:`device_type`).
    image_size : ``data.image-size``, pixels per side.
    cpu_image_size : ``data.cpu-image-size``, pixels per side (0: never reduce).
    """
    if device_type == "cpu" and 0 < cpu_image_size < image_size:
        return cpu_image_size
    return image_size


def device_type(device: str) -> str:
    """Where the config's ``device`` resolves in this process: ``"cuda"`` or ``"cpu"``
    (``auto``: CUDA when a GPU is visible, as ``medfl.training.resolve_device`` does)."""
    if device != "auto":
        return device
    import torch  # only here: parsing a config needs no torch otherwise

    return "cuda" if torch.cuda.is_available() else "cpu"


def with_effective_image_size(cfg: RunConfig, *, device: str | None = None) -> RunConfig:
    """``cfg`` with ``data.image_size`` the size the run uses (``data.reduced_from``: the
    configured size it replaced, 0 when not reduced); a warning, once per process.

    ``device``: ``"cpu"`` or ``"cuda"``; None resolves ``cfg.device`` in this process.
    """
    data = cfg.data
    if not 0 < data.cpu_image_size < data.image_size:
        return cfg  # nothing to reduce: no need to look for a GPU
    size = effective_image_size(device_type(cfg.device) if device is None else device,
                                image_size=data.image_size,
                                cpu_image_size=data.cpu_image_size)
    if size == data.image_size:
        return cfg
    _warn_reduced(data.image_size, size)
    return replace(cfg, data=replace(data, image_size=size, reduced_from=data.image_size))


@functools.cache
def _warn_reduced(full: int, reduced: int) -> None:
    # Cached: a process parses the run config several times (a simulated site, every round).
    logger.warning("training on the CPU: images are %dx%d (data.cpu-image-size) instead of "
                   "%dx%d (data.image-size); set data.cpu-image-size = 0 to keep the full "
                   "size on the CPU", reduced, reduced, full, full)
