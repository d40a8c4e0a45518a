"""Grad-CAM against a hand computation; the real MONAI models; shareable aggregates."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from opacus import GradSampleModule
from PIL import Image
from torch import nn

from medfl.config import ModelConfig
from medfl.explain import default_target_layer, gradcam, overlay_png, saliency_grid
from medfl.explain.gradcam import feature_layer
from medfl.models import build_model

KERNELS = np.array([
    [[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]],  # Sobel x
    [[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]],    # Laplacian
]) * 0.5
CONV_BIAS = np.array([0.1, -0.2])
HEAD_W, HEAD_B = np.array([1.5, -0.8]), 0.3


def _tiny_cnn(n_outputs: int = 1) -> nn.Sequential:
    conv, head = nn.Conv2d(1, 2, 3, padding=1), nn.Linear(2, n_outputs)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(KERNELS[:, None], dtype=torch.float32))
        conv.bias.copy_(torch.tensor(CONV_BIAS, dtype=torch.float32))
        head.weight.copy_(torch.tensor(np.tile(HEAD_W, (n_outputs, 1)), dtype=torch.float32))
        head.bias.fill_(HEAD_B)
    return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)


def _hand_gradcam(image: np.ndarray) -> np.ndarray:
    """Grad-CAM of the tiny CNN's logit at its conv layer, for one (H, W) image."""
    h, w = image.shape
    padded = np.pad(image, 1)
    acts = np.zeros((2, h, w))  # conv output A_c (cross-correlation, zero padding 1)
    for c in range(2):
        for i in range(h):
            for j in range(w):
                acts[c, i, j] = (padded[i:i + 3, j:j + 3] * KERNELS[c]).sum() + CONV_BIAS[c]
    # logit = sum_c v_c * mean(ReLU(A_c)) + b, so d logit / d A_c = v_c * [A_c > 0] / (H W)
    grads = HEAD_W[:, None, None] * (acts > 0) / (h * w)
    weights = grads.mean(axis=(1, 2))
    cam = np.maximum((weights[:, None, None] * acts).sum(axis=0), 0.0)
    return (cam - cam.min()) / (cam.max() - cam.min())


def test_gradcam_matches_a_hand_computation_and_leaves_the_model_as_it_was():
    # Prepare
    images = np.random.default_rng(0).normal(size=(3, 1, 8, 8)).astype(np.float32)
    model = _tiny_cnn().train()
    conv, head = model[0], model[4]
    conv.bias.requires_grad_(False)
    head.weight.grad = torch.full_like(head.weight, 7.0)
    # Execute
    maps = gradcam(model, images, batch_size=2)
    # Assert
    assert maps.shape == (3, 8, 8) and maps.dtype == np.float32
    for got, image in zip(maps, images, strict=True):
        np.testing.assert_allclose(got, _hand_gradcam(image[0].astype(np.float64)), atol=1e-5)
    assert all(m.training for m in model.modules())
    assert not conv.bias.requires_grad and conv.weight.requires_grad
    assert torch.equal(head.weight.grad, torch.full_like(head.weight, 7.0))
    assert conv.weight.grad is None
    assert not conv._forward_hooks and not conv._backward_hooks


@pytest.mark.parametrize("name", ["resnet", "densenet121"])
def test_gradcam_runs_on_the_medfl_imaging_models(name):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name, 0, 4), image_shape=(1, 64, 64))
    images = np.random.default_rng(1).normal(size=(3, 1, 64, 64)).astype(np.float32)
    maps = gradcam(model, images, batch_size=2)
    assert maps.shape == (3, 64, 64)
    assert np.isfinite(maps).all() and maps.min() >= 0.0 and maps.max() <= 1.0


@pytest.mark.parametrize("name", ["resnet", "densenet121"])
@pytest.mark.parametrize("layer", ["feature block", "last conv"])
def test_gradcam_equals_pytorch_grad_cam_on_the_medfl_models(name, layer):
    # the reference implementation (a test dependency only): same maps, upsampled from the
    # target layer's resolution to the image's, at either of the layers MedFL explains
    GradCAM = pytest.importorskip("pytorch_grad_cam").GradCAM  # noqa: N806 - a class
    torch.manual_seed(0)
    model = build_model(ModelConfig(name, 0, 4), image_shape=(1, 64, 64)).eval()
    target = feature_layer(model) if layer == "feature block" else default_target_layer(model)
    assert target is not None
    images = np.random.default_rng(3).normal(size=(4, 1, 64, 64)).astype(np.float32)
    ours = gradcam(model, images, target_layer=target, batch_size=3)
    reference = GradCAM(model=model, target_layers=[target])
    try:
        theirs = reference(input_tensor=torch.tensor(images),
                           targets=[lambda out: out.reshape(())] * len(images))
    finally:
        reference.activations_and_grads.release()
    assert ours.shape == theirs.shape == (4, 64, 64)
    np.testing.assert_allclose(ours, theirs, atol=2e-5)


def test_gradcam_runs_on_an_opacus_wrapped_model_without_per_sample_gradients():
    torch.manual_seed(0)
    plain = build_model(ModelConfig("resnet", 0, 4), image_shape=(1, 32, 32))
    inner = build_model(ModelConfig("resnet", 0, 4), image_shape=(1, 32, 32))
    inner.load_state_dict(plain.state_dict())
    wrapped = GradSampleModule(inner).train()  # as at a DP site between training steps
    assert default_target_layer(wrapped) is default_target_layer(inner)
    images = np.random.default_rng(2).normal(size=(2, 1, 32, 32)).astype(np.float32)
    maps = gradcam(wrapped, images)
    # (The inner module itself now carries Opacus' hooks, switched from the wrapper, so
    # the unwrapped reference is a separate copy.)
    np.testing.assert_allclose(maps, gradcam(plain, images), atol=1e-6)
    assert all(getattr(p, "grad_sample", None) is None for p in wrapped.parameters())
    assert wrapped.hooks_enabled and wrapped.training


def test_bad_models_and_shapes_are_refused_with_what_is_valid():
    with pytest.raises(ValueError, match=r"\(n, 1, H, W\).*got \(2, 3, 8, 8\)"):
        gradcam(_tiny_cnn(), np.zeros((2, 3, 8, 8), dtype=np.float32))
    with pytest.raises(ValueError, match=r"got \(8, 8\)"):
        gradcam(_tiny_cnn(), np.zeros((8, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="Sequential has no nn.Conv2d"):
        default_target_layer(nn.Sequential(nn.Linear(3, 1)))
    two_logits = _tiny_cnn(n_outputs=2)
    with pytest.raises(ValueError, match="one output logit"):
        gradcam(two_logits, np.zeros((1, 1, 8, 8), dtype=np.float32))
    assert not two_logits[0]._forward_hooks  # released on the error path too


def test_saliency_grid_is_the_mean_share_of_saliency_per_cell():
    corner = np.zeros((16, 16))
    corner[:4, :4] = 5.0  # all of its mass in the top-left cell of a 4x4 grid
    uniform = np.full((16, 16), 0.3)
    grid = saliency_grid(np.stack([corner, uniform]), grid=4)
    expected = np.full((4, 4), (0 + 1 / 16) / 2)
    expected[0, 0] = (1 + 1 / 16) / 2
    np.testing.assert_allclose(grid, expected, atol=1e-12)
    assert grid.sum() == pytest.approx(1.0)
    # an all-zero map has no preferred region: it counts as uniform
    np.testing.assert_allclose(saliency_grid(np.zeros((1, 16, 16)), grid=4),
                               np.full((4, 4), 1 / 16), atol=1e-12)
    with pytest.raises(ValueError, match="divisible by grid"):
        saliency_grid(np.ones((1, 16, 16)), grid=5)
    with pytest.raises(ValueError, match="non-negative"):
        saliency_grid(-np.ones((1, 16, 16)), grid=4)


def test_overlay_png_blends_grey_image_and_jet_colours():
    image = np.linspace(-3.0, 500.0, 20 * 30).reshape(20, 30)
    cam = np.zeros((20, 30))
    grey = Image.open(io.BytesIO(overlay_png(image, cam, alpha=0.0)))
    assert grey.format == "PNG" and grey.mode == "RGB" and grey.size == (30, 20)
    pixels = np.asarray(grey)
    assert tuple(pixels[0, 0]) == (0, 0, 0) and tuple(pixels[-1, -1]) == (255, 255, 255)
    # jet(0) is dark blue (0, 0, 0.5)
    colour = np.asarray(Image.open(io.BytesIO(overlay_png(image, cam, alpha=1.0))))
    assert (colour == np.array([0, 0, 128])).all()
    with pytest.raises(ValueError, match=r"\(20, 30\) and \(30, 20\)"):
        overlay_png(image, cam.T)
