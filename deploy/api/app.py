"""App factory: settings in, FastAPI app out. The model is loaded (and its bundle
verified) in the lifespan; routers per concern; errors mapped to 401/413/415/422."""

from __future__ import annotations

import logging
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from deploy.api.routers import health, model, predict
from deploy.api.settings import Settings
from medfl import DISCLAIMER, __version__
from medfl.serving import InputError, TabularModel, load_bundle

logger = logging.getLogger("medfl.api")


class BodyLimit:
    """ASGI middleware: answer 413 once a request body passes ``limit`` bytes, whether or
    not the client declared its length."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _too_large(self.limit, send)
        seen = 0
        started = False

        async def guarded_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, guarded_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await _too_large(self.limit, send)


class _BodyTooLarge(Exception):
    pass


async def _too_large(limit: int, send) -> None:
    body = JSONResponse({"detail": f"request body larger than {limit} bytes"}, 413)
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body.body)).encode())]})
    await send({"type": "http.response.body", "body": body.body})


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service. Without ``settings`` they are read from ``MEDFL_*`` variables."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.model = TabularModel.from_bundle(
            load_bundle(settings.bundle, public_key=settings.public_key))
        app.state.run_dir = (settings.bundle if (settings.bundle / "model").is_dir()
                             else settings.bundle.parent)
        logger.info("serving model %s", app.state.model.version)
        yield

    app = FastAPI(
        title="MedFL prediction service",
        version=__version__,
        description=f"Predictions from a MedFL federated model. {DISCLAIMER}",
        lifespan=lifespan,
    )
    app.state.settings = settings

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
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    return app
