"""A server and a site that would train one model at two image sizes (each reduces
``data.image-size`` to ``data.cpu-image-size`` when it sees no GPU) are stopped at the
site, naming both sizes and what to change."""

from __future__ import annotations

import pytest
from conftest import run_config

from medfl.config import parse_run_config
from medfl.errors import ConfigError
from medfl.federation import check_image_size, image_size_to_config


def _imaging(device: str, **overrides):
    return parse_run_config(run_config(task="image-classification", model__name="resnet",
                                       data__image_size=224, data__cpu_image_size=64,
                                       **overrides), device=device)


def test_the_server_sends_the_size_of_an_imaging_run_only():
    assert image_size_to_config(_imaging("cuda")) == {"image-size": 224}
    assert image_size_to_config(_imaging("cpu")) == {"image-size": 64}
    assert image_size_to_config(parse_run_config(run_config())) == {}  # heart disease


def test_a_site_reduced_on_its_cpu_refuses_a_server_at_full_size():
    site = _imaging("cpu")
    check_image_size(site, {"image-size": 64})  # the same size: nothing to refuse
    check_image_size(site, {})  # a server that sends none (an older one)
    with pytest.raises(ConfigError) as refused:
        check_image_size(site, {"image-size": 224})
    message = str(refused.value)
    assert "224x224" in message and "64x64" in message
    assert "data.cpu-image-size" in message and "GPU" in message
    with pytest.raises(ConfigError, match="server's model is for 64x64 images, this site's "
                                          "are 224x224"):
        check_image_size(_imaging("cuda"), {"image-size": 64})


def test_a_tabular_site_ignores_an_image_size():
    check_image_size(parse_run_config(run_config()), {"image-size": 224})
