"""Remora's own API: /v1/encode, /v1/score, /v1/extract (JSON or msgpack)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from remora.sidecar.codec import body_schema, read_body, respond, vectors_for_wire, wants_msgpack
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


class Usage(BaseModel):
    tokens: int


class EncodeResponse(BaseModel):
    model: str
    dim: int
    embeddings: list[list[float]] = Field(
        ..., description="One vector per input, in order (msgpack: raw little-endian float32 bytes per vector)"
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
    result = await state.service.encode(
        request,
        body.model or state.default_model,
        texts,
        is_query=body.input_type == "query",
        prompt=body.prompt,
        normalize=body.normalize,
        truncate=body.truncate,
        dimensions=body.dimensions,
    )
    return respond(request, {
        "model": result.model_id,
        "dim": int(result.rows.shape[1]),
        "embeddings": vectors_for_wire(result.rows, wants_msgpack(request)),
        "usage": {"tokens": result.tokens},
    })


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
