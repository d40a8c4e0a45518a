"""The 224x224 chest X-ray scenario end to end on the CPU (in-process, one tiny round):
its images arrive at 224x224, the run trains DenseNet121 with DP-SGD at the reduced
size, says so, records it, and reports finite figures."""

from __future__ import annotations

import json
import logging
import math

from conftest import ROOT, scenario_run_config

from bench import inprocess
from medfl.config import image_size as image_size_module
from medfl.data.synthetic import SiteProfile, generate_hospitals

CHEST = ROOT / "simulations" / "chest-xray-224.toml"


def test_the_224_scenario_runs_one_tiny_round_on_the_cpu_at_the_reduced_size(tmp_path,
                                                                              caplog):
    # Two small hospitals at the scenario's own resolution, in two file formats.
    sites = (SiteProfile("alpha", 40, 0.5, 0.5, 55, 10, file_format="dicom"),
             SiteProfile("beta", 32, 0.5, 0.5, 65, 10, file_format="png"))
    manifest = generate_hospitals(tmp_path / "data", task="image-classification", seed=2,
                                  size=224, sites=sites)
    cfg = {**scenario_run_config(CHEST),
           "device": "cpu",  # the CPU even where a GPU is visible: the reduction under test
           "num-server-rounds": 1, "train.local-epochs": 1, "data.manifest": str(manifest),
           "strategy.min-nodes": 2, "privacy.k-threshold": 5, "privacy.audit": False,
           # exact test-set figures (a simulation may ask): a ~20-image pooled test set
           "privacy.test-epsilon": 0.0,
           "output-dir": str(tmp_path / "out"), "run-name": "chest",
           "state-dir": str(tmp_path / "state")}
    image_size_module._warn_reduced.cache_clear()  # as in a fresh process
    caplog.set_level(logging.WARNING, logger="medfl.config.image_size")

    inprocess.run(cfg, num_nodes=2)

    run = tmp_path / "out" / "chest"
    warnings = [r.getMessage() for r in caplog.records if r.name == "medfl.config.image_size"]
    assert len(warnings) == 1 and "224x224" in warnings[0] and "64x64" in warnings[0]
    data = json.loads((run / "config.json").read_text())["config"]["data"]
    assert (data["image_size"], data["reduced_from"], data["cpu_image_size"]) == (64, 224, 64)
    model = json.loads((run / "model" / "manifest.json").read_text())
    assert model["architecture"]["name"] == "densenet121"
    assert model["architecture"]["image_shape"] == [1, 64, 64]
    assert model["preprocessing"]["image"]["size"] == 64
    summary = json.loads((run / "summary.json").read_text())
    assert [s["name"] for s in summary["sites"]] == ["alpha", "beta"]
    for s in summary["sites"]:
        assert 0 < s["epsilon"] <= 8.0 and s["rounds_trained"] == 1
    auroc = summary["global"]["metrics"]["auroc"]
    assert auroc is not None and math.isfinite(auroc) and 0 <= auroc <= 1
