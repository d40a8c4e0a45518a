"""MONAI augmentation recipes applied at the site, per sample, during training only.

``none``: no augmentation. ``light``: left-right flips. ``standard``: flips, small
rotations (up to 15 degrees) and intensity jitter (scale and shift by up to 10 % / 0.05).
Segmentation masks follow every spatial transform (nearest-neighbour, so they stay
binary); intensity jitter touches the image only.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from medfl.config import AUGMENTATIONS
from medfl.errors import ConfigError

__all__ = ["build_augmentation"]

Transform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _plain(t) -> torch.Tensor:
    # MONAI returns MetaTensors; DP-SGD's hooks and collation want plain tensors.
    return t.as_tensor() if hasattr(t, "as_tensor") else torch.as_tensor(t)


def build_augmentation(recipe: str, *, segmentation: bool, seed: int) -> Transform | None:
    """A per-sample ``(image (C, H, W), target) -> (image, target)`` transform, or None.

    ``seed`` fixes the transforms' random state (the site derives it from its secret
    sampling seed under DP, so augmentation reveals nothing the server could predict).
    """
    if recipe not in AUGMENTATIONS:
        raise ConfigError(f"train.augment={recipe!r}; valid: {', '.join(AUGMENTATIONS)}")
    if recipe == "none":
        return None
    from monai.transforms import (
        Compose,
        RandFlipd,
        RandRotated,
        RandScaleIntensityd,
        RandShiftIntensityd,
    )

    spatial = ["image", "label"] if segmentation else ["image"]
    steps: list = [RandFlipd(keys=spatial, prob=0.5, spatial_axis=1)]
    if recipe == "standard":
        steps += [
            RandRotated(keys=spatial, range_x=math.radians(15), prob=0.5, keep_size=True,
                        mode=["bilinear", "nearest"][: len(spatial)],
                        padding_mode="zeros"),
            RandScaleIntensityd(keys=["image"], factors=0.1, prob=0.5),
            RandShiftIntensityd(keys=["image"], offsets=0.05, prob=0.5),
        ]
    compose = Compose(steps)
    compose.set_random_state(seed=seed % 2**32)

    def transform(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = compose({"image": x, "label": y})
        return _plain(out["image"]).float(), _plain(out["label"]).float()

    return transform
