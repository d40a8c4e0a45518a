"""Predictions and explanations. Plain ``def`` routes: inference runs in the threadpool."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, HTTPException, Request

from deploy.api.deps import get_model, require_json
from deploy.api.schemas import ExplainResponse, PredictRequest, PredictResponse
from medfl.serving import TabularModel

ModelDep = Annotated[TabularModel, Depends(get_model)]

router = APIRouter(tags=["predict"], dependencies=[Depends(require_json)])

EXAMPLE = {"records": [{"age": 63, "sex": 1, "cp": 4, "trestbps": 145, "chol": 233, "fbs": 1,
                        "restecg": 2, "thalach": 150, "exang": 0, "oldpeak": 2.3}]}


def _check_batch(request: Request, body: PredictRequest) -> None:
    limit = request.app.state.settings.max_batch
    if len(body.records) > limit:
        raise HTTPException(status_code=413, detail=f"at most {limit} records per request")


@router.post("/predict", response_model=PredictResponse)
def predict(request: Request,
            body: Annotated[PredictRequest, Body(openapi_examples={"one patient": {
                "value": EXAMPLE}})],
            model: ModelDep) -> dict:
    """Label and probability per record, in request order, with the operating threshold."""
    _check_batch(request, body)
    return {"predictions": model.predict(body.records), "threshold": model.threshold,
            "model_version": model.version}


@router.post("/explain", response_model=ExplainResponse)
def explain(request: Request,
            body: Annotated[PredictRequest, Body(openapi_examples={"one patient": {
                "value": EXAMPLE}})],
            model: ModelDep) -> dict:
    """SHAP values of the logit per model feature, against a fixed reference patient."""
    _check_batch(request, body)
    return {"explanations": model.explain(body.records), "model_version": model.version}
