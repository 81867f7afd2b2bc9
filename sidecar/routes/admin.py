"""Models (list, register, load, unload, pin, reload), health, readiness and metrics."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from remora.core.config import HubRef
from remora.core.errors import ModelLoadError, PathNotAllowed
from remora.core.pool import ModelStatus, State
from remora.sidecar.codec import WireError, body_schema, json_response, read_body
from remora.sidecar.metrics import CONTENT_TYPE
from remora.sidecar.openapi import PROMETHEUS_200, error_responses
from remora.sidecar.registry import RegistryError
from remora.sidecar.state import remora

router = APIRouter(responses=error_responses("/v1/models"))


def _describe(status: ModelStatus) -> dict[str, Any]:
    # OpenAI's model-list fields first (id, object, owned_by), then Remora's.
    return {
        "id": status.id,
        "object": "model",
        "owned_by": "remora",
        "state": status.state.value,
        "source": status.source,
        "aliases": list(status.aliases),
        "pinned": status.pinned,
        "preload": status.preload,
        "bytes": status.nbytes,
        "in_use": status.in_use,
        "last_used": status.last_used,
        "error": {"code": status.error_code, "message": status.error} if status.error else None,
    }


@router.get("/v1/models", tags=["models"])
async def list_models(request: Request) -> Response:
    state = remora(request)
    pool = state.engine.pool
    return json_response({
        "object": "list",
        "data": [_describe(s) for s in pool.status()],
        "memory": {"budget_bytes": pool.budget_bytes, "used_bytes": pool.used_bytes},
        "default_model": state.default_model,
    })


class RegisterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # "yes" is not a bool, 8.0 not an int

    id: str
    path: str | None = Field(None, description="A directory inside a configured model root")
    hf: str | None = Field(None, description="A Hugging Face repo id (local cache, or downloaded when enabled)")
    revision: str = "main"
    preload: bool = False
    pinned: bool = False
    aliases: list[str] = []
    pooling: list[str] | None = None
    normalize: bool | None = None
    max_seq_len: int | None = None
    dtype: str = "auto"
    query_prompt: str | None = None
    document_prompt: str | None = None
    head: Literal["yes_no"] | None = Field(None, description="'yes_no': a causal LM served as a yes/no reranker")
    instruction: str | None = Field(None, description="A reranker's instruction (Qwen3-Reranker)")


@router.post("/v1/models", tags=["models"], status_code=201, openapi_extra=body_schema(RegisterRequest))
async def register_model(request: Request) -> Response:
    """Register a model without a restart. A path must lie inside REMORA_MODEL_ROOTS, and the
    API refuses paths altogether when no root is configured."""
    state = remora(request)
    body = await read_body(request, RegisterRequest)
    if (body.path is None) == (body.hf is None):
        raise WireError("INVALID_INPUT", "give exactly one of 'path' and 'hf'")
    if body.path is not None and not state.engine.settings.model_roots:
        raise WireError("PATH_NOT_ALLOWED", "registering paths through the API needs REMORA_MODEL_ROOTS on the server")
    if body.dtype not in ("auto", "float32", "float16", "bfloat16"):
        raise WireError("INVALID_INPUT", f"dtype must be auto, float32, float16 or bfloat16, not {body.dtype!r}")
    source: Any = HubRef(body.hf, body.revision) if body.hf else body.path
    if isinstance(source, HubRef):
        from remora.core.sources import validate_ref

        validate_ref(source)
    options = {k: v for k, v in body.model_dump().items()
               if k not in ("id", "path", "hf", "revision", "preload", "pinned") and v not in (None, [])}
    if options.get("dtype") == "auto":
        del options["dtype"]
    try:
        state.engine.register(body.id, source, pinned=body.pinned, preload=body.preload, **options)
    except ModelLoadError as exc:  # a missing directory is the request's fault, not a 502
        if isinstance(exc, PathNotAllowed):
            raise
        raise WireError("INVALID_INPUT", exc.message) from None
    if body.preload or body.pinned:
        state.engine.pool.load(body.id)
    return json_response(_describe(state.engine.pool.status_of(body.id)), status=201)


@router.post("/v1/models/reload", tags=["models"])
async def reload_models(request: Request) -> Response:
    state = remora(request)
    if state.registry.path is None:
        raise WireError("INVALID_INPUT", "the server runs without a registry file (--config)")
    try:
        changes = state.registry.load()
    except RegistryError as exc:
        raise WireError("INVALID_INPUT", str(exc)) from None
    return json_response(changes)


@router.get("/v1/models/{model_id:path}", tags=["models"])
async def get_model(request: Request, model_id: str) -> Response:
    state = remora(request)
    return json_response(_describe(state.engine.pool.status_of(state.engine.resolve_id(model_id))))


@router.post("/v1/models/{model_id:path}/load", tags=["models"])
async def load_model(request: Request, model_id: str) -> Response:
    state = remora(request)
    model_id = state.engine.resolve_id(model_id)
    state.engine.pool.load(model_id)  # a failed model is retried
    lease = await state.service.lease(request, model_id, wait=True)
    lease.release()
    return json_response(_describe(state.engine.pool.status_of(model_id)))


@router.post("/v1/models/{model_id:path}/unload", tags=["models"])
async def unload_model(request: Request, model_id: str) -> Response:
    state = remora(request)
    model_id = state.engine.resolve_id(model_id)
    was_loaded = state.engine.pool.unload(model_id)
    return json_response({**_describe(state.engine.pool.status_of(model_id)), "unloaded": was_loaded})


@router.post("/v1/models/{model_id:path}/pin", tags=["models"])
async def pin_model(request: Request, model_id: str) -> Response:
    state = remora(request)
    model_id = state.engine.resolve_id(model_id)
    state.engine.pool.set_pinned(model_id, True)
    state.engine.pool.load(model_id)  # pinned means kept in memory (and /readyz waits for pinned models)
    return json_response(_describe(state.engine.pool.status_of(model_id)))


@router.post("/v1/models/{model_id:path}/unpin", tags=["models"])
async def unpin_model(request: Request, model_id: str) -> Response:
    state = remora(request)
    model_id = state.engine.resolve_id(model_id)
    state.engine.pool.set_pinned(model_id, False)
    return json_response(_describe(state.engine.pool.status_of(model_id)))


@router.get("/healthz", tags=["health"])
async def healthz() -> Response:
    """The process is alive and its event loop answers."""
    return json_response({"status": "ok"})


class NotReady(BaseModel):
    status: Literal["draining", "loading"]
    waiting_for: list[str] = Field(..., description="Preloaded or pinned models not yet in memory")


@router.get("/readyz", tags=["health"], responses={503: {"model": NotReady, "description": "Not ready (yet)"}})
async def readyz(request: Request) -> Response:
    """Ready when every preloaded model is in memory and the server is not draining."""
    state = remora(request)
    pending = [s.id for s in state.engine.pool.status()
               if (s.preload or s.pinned) and s.state is not State.LOADED]
    if state.draining or pending:
        reason = "draining" if state.draining else "loading"
        return json_response({"status": reason, "waiting_for": pending}, status=503)
    return json_response({"status": "ready"})


@router.get("/metrics", tags=["health"], response_class=Response, responses=PROMETHEUS_200)
async def metrics(request: Request) -> Response:
    return Response(remora(request).metrics.render(), media_type=CONTENT_TYPE)
