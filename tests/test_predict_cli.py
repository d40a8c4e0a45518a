"""`medfl predict`: offline batch inference from a CSV or a folder of images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from medfl.cli import app
from medfl.serving import TabularModel, load_bundle

RECORD = {"age": 63, "sex": 1, "cp": 4, "trestbps": 145, "chol": 233, "fbs": 1,
          "restecg": 2, "thalach": 150, "exang": 0, "oldpeak": 2.3}


def test_csv_in_csv_out(run_dir, tmp_path):
    rows = [RECORD, {**RECORD, "age": 40, "cp": 1}]
    pd.DataFrame(rows).to_csv(tmp_path / "in.csv", index=False)
    r = CliRunner().invoke(app, ["predict", str(run_dir), str(tmp_path / "in.csv"),
                                 "-o", str(tmp_path / "out.csv")])
    assert r.exit_code == 0, r.output
    out = pd.read_csv(tmp_path / "out.csv")
    expected = TabularModel.from_bundle(load_bundle(run_dir)).predict(rows)
    assert list(out["p_disease"]) == pytest.approx([p["probabilities"]["disease"]
                                                    for p in expected])


def test_bad_row_names_the_field_and_writes_nothing(run_dir, tmp_path):
    pd.DataFrame([RECORD, {**RECORD, "age": 500}]).to_csv(tmp_path / "in.csv", index=False)
    r = CliRunner().invoke(app, ["predict", str(run_dir), str(tmp_path / "in.csv"),
                                 "-o", str(tmp_path / "out.csv")])
    assert r.exit_code == 2 and "records[1].age" in r.output
    assert not (tmp_path / "out.csv").exists()


def test_image_folder_with_explain_writes_grad_cam_overlays(image_run, tmp_path):
    from medfl.serving import ImageModel

    run, manifest = image_run
    frame = pd.read_csv(manifest)
    folder = tmp_path / "images"
    folder.mkdir()
    for p in frame.path[:3]:
        (folder / Path(p).name).write_bytes((manifest.parent / p).read_bytes())
    out = tmp_path / "pred.csv"
    result = CliRunner().invoke(app, ["predict", str(run), str(folder), "-o", str(out),
                                      "--explain"])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out)
    model = ImageModel.from_bundle(load_bundle(run))
    for name, rel in zip(table["file"], table["gradcam"], strict=True):
        expected = model.explain([(folder / name).read_bytes()])[0]["overlay_png"]
        assert (tmp_path / rel).read_bytes() == expected


def test_segmentation_folder_writes_each_mask_and_a_bad_file_writes_nothing(seg_run, tmp_path):
    from medfl.serving import ImageModel

    run, manifest = seg_run
    frame = pd.read_csv(manifest)
    folder = tmp_path / "scans"
    folder.mkdir()
    for p in frame.path[:2]:
        (folder / Path(p).name).write_bytes((manifest.parent / p).read_bytes())
    out = tmp_path / "seg.csv"
    result = CliRunner().invoke(app, ["predict", str(run), str(folder), "-o", str(out)])
    assert result.exit_code == 0, result.output
    model = ImageModel.from_bundle(load_bundle(run))
    table = pd.read_csv(out)
    for name, rel, fraction in zip(table["file"], table["mask"], table["lesion_fraction"],
                                   strict=True):
        [expected] = model.predict([(folder / name).read_bytes()])
        assert rel == f"seg_masks/{name}.mask.png"
        assert np.array_equal(np.asarray(Image.open(tmp_path / rel)), expected["mask"] * 255)
        assert fraction == pytest.approx(expected["mask"].mean())
    (folder / "zz-truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    result = CliRunner().invoke(app, ["predict", str(run), str(folder), "-o",
                                      str(tmp_path / "again" / "seg.csv")])
    assert result.exit_code == 2 and "zz-truncated.png" in result.output
    assert not (tmp_path / "again").exists()
