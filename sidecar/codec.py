"""Request bodies in, responses out: JSON (orjson) by default, msgpack on request.

A msgpack request (Content-Type: application/msgpack) is answered in msgpack, as is any request
that sends `Accept: application/msgpack`; vectors then travel as raw little-endian float32
bytes, one bin per vector, instead of number lists.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgpack
import numpy as np
import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from remora.core.errors import RemoraError

MSGPACK = "application/msgpack"
_MSGPACK_TYPES = (MSGPACK, "application/x-msgpack", "application/vnd.msgpack")

Body = TypeVar("Body", bound=BaseModel)


class WireError(RemoraError):
    """A request the server refuses before it reaches a model; `code` picks the status."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def wants_msgpack(request: Request) -> bool:
    content = request.headers.get("content-type", "").split(";")[0].strip().lower()
    accept = request.headers.get("accept", "").lower()
    return content in _MSGPACK_TYPES or any(t in accept for t in _MSGPACK_TYPES)


async def read_body(request: Request, model: type[Body]) -> Body:
    raw = await request.body()
    content = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not raw:
        raise WireError("INVALID_JSON", "the request has no body; send a JSON object")
    try:
        if content in _MSGPACK_TYPES:
            data = msgpack.unpackb(raw, raw=False, strict_map_key=True)
        else:
            # JSON also when the client names no type (Weaviate's and some shell clients send none).
            data = orjson.loads(raw)
    except (orjson.JSONDecodeError, ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        kind = "msgpack" if content in _MSGPACK_TYPES else "JSON"
        # msgpack's StackError (nesting too deep) has no message of its own.
        raise WireError("INVALID_JSON", f"the body is not valid {kind}: {exc or type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise WireError("INVALID_INPUT", f"the body must be an object, not {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise WireError("INVALID_INPUT", describe(exc)) from None


def describe(exc: ValidationError) -> str:
    """Pydantic's errors as one line a person can act on: 'inputs.3: Input should be a valid string'."""
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "body"
        parts.append(f"{where}: {error['msg']}")
    more = len(exc.errors()) - 5
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def vectors_for_wire(vectors: np.ndarray, binary: bool) -> list[Any]:
    """[N, d] float32 -> a list per vector (JSON) or raw little-endian bytes per vector (msgpack)."""
    if binary:
        data = np.ascontiguousarray(vectors, dtype="<f4")
        return [row.tobytes() for row in data]
    return vectors  # type: ignore[return-value] # orjson serialises the array itself


def matrix_for_wire(matrix: np.ndarray, binary: bool) -> Any:
    """[n, d] -> nested lists (JSON) or one raw little-endian row-major bytes (msgpack) in the
    matrix's own dtype (float32, or a quantised one)."""
    if binary:
        return np.ascontiguousarray(matrix, dtype=matrix.dtype.newbyteorder("<")).tobytes()
    return matrix


def sparse_for_wire(vector: Any) -> dict[str, Any]:
    """A SparseVector -> {"indices": [...], "values": [...]} (Qdrant's sparse vector shape)."""
    return {"indices": np.asarray(vector.indices).tolist(), "values": np.asarray(vector.values, dtype=np.float32)}


def _msgpack_default(value: Any) -> Any:
    """numpy in a msgpack payload (what orjson's OPT_SERIALIZE_NUMPY does for JSON): arrays as
    lists (sparse values, int8 scales), numpy scalars as Python numbers."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot serialize {type(value).__name__!r} to msgpack")


def respond(request: Request, payload: dict[str, Any], *, status: int = 200) -> Response:
    if wants_msgpack(request):
        body = msgpack.packb(payload, use_bin_type=True, default=_msgpack_default)
        return Response(body, status_code=status, media_type=MSGPACK)
    return Response(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status,
                    media_type="application/json")


def json_response(payload: Any, *, status: int = 200) -> Response:
    return Response(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status,
                    media_type="application/json")


def body_schema(model: type[BaseModel]) -> dict[str, object]:
    """openapi_extra documenting a request body that the route reads itself (JSON or msgpack).
    The schema is inlined (nested models dereferenced): FastAPI only lists the models it parses
    itself under components, so a $ref to this one would dangle."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline(definitions[ref.removeprefix("#/$defs/")])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    body = {"schema": inline(schema)}
    return {"requestBody": {"required": True, "content": {"application/json": body, "application/msgpack": body}}}
