"""Request and response bodies (validated by FastAPI, shown in /docs)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class PredictRequest(BaseModel):
    records: list[dict[str, Any]] = Field(
        min_length=1, description="raw records keyed by the bundle's input column names")


class Prediction(BaseModel):
    label: str
    probabilities: dict[str, float]


class PredictResponse(BaseModel):
    predictions: list[Prediction]
    threshold: float
    model_version: str


class Explanation(BaseModel):
    base_value: float
    shap_values: dict[str, float]


class ExplainResponse(BaseModel):
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
    predictions: list[ImagePrediction]
    threshold: float
    model_version: str


class ImageExplanation(BaseModel):
    shape: list[int]
    heatmap_png: str = Field(description="Grad-CAM heatmap, 8-bit greyscale PNG, base64")
    overlay_png: str = Field(description="the heatmap over the preprocessed image, PNG, base64")


class ImageExplainResponse(BaseModel):
    explanations: list[ImageExplanation]
    model_version: str
