"""Cohere's and Jina's rerank API: POST /v1/rerank and POST /v2/rerank.

- `model`: a registered cross-encoder (404 otherwise); default: the server's default reranker,
  and 422 when none is configured.
- `query`, `documents`: strings or {"text": ...} objects (Cohere v1 and Jina accept both).
- `top_n`: keep the best N (default: all); `return_documents` (default false) adds
  {"document": {"text"}} to each result.
- `max_chunks_per_doc`, `max_tokens_per_doc`, `rank_fields` and any other field are ignored:
  over-long pairs are truncated to the model's maximum length.

Answer: {"id", "model", "results": [{"index", "relevance_score", "document"?}], "usage":
{"total_tokens"}, "meta": {"billed_units": {"search_units": 1}}}, results best first (ties keep
input order); relevance_score is the model's activated score (sigmoid for one-label models).
"""

from __future__ import annotations

import uuid

import numpy as np
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from remora.sidecar.codec import WireError, body_schema, json_response, read_body
from remora.sidecar.openapi import error_responses
from remora.sidecar.state import remora

router = APIRouter(tags=["rerank"], responses=error_responses("/v1/rerank"))


class RerankDocument(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)  # strict, as TEI (serde) and OpenAI: "yes" is no bool

    text: str


class RerankRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)  # strict, as TEI (serde) and OpenAI: "yes" is no bool

    model: str | None = Field(None, description="A cross-encoder; default: the server's default reranker")
    query: str
    documents: list[str | RerankDocument] = Field(..., description="Texts, or objects with a 'text' field")
    top_n: int | None = Field(None, ge=1, description="Return the best N results; default: all")
    return_documents: bool = Field(False, description="Include each document's text in its result")


class ResultDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: ResultDocument | None = None


class RerankUsage(BaseModel):
    total_tokens: int


class BilledUnits(BaseModel):
    search_units: int


class RerankMeta(BaseModel):
    billed_units: BilledUnits


class RerankResponse(BaseModel):
    id: str
    model: str
    results: list[RerankResult] = Field(..., description="Best first")
    usage: RerankUsage
    meta: RerankMeta


@router.post("/v1/rerank", response_model=RerankResponse, response_model_exclude_none=True,
             openapi_extra=body_schema(RerankRequest))
@router.post("/v2/rerank", response_model=RerankResponse, response_model_exclude_none=True,
             openapi_extra=body_schema(RerankRequest))
async def rerank(request: Request) -> Response:
    state = remora(request)
    body = await read_body(request, RerankRequest)
    name = body.model or state.default_reranker
    if name is None:
        raise WireError("INVALID_INPUT", "no model given and no default_reranker configured; send 'model'")
    texts = [d if isinstance(d, str) else d.text for d in body.documents]
    result = await state.service.score(request, name, body.query, texts, truncate=True)
    scores = np.asarray(result.rows, dtype=np.float32)
    order = np.argsort(-scores, kind="stable")[: body.top_n]
    results = []
    for index in order.tolist():
        item: dict[str, object] = {"index": index, "relevance_score": float(scores[index])}
        if body.return_documents:
            item["document"] = {"text": texts[index]}
        results.append(item)
    return json_response({
        "id": str(uuid.uuid4()),
        "model": result.model_id,
        "results": results,
        "usage": {"total_tokens": result.tokens},
        "meta": {"billed_units": {"search_units": 1}},
    })
