"""Grad-CAM for the imaging classifiers, computed at a site on its own images.

Per-image maps and overlays stay at the site (they are images of patients); what may be
shared is :func:`saliency_grid`, the mean share of saliency per coarse region over many
images.

The maps are Grad-CAM (Selvaraju et al., 2017), computed here in torch: the target layer's
activations ``A_c`` weighted by the spatial mean of the positive logit's gradient with
respect to them, summed over channels and rectified, ``ReLU(sum_c mean(dy/dA_c) A_c)``.
Each map is min-max scaled, upsampled bilinearly (half-pixel centres) to the image size,
and min-max scaled again: pytorch-grad-cam's ``GradCAM`` recipe, which the tests check it
against. Doing it here keeps pytorch-grad-cam, torchvision and OpenCV out of a site's and
the serving image's dependencies.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from typing import Any, cast

import matplotlib
import numpy as np
import torch
from PIL import Image
from torch import nn

__all__ = ["default_target_layer", "gradcam", "overlay_png", "saliency_grid"]

logger = logging.getLogger(__name__)


def default_target_layer(model: nn.Module) -> nn.Module:
    """The last ``nn.Conv2d`` in ``model.modules()`` (registration order).

    Raises
    ------
    ValueError : the model has no ``nn.Conv2d``.
    """
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no nn.Conv2d layer for Grad-CAM; pass "
                         f"target_layer= explicitly")
    return convs[-1]


def feature_layer(model: nn.Module) -> nn.Module | None:
    """The layer Grad-CAM should look at in MedFL's image models: the last whole feature
    block, not its last Conv2d (in MONAI's residual classifier that conv is the shortcut
    branch, in DenseNet one of the last layer's 32 new channels). ``None``: the last
    Conv2d (:func:`default_target_layer`)."""
    if hasattr(model, "features"):  # DenseNet
        return cast(nn.Module, model.features)
    net = getattr(model, "net", None)
    if net is not None and len(list(net.children())):  # MONAI Classifier: residual units
        return list(net.children())[-1]
    return None


def _positive_logits(output: torch.Tensor) -> torch.Tensor:
    """Grad-CAM targets of a batch: each image's single logit (the positive class)."""
    n = output.shape[0] if output.ndim else 0
    if n == 0 or output.numel() != n:
        raise ValueError(f"gradcam explains a binary classifier with one output logit, got "
                         f"an output of shape {tuple(output.shape)} per image"
                         if n else f"the model's output has shape {tuple(output.shape)}")
    return output.reshape(n)


def _min_max(maps: torch.Tensor) -> torch.Tensor:
    """Each (H, W) map of an (n, H, W) batch shifted to minimum 0 and divided by its
    maximum plus 1e-7 (pytorch-grad-cam's scaling: a constant map becomes all 0)."""
    shifted = maps - maps.amin(dim=(1, 2), keepdim=True)
    return shifted / (shifted.amax(dim=(1, 2), keepdim=True) + 1e-7)


def _cam_batch(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> np.ndarray:
    """Grad-CAM maps (n, H, W) of one batch (see the module docstring)."""
    acts: list[torch.Tensor] = []
    grads: list[torch.Tensor] = []

    def keep(_module: nn.Module, _inputs: Any, output: Any) -> None:
        # as pytorch-grad-cam keeps them: the output itself (an in-place activation after
        # the layer shows in it) and the gradient that reaches it
        if isinstance(output, torch.Tensor) and output.requires_grad:
            acts.append(output.detach())
            output.register_hook(grads.append)

    handle = layer.register_forward_hook(keep)
    try:
        _positive_logits(model(x.requires_grad_(True))).sum().backward()
    finally:
        handle.remove()
    if len(acts) != 1 or len(grads) != 1 or acts[0].ndim != 4:
        raise ValueError(f"the target layer {type(layer).__name__} gave no single (n, C, h, w) "
                         f"activation with a gradient; pass a convolutional target_layer=")
    weights = grads[0].double().mean(dim=(2, 3), keepdim=True)
    cam = _min_max(torch.relu((weights * acts[0].double()).sum(dim=1)))
    cam = torch.nn.functional.interpolate(cam[:, None].float(), size=tuple(x.shape[2:]),
                                          mode="bilinear", align_corners=False)[:, 0]
    return _min_max(cam.double()).float().cpu().numpy()


@contextlib.contextmanager
def _input_gradients_only(model: nn.Module) -> Iterator[None]:
    """Within: no parameter requires a gradient and Opacus' hooks are off. After: the
    training modes, ``requires_grad`` flags, ``.grad`` and Opacus' hook switch as before."""
    modes = [(m, m.training) for m in model.modules()]
    params = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    # Opacus' GradSampleModule has backward hooks that fail without the activations its
    # forward hooks capture only in training mode; its own switch turns both off.
    opacus_hooks: list[tuple[Any, bool]] = [
        (m, cast(bool, m.hooks_enabled)) for m in model.modules()
        if isinstance(getattr(m, "hooks_enabled", None), bool)]
    try:
        # Gradients reach the target layer through the input instead of the weights: the
        # parameters' .grad stays untouched.
        for p, _, _ in params:
            p.requires_grad_(False)
        for m, _ in opacus_hooks:
            m.hooks_enabled = False
        yield
    finally:
        for m, training in modes:
            m.training = training
        for p, requires_grad, grad in params:
            p.requires_grad_(requires_grad)
            p.grad = grad
        for m, enabled in opacus_hooks:
            m.hooks_enabled = enabled


def gradcam(model: nn.Module, images: np.ndarray, *, target_layer: nn.Module | None = None,
            batch_size: int = 16) -> np.ndarray:
    """Grad-CAM maps of the positive-class logit.

    Parameters
    ----------
    model : maps (n, 1, H, W) float32 to logits (n, 1) or (n,).
    images : (n, 1, H, W) images in the model's input scale.
    target_layer : the layer whose activations are weighted; default
        :func:`default_target_layer`.
    batch_size : images per forward/backward pass.

    Returns
    -------
    (n, H, W) float32 maps in [0, 1], each min-max scaled on its own (so maps show where,
    not how strongly, across images), upsampled to the image size.

    The model is left as it was: training modes, ``requires_grad`` flags, any ``.grad``
    and an Opacus wrapper's hook switch are restored, and no hooks stay registered.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] != 1 or images.shape[0] == 0:
        raise ValueError(f"images must have shape (n, 1, H, W) with n >= 1 (one channel), "
                         f"got {images.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    layer = target_layer if target_layer is not None else default_target_layer(model)
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")

    with _input_gradients_only(model):
        model.eval()
        maps = [_cam_batch(model, layer, torch.as_tensor(
                    images[start:start + batch_size], dtype=torch.float32, device=device))
                for start in range(0, len(images), batch_size)]
    # Bilinear upsampling of a [0, 1] map stays in [0, 1] but for rounding.
    out = np.clip(np.concatenate(maps).astype(np.float32), 0.0, 1.0)
    logger.debug("Grad-CAM maps for %d images", len(out))
    return out


def saliency_grid(maps: np.ndarray, *, grid: int = 8) -> np.ndarray:
    """Mean share of saliency per region: an aggregate a site may share.

    Parameters
    ----------
    maps : (n, H, W) non-negative maps (from :func:`gradcam`); H and W divisible by
        ``grid``.
    grid : cells per side.

    Returns
    -------
    (grid, grid) float64: each map is normalised to sum 1 (an all-zero map counts as
    uniform, i.e. "no preference"), summed within each cell, then averaged over the maps.
    Sums to 1.
    """
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim != 3 or maps.shape[0] == 0:
        raise ValueError(f"maps must have shape (n, H, W) with n >= 1, got {maps.shape}")
    n, h, w = maps.shape
    if grid < 1 or h % grid or w % grid:
        raise ValueError(f"H and W must be divisible by grid; got maps of {h}x{w} and "
                         f"grid={grid}")
    if not np.isfinite(maps).all() or (maps < 0).any():
        raise ValueError("maps must be finite and non-negative")
    totals = maps.sum(axis=(1, 2), keepdims=True)
    shares = np.where(totals > 0, maps / np.where(totals > 0, totals, 1.0), 1.0 / (h * w))
    cells = shares.reshape(n, grid, h // grid, grid, w // grid).sum(axis=(2, 4))
    return cells.mean(axis=0)


def overlay_png(image: np.ndarray, cam: np.ndarray, *, alpha: float = 0.45) -> bytes:
    """A Grad-CAM map blended over its grey-scale image, as PNG bytes (RGB, H x W).

    Parameters
    ----------
    image : (H, W) in any range; min-max scaled to grey (a constant image is black).
    cam : (H, W) in [0, 1], coloured with the ``jet`` colormap.
    alpha : weight of the colour, in [0, 1].
    """
    image = np.asarray(image, dtype=np.float64)
    cam = np.asarray(cam, dtype=np.float64)
    if image.ndim != 2 or image.shape != cam.shape:
        raise ValueError(f"image and cam must be 2-D of the same shape (H, W), got "
                         f"{image.shape} and {cam.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if not (np.isfinite(image).all() and np.isfinite(cam).all()):
        raise ValueError("image and cam must be finite")
    span = image.max() - image.min()
    grey = (image - image.min()) / span if span > 0 else np.zeros_like(image)
    # matplotlib.colormaps needs no pyplot and no display backend.
    colour = matplotlib.colormaps["jet"](np.clip(cam, 0.0, 1.0))[..., :3]
    rgb = (1.0 - alpha) * grey[..., None] + alpha * colour
    buf = io.BytesIO()
    Image.fromarray(np.round(rgb * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()
