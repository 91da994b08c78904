"""FastAPI app, routes only: v1 JSON API, health, readiness, metrics; v2 routes live in server.v2."""

# no `from __future__ import annotations`: the request model is built at runtime from the settings
import asyncio
import hmac
import logging
import time
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from server.schemas import GenerateResponse, Health, ModelInfo, ModelList, generate_request_model
from server.service import GenParams, GenResult, Service, ServiceError

log = logging.getLogger("flowmap.server")
VERSION = "0.1.0"


class Unauthorized(ServiceError):
    status, reason = 401, "unauthorized"


class BodyLimit:
    """ASGI middleware: 413 for bodies over `max_bytes` (Content-Length or counted), before any parsing."""

    def __init__(self, app, max_bytes: int, on_reject=None):
        self.app, self.max_bytes, self.on_reject = app, max_bytes, on_reject

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._reject(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return None
            chunks.append(msg.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._reject(scope, receive, send)
            more = msg.get("more_body", False)
        return await self.app(scope, _replay(b"".join(chunks), receive), send)

    async def _reject(self, scope, receive, send):
        if self.on_reject:
            self.on_reject("too_large")
        detail = f"request body larger than {self.max_bytes} bytes"
        await JSONResponse({"detail": detail}, 413)(scope, receive, send)


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # afterwards: wait for http.disconnect

    return replay


async def wait_disconnect(request: Request) -> None:
    """Returns when the client has gone (the body is already read, so receive() waits for the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def error_response(request: Request, e: ServiceError) -> Response:
    if e.status == 499:
        return Response(status_code=499)
    headers = {}
    if e.retry_after is not None:
        headers["Retry-After"] = str(int(max(1, round(e.retry_after))))
    if e.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if request.url.path.startswith("/v2"):  # Open Inference Protocol error body
        return JSONResponse({"error": str(e)}, 400 if e.status == 422 else e.status, headers=headers)
    if e.status == 422:
        detail = [{"loc": ["body", e.field or "body"], "msg": str(e), "type": "value_error"}]
        return JSONResponse({"detail": detail}, 422)
    return JSONResponse({"detail": str(e)}, e.status, headers=headers)


def make_auth(service: Service):
    header, bearer = APIKeyHeader(name="X-API-Key", auto_error=False), HTTPBearer(auto_error=False)

    async def auth(
        key: str | None = Depends(header), cred: HTTPAuthorizationCredentials | None = Depends(bearer)
    ):
        expected = service.settings.key()
        if expected is None:
            return
        got = key or (cred.credentials if cred else None)
        if not got or not hmac.compare_digest(got.encode(), expected.encode()):
            raise Unauthorized("missing or wrong API key")

    return auth


def create_app(service: Service, metrics=None) -> FastAPI:
    settings = service.settings

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        warm = asyncio.ensure_future(asyncio.to_thread(service.warmup))
        yield
        warm.cancel()
        service.stop()

    app = FastAPI(
        title="flowmap",
        version=VERSION,
        lifespan=lifespan,
        description="1-4 step generation from flow maps; step-level batching across requests.",
    )
    app.state.service = service
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, on_reject=service.reject)
    _handlers(app, service)
    auth = make_auth(service)
    _v1_routes(app, service, auth)
    _health_routes(app, service, metrics)
    from server.v2 import router

    app.include_router(router(service, auth))
    return app


def _handlers(app: FastAPI, service: Service) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(request: Request, e: ServiceError):
        service.reject(e.reason, "")
        return error_response(request, e)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        service.reject("invalid", "")
        if request.url.path.startswith("/v2"):
            first = e.errors()[0] if e.errors() else {}
            loc = ".".join(str(v) for v in first.get("loc", ()))
            return JSONResponse({"error": f"invalid request at {loc}: {first.get('msg', '')}"}, 400)
        return await request_validation_exception_handler(request, e)


def _v1_routes(app: FastAPI, service: Service, auth) -> None:
    GenerateRequest = generate_request_model(service.settings)
    errors = {
        c: {"description": d}
        for c, d in [
            (401, "missing or wrong API key"),
            (404, "unknown model"),
            (413, "body too large"),
            (429, "queue full (Retry-After)"),
            (503, "not ready or draining"),
            (504, "deadline passed"),
        ]
    }

    @app.post("/v1/generate", response_model=GenerateResponse, dependencies=[Depends(auth)], responses=errors)
    async def generate(body: GenerateRequest, request: Request):  # type: ignore[valid-type]
        """Generate samples; requests share network calls step by step."""
        p = to_params(body, service.settings.default_steps)
        t0 = time.monotonic()
        try:
            r = await service.generate(p, lambda: wait_disconnect(request))
        except ServiceError as e:
            service.record(p.model or service.default_model, p.steps, e.status, time.monotonic() - t0, None)
            raise
        service.record(r.model, r.steps, 200, time.monotonic() - t0, r.timings["queue_ms"] / 1e3)
        # serialised here (pydantic-core) rather than re-validated by FastAPI: the schema is still documented
        return Response(to_response(r, p).model_dump_json(), media_type="application/json")

    @app.get("/v1/models", response_model=ModelList, dependencies=[Depends(auth)])
    async def models():
        """The models served (the first is the default)."""
        infos = [model_info(e) for e in service.entries.values()]
        return ModelList(models=infos, default=service.default_model)


def _health_routes(app: FastAPI, service: Service, metrics) -> None:
    @app.get("/healthz", response_model=Health)
    async def healthz():
        """Liveness: the process answers."""
        return Health(status="ok")

    @app.get("/readyz", response_model=Health, responses={503: {"model": Health}})
    async def readyz():
        """Readiness: models loaded and warmed, not draining."""
        if service.ready:
            return Health(status="ready")
        return JSONResponse({"status": service.state}, 503)

    @app.get("/metrics", response_class=Response)
    async def prometheus():
        """Prometheus text format."""
        if metrics is None:
            return Response(b"", media_type="text/plain")
        for e in service.entries.values():
            metrics.queue(e.name, *e.worker.load())
        return Response(metrics.render(), media_type=metrics.content_type)


def to_params(body, default_steps: int) -> GenParams:
    steps = None if body.steps == "auto" else (body.steps or default_steps)
    return GenParams(
        body.model,
        steps,
        body.num_samples,
        body.seed,
        body.class_label,
        body.guidance_scale,
        body.deadline_ms,
        body.output,
    )


def to_response(r: GenResult, p: GenParams) -> GenerateResponse:
    return GenerateResponse(
        model=r.model,
        steps=r.steps,
        seed=r.seed,
        num_samples=len(r.x),
        class_labels=r.labels,
        guidance_scale=r.guidance,
        output=p.output,
        shape=list(r.x.shape[1:]),
        images=r.images,
        array=r.array,
        timings=r.timings,
    )


def model_info(e) -> ModelInfo:
    return ModelInfo(
        name=e.name,
        shape=e.model.shape,
        num_classes=e.model.num_classes,
        image=e.image,
        engine=e.engine_name,
        default_guidance_scale=1.0,
        baked_guidance_scale=e.baked_guidance,
        method=e.model.config.get("method"),
    )
