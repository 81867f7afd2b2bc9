"""The FastAPI application: routes, the gate, metrics, error mapping and the lifespan
(registry file, preloads, SIGHUP reload, draining on shutdown)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from remora.core.engine import Engine
from remora.core.errors import RemoraError, Retryable
from remora.sidecar.errors import WEAVIATE_PREFIX, error_response
from remora.sidecar.internal_errors import InternalErrors
from remora.sidecar.metrics import Metrics, MetricsMiddleware
from remora.sidecar.middleware import Gate
from remora.sidecar.registry import Registry, RegistryError
from remora.sidecar.routes import admin, native
from remora.sidecar.service import Service
from remora.sidecar.settings import ServerSettings
from remora.sidecar.state import Remora

log = logging.getLogger("remora")

QDRANT_INFERENCE_PATH = "/v1/qdrant/inference"

_HTTP_CODES = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: "PAYLOAD_TOO_LARGE", 415: "UNSUPPORTED_MEDIA_TYPE"}


def create_app(settings: ServerSettings, engine: Engine | None = None) -> FastAPI:
    engine = engine or Engine(settings.engine)
    registry = Registry(engine, settings.config)
    try:
        registry.load()  # a bad registry file stops the start, loudly
    except (RegistryError, RemoraError) as exc:
        raise SystemExit(f"remora: {exc}") from None
    state = Remora(engine, Service(engine, settings), Metrics(engine), settings, registry)
    registry.listeners.append(state.metrics.on_reload)  # reloads after this first load

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread
            loop.add_signal_handler(signal.SIGHUP, _reload, state)
        preload = asyncio.ensure_future(_preload(state))
        try:
            yield
        finally:
            state.draining = True
            preload.cancel()
            # uvicorn has already waited up to the grace for the requests in flight: what is still
            # queued belongs to requests it cut off (answered SHUTTING_DOWN), so it fails now rather
            # than running for a second grace period; a running batch ends.
            await loop.run_in_executor(None, lambda: engine.close(timeout=0.0))
            state.service.close()

    app = FastAPI(
        title="Remora",
        summary="Embedders, rerankers and extractors beside your vector database",
        version=_version(),
        lifespan=lifespan,
    )
    app.state.remora = state
    app.include_router(native.router)
    app.include_router(admin.router)
    _install_compat_routes(app)
    _install_error_handlers(app)
    # Each add wraps the ones before. Metrics (outermost) sees every request; InternalErrors turns
    # an unexpected exception into that request's 500; the gate refuses early (and answers its
    # own body-limit signal, which must not reach InternalErrors).
    app.add_middleware(
        Gate,
        api_key=settings.api_key,
        exempt=settings.auth_exempt,
        exempt_prefixes=(WEAVIATE_PREFIX,) if settings.weaviate_open else (),
        body_token_paths=(QDRANT_INFERENCE_PATH,),
        max_body=settings.max_request_bytes,
    )
    app.add_middleware(InternalErrors)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    return app


def _install_compat_routes(app: FastAPI) -> None:
    """OpenAI, TEI, Cohere/Jina, Qdrant and Weaviate routes, when their modules are present."""
    import importlib

    for name in ("openai", "tei", "rerank", "qdrant", "weaviate"):
        try:
            module = importlib.import_module(f"remora.sidecar.routes.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"remora.sidecar.routes.{name}":
                raise
            continue
        app.include_router(module.router)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RemoraError)
    async def remora_error(request: Request, exc: RemoraError) -> Response:
        retry = exc.retry_after if isinstance(exc, Retryable) else None
        return error_response(request.url.path, exc.code, exc.message, retry_after=retry)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(request.url.path, "INVALID_JSON", "the body is not valid JSON")
        parts = [f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}" for e in errors[:5]]
        return error_response(request.url.path, "INVALID_INPUT", "; ".join(parts))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        code = _HTTP_CODES.get(exc.status_code, "INVALID_INPUT" if exc.status_code < 500 else "INTERNAL")
        response = error_response(request.url.path, code, str(exc.detail))
        response.headers.update(exc.headers or {})  # a 405 must say what is Allowed
        return response



def _reload(state: Remora) -> None:
    try:
        changes = state.registry.load()
        log.info("registry reloaded: %s", changes)
    except (RegistryError, RemoraError) as exc:
        log.error("registry reload failed, nothing changed: %s", exc)


async def _preload(state: Remora) -> None:
    """Load preloaded and pinned models in the background; /readyz turns ready after."""
    pool = state.engine.pool
    futures = [asyncio.wrap_future(pool.load(model_id)) for model_id in pool.preloads()]
    for future in futures:
        with contextlib.suppress(Exception):  # the model is marked failed; readyz shows it
            await future
    state.ready = True


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("remora")
    except PackageNotFoundError:
        return "0"
