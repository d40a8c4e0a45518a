"""Batch inference's files: the table, masks and overlays it writes, and when it writes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medfl.errors import MedflError
from medfl.serving.batch import BatchPredictions, predict_table


def test_masks_are_written_as_0_255_pngs_beside_the_table(tmp_path):
    mask = np.array([[0, 1], [1, 0]], dtype=np.uint8)
    table = pd.DataFrame({"file": ["a.png"], "mask": ["pred_masks/a.png.mask.png"]})
    BatchPredictions(table, masks={"a.png": mask}).write(tmp_path / "pred.csv")
    written = np.asarray(Image.open(tmp_path / "pred_masks" / "a.png.mask.png"))
    assert written.tolist() == [[0, 255], [255, 0]]
    assert pd.read_csv(tmp_path / "pred.csv").to_dict("list") == table.to_dict("list")


def test_overlays_are_written_byte_for_byte(tmp_path):
    table = pd.DataFrame({"file": ["a.dcm"]})
    BatchPredictions(table, overlays={"a.dcm": b"\x89PNG fake"}).write(tmp_path / "out.csv")
    assert (tmp_path / "out_gradcam" / "a.dcm.gradcam.png").read_bytes() == b"\x89PNG fake"


def test_an_unreadable_csv_is_refused_by_name_before_anything_is_written(tmp_path):
    (tmp_path / "in.csv").write_bytes(b"")
    with pytest.raises(MedflError, match=r"in\.csv is not a readable CSV \(EmptyDataError\)"):
        predict_table(model=None, input_path=tmp_path / "in.csv")  # type: ignore[arg-type]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]
