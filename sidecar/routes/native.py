"""Remora's own API: /v1/encode, /v1/score, /v1/extract (JSON or msgpack)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from remora.core.model import Encoded
from remora.sidecar.codec import (
    body_schema,
    matrix_for_wire,
    read_body,
    respond,
    sparse_for_wire,
    vectors_for_wire,
    wants_msgpack,
)
from remora.sidecar.errors import error_response
from remora.sidecar.state import remora

router = APIRouter(tags=["native"])


class EncodeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # "yes" is not a bool, 8.0 not an int

    model: str | None = Field(None, description="Registered model id or alias; default: the server's default model")
    inputs: list[str] | str = Field(..., description="Texts to encode")
    input_type: Literal["query", "document"] = Field(
        "document", description="Applies the model's query or document prompt"
    )
    prompt: str | None = Field(None, description="Prepended to every text instead of the model's prompt")
    normalize: bool | None = Field(None, description="L2-normalise; default: as the model is configured")
    truncate: bool = Field(True, description="Cut over-long texts; false rejects them with INPUT_TOO_LONG")
    dimensions: int | None = Field(None, description="Keep the first N dimensions (renormalised)")
    outputs: list[Literal["dense", "sparse", "multivector"]] | None = Field(
        None,
        description="What to return, from one forward pass; default: the model's first output "
        "(dense, or sparse for a SPLADE model). BGE-M3 gives all three.",
    )


class Usage(BaseModel):
    tokens: int


class SparseEmbedding(BaseModel):
    indices: list[int] = Field(..., description="Vocabulary ids, ascending")
    values: list[float]


class EncodeResponse(BaseModel):
    model: str
    dim: int | None = Field(None, description="Width of the dense (and multi-vector) embeddings")
    embeddings: list[list[float]] | None = Field(
        None, description="Dense: one vector per input, in order (msgpack: raw little-endian float32 bytes per vector)"
    )
    sparse: list[SparseEmbedding] | None = Field(None, description="Sparse: one per input, over the vocabulary")
    multivector: list[list[list[float]]] | None = Field(
        None, description="Multi-vector (ColBERT): one [tokens][dim] matrix per input (msgpack: one bytes per matrix, "
        "row-major float32)"
    )
    usage: Usage


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # "yes" is not a bool, 8.0 not an int

    model: str | None = Field(None, description="A cross-encoder; default: the server's default reranker")
    query: str
    documents: list[str]
    truncate: bool = True
    raw_scores: bool = Field(False, description="Logits instead of the model's activation (sigmoid)")


class ScoreResponse(BaseModel):
    model: str
    scores: list[float] = Field(..., description="One score per document, in input order")
    usage: Usage


@router.post("/v1/encode", response_model=EncodeResponse, openapi_extra=body_schema(EncodeRequest))
async def encode(request: Request) -> Response:
    state = remora(request)
    body = await read_body(request, EncodeRequest)
    texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
    result = await state.service.encode_outputs(
        request,
        body.model or state.default_model,
        texts,
        outputs=body.outputs,
        is_query=body.input_type == "query",
        prompt=body.prompt,
        normalize=body.normalize,
        truncate=body.truncate,
        dimensions=body.dimensions,
    )
    encoded: Encoded = result.rows
    binary = wants_msgpack(request)
    payload: dict[str, Any] = {"model": result.model_id}
    if encoded.dense is not None:
        payload["dim"] = int(encoded.dense.shape[1])
        payload["embeddings"] = vectors_for_wire(encoded.dense, binary)
    if encoded.sparse is not None:
        payload["sparse"] = [sparse_for_wire(vector) for vector in encoded.sparse]
    if encoded.multivector is not None:
        payload.setdefault("dim", int(encoded.multivector[0].shape[1]) if encoded.multivector else 0)
        payload["multivector"] = [matrix_for_wire(m, binary) for m in encoded.multivector]
    payload["usage"] = {"tokens": result.tokens}
    return respond(request, payload)


@router.post("/v1/score", response_model=ScoreResponse, openapi_extra=body_schema(ScoreRequest))
async def score(request: Request) -> Response:
    state = remora(request)
    body = await read_body(request, ScoreRequest)
    name = body.model or state.default_reranker
    if name is None:
        return error_response(request.url.path, "INVALID_INPUT",
                              "no model given and no default_reranker configured; send 'model'")
    result = await state.service.score(request, name, body.query, body.documents, truncate=body.truncate,
                                       raw=body.raw_scores)
    return respond(request, {"model": result.model_id, "scores": result.rows.tolist(),
                             "usage": {"tokens": result.tokens}})


@router.post("/v1/extract")
async def extract(request: Request) -> Response:
    return error_response(request.url.path, "NOT_IMPLEMENTED",
                          "extraction models (token classification, GLiNER-style spans) are not available yet")
