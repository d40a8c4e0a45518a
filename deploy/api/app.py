"""App factory: settings in, FastAPI app out. The model is loaded (and its bundle, report
and model card verified) in the lifespan; the key, loopback and body-size rules are the
``Guard`` middleware's (``deploy.api.guard``); routers per concern; errors mapped to
401/403/413/415/422/503."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline

from deploy.api.guard import Guard
from deploy.api.routers import health, model, predict
from deploy.api.settings import Settings
from medfl import DISCLAIMER, __version__
from medfl.serving import ImageModel, InputError, TabularModel, load_bundle
from medfl.serving.admission import ImageTooLarge
from medfl.serving.attachments import served_attachments

logger = logging.getLogger("medfl.api")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service. Without ``settings`` they are read from ``MEDFL_*`` variables."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        bundle = load_bundle(settings.bundle, public_key=settings.public_key)
        image = bundle.manifest.get("input_schema", {}).get("type") == "image"
        app.state.model = (ImageModel if image else TabularModel).from_bundle(bundle)
        app.state.max_body_bytes = settings.body_limit(image=image)  # the Guard's, per request
        app.state.run_dir = bundle.path.parent
        # Read once and verified now: what is served is what was signed, whatever the
        # files on disk become later.
        app.state.attachments = served_attachments(
            bundle, signed_only=settings.public_key is not None)
        logger.info("serving model %s", app.state.model.version)
        yield

    # /docs and /redoc load Swagger UI and ReDoc from the installed fastapi-offline, not a
    # CDN: hospital networks are often closed. No validator: it would send the URL out.
    app = FastAPIOffline(
        title="MedFL prediction service", version=__version__,
        description=f"Predictions from a MedFL federated model. {DISCLAIMER}",
        lifespan=lifespan, swagger_ui_parameters={"validatorUrl": None})
    app.state.settings = settings
    app.state.decode_slots = asyncio.Semaphore(settings.max_concurrent_decodes)

    @app.middleware("http")
    async def log_requests(request: Request, call_next):
        # Request id, route, status and latency only: never a body or a value.
        request_id = uuid.uuid4().hex[:12]
        start = time.perf_counter()
        response = await call_next(request)
        logger.info("request %s %s %s -> %d in %.1f ms", request_id, request.method,
                    request.url.path, response.status_code, 1000 * (time.perf_counter() - start))
        response.headers["X-Request-ID"] = request_id
        return response

    @app.exception_handler(ImageTooLarge)
    async def image_too_large(request: Request, exc: ImageTooLarge):
        return JSONResponse({"detail": str(exc), "field": exc.field}, status_code=413)

    @app.exception_handler(InputError)
    async def input_error(request: Request, exc: InputError):
        return JSONResponse({"detail": str(exc), "field": exc.field}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        # FastAPI's default echoes the offending input back; name the field only.
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "invalid")}
                  for e in exc.errors()]
        return JSONResponse({"detail": detail}, status_code=422)

    app.include_router(health.router)
    app.include_router(model.router)
    app.include_router(predict.router)
    key = settings.api_key.get_secret_value() if settings.api_key is not None else None
    app.state.max_body_bytes = settings.body_limit(image=False)
    app.add_middleware(Guard, limit=lambda: app.state.max_body_bytes, api_key=key)
    return app
