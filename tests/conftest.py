"""Shared fixtures: the run config as Flower builds it, and a Ray-free in-process grid."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
from flwr.common.config import parse_config_args

from bench.inprocess import ROOT, InProcessGrid, default_run_config, set_task_identity

__all__ = ["ROOT", "InProcessGrid", "default_run_config", "run_config", "scenario_run_config"]


def run_config(**overrides: Any) -> dict[str, Any]:
    """Defaults plus overrides given as ``privacy__target_epsilon=1.0`` style kwargs.

    Unless a test names one, each config gets a fresh ``state-dir`` (the sites' privacy
    ledgers), so no test writes into the checkout or sees another test's spend.
    """
    cfg = default_run_config()
    cfg["state-dir"] = tempfile.mkdtemp(prefix="medfl-state-")
    for key, value in overrides.items():
        flat = key.replace("__", ".").replace("_", "-")
        assert flat in cfg, f"test uses unknown config key {flat}"
        cfg[flat] = value
    return cfg


def scenario_run_config(path: Path) -> dict[str, Any]:
    """Defaults fused with a scenario TOML, parsed by Flower's own parser."""
    cfg = default_run_config()
    cfg.update(parse_config_args([str(path)]))
    return cfg


@pytest.fixture(autouse=True, scope="session")
def _task_identity():
    set_task_identity()
    yield


@pytest.fixture(autouse=True, scope="session")
def _calibration_cache(tmp_path_factory):
    """One noise-calibration cache for the session, inherited by every process a test
    starts (SuperNodes, ClientApps, simulations): a site calibrates σ in each new ClientApp
    process, 5-15 s with PRV, and the deployment tests run the same sites and configs.
    A cache the caller names (the variable already set) is used as it is."""
    import os

    from medfl.privacy.calibration_cache import CACHE_ENV

    if os.environ.get(CACHE_ENV):
        yield
        return
    os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("calibrations"))
    yield
    os.environ.pop(CACHE_ENV, None)


@pytest.fixture
def run_inprocess(tmp_path):
    """Run the real ServerApp over the real ClientApp in-process; return (run_path, grid)."""
    from bench import inprocess

    def run(num_nodes: int = 4, measure_bytes: bool = False, **overrides: Any):
        overrides.setdefault("output_dir", str(tmp_path / "outputs"))
        overrides.setdefault("run_name", "t")
        cfg = run_config(**overrides)
        grid = inprocess.run(cfg, num_nodes=num_nodes, measure_bytes=measure_bytes)
        return Path(cfg["output-dir"]) / cfg["run-name"], grid

    return run


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    """A served bundle: one quick federated run (no DP: fast), shared by serving tests."""
    from bench import inprocess

    out = tmp_path_factory.mktemp("serving-run")
    cfg = run_config(num_server_rounds=2, privacy__enabled=False, output_dir=str(out),
                     run_name="served", privacy__audit=False,
                     privacy__test_epsilon=0.0)  # exact figures, to check served ones
    inprocess.run(cfg)
    return out / "served"


# --- imaging runs to serve: small synthetic hospitals written as files -----------------

IMAGE_SIZE = 32


def _served_image_run(tmp_path_factory, task: str, model: str, formats: tuple[str, str]):
    from bench import inprocess
    from medfl.data.synthetic import SiteProfile, generate_hospitals

    root = tmp_path_factory.mktemp(f"serve-{task}")
    sites = (SiteProfile("alpha", 60, 0.5, 0.5, 55, 10, file_format=formats[0]),
             SiteProfile("beta", 50, 0.4, 0.4, 65, 10, file_format=formats[1]))
    manifest = generate_hospitals(root / "data", task=task, seed=1, size=IMAGE_SIZE, sites=sites)
    cfg = run_config(task=task, model__name=model, data__manifest=str(manifest),
                     data__image_size=IMAGE_SIZE, num_server_rounds=2, strategy__min_nodes=2,
                     train__batch_size=16, train__optimizer="adam", train__lr=0.002,
                     privacy__enabled=False, privacy__audit=False, privacy__k_threshold=5,
                     # exact test figures: at the default test ε a ~20-image pooled cell
                     # is often under the floor, and the served figures are checked
                     privacy__test_epsilon=0.0,
                     evaluation__personal_epochs=0,  # as the imaging scenarios ship
                     output_dir=str(root / "out"), run_name="served")
    inprocess.run(cfg, num_nodes=2)
    return root / "out" / "served", manifest


@pytest.fixture(scope="session")
def image_run(tmp_path_factory):
    """(run dir, manifest) of an image-classification run (ResNet, DICOM and PNG sites)."""
    return _served_image_run(tmp_path_factory, "image-classification", "resnet", ("dicom", "png"))


@pytest.fixture(scope="session")
def seg_run(tmp_path_factory):
    """(run dir, manifest) of a segmentation run (UNet, NIfTI and 16-bit PNG sites)."""
    return _served_image_run(tmp_path_factory, "segmentation", "unet", ("nifti", "png16"))
