"""One model registry: ``build_model`` is used by the server, the clients and serving alike.

Tabular models take ``n_features``; imaging models take ``image_shape`` (C, H, W). The
imaging networks are MONAI's, built DP-SGD-compatible from the start (affine instance or
group normalisation, no in-place activations), so the server, a DP site, a non-DP site and the
serving process all hold exactly the same parameter names and shapes.
"""

from __future__ import annotations

import torch
from torch import nn

from medfl.config import MODELS, ModelConfig
from medfl.errors import ConfigError

__all__ = ["IMAGE_MODELS", "MODELS", "build_model", "state_arrays"]

IMAGE_MODELS = ("resnet", "densenet121", "unet")
#: Instance normalisation with a learnt per-channel scale and shift: per-sample, so DP-SGD
#: compatible, and the parameters a site keeps local under FedBN (``strategy.fedbn``).
AFFINE_INSTANCE_NORM = ("instance", {"affine": True})


def _channels(width: int, levels: int = 4) -> tuple[int, ...]:
    return tuple(width * 2**i for i in range(levels))


def _image_model(cfg: ModelConfig, shape: tuple[int, int, int], n_outputs: int) -> nn.Module:
    from monai.networks.nets import Classifier, DenseNet121, UNet

    from medfl.privacy.dp import make_dp_compatible

    c, h, w = shape
    if min(h, w) < 16:
        raise ConfigError(f"imaging models need images of at least 16x16, got {h}x{w}")
    if cfg.name == "resnet":
        # A small residual CNN: four stride-2 levels of MONAI residual units (conv, norm,
        # activation, with an identity/projection shortcut), then one linear layer.
        model: nn.Module = Classifier(
            in_shape=(c, h, w), classes=n_outputs, channels=_channels(cfg.width),
            strides=(2, 2, 2, 2), num_res_units=1, norm=AFFINE_INSTANCE_NORM,
        )
    elif cfg.name == "densenet121":
        model = DenseNet121(spatial_dims=2, in_channels=c, out_channels=n_outputs)
    else:  # unet
        if h % 8 or w % 8:
            raise ConfigError(f"unet needs an image size divisible by 8 (3 levels of "
                              f"stride 2), got {h}x{w}")
        model = UNet(spatial_dims=2, in_channels=c, out_channels=n_outputs,
                     channels=_channels(cfg.width), strides=(2, 2, 2), num_res_units=1,
                     norm=AFFINE_INSTANCE_NORM)
    # BatchNorm (DenseNet) becomes GroupNorm here, not only at DP sites, so every copy of
    # the model has the same state dict.
    return make_dp_compatible(model)


def build_model(cfg: ModelConfig, *, n_features: int | None = None,
                image_shape: tuple[int, int, int] | None = None,
                n_outputs: int = 1) -> nn.Module:
    """Build an untrained model; seed torch first for reproducible weights.

    Parameters
    ----------
    cfg : the ``model.*`` config. ``logreg``: one linear layer; ``mlp``: one hidden ReLU
        layer of ``cfg.hidden`` units; ``resnet``: a small MONAI residual CNN;
        ``densenet121``: MONAI DenseNet121; ``unet``: MONAI UNet (segmentation), the last
        three with first-block width ``cfg.width``.
    n_features : tabular input width.
    image_shape : imaging input (channels, height, width).
    n_outputs : logits per sample (classification) or output channels (segmentation).
    """
    if cfg.name not in MODELS:
        raise ConfigError(f"unknown model {cfg.name!r}; valid models are {', '.join(MODELS)}")
    if cfg.name in IMAGE_MODELS:
        if image_shape is None or len(image_shape) != 3:
            raise ConfigError(f"model {cfg.name!r} needs image_shape=(channels, height, "
                              f"width), got {image_shape!r}")
        channels, height, width = (int(s) for s in image_shape)
        return _image_model(cfg, (channels, height, width), n_outputs)
    if n_features is None or n_features < 1:
        raise ConfigError(f"model {cfg.name!r} needs n_features >= 1, got {n_features}")
    if cfg.name == "logreg":
        return nn.Sequential(nn.Linear(n_features, n_outputs))
    if cfg.hidden < 1:
        raise ConfigError(f"model.hidden must be >= 1 for model 'mlp', got {cfg.hidden}")
    return nn.Sequential(
        nn.Linear(n_features, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, n_outputs)
    )


def state_arrays(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's parameters and buffers by name, detached on the CPU (what is exchanged)."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
