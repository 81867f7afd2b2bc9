"""text-embeddings-inference's HTTP API: /embed, /embed_sparse, /rerank, /tokenize, /info and /health, with
TEI's request fields, defaults, response shapes and {"error", "error_type"} errors, so TEI
clients (Chroma's `huggingface_server`, Weaviate's `text2vec-huggingface`, LangChain's
`HuggingFaceEndpointEmbeddings`, ...) can point at Remora.

Which model: TEI serves one model; here /embed, /tokenize and /info use the server's default
model and /rerank its default reranker. A `model` field in the body (a query parameter for
/info) picks another registered model: a Remora extension.

Truncation: `truncate` defaults to true, because TEI's default is the server's `auto_truncate`
and that flag defaults to true (router/src/main.rs: `default_value = "true"`; the handlers do
`req.truncate.unwrap_or(info.auto_truncate)`). `truncate: false` refuses over-long inputs with
422 Validation, as TEI does. `truncation_direction` "right" (TEI's default) is what Remora does;
"left" is refused with 422 when truncating, since the engine cuts on the model's side only
(cutting a prompt away from the left would also break its pooling).

Prompts: TEI's `prompt_name` names an entry of the model's sentence-transformers `prompts`.
Remora knows a model's query and document prompts: "query" applies the query prompt, "document"
or "passage" the document prompt, any other name is a 422. Without a prompt_name the document
prompt applies (TEI applies the configured default prompt, if any).

/tokenize: start/stop are byte offsets into the UTF-8 of the (prompted) input, as TEI reports
them (the Rust `tokenizers` crate's offsets; core/src/tokenization.rs `into_tokens` slices bytes).
/rerank sorts as TEI does (ascending, then reversed), so equal scores come in reverse input order.

Differences a client may notice: token-id inputs are refused (422: Remora takes text); errors
carry an extra "code" field with Remora's error code; /info reports Remora's limits (see there).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.responses import Response

from remora.core.errors import RemoraError
from remora.core.model import LoadedModel
from remora.core.pool import State
from remora.sidecar.codec import WireError, body_schema, json_response, read_body
from remora.sidecar.errors import WEAVIATE_PREFIX
from remora.sidecar.openapi import error_responses
from remora.sidecar.routes.compat_common import text_only
from remora.sidecar.routes.weaviate import root_rerank
from remora.sidecar.state import Remora, remora

router = APIRouter(tags=["tei"], responses=error_responses("/embed"))

Direction = Literal["Right", "right", "Left", "left"]

# Remora codes TEI reports as 422 Validation (Remora's own status for them differs).
_AS_VALIDATION = {"INVALID_JSON", "INPUT_TOO_LONG", "TOO_MANY_INPUTS"}

_TEI_POOLING = {"lasttoken": "last_token"}


class EmbedRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)  # strict, as TEI (serde) and OpenAI: "yes" is no bool

    inputs: str | list[str] = Field(..., description="A text or a batch of texts")
    truncate: bool | None = Field(None, description="Cut over-long inputs; default true (TEI's auto-truncate)")
    truncation_direction: Direction = Field("right", description="Only 'right' is supported when truncating")
    prompt_name: str | None = Field(
        None, description="'query' (the model's query prompt) or 'document'/'passage'; default: document prompt"
    )
    normalize: bool = True
    dimensions: int | None = Field(None, description="Keep the first N dimensions (renormalised when normalize)")
    model: str | None = Field(None, description="Remora extension: a registered model; default: the default model")

    _text_only = field_validator("inputs", mode="before")(text_only)


class RerankRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)  # strict, as TEI (serde) and OpenAI: "yes" is no bool

    query: str
    texts: list[str]
    truncate: bool | None = Field(None, description="Cut over-long pairs; default true (TEI's auto-truncate)")
    truncation_direction: Direction = Field("right", description="Only 'right' is supported when truncating")
    raw_scores: bool = Field(False, description="Logits instead of sigmoid scores")
    return_text: bool = False
    model: str | None = Field(None, description="Remora extension: a cross-encoder; default: the default reranker")


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)  # strict, as TEI (serde) and OpenAI: "yes" is no bool

    inputs: str | list[str]
    add_special_tokens: bool = True
    prompt_name: str | None = None
    model: str | None = Field(None, description="Remora extension: a registered model; default: the default model")


class Rank(BaseModel):
    index: int
    text: str | None = None
    score: float


class SimpleToken(BaseModel):
    id: int
    text: str
    special: bool
    start: int | None = Field(..., description="Byte offset into the (prompted) input's UTF-8; null for special tokens")
    stop: int | None


@contextlib.contextmanager
def _tei_codes() -> Iterator[None]:
    """Errors whose TEI status differs from Remora's come out as TEI's 422 Validation."""
    try:
        yield
    except RemoraError as exc:
        if exc.code in _AS_VALIDATION:
            raise WireError("INVALID_INPUT", exc.message) from None
        raise


def _batch(state: Remora, inputs: str | list[str], field: str) -> list[str]:
    """TEI's batch checks: empty -> 400 Empty, over max_client_batch_size -> 422 Validation."""
    if isinstance(inputs, str):
        return [inputs]
    if not inputs:
        raise WireError("EMPTY_INPUT", f"`{field}` cannot be empty")
    limit = state.settings.max_inputs
    if len(inputs) > limit:
        raise WireError("INVALID_INPUT", f"batch size {len(inputs)} > maximum allowed batch size {limit}")
    return inputs


def _truncate(truncate: bool | None, direction: Direction) -> bool:
    truncate = True if truncate is None else truncate
    if truncate and direction.lower() == "left":
        raise WireError(
            "INVALID_INPUT",
            "truncation_direction 'left' is not supported: Remora truncates on the right (or on the side the "
            "model's tokenizer_config names); send truncation_direction 'right', or truncate false",
        )
    return truncate


def _is_query(prompt_name: str | None) -> bool:
    if prompt_name is None or prompt_name in ("document", "passage"):
        return False
    if prompt_name == "query":
        return True
    raise WireError(
        "INVALID_INPUT",
        f"prompt_name {prompt_name!r} is not available: Remora knows 'query' (the model's query prompt) and "
        "'document' or 'passage' (its document prompt)",
    )


@router.post("/embed", response_model=list[list[float]], openapi_extra=body_schema(EmbedRequest))
async def embed(request: Request) -> Response:
    state = remora(request)
    with _tei_codes():
        body = await read_body(request, EmbedRequest)
        texts = _batch(state, body.inputs, "inputs")
        result = await state.service.encode(
            request,
            body.model or state.default_model,
            texts,
            is_query=_is_query(body.prompt_name),
            normalize=body.normalize,
            truncate=_truncate(body.truncate, body.truncation_direction),
            dimensions=body.dimensions,
        )
    return json_response(np.ascontiguousarray(result.rows, dtype=np.float32))


class SparseValue(BaseModel):
    index: int
    value: float


class EmbedSparseRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    inputs: str | list[str] = Field(..., description="A text or a batch of texts")
    truncate: bool | None = Field(None, description="Cut over-long inputs; default true (TEI's auto-truncate)")
    truncation_direction: Direction = Field("right", description="Only 'right' is supported when truncating")
    prompt_name: str | None = Field(
        None, description="'query' (the model's query prompt) or 'document'/'passage'; default: document prompt"
    )
    model: str | None = Field(
        None, description="Remora extension: a registered sparse model (SPLADE, BGE-M3); default: the default model"
    )

    _text_only = field_validator("inputs", mode="before")(text_only)


@router.post("/embed_sparse", response_model=list[list[SparseValue]], openapi_extra=body_schema(EmbedSparseRequest))
async def embed_sparse(request: Request) -> Response:
    """TEI's sparse route: the non-zero vocabulary weights of each input, by ascending index."""
    state = remora(request)
    with _tei_codes():
        body = await read_body(request, EmbedSparseRequest)
        texts = _batch(state, body.inputs, "inputs")
        result = await state.service.encode_outputs(
            request,
            body.model or state.default_model,
            texts,
            outputs=("sparse",),
            is_query=_is_query(body.prompt_name),
            truncate=_truncate(body.truncate, body.truncation_direction),
        )
    sparse = result.rows.sparse
    return json_response([
        [{"index": int(i), "value": float(v)} for i, v in zip(vec.indices.tolist(), vec.values.tolist(), strict=True)]
        for vec in sparse
    ])


@router.post("/rerank", response_model=list[Rank], response_model_exclude_none=True,
             openapi_extra=body_schema(RerankRequest), responses=error_responses("/rerank", WEAVIATE_PREFIX))
async def rerank(request: Request) -> Response:
    """TEI's rerank; a body with "documents" and no "texts" is Weaviate's reranker-transformers
    module, which posts to this same path, and is answered in its shape (routes/weaviate.py)."""
    weaviate = await root_rerank(request)
    if weaviate is not None:
        return weaviate
    state = remora(request)
    with _tei_codes():
        body = await read_body(request, RerankRequest)
        if not body.texts:
            raise WireError("EMPTY_INPUT", "`texts` cannot be empty")
        _batch(state, body.texts, "texts")
        name = body.model or state.default_reranker
        if name is None:
            raise WireError("INVALID_INPUT", "no default_reranker is configured on this server; send 'model'")
        truncate = _truncate(body.truncate, body.truncation_direction)
        result = await state.service.score(request, name, body.query, body.texts, truncate=truncate,
                                           raw=body.raw_scores)
    scores = [float(s) for s in np.asarray(result.rows, dtype=np.float32)]
    if any(s != s for s in scores):
        raise WireError("INTERNAL", "score is NaN")
    # TEI sorts ascending (stable) and reverses: best first, equal scores in reverse input order.
    order = sorted(range(len(scores)), key=scores.__getitem__)
    order.reverse()
    ranks: list[dict[str, Any]] = []
    for index in order:
        rank: dict[str, Any] = {"index": index}
        if body.return_text:
            rank["text"] = body.texts[index]
        rank["score"] = scores[index]
        ranks.append(rank)
    return json_response(ranks)


@router.post("/tokenize", response_model=list[list[SimpleToken]], openapi_extra=body_schema(TokenizeRequest))
async def tokenize(request: Request) -> Response:
    """Tokens as TEI reports them: untruncated, the prompt included (offsets count it), start/stop
    byte offsets into the UTF-8 input and null for special tokens."""
    state = remora(request)
    with _tei_codes():
        body = await read_body(request, TokenizeRequest)
        texts = _batch(state, body.inputs, "inputs")
        is_query = _is_query(body.prompt_name)
        lease = await state.service.lease(request, body.model or state.default_model)
        try:
            model = lease.model
            prompt = model.prompt_for(is_query=is_query)
            inputs = [prompt + t for t in texts] if prompt else texts
            loop = asyncio.get_running_loop()
            spans = await loop.run_in_executor(
                state.service.tokenizers,
                partial(model.tokenizer.token_spans, inputs, add_special_tokens=body.add_special_tokens),
            )
        finally:
            lease.release()
    return json_response([
        [{"id": i, "text": text, "special": special, "start": start, "stop": stop}
         for i, text, special, start, stop in tokens]
        for tokens in spans
    ])


def _labels(model: LoadedModel) -> dict[str, Any]:
    """id2label / label2id from the model's config.json (transformers' defaults when absent)."""
    config: dict[str, Any] = {}
    if isinstance(model.spec.path, Path):
        with contextlib.suppress(OSError, ValueError):
            config = json.loads((model.spec.path / "config.json").read_text())
    id2label = config.get("id2label")
    if not isinstance(id2label, dict) or not id2label:
        id2label = {str(i): f"LABEL_{i}" for i in range(model.num_labels)}
    label2id = config.get("label2id")
    if not isinstance(label2id, dict) or not label2id:
        label2id = {str(v): int(k) for k, v in id2label.items()}
    return {"id2label": {str(k): str(v) for k, v in id2label.items()},
            "label2id": {str(k): int(v) for k, v in label2id.items()}}


@router.get("/info")
async def info(request: Request, model: str | None = None) -> Response:
    """TEI's Info for the default model (or `?model=`). Remora's equivalents fill TEI's router
    fields: max_concurrent_requests is the per-model queue limit (REMORA_MAX_QUEUE, sequences),
    max_batch_requests the sequences per forward pass, max_client_batch_size REMORA_MAX_INPUTS,
    tokenization_workers REMORA_TOKENIZER_THREADS; version is Remora's."""
    state = remora(request)
    lease = await state.service.lease(request, model or state.default_model)
    try:
        loaded = lease.model
        model_id = lease.model_id
        if loaded.num_labels > 0:
            labels = await asyncio.to_thread(_labels, loaded)
            model_type: dict[str, Any] = {"reranker" if loaded.num_labels == 1 else "classifier": labels}
        else:
            pooling = "+".join(_TEI_POOLING.get(p, p) for p in (loaded.spec.pooling or ("mean",)))
            model_type = {"embedding": {"pooling": pooling}}
        dtype = str(next(loaded.module.parameters()).dtype).removeprefix("torch.")
        max_input_length = loaded.tokenizer.max_len
    finally:
        lease.release()
    engine = state.engine
    return json_response({
        "model_id": model_id,
        "model_sha": None,
        "model_dtype": dtype,
        "served_model_name": model_id,
        "model_type": model_type,
        "max_concurrent_requests": engine.settings.max_queue,
        "max_input_length": max_input_length,
        "max_batch_tokens": engine.runtime.max_batch_tokens,
        "max_batch_requests": engine.runtime.max_batch_size,
        "max_client_batch_size": state.settings.max_inputs,
        "auto_truncate": True,
        "tokenization_workers": state.settings.tokenizer_threads,
        "version": request.app.version,
        "sha": None,
        "docker_label": None,
    })


class Unhealthy(BaseModel):
    error: str
    error_type: Literal["Unhealthy"]


@router.get("/health", response_class=Response, responses={
    200: {"description": "Healthy: an empty body"},
    503: {"model": Unhealthy, "description": "Draining, or the default model is missing, failed or still loading"},
})
async def health(request: Request) -> Response:
    """200 with an empty body while the default model can serve; 503 {"error", "error_type":
    "Unhealthy"} while the server drains, when the model is not registered or failed to load, and
    while a preloaded (or pinned) default model is still loading at start. A model loaded on first
    use, or loading again after an eviction, counts as able to serve: its requests wait for it."""
    state = remora(request)
    problem = None
    if state.draining:
        problem = "the server is shutting down"
    else:
        name = state.default_model
        try:
            status = state.engine.pool.status_of(state.engine.resolve_id(name))
        except (RemoraError, KeyError):
            problem = f"the default model {name!r} is not registered"
        else:
            if status.state is State.FAILED:
                problem = f"the default model {status.id!r} failed to load: {status.error}"
            elif not state.ready and (status.preload or status.pinned) and status.state is not State.LOADED:
                problem = f"the default model {status.id!r} is loading"
    if problem is not None:
        return json_response({"error": f"unhealthy: {problem}", "error_type": "Unhealthy"}, status=503)
    return Response(status_code=200)
