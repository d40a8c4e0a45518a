"""What is being served: version, schema, metrics, privacy, and the model card."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import PlainTextResponse

from deploy.api.deps import get_model
from medfl import DISCLAIMER
from medfl.serving import TabularModel

ModelDep = Annotated[TabularModel, Depends(get_model)]

router = APIRouter(tags=["model"])


@router.get("/model")
def describe(model: ModelDep) -> dict:
    m = model.bundle.manifest
    return {
        "model_version": model.version,
        "weights_sha256": m["weights_sha256"],
        "task": m.get("task"),
        "architecture": m["architecture"],
        "input_schema": m["input_schema"],
        "label_names": m["label_names"],
        "threshold": model.threshold,
        "metrics": m.get("metrics"),
        "privacy": m.get("privacy"),
        "created": m.get("created"),
        "disclaimer": DISCLAIMER,
    }


@router.get("/model-card", response_class=PlainTextResponse)
def model_card(request: Request) -> str:
    card = request.app.state.run_dir / "MODEL_CARD.md"
    if not card.is_file():
        raise HTTPException(status_code=404, detail="this run has no MODEL_CARD.md")
    return card.read_text()
