"""The clinical-resolution scenarios and ``data.cpu-image-size``: full size on a GPU, the
reduced size (with one warning) when the run's device is the CPU, the same size for every
consumer of the parsed config, and a finished run re-read at the size it used."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import ROOT, default_run_config, scenario_run_config

from medfl import tasks
from medfl.config import effective_image_size, parse_recorded_config, parse_run_config
from medfl.config import image_size as image_size_module
from medfl.errors import ConfigError
from medfl.tasks.imaging import image_preprocessing

CHEST = ROOT / "simulations" / "chest-xray-224.toml"
SEG = ROOT / "simulations" / "segmentation-256.toml"
LOGGER = "medfl.config.image_size"


@pytest.fixture(autouse=True)
def _fresh_warning():
    # The warning is logged once per process; each test starts as a fresh process would.
    image_size_module._warn_reduced.cache_clear()
    yield
    image_size_module._warn_reduced.cache_clear()


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == LOGGER and r.levelno == logging.WARNING]


@pytest.mark.parametrize(("path", "task", "model", "size"), [
    (CHEST, "image-classification", "densenet121", 224),
    (SEG, "segmentation", "unet", 256),
], ids=["chest-xray-224", "segmentation-256"])
def test_clinical_scenarios_parse_at_full_size_on_a_gpu(path, task, model, size):
    cfg = parse_run_config(scenario_run_config(path), device="cuda")
    assert (cfg.task.value, cfg.model.name, cfg.device) == (task, model, "auto")
    assert (cfg.data.image_size, cfg.data.cpu_image_size, cfg.data.reduced_from) == (size, 64, 0)
    assert cfg.privacy.enabled and cfg.privacy.target_epsilon == 8.0
    io = tasks.task_for(cfg).model_io(None)
    assert io["architecture"]["image_shape"] == [1, size, size]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
@pytest.mark.parametrize("path", [CHEST, SEG], ids=["chest-xray-224", "segmentation-256"])
def test_on_this_cpu_machine_a_scenario_is_reduced_with_one_warning(path, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    full = 224 if path == CHEST else 256
    cfg = parse_run_config(scenario_run_config(path))
    parse_run_config(scenario_run_config(path))  # a site parses again every round
    assert (cfg.data.image_size, cfg.data.reduced_from) == (64, full)
    [message] = _warnings(caplog)
    assert f"{full}x{full}" in message and "64x64" in message
    assert "data.cpu-image-size" in message and "data.image-size" in message
    assert "/" not in message  # no path in the log line


def test_every_consumer_of_the_parsed_config_sees_the_reduced_size():
    cfg = parse_run_config(scenario_run_config(SEG), device="cpu")
    task = tasks.task_for(cfg)
    assert image_preprocessing(cfg).size == 64
    assert task.model_io(None)["architecture"]["image_shape"] == [1, 64, 64]
    x = torch.zeros(1, 1, 64, 64)
    assert task.build_model()(x).shape == (1, 1, 64, 64)


@pytest.mark.parametrize(("device", "image", "cpu", "expected"), [
    ("cuda", 224, 64, 224),   # a GPU: full size
    ("cpu", 224, 64, 64),     # the CPU: reduced
    ("cpu", 256, 128, 128),
    ("cpu", 224, 0, 224),     # 0: never reduced
    ("cpu", 64, 64, 64),      # not smaller: nothing to reduce
    ("cpu", 64, 128, 64),     # larger than image-size: never enlarged
    ("cuda", 256, 0, 256),
])
def test_effective_size_is_the_cpu_size_only_on_the_cpu_and_only_smaller(device, image, cpu,
                                                                         expected):
    assert effective_image_size(device, image_size=image, cpu_image_size=cpu) == expected


def test_device_auto_with_a_visible_gpu_keeps_the_full_size(monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cfg = parse_run_config(scenario_run_config(CHEST))
    assert (cfg.data.image_size, cfg.data.reduced_from) == (224, 0)
    assert _warnings(caplog) == []


def test_device_cpu_is_reduced_even_where_a_gpu_is_visible(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    raw = {**scenario_run_config(CHEST), "device": "cpu"}
    assert parse_run_config(raw).data.image_size == 64


def test_the_default_never_reduces():
    raw = {**default_run_config(), "task": "image-classification", "model.name": "resnet",
           "device": "cpu", "data.image-size": 256}
    cfg = parse_run_config(raw)
    assert (cfg.data.cpu_image_size, cfg.data.image_size, cfg.data.reduced_from) == (0, 256, 0)


@pytest.mark.parametrize("value", [-1, 8, 15, 1025, 64.0, "64", True])
def test_a_bad_cpu_image_size_is_refused_naming_the_key_and_the_valid_range(value):
    raw = {**scenario_run_config(CHEST), "data.cpu-image-size": value}
    with pytest.raises(ConfigError, match=r"'data.cpu-image-size' has value .*expected 0 "
                                          r"\(never reduced\) or an integer in \[16, 1024\]"):
        parse_run_config(raw, device="cpu")


@pytest.mark.parametrize(("reduced_from", "expected"), [(0, 224), (224, 64)])
def test_a_finished_run_is_read_again_at_the_size_it_used(reduced_from, expected):
    # config.json records the parsed config: a report rebuilt on another machine must not
    # decide the reduction again (a GPU run re-read on a laptop keeps 224).
    record = {"run_config": scenario_run_config(CHEST),
              "config": {"data": {"image_size": expected, "reduced_from": reduced_from}}}
    assert parse_recorded_config(record).data.image_size == expected
