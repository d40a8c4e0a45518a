"""Per-image segmentation figures (MONAI), computed at a site on its own test images.

Only sums over images leave a site, through a Gaussian release (the monitoring release,
:mod:`medfl.evaluation.stats`, and the report release, :mod:`medfl.evaluation.
report_cells`); the per-image values never do.
"""

from __future__ import annotations

from typing import cast

import numpy as np


def per_image_overlap(masks: np.ndarray, probs: np.ndarray, *,
                      threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-image Dice and IoU of the thresholded ``probs`` against ``masks`` (MONAI's
    ``DiceMetric`` / ``MeanIoU``, foreground only; an empty prediction of an empty mask
    scores 1). Both (n, 1, H, W); returns two (n,) float64 arrays in [0, 1]."""
    import torch
    from monai.metrics import DiceMetric, MeanIoU

    pred = torch.as_tensor(np.asarray(probs) >= threshold, dtype=torch.float32)
    truth = torch.as_tensor(np.asarray(masks) > 0.5, dtype=torch.float32)
    # reduction="none" returns one tensor (MONAI types the call as tensor-or-sequence)
    dice = cast(torch.Tensor, DiceMetric(include_background=True, reduction="none",
                                         ignore_empty=False)(pred, truth))
    iou = cast(torch.Tensor, MeanIoU(include_background=True, reduction="none",
                                     ignore_empty=False)(pred, truth))
    return dice.reshape(-1).double().numpy(), iou.reshape(-1).double().numpy()


def per_image_segmentation(masks: np.ndarray, probs: np.ndarray, *,
                           threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-image Dice, IoU (:func:`per_image_overlap`) and 95th-percentile Hausdorff
    distance in pixels (MONAI; NaN where the prediction or the mask is empty)."""
    import torch
    from monai.metrics import HausdorffDistanceMetric

    dice, iou = per_image_overlap(masks, probs, threshold=threshold)
    pred = torch.as_tensor(np.asarray(probs) >= threshold, dtype=torch.float32)
    truth = torch.as_tensor(np.asarray(masks) > 0.5, dtype=torch.float32)
    empty = (pred.flatten(1).sum(1) == 0) | (truth.flatten(1).sum(1) == 0)
    hd = np.full(len(dice), np.nan)
    if (~empty).any():
        keep = ~empty
        # reduction="none" returns one tensor (MONAI types the call as tensor-or-sequence)
        per_image = cast(torch.Tensor, HausdorffDistanceMetric(
            include_background=True, percentile=95, reduction="none")(pred[keep], truth[keep]))
        hd[keep.numpy()] = per_image.reshape(-1).double().numpy()
    return dice, iou, hd
