"""What is being served: version, schema, metrics, privacy, and the model card.

The report and card come from ``app.state.attachments``: read once at start-up and, with a
verification key, only those the bundle's signature covers (``served_attachments``)."""

from __future__ import annotations

import json

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import PlainTextResponse

from deploy.api.deps import ModelDep
from medfl import DISCLAIMER

router = APIRouter(tags=["model"])


def _report_figures(request: Request) -> dict | None:
    """Pooled and per-site headline metrics with 95% CIs, from the run's report.json."""
    data = request.app.state.attachments.get("report.json")
    if data is None:
        return None
    try:
        report = json.loads(data)
        return {p["name"]: {k: {"value": v["value"], "ci": v["ci"],
                                "suppressed": v["suppressed"], "estimated": v["estimated"]}
                            for k, v in p["metrics"].items()}
                for p in report["populations"]}
    except (ValueError, KeyError, TypeError):
        return None  # an unreadable report must not take the model description down


@router.get("/model")
def describe(request: Request, model: ModelDep) -> dict:
    """Version, sha256, task, input schema, headline metrics (with 95% CIs when the run
    has a report), (ε, δ) per site, and the disclaimer."""
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
        "metrics_with_ci": _report_figures(request),
        "privacy": m.get("privacy"),
        "created": m.get("created"),
        "disclaimer": DISCLAIMER,
    }


@router.get("/model-card", response_class=PlainTextResponse)
def model_card(request: Request) -> str:
    """The run's ``MODEL_CARD.md`` as Markdown text; 404 when the run has none, or when a
    verification key is configured and the bundle's signature does not cover it."""
    card = request.app.state.attachments.get("MODEL_CARD.md")
    if card is not None:
        return card.decode("utf-8", errors="replace")
    if (request.app.state.run_dir / "MODEL_CARD.md").is_file():
        raise HTTPException(status_code=404, detail="MODEL_CARD.md is not covered by the "
                            "bundle's signature, so it is not served; sign the run again "
                            "(`medfl sign RUN KEY`) after its reports are written")
    raise HTTPException(status_code=404, detail="this run has no MODEL_CARD.md")
