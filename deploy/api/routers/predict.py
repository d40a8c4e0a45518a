"""Predictions and explanations, for tabular and imaging bundles on the same paths.

A tabular model takes ``application/json`` records; an imaging model takes
``multipart/form-data`` uploads (one or more ``files`` fields: PNG, JPEG, DICOM or NIfTI).
The body is parsed here (not by FastAPI's signature) so that one path serves both; the
CPU-bound work runs in the threadpool, off the event loop. Images are admitted by their
headers' declared size before any is decoded (413 past ``decode_budget_mb``), and decoded
in one of ``max_concurrent_decodes`` slots (503 after ``decode_wait_s`` without one).
The body reaches the parser from the ``Guard``'s temporary file, and the parser spools each
upload to its own; an upload is in memory once, as the bytes read here to be decoded.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from deploy.api.deps import ModelDep, decode_slot
from deploy.api.schemas import (
    ExplainResponse,
    ImageExplainResponse,
    ImagePredictResponse,
    PredictRequest,
    PredictResponse,
)
from medfl.serving import TabularModel
from medfl.serving.admission import admit_images

router = APIRouter(tags=["predict"])

EXAMPLE = {"records": [{"age": 63, "sex": 1, "cp": 4, "trestbps": 145, "chol": 233, "fbs": 1,
                        "restecg": 2, "thalach": 150, "exang": 0, "oldpeak": 2.3}]}


def _body_doc() -> dict[str, Any]:
    """OpenAPI: either body, depending on the served model (the JSON schema inlined: the
    route's signature does not name the model, so FastAPI would not register it)."""
    schema = PredictRequest.model_json_schema()
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": schema, "example": EXAMPLE},
        "multipart/form-data": {"schema": {
            "type": "object", "required": ["files"],
            "properties": {"files": {"type": "array",
                                     "items": {"type": "string", "format": "binary"}}}}},
    }}}


def _kind(request: Request) -> str:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        return "json"
    if ctype == "multipart/form-data":
        return "multipart"
    raise HTTPException(status_code=415, detail="Content-Type must be application/json "
                        "(tabular models) or multipart/form-data (imaging models)")


async def _records(request: Request) -> list[dict[str, Any]]:
    if _kind(request) != "json":
        raise HTTPException(status_code=415, detail="this model takes JSON records "
                            "(Content-Type: application/json), not file uploads")
    try:
        data = json.loads(await request.body())
    except (ValueError, RecursionError):  # not UTF-8, not JSON, nested too deep
        raise HTTPException(status_code=422, detail="the body is not valid UTF-8 JSON "
                            "(or is nested too deeply)") from None
    try:
        body = PredictRequest.model_validate(data)
    except ValidationError as exc:  # the app's handler names the field, never the input
        raise RequestValidationError(
            [{**e, "loc": ("body", *e.get("loc", ()))} for e in exc.errors()]) from None
    limit = request.app.state.settings.max_batch
    if len(body.records) > limit:
        raise HTTPException(status_code=413, detail=f"at most {limit} records per request")
    return body.records


async def _images(request: Request) -> list[bytes]:
    if _kind(request) != "multipart":
        raise HTTPException(status_code=415, detail="this model takes images: send "
                            "multipart/form-data with one or more 'files' fields")
    limit = request.app.state.settings.max_images
    # A generous parser bound; the real limit is counted below, so that any number of files
    # over it gets the same 413.
    try:
        async with request.form(max_files=4 * limit + 4, max_fields=4 * limit + 4) as form:
            files = [v for k, v in form.multi_items()
                     if k == "files" and isinstance(v, UploadFile)]
            if len(files) > limit:
                raise HTTPException(status_code=413,
                                    detail=f"at most {limit} images per request")
            blobs = [await f.read() for f in files]
    except HTTPException:
        raise
    except Exception as exc:  # noqa: BLE001 - python-multipart raises several types
        if "too many" in str(exc).lower():
            raise HTTPException(status_code=413,
                                detail=f"at most {limit} images per request") from None
        raise HTTPException(status_code=422,
                            detail="the multipart body could not be parsed") from None
    if not blobs:
        raise HTTPException(status_code=422, detail="no 'files' field with an uploaded file")
    return blobs


async def _on_images(request: Request, method: Any) -> list[dict[str, Any]]:
    """Read the uploads, then in a decoding slot: admit them by their headers, decode and
    run ``method`` (``model.predict`` or ``model.explain``) in the threadpool."""
    blobs = await _images(request)
    budget = request.app.state.settings.decode_budget_mb << 20

    def run() -> list[dict[str, Any]]:
        return method(admit_images(blobs, budget_bytes=budget))

    async with decode_slot(request):
        return await run_in_threadpool(run)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@router.post("/predict", response_model=PredictResponse | ImagePredictResponse,
             openapi_extra=_body_doc())
async def predict(request: Request, model: ModelDep) -> dict:
    """Tabular: label and class probabilities per record, in request order. Imaging: per
    uploaded file, in order, the label and class probabilities (classification) or the
    mask at the operating threshold as row-major run lengths with its shape (segmentation).
    Both with the operating threshold and the model version."""
    if isinstance(model, TabularModel):
        out = await run_in_threadpool(model.predict, await _records(request))
    else:
        out = await _on_images(request, model.predict)
        for o in out:
            o.pop("mask", None)  # the RLE carries it
    return {"predictions": out, "threshold": model.threshold, "model_version": model.version}


@router.post("/explain", response_model=ExplainResponse | ImageExplainResponse,
             openapi_extra=_body_doc())
async def explain(request: Request, model: ModelDep) -> dict:
    """Tabular: SHAP values of the logit per model feature, against a fixed reference
    patient. Image classification: a Grad-CAM heatmap (greyscale PNG, base64) and its
    overlay on the preprocessed image, per uploaded file."""
    if isinstance(model, TabularModel):
        out = await run_in_threadpool(model.explain, await _records(request))
        return {"explanations": out, "model_version": model.version}
    out = await _on_images(request, model.explain)
    return {"explanations": [{"shape": o["shape"], "heatmap_png": _b64(o["heatmap_png"]),
                              "overlay_png": _b64(o["overlay_png"])} for o in out],
            "model_version": model.version}
