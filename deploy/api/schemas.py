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
