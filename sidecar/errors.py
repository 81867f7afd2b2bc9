"""Errors on the wire: one status per code, and the body shape each API family expects.

Native and OpenAI routes: {"error": {"code", "message", "type"}} (OpenAI clients read
error.message and error.type). TEI routes: {"error", "error_type"} as text-embeddings-inference
sends them. Qdrant's inference hook and Weaviate's module routes: {"error": message} (both
servers read that field), and for Qdrant every client error is a 400, the one status it shows its
caller as a bad request. Retryable errors carry Retry-After.
"""

from __future__ import annotations

import math

import orjson
from starlette.responses import Response

STATUS: dict[str, int] = {
    "INVALID_INPUT": 422,
    "INVALID_MODEL_ID": 422,
    "UNSUPPORTED_TASK": 422,
    "INVALID_JSON": 400,
    "EMPTY_INPUT": 422,
    "INPUT_TOO_LONG": 413,
    "PAYLOAD_TOO_LARGE": 413,
    "TOO_MANY_INPUTS": 413,
    "UNSUPPORTED_MEDIA_TYPE": 415,
    "UNAUTHORIZED": 401,
    "PATH_NOT_ALLOWED": 403,
    "NOT_FOUND": 404,
    "MODEL_NOT_FOUND": 404,
    "METHOD_NOT_ALLOWED": 405,
    "QUEUE_FULL": 429,
    "CLIENT_CLOSED": 499,
    "NOT_IMPLEMENTED": 501,
    "MODEL_LOAD_FAILED": 502,
    "UNSUPPORTED_ARCHITECTURE": 502,
    "WEIGHTS_INVALID": 502,
    "MODEL_LOADING": 503,
    "MEMORY_BUSY": 503,
    "RESOURCE_EXHAUSTED": 503,
    "SHUTTING_DOWN": 503,
    "DEADLINE_EXCEEDED": 504,
    "MODEL_TOO_LARGE": 507,
    "INTERNAL": 500,
}

# The OpenAI-style `type` of an error, from its status class.
_OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                 413: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error"}

TEI_PATHS = ("/embed", "/embed_all", "/embed_sparse", "/rerank", "/tokenize", "/decode", "/info", "/health", "/predict")


QDRANT_PREFIX = "/v1/qdrant/"
WEAVIATE_PREFIX = "/weaviate/"
WEAVIATE_ROOT_PATHS = ("/vectors", "/vectors/", "/meta", "/.well-known/ready", "/.well-known/live", "/ner", "/ner/")


def status_of(code: str) -> int:
    return STATUS.get(code, 500)


def is_tei(path: str) -> bool:
    return path in TEI_PATHS


def is_plain(path: str) -> bool:
    """Routes whose callers read a bare {"error": message}: Qdrant's and Weaviate's."""
    return path.startswith((QDRANT_PREFIX, WEAVIATE_PREFIX)) or path in WEAVIATE_ROOT_PATHS


def error_response(path: str, code: str, message: str, *, retry_after: float | None = None) -> Response:
    status = status_of(code)
    body: dict[str, object]
    if is_plain(path):
        # Qdrant turns a 400 into a bad request for its caller and any other status into a
        # service error; 401/403 and the retryable statuses must stay service errors.
        if path.startswith(QDRANT_PREFIX) and status < 500 and status not in (401, 403, 429):
            status = 400
        body = {"error": message, "code": code}
    elif is_tei(path):
        # TEI's ErrorType: Empty (400), Validation (422; TEI also reports over-long and too many
        # inputs there), Overloaded (429), Unhealthy (503), Backend (424 for other failures).
        if code == "EMPTY_INPUT":
            kind, status = "Empty", 400
        elif code in ("INVALID_JSON", "INPUT_TOO_LONG", "TOO_MANY_INPUTS"):
            kind, status = "Validation", 422
        elif status < 500:
            kind = "Overloaded" if status == 429 else "Validation"
        elif status == 503:
            kind = "Unhealthy"
        else:
            kind, status = "Backend", 424
        body = {"error": message, "error_type": kind, "code": code}
    else:
        error_type = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        body = {"error": {"code": code, "message": message, "type": error_type}}
    headers = {"Retry-After": str(max(1, math.ceil(retry_after)))} if retry_after is not None else None
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)
