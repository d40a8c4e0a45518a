"""The three tutorials in notebooks/ run top to bottom (nbclient), so they cannot rot.

Each notebook is executed in a fresh kernel with its output folder redirected to a
temporary one (``MEDFL_TUTORIAL_OUT``). A last cell, appended here, prints the values the
notebook computed, and the test checks them and the run directory it left behind.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from medfl.localsim import stop_superlink, superlink_pids

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

pytestmark = pytest.mark.slow

NOTEBOOKS = ROOT / "notebooks"
#: each notebook's folder under MEDFL_TUTORIAL_OUT (its setup cell names it)
OUTPUT_FOLDERS = {"01-tabular-risk-on-your-own-csv.ipynb": "01-tabular",
                  "02-chest-radiograph-classification.ipynb": "02-radiograph",
                  "03-unet-segmentation.ipynb": "03-segmentation"}
CELL_TIMEOUT_S = 600  # one cell may hold a whole `flwr run` on a loaded 2-core machine


def run_notebook(name: str, out: Path, probe: str, monkeypatch) -> dict:
    """Execute ``notebooks/<name>`` with ``probe`` (code printing one JSON object) appended;
    return that object. The kernel is the test's own interpreter (``python3``)."""
    monkeypatch.setenv("MEDFL_TUTORIAL_OUT", str(out))
    # the kernel and the processes it starts import this checkout's medfl
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    monkeypatch.setenv("MPLBACKEND", "agg")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(probe))
    client = nbclient.NotebookClient(
        nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}})
    flwr_home = out / OUTPUT_FOLDERS[name] / "flwr-home"
    before = sorted(p.name for p in NOTEBOOKS.iterdir())
    try:
        client.execute(cwd=str(NOTEBOOKS))
    finally:
        stopped = stop_superlink(flwr_home)
    # the notebook stopped the SuperLink its `flwr run` started, under its own FLWR_HOME
    assert stopped == 0 and superlink_pids(flwr_home) == []
    assert (flwr_home / "local-superlink").is_dir()
    # nothing was written beside the notebooks: everything went to the output folder
    assert sorted(p.name for p in NOTEBOOKS.iterdir()) == before
    outputs = [o for o in nb.cells[-1].outputs if o.get("name") == "stdout"]
    values = json.loads("".join(o["text"] for o in outputs))
    # the kernel ran in this interpreter's environment (the venv `make install` built)
    assert values.pop("prefix") == sys.prefix
    return values


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def test_tabular_tutorial_trains_reports_and_serves(tmp_path, monkeypatch):
    values = run_notebook("01-tabular-risk-on-your-own-csv.ipynb", tmp_path, """
import json, sys
print(json.dumps({"run": str(RUN), "probability": probability, "prefix": sys.prefix}))
""", monkeypatch)
    run = Path(values["run"])
    assert run.parent.parent == tmp_path / "01-tabular"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["task"] == "tabular" and summary["rounds"] == 3
    assert [s["name"] for s in summary["sites"]] == ["cleveland", "hungarian", "va"]
    assert all(0 < s["epsilon"] <= 3.0 for s in summary["sites"])
    assert _finite(summary["global"]["metrics"]["auroc"])
    assert 0.0 <= summary["global"]["metrics"]["auroc"] <= 1.0
    for name in ("report.json", "report.html", "MODEL_CARD.md", "model/manifest.json"):
        assert (run / name).is_file(), name
    assert 0.0 <= values["probability"] <= 1.0


def _imaging_summary(values: dict, folder: Path, task: str) -> tuple[Path, dict]:
    """The imaging tutorials' run folder (under ``folder``) and its summary, checked for
    what both share: the task, the three synthetic hospitals, ε within the budget of 8."""
    run = Path(values["run"])
    assert run.parent.parent == folder
    summary = json.loads((run / "summary.json").read_text())
    assert summary["task"] == task
    assert [s["name"] for s in summary["sites"]] == ["eastbay", "northgate", "westfield"]
    assert all(0 < s["epsilon"] <= 8.0 for s in summary["sites"])
    return run, summary


def test_radiograph_tutorial_trains_on_dicom_and_explains(tmp_path, monkeypatch):
    values = run_notebook("02-chest-radiograph-classification.ipynb", tmp_path, """
import json, sys
print(json.dumps({"run": str(RUN), "probabilities": [p["probabilities"]["present"]
                  for p in predictions], "heatmaps": [e["heatmap"].tolist()
                  for e in explanations], "prefix": sys.prefix}))
""", monkeypatch)
    _, summary = _imaging_summary(values, tmp_path / "02-radiograph",
                                  "image-classification")
    assert _finite(summary["global"]["metrics"]["auroc"])
    # every site trained on DICOM files only, and kept its own ledger (medfl budget read it)
    images = tmp_path / "02-radiograph" / "images"
    assert {p.suffix for p in images.glob("*/*") if p.is_file()} == {".dcm"}
    for site in summary["sites"]:
        assert any((tmp_path / "02-radiograph" / "state" / site["name"]).iterdir())
    assert all(0.0 <= p <= 1.0 for p in values["probabilities"])
    for heatmap in values["heatmaps"]:  # Grad-CAM heatmaps: 48 x 48 in [0, 1]
        cam = [v for row in heatmap for v in row]
        assert len(heatmap) == 48 and len(cam) == 48 * 48
        assert all(0.0 <= v <= 1.0 for v in cam)


def test_segmentation_tutorial_reports_dice_per_site(tmp_path, monkeypatch):
    values = run_notebook("03-unet-segmentation.ipynb", tmp_path, """
import json, sys
print(json.dumps({"run": str(RUN), "image_dice": [float(d) for d in image_dice],
                  "masks": [p["mask"].tolist() for p in predictions], "prefix": sys.prefix}))
""", monkeypatch)
    run, summary = _imaging_summary(values, tmp_path / "03-segmentation", "segmentation")
    assert all(_finite(s["metrics"]["dice"]) and 0 <= s["metrics"]["dice"] <= 1
               for s in summary["sites"])
    report = json.loads((run / "report.json").read_text())
    assert report["kind"] == "segmentation"
    assert [p["name"] for p in report["populations"]] == ["pooled", "eastbay", "northgate",
                                                          "westfield"]
    # the overlay's masks are binary 48 x 48, one per site, each scored in [0, 1]
    assert len(values["masks"]) == len(values["image_dice"]) == 3
    for mask in values["masks"]:
        assert len(mask) == 48 and {v for row in mask for v in row} <= {0, 1}
    assert all(0.0 <= d <= 1.0 for d in values["image_dice"])
