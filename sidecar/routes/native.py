"""Remora's own API: /v1/encode, /v1/score, /v1/extract (JSON or msgpack)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from remora.core.model import Encoded
from remora.core.quantize import quantize, quantize_int8
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
from remora.sidecar.openapi import MSGPACK_200, error_responses
from remora.sidecar.state import remora

router = APIRouter(tags=["native"], responses={**error_responses("/v1/encode"), **MSGPACK_200})


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
    encoding: Literal["float32", "float16", "int8", "uint8", "binary", "ubinary"] = Field(
        "float32",
        description="Dense and multi-vector number format: float16 (a cast); int8 / uint8 per-vector "
        "symmetric (round(x * 127 / max|x|), uint8 + 128; scales returned); binary / ubinary sign bits "
        "packed 8 per byte (as sentence-transformers' quantize_embeddings)",
    )
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
    encoding: str = Field("float32", description="The number format of embeddings and multivector")
    scales: list[float] | None = Field(None, description="int8 / uint8: each dense vector's scale (x ~ q * scale)")
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
    payload: dict[str, Any] = {"model": result.model_id, "encoding": body.encoding}
    if encoded.dense is not None:
        payload["dim"] = int(encoded.dense.shape[1])
        if body.encoding == "float32":
            payload["embeddings"] = vectors_for_wire(encoded.dense, binary)
        else:
            codes = quantize(encoded.dense, body.encoding)
            payload["embeddings"] = [row.tobytes() for row in codes] if binary else codes
            if body.encoding in ("int8", "uint8"):
                payload["scales"] = quantize_int8(encoded.dense)[1]
    if encoded.sparse is not None:
        payload["sparse"] = [sparse_for_wire(vector) for vector in encoded.sparse]
    if encoded.multivector is not None:
        payload.setdefault("dim", int(encoded.multivector[0].shape[1]) if encoded.multivector else 0)
        matrices = [m if body.encoding == "float32" else quantize(m, body.encoding) for m in encoded.multivector]
        payload["multivector"] = [matrix_for_wire(m, binary) for m in matrices]
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


class ExtractRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = Field(None, description="An extraction model; default: the registry's default_extractor")
    inputs: list[str] | str = Field(..., description="Texts to extract entities from")
    labels: list[str] | None = Field(
        None, description="Entity types: required by GLiNER-style models; for token classifiers, a filter"
    )
    threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="Drop entities scoring below it; default: 0.5 (GLiNER), 0 (token classifiers)"
    )
    aggregation: Literal["simple", "first", "average", "max"] = Field(
        "simple", description="How token classifiers group sub-word tokens (transformers' aggregation_strategy)"
    )
    flat_ner: bool = Field(True, description="GLiNER: no overlapping spans")
    multi_label: bool = Field(False, description="GLiNER: a span may carry several labels")
    truncate: bool = True


class EntityOut(BaseModel):
    text: str
    label: str
    score: float
    start: int = Field(..., description="Character offset of the first character")
    end: int = Field(..., description="Character offset one past the last character")


class ExtractItem(BaseModel):
    entities: list[EntityOut]


class ExtractResponse(BaseModel):
    model: str
    results: list[ExtractItem] = Field(..., description="One per input, in order")
    usage: Usage


@router.post("/v1/extract", response_model=ExtractResponse, openapi_extra=body_schema(ExtractRequest))
async def extract(request: Request) -> Response:
    state = remora(request)
    body = await read_body(request, ExtractRequest)
    name = body.model or state.default_extractor
    if name is None:
        return error_response(request.url.path, "INVALID_INPUT",
                              "no model given and no default_extractor configured; send 'model'")
    texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
    result = await state.service.extract(
        request, name, texts, labels=body.labels, threshold=body.threshold, aggregation=body.aggregation,
        flat_ner=body.flat_ner, multi_label=body.multi_label, truncate=body.truncate,
    )
    return respond(request, {
        "model": result.model_id,
        "results": [{"entities": [e.to_dict() for e in found]} for found in result.rows],
        "usage": {"tokens": result.tokens},
    })
