"""What the OpenAPI says about answers the route models do not describe: each route family's error
bodies and statuses, msgpack answers, and bodies that are not JSON.

The statuses are read from `errors.error_response` itself (each code sent through the family's
path), so the documentation follows the mapping the server applies. A router passes
`error_responses(<one of its paths>)` as its `responses=`; that also replaces FastAPI's default
422 `{"detail"}`, a shape Remora never sends.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from remora.sidecar.errors import STATUS, error_response, is_plain, is_tei

# Codes no operation answers: a client gone before its answer (499), a method the path does not
# serve (405, the path's, not an operation's) and two the server never raises.
_NOT_ANSWERED = {"CLIENT_CLOSED", "METHOD_NOT_ALLOWED", "NOT_IMPLEMENTED", "UNSUPPORTED_MEDIA_TYPE"}
_CODES = sorted(code for code in STATUS if code not in _NOT_ANSWERED)
_CODE_FIELD: Any = Field(..., description="Stable and machine-readable", json_schema_extra={"enum": sorted(STATUS)})


class ErrorDetail(BaseModel):
    code: str = _CODE_FIELD
    message: str = Field(..., description="For people")
    type: str = Field(..., description="OpenAI's error type: invalid_request_error, not_found_error, "
                      "rate_limit_error, server_error, ...")


class NativeError(BaseModel):
    """Native, OpenAI and Cohere/Jina rerank routes, and the model, health and metrics routes."""

    error: ErrorDetail


class TeiError(BaseModel):
    """text-embeddings-inference's error body, with Remora's code beside it."""

    error: str
    error_type: Literal["Empty", "Validation", "Overloaded", "Unhealthy", "Backend"]
    code: str = _CODE_FIELD


class PlainError(BaseModel):
    """Qdrant's inference hook and Weaviate's module routes: both servers read `error`."""

    error: str
    code: str = _CODE_FIELD


_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying (retryable errors)",
                                "schema": {"type": "integer", "minimum": 1}}}


def _statuses(path: str) -> dict[int, list[str]]:
    """Status -> the codes answered with it on `path`."""
    statuses: dict[int, list[str]] = {}
    for code in _CODES:
        statuses.setdefault(error_response(path, code, "").status_code, []).append(code)
    return dict(sorted(statuses.items()))


def _model(path: str) -> type[BaseModel]:
    return PlainError if is_plain(path) else TeiError if is_tei(path) else NativeError


def _entry(model: Any, codes: list[str], status: int) -> dict[str, Any]:
    entry: dict[str, Any] = {"model": model, "description": "Codes: " + ", ".join(codes)}
    if status in (429, 503):
        entry["headers"] = _RETRY_AFTER
    return entry


def error_responses(*paths: str) -> dict[int | str, dict[str, Any]]:
    """The error answers of the routes whose errors are shaped as on `paths` (one path per shape:
    TEI's root /rerank also answers Weaviate's reranker, in its shape)."""
    merged: dict[int, tuple[list[type[BaseModel]], list[str]]] = {}
    for path in paths:
        for status, codes in _statuses(path).items():
            models, known = merged.setdefault(status, ([], []))
            if _model(path) not in models:
                models.append(_model(path))
            known.extend(code for code in codes if code not in known)
    responses: dict[int | str, dict[str, Any]] = {}
    for status, (models, codes) in merged.items():
        model: Any = models[0] if len(models) == 1 else models[0] | models[1]
        responses[status] = _entry(model, codes, status)
    return responses


MSGPACK_200: dict[int | str, dict[str, Any]] = {200: {"content": {"application/msgpack": {"schema": {
    "type": "object",
    "description": "The JSON answer's fields in msgpack, sent when the request is msgpack or has "
    "Accept: application/msgpack; float32 vectors and matrices travel as raw little-endian bytes",
}}}}}

# A body that is not JSON: the route's default content is dropped by `response_class=Response`.
PROMETHEUS_200: dict[int | str, dict[str, Any]] = {200: {
    "description": "Prometheus text exposition format 0.0.4",
    "content": {"text/plain": {"schema": {"type": "string"}}},
}}
