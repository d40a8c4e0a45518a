"""The model registry: imaging models are MONAI's, DP-SGD-compatible as built, and train
under Opacus with per-sample gradients."""

from __future__ import annotations

import pytest
import torch
from opacus import PrivacyEngine
from opacus.validators import ModuleValidator
from torch.utils.data import DataLoader, TensorDataset

from medfl.config import ModelConfig
from medfl.errors import ConfigError
from medfl.models import build_model


@pytest.mark.parametrize(("name", "out_shape"), [
    ("resnet", (3, 1)), ("densenet121", (3, 1)), ("unet", (3, 1, 32, 32)),
])
def test_imaging_models_are_dp_compatible_and_take_one_opacus_step(name, out_shape):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name, 0, 4), image_shape=(1, 32, 32))
    assert ModuleValidator.validate(model, strict=False) == []
    assert not any(getattr(m, "inplace", False) for m in model.modules())
    x = torch.randn(3, 1, 32, 32)
    assert tuple(model(x).shape) == out_shape
    y = torch.ones(out_shape)
    loader = DataLoader(TensorDataset(x, y), batch_size=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    model, opt, loader = PrivacyEngine().make_private(
        module=model, optimizer=opt, data_loader=loader, noise_multiplier=1.0,
        max_grad_norm=1.0, poisson_sampling=False)
    for xb, yb in loader:
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(model(xb), yb).backward()
        # per-sample gradients exist for every trainable parameter (hooks mode)
        assert all(p.grad_sample is not None and p.grad_sample.shape[0] == len(xb)
                   for p in model.parameters() if p.requires_grad)
        opt.step()
    after = list(model.parameters())
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, after, strict=True))


def test_same_seed_same_weights_and_state_dict_names_match_across_builds():
    torch.manual_seed(3)
    a = build_model(ModelConfig("densenet121", 0, 8), image_shape=(1, 32, 32)).state_dict()
    torch.manual_seed(3)
    b = build_model(ModelConfig("densenet121", 0, 8), image_shape=(1, 32, 32)).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not any("running_mean" in k for k in a)  # no BatchNorm left


def test_bad_shapes_are_refused_with_what_is_valid():
    with pytest.raises(ConfigError, match="image_shape"):
        build_model(ModelConfig("resnet", 0, 8), n_features=13)
    with pytest.raises(ConfigError, match="divisible by 8"):
        build_model(ModelConfig("unet", 0, 8), image_shape=(1, 36, 36))
    with pytest.raises(ConfigError, match="n_features"):
        build_model(ModelConfig("logreg", 0, 8), image_shape=(1, 32, 32))
