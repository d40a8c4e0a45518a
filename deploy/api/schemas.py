"""Request and response bodies (validated by FastAPI, shown in /docs)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class PredictRequest(BaseModel):
    """A tabular prediction request: one or more raw patient records."""

    records: list[dict[str, Any]] = Field(
        min_length=1, description="raw records keyed by the bundle's input column names")


class Prediction(BaseModel):
    """One record's predicted label and its probability per class name."""

    label: str
    probabilities: dict[str, float]


class PredictResponse(BaseModel):
    """Tabular predictions, one per record in request order, with the operating
    threshold on the positive-class probability and the model version."""

    predictions: list[Prediction]
    threshold: float
    model_version: str


class Explanation(BaseModel):
    """SHAP values of one record's logit per model feature; ``base_value`` is the logit
    of the fixed reference patient, so base plus values gives the record's logit."""

    base_value: float
    shap_values: dict[str, float]


class ExplainResponse(BaseModel):
    """Tabular explanations, one per record in request order, and the model version."""

    explanations: list[Explanation]
    model_version: str


class ImagePrediction(BaseModel):
    """Classification: ``label`` and ``probabilities``. Segmentation: ``shape`` (H, W),
    ``mask_rle`` (run lengths of the binary mask read row by row, starting with a run of
    0s, possibly empty) and ``lesion_fraction``."""

    label: str | None = None
    probabilities: dict[str, float] | None = None
    shape: list[int] | None = None
    mask_rle: list[int] | None = None
    lesion_fraction: float | None = None


class ImagePredictResponse(BaseModel):
    """Imaging predictions, one per uploaded file in order, with the operating
    threshold (on the class or per-pixel probability) and the model version."""

    predictions: list[ImagePrediction]
    threshold: float
    model_version: str


class ImageExplanation(BaseModel):
    """Grad-CAM of one uploaded image: ``shape`` (H, W) of the heatmap and two PNGs."""

    shape: list[int]
    heatmap_png: str = Field(description="Grad-CAM heatmap, 8-bit greyscale PNG, base64")
    overlay_png: str = Field(description="the heatmap over the preprocessed image, PNG, base64")


class ImageExplainResponse(BaseModel):
    """Grad-CAM explanations, one per uploaded file in order, and the model version."""

    explanations: list[ImageExplanation]
    model_version: str
