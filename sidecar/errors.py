"""Errors on the wire: one status per code, and the body shape each API family expects.

Native and OpenAI routes: {"error": {"code", "message", "type"}} (OpenAI clients read
error.message and error.type). TEI routes: {"error", "error_type"} as text-embeddings-inference
sends them. Retryable errors carry Retry-After.
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


def status_of(code: str) -> int:
    return STATUS.get(code, 500)


def is_tei(path: str) -> bool:
    return path in TEI_PATHS


def error_response(path: str, code: str, message: str, *, retry_after: float | None = None) -> Response:
    status = status_of(code)
    body: dict[str, object]
    if is_tei(path):
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
