"""Offline batch inference: a CSV of patients or a folder of images -> a predictions table.

Every input is read and predicted in memory first (:func:`predict_batch`); only then does
:meth:`BatchPredictions.write` touch the disk, so a bad input anywhere in the batch leaves no
partial output behind. Masks and Grad-CAM overlays go to folders beside the table, named
after it: ``<output stem>_masks/<file>.mask.png``, ``<output stem>_gradcam/<file>.gradcam.png``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from medfl.errors import MedflError
from medfl.io import atomic_write_bytes
from medfl.serving.bundle import Bundle
from medfl.serving.imaging import ImageModel
from medfl.serving.tabular import TabularModel

__all__ = ["BatchPredictions", "predict_batch", "predict_images", "predict_table"]


@dataclass
class BatchPredictions:
    """One batch's predictions, held in memory until every input has been read.

    Attributes
    ----------
    table : one row per record or image, in input order.
    masks : segmentation only: file name -> its (S, S) uint8 mask, values {0, 1}.
    overlays : image classification with explanations: file name -> Grad-CAM overlay PNG.
    """

    table: pd.DataFrame
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    overlays: dict[str, bytes] = field(default_factory=dict)

    def write(self, output: Path) -> None:
        """Write masks (PNG, 0/255), overlays, then the table as CSV, each atomically."""
        if self.masks:
            folder = _masks_dir(output)
            folder.mkdir(parents=True, exist_ok=True)
            for name, mask in self.masks.items():
                buf = BytesIO()
                Image.fromarray(mask * 255).save(buf, format="PNG")
                atomic_write_bytes(folder / f"{name}.mask.png", buf.getvalue())
        for name, png in self.overlays.items():
            atomic_write_bytes(_gradcam_dir(output) / f"{name}.gradcam.png", png)
        atomic_write_bytes(output, self.table.to_csv(index=False).encode())


def predict_batch(bundle: Bundle, input_path: Path, *, output: Path,
                  explain: bool = False) -> BatchPredictions:
    """Predict every record of a CSV (tabular bundle) or every image (imaging bundle).

    Parameters
    ----------
    bundle : the loaded model bundle.
    input_path : tabular: a CSV of records; imaging: an image file or a folder of images
        (PNG/JPEG/DICOM/NIfTI, read with the preprocessing recorded at training).
    output : where the table will be written; names the mask and overlay folders.
    explain : image classification: also compute each image's Grad-CAM overlay.

    Raises ``MedflError`` (naming the file for an image) when any input cannot be predicted.
    """
    if bundle.manifest.get("input_schema", {}).get("type") == "image":
        return predict_images(ImageModel.from_bundle(bundle), input_path, output=output,
                              explain=explain)
    return predict_table(TabularModel.from_bundle(bundle), input_path)


def predict_table(model: TabularModel, input_path: Path) -> BatchPredictions:
    """Label and class probabilities (``p_<label>``) per CSV record, in file order."""
    try:
        frame = pd.read_csv(input_path)
    except (OSError, ValueError) as exc:
        raise MedflError(f"{input_path.name} is not a readable CSV "
                         f"({type(exc).__name__})") from None
    out = model.predict(frame.to_dict("records"))
    return BatchPredictions(pd.DataFrame(_label_columns(out, model.labels)))


def predict_images(model: ImageModel, input_path: Path, *, output: Path,
                   explain: bool = False) -> BatchPredictions:
    """Per image of ``input_path`` (a file, or a folder's files in name order): the mask's
    lesion fraction and its PNG path (segmentation), or the label and class probabilities,
    with the Grad-CAM overlay's path when ``explain`` (classification)."""
    files = (sorted(f for f in input_path.iterdir() if f.is_file())
             if input_path.is_dir() else [input_path])
    if not files:
        raise MedflError(f"{input_path.name} holds no files")
    out: list[dict[str, Any]] = []
    overlays: dict[str, bytes] = {}
    for f in files:
        try:
            data = f.read_bytes()
            [pred] = model.predict([data])
            if explain and not model.segmentation:
                overlays[f.name] = model.explain([data])[0]["overlay_png"]
        except (MedflError, OSError) as exc:
            raise MedflError(f"{f.name}: {exc}") from None
        out.append(pred)
    names = [f.name for f in files]
    if model.segmentation:
        masks = {n: p.pop("mask") for n, p in zip(names, out, strict=True)}
        table = pd.DataFrame({"file": names,
                              "lesion_fraction": [p["lesion_fraction"] for p in out],
                              "mask": [f"{_masks_dir(output).name}/{n}.mask.png"
                                       for n in names]})
        return BatchPredictions(table, masks=masks)
    table = pd.DataFrame({"file": names, **_label_columns(out, model.labels)})
    if overlays:
        table["gradcam"] = [f"{_gradcam_dir(output).name}/{n}.gradcam.png" for n in names]
    return BatchPredictions(table, overlays=overlays)


def _label_columns(out: list[dict[str, Any]], labels: Sequence[str]) -> dict[str, list[Any]]:
    """Columns ``label`` and ``p_<label>`` per class, one value per prediction."""
    return {"label": [p["label"] for p in out],
            **{f"p_{k}": [p["probabilities"][k] for p in out] for k in labels}}


def _masks_dir(output: Path) -> Path:
    return output.parent / f"{output.stem}_masks"


def _gradcam_dir(output: Path) -> Path:
    return output.parent / f"{output.stem}_gradcam"
