"""OpenAI's embeddings API: POST /v1/embeddings (and /embeddings, as text-embeddings-inference
also serves it), so the official `openai` clients and anything built on them can use Remora.

- `input`: a string or a list of strings. Token-id arrays (which OpenAI accepts) are refused
  with 422: Remora tokenizes with the model's own tokenizer.
- `model`: any registered id or alias (404 otherwise); OpenAI requires it, Remora falls back
  to the server's default model when it is missing.
- `encoding_format`: "float" (default) or "base64", the little-endian float32 bytes of each
  vector (what the `openai` Python client asks for unless told otherwise, and decodes itself).
- `dimensions`: keep the first N components and renormalise (Matryoshka-style).
- `user` and any other field are ignored.
- Remora extension: `input_type` "query" | "document" picks the model's query or document
  prompt (default: document), for asymmetric models.

Over-long texts are truncated to the model's maximum length, as text-embeddings-inference does
on this route (OpenAI itself would refuse them). Vectors are normalised as the model is configured
(sentence-transformers' Normalize module), so they equal /v1/encode's. Errors come as
{"error": {"message", "type", "code"}}.
"""

from __future__ import annotations

import base64
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.responses import Response

from remora.sidecar.codec import body_schema, json_response, read_body
from remora.sidecar.openapi import error_responses
from remora.sidecar.routes.compat_common import text_only
from remora.sidecar.state import remora

router = APIRouter(tags=["openai"], responses=error_responses("/v1/embeddings"))


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)  # strict, as TEI (serde) and OpenAI: "yes" is no bool

    input: str | list[str] = Field(..., description="A text or a list of texts (token-id arrays are not accepted)")
    model: str | None = Field(None, description="Registered model id or alias; default: the server's default model")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="base64: the little-endian float32 bytes of each vector"
    )
    dimensions: int | None = Field(None, description="Keep the first N dimensions (renormalised)")
    user: str | None = Field(None, description="Ignored")
    input_type: Literal["query", "document"] | None = Field(
        None, description="Remora extension: apply the model's query or document prompt (default: document)"
    )

    _text_only = field_validator("input", mode="before")(text_only)


class Embedding(BaseModel):
    object: Literal["embedding"]
    embedding: list[float] | str
    index: int


class EmbeddingsUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: EmbeddingsUsage


def _encode_base64(row: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(row, dtype="<f4").tobytes()).decode("ascii")


@router.post("/v1/embeddings", response_model=EmbeddingsResponse, openapi_extra=body_schema(EmbeddingsRequest))
@router.post("/embeddings", include_in_schema=False)
async def embeddings(request: Request) -> Response:
    state = remora(request)
    body = await read_body(request, EmbeddingsRequest)
    texts = [body.input] if isinstance(body.input, str) else body.input
    result = await state.service.encode(
        request,
        body.model or state.default_model,
        texts,
        is_query=body.input_type == "query",
        truncate=True,
        dimensions=body.dimensions,
    )
    rows = np.ascontiguousarray(result.rows, dtype=np.float32)
    vectors: list[Any] = [_encode_base64(row) for row in rows] if body.encoding_format == "base64" else list(rows)
    return json_response({
        "object": "list",
        "data": [{"object": "embedding", "embedding": v, "index": i} for i, v in enumerate(vectors)],
        "model": result.model_id,
        "usage": {"prompt_tokens": result.tokens, "total_tokens": result.tokens},
    })
