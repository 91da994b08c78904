"""FastAPI app, routes only: v1 JSON API, health, readiness, metrics; v2 routes live in
server.api_process.v2, OpenAI's images route in server.api_process.images."""

# no `from __future__ import annotations`: the request model is built at runtime from the settings
import dataclasses
import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.api_process import http, stream
from server.api_process.encode import IMAGE_FORMATS, images, npy_base64, quality_problem
from server.api_process.health import probe
from server.api_process.protocol import OPENAI, V1, V1_STATUSES, V2, VERSION, error_body, protocol, steps_for
from server.api_process.schemas import (
    GenerateResponse,
    Health,
    ModelInfo,
    ModelList,
    generate_request_model,
    safe_errors,
)
from server.api_process.service import GenParams, GenResult, InvalidInput, Service, ServiceError
from server.common.spec import ModelSpec
from server.common.steer import SteerParams

log = logging.getLogger("flowmap.server")
V1_ERRORS = {status: {"description": d} for status, d in V1_STATUSES.items()}


def create_app(service: Service, metrics=None, lifespan_hooks=None) -> FastAPI:
    """The app of one API process; `lifespan_hooks` = (async start, async stop) around serving."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if lifespan_hooks:
            await lifespan_hooks[0]()
        yield
        if lifespan_hooks:
            await lifespan_hooks[1]()

    app = FastAPI(
        title="flowmap",
        version=VERSION,
        lifespan=lifespan,
        description="1-4 step generation from flow maps; step-level batching across requests.",
    )
    settings = service.settings
    app.add_middleware(
        http.BodyLimit,
        max_bytes=settings.max_body_bytes,
        timeout=settings.body_timeout_s,
        on_reject=service.reject,
    )
    app.add_middleware(http.CloseWhenDraining, service=service)
    _handlers(app, service)
    auth = http.make_auth(service)
    _v1_routes(app, service, auth)
    _health_routes(app, service, metrics)
    from server.api_process.v2 import router

    app.include_router(router(service, auth))
    from server.api_process import images

    app.include_router(images.router(service, auth))  # OpenAI's POST /v1/images/generations
    from server.api_process import playground

    playground.include(app, service, metrics, auth)  # the page at / and GET /v1/stats
    return app


def _handlers(app: FastAPI, service: Service) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(request: Request, e: ServiceError):
        service.reject(e.reason, e.model)
        return http.error_response(request, e)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        service.reject("invalid")
        errors = safe_errors(e.errors())
        proto = protocol(request.url.path)
        if proto == V1:
            return await request_validation_exception_handler(request, RequestValidationError(errors))
        if proto == V2:
            first = errors[0] if errors else {}
            loc = ".".join(str(v) for v in first.get("loc", ()))
            return JSONResponse({"error": f"invalid request at {loc}: {first.get('msg', '')}"}, 400)
        return JSONResponse(openai_invalid(errors), 400)

    @app.exception_handler(StarletteHTTPException)
    async def unparsable(request: Request, e: StarletteHTTPException):
        # FastAPI's 400 for a body json.loads raised on other than JSONDecodeError: nested too deeply
        # (RecursionError), an integer over 4300 digits, not UTF-8 (ValueError); invalid input is a 422
        openai = protocol(request.url.path) == OPENAI
        if e.status_code == 400 and isinstance(e.__cause__, (ValueError, RecursionError)):
            service.reject("invalid")
            msg = "body is not valid JSON: not UTF-8, nested too deeply, or a number too long"
            if openai:
                return JSONResponse(error_body(OPENAI, 400, msg, None, "json_invalid"), 400)
            return JSONResponse({"detail": [{"type": "json_invalid", "loc": ["body"], "msg": msg}]}, 422)
        if openai:  # e.g. 404 or 405 under /v1/images/
            body = error_body(OPENAI, e.status_code, str(e.detail), None, None)
            return JSONResponse(body, e.status_code, headers=e.headers)
        return await http_exception_handler(request, e)


def _v1_routes(app: FastAPI, service: Service, auth) -> None:
    GenerateRequest = generate_request_model(service.settings)

    @app.post(
        "/v1/generate",
        response_model=GenerateResponse,
        dependencies=auth,
        responses={**V1_ERRORS, **stream.OPENAPI},
    )
    async def generate(body: GenerateRequest, request: Request):  # type: ignore[valid-type]
        """Generate samples; requests share network calls step by step."""
        p = to_params(body, service.settings.default_steps)
        encode = lambda r: to_response(r, p).model_dump_json()
        if p.stream:
            return await stream.respond(service, p, request, stream.v1_codec(encode), time.monotonic())
        # serialised here (pydantic-core) rather than re-validated by FastAPI: the schema is still documented
        body = await http.generate(service, p, request, encode)
        return Response(body, media_type="application/json")

    @app.get("/v1/models", response_model=ModelList, dependencies=auth)
    async def models():
        """The models served (the first is the default)."""
        infos = [model_info(e.spec) for e in service.entries.values()]
        return ModelList(models=infos, default=service.default_model or "", failed=service.failed)


def _health_routes(app: FastAPI, service: Service, metrics) -> None:
    @app.get("/healthz", response_model=Health)
    async def healthz():
        """Liveness: the process answers (a lone probe is answered before routing: api_process.health)."""
        status, body = probe(service, "/healthz")
        return JSONResponse(body, status)

    @app.get("/readyz", response_model=Health, responses={503: {"model": Health}})
    async def readyz():
        """Readiness: every model loaded and warmed in its engine core, not draining."""
        status, body = probe(service, "/readyz")
        return JSONResponse(body, status)

    @app.get("/metrics", response_class=Response)
    async def prometheus():
        """Prometheus text format (the sum over every process of this server)."""
        if metrics is None:
            return Response(b"", media_type="text/plain")
        return Response(metrics.render(), media_type=metrics.content_type)


def openai_invalid(errors: list[dict]) -> dict:
    """OpenAI's 400 body for validation errors: `param` is the top-level field of the first (None for a
    body that is not JSON), the message every error's text about that field (a union: each member's)."""
    first = errors[0] if errors else {"msg": "invalid request", "loc": ()}
    loc = first.get("loc", ())
    param = str(loc[1]) if len(loc) > 1 and first.get("type") != "json_invalid" else None
    msgs = [
        e["msg"] for e in errors if param is None or (len(e.get("loc", ())) > 1 and str(e["loc"][1]) == param)
    ]
    text = "; or ".join(dict.fromkeys(msgs))[:1000]
    return error_body(OPENAI, 400, f"{param or 'body'}: {text}", param, first.get("type"))


def to_params(body, default_steps: int) -> GenParams:
    """The v1 body as GenParams: the same fields, with the default-steps rule and steer as SteerParams."""
    if problem := quality_problem(body.output, body.quality):
        raise InvalidInput(problem, "quality")
    steer = SteerParams(**body.steer.model_dump()) if body.steer is not None else None
    return GenParams(**{**vars(body), "steps": steps_for(body.steps, default_steps), "steer": steer})


def to_response(r: GenResult, p: GenParams) -> GenerateResponse:
    image = p.output in IMAGE_FORMATS
    return GenerateResponse(
        model=r.model,
        steps=r.steps,
        seed=r.seed,
        num_samples=len(r.x),
        class_labels=r.labels,
        guidance_scale=r.guidance,
        sampler=r.sampler,
        output=p.output,
        shape=list(r.x.shape[1:]),
        images=images(r.x, p.output, p.quality) if image else None,
        array=None if image else npy_base64(r.x),
        timings=r.timings,
        network_calls_per_sample=r.calls_per_sample,
    )


def model_info(spec: ModelSpec) -> ModelInfo:
    shown = {k: v for k, v in dataclasses.asdict(spec).items() if k != "device"}
    return ModelInfo(default_guidance_scale=1.0, **shown)
