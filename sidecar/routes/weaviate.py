"""Weaviate's inference-container contracts: `text2vec-transformers`, `reranker-transformers` and
`ner-transformers`, so a Weaviate server whose module URLs name Remora vectorizes, reranks and
tags through it.

Where: at the root for the server's default models (`/vectors`, `/meta`, `/.well-known/ready`,
`/ner/`; the reranker's `/rerank` shares TEI's route, see `root_rerank`), and under
`/weaviate/<model>/` for any registered model (or alias), so each collection can name its own
model through the `inferenceUrl` setting.

What Weaviate sends (weaviate/weaviate, usecases/modulecomponents/clients/transformers and
modules/{reranker,ner}-transformers/clients): Go's net/http with no headers of its own, so no
Content-Type (codec.read_body reads a body without one as JSON) and no API key (with
REMORA_API_KEY set, only `/weaviate/...` can be opened to it, by REMORA_WEAVIATE_OPEN=1).

- `GET {url}/.well-known/ready` at startup, once a second until a status <= 299.
- `GET {url}/meta`: any JSON object (shown in Weaviate's /v1/meta).
- `POST {url}/vectors` once per object (task_type "passage") and once per query text ("query"):
  `{"text", "dims": 0, "vector": null, "error": "", "config": {"pooling_strategy", "task_type",
  "dimensions"?}}`. The answer's `vector` is read, and on a non-200 its `error`.
- `POST {url}/rerank {"query", "documents": [<= 32], "property": ""}`, chunks sent in parallel;
  Weaviate gives `scores[i]` to document i, so the scores come back in input order.
- `POST {url}/ner/ {"text"}` -> `{"text", "tokens": [{"entity", "certainty", "distance", "word",
  "startPosition", "endPosition"}]}`; a status over 399 is an error read from `error`.

Choices: task_type "query" applies the model's query prompt, "passage" (or none, as older
Weaviate versions send) its document prompt. `dimensions` keeps the first N components,
renormalised. `pooling_strategy` ("masked_mean", Weaviate's default, or "cls") is accepted and
not applied: a model pools as it is configured, as the reference container's
sentence-transformers path does. NER tokens are whole entities (transformers' "simple"
aggregation: `entity` "PER", not per-sub-word "B-PER"), `certainty` the entity's score and
`distance` 2 * (1 - certainty), Weaviate's certainty/distance relation.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Literal

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import Response

from remora.core.errors import RemoraError, Retryable
from remora.core.pool import State
from remora.sidecar.codec import MSGPACK, WireError, body_schema, describe, json_response, read_body
from remora.sidecar.errors import WEAVIATE_PREFIX, error_response
from remora.sidecar.openapi import error_responses
from remora.sidecar.state import remora

router = APIRouter(tags=["weaviate"], responses=error_responses(WEAVIATE_PREFIX))

# `{model:path}`: registered ids may hold slashes ("BAAI/bge-small-en-v1.5").
PREFIX = WEAVIATE_PREFIX + "{model:path}"


class VectorsConfig(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    pooling_strategy: Literal["masked_mean", "cls", ""] | None = Field(
        default=None, description="Accepted and not applied: the model pools as it is configured"
    )
    task_type: Literal["query", "passage"] | None = Field(
        default=None, description="'query': the model's query prompt; 'passage' (default): its document prompt"
    )
    dimensions: int | None = Field(default=None, description="Keep the first N dimensions (renormalised)")


class VectorsRequest(BaseModel):
    # extra="ignore": the reference container (pydantic) ignores fields it does not know.
    model_config = ConfigDict(extra="ignore", strict=True)

    text: str
    dims: Any = Field(default=None, description="Sent by Weaviate as 0; ignored")
    vector: Any = Field(default=None, description="Sent by Weaviate as null; ignored")
    error: Any = Field(default=None, description="Sent by Weaviate as an empty string; ignored")
    config: VectorsConfig | None = None


class RerankRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    query: str
    documents: list[str]
    property: Any = Field(default=None, description="Sent by Weaviate as an empty string; ignored")


class NerRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    text: str


def _named(request: Request) -> str | None:
    """The model a `/weaviate/<model>/` path names (None at the root). Slashes at its ends are
    dropped: an inferenceUrl written with a trailing slash reaches `/weaviate/<model>//vectors`."""
    model = request.path_params.get("model")
    return model.strip("/") if isinstance(model, str) else None


def _model_config(source: str) -> dict[str, Any]:
    """The model directory's config.json (what the reference containers report in /meta)."""
    try:
        data = json.loads((Path(source) / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# -- text2vec-transformers ------------------------------------------------------------------------


async def ready(request: Request) -> Response:
    """204 while the model can serve (Weaviate accepts any status <= 299); otherwise 404 for a
    model that is not registered, 503 while the server drains or a preloaded model is still
    loading at start, 502 when the model failed to load. A model loaded on first use counts as
    ready: its requests wait for the load."""
    state = remora(request)
    name = _named(request) or state.default_model
    model_id = state.engine.resolve_id(name)  # MODEL_NOT_FOUND -> 404
    status = state.engine.pool.status_of(model_id)
    if state.draining:
        code, problem = "SHUTTING_DOWN", "the server is shutting down"
    elif status.state is State.FAILED:
        code, problem = "MODEL_LOAD_FAILED", f"model {model_id!r} failed to load: {status.error}"
    elif not state.ready and (status.preload or status.pinned) and status.state is not State.LOADED:
        code, problem = "MODEL_LOADING", f"model {model_id!r} is loading"
    else:
        return Response(status_code=204)
    return error_response(request.url.path, code, f"not ready: {problem}")


async def live(request: Request) -> Response:
    return Response(status_code=204)


async def meta(request: Request) -> Response:
    """The model's config.json under "model" (as the reference containers answer), and Remora's
    own view. Reads files only: asking for /meta loads no model."""
    state = remora(request)
    model_id = state.engine.resolve_id(_named(request) or state.default_model)
    status = state.engine.pool.status_of(model_id)
    config = await asyncio.to_thread(_model_config, status.source)
    remora_meta: dict[str, Any] = {"version": request.app.version, "model": model_id, "state": status.state.value}
    if _named(request) is None:
        remora_meta |= {"default_model": state.default_model, "default_reranker": state.default_reranker,
                        "default_extractor": state.default_extractor}
    return json_response({"model": {**config, "_name_or_path": model_id}, "remora": remora_meta})


async def vectors(request: Request) -> Response:
    state = remora(request)
    body = await read_body(request, VectorsRequest)
    config = body.config or VectorsConfig()
    result = await state.service.encode(
        request,
        _named(request) or state.default_model,
        [body.text],
        is_query=config.task_type == "query",
        dimensions=config.dimensions,
    )
    vector = result.rows[0]
    # The reference container answers "dim"; Weaviate's Go struct reads "dims": send both.
    return json_response({"text": body.text, "vector": vector, "dim": len(vector), "dims": len(vector)})


# -- reranker-transformers ------------------------------------------------------------------------


async def _rerank(request: Request, name: str | None, body: RerankRequest) -> Response:
    state = remora(request)
    name = name or state.default_reranker
    if name is None:
        raise WireError("INVALID_INPUT", "no default_reranker is configured on this server; use "
                        "RERANKER_INFERENCE_API=<sidecar>/weaviate/<model>")
    if not body.documents:  # Weaviate sends no request for nothing; answer in kind
        return json_response({"query": body.query, "scores": []})
    result = await state.service.score(request, name, body.query, body.documents)
    return json_response({
        "query": body.query,
        "scores": [{"document": d, "score": float(s)} for d, s in zip(body.documents, result.rows, strict=True)],
    })


async def rerank(request: Request) -> Response:
    body = await read_body(request, RerankRequest)
    return await _rerank(request, _named(request), body)


async def root_rerank(request: Request) -> Response | None:
    """Weaviate's reranker at the root `/rerank`, which TEI's route owns: a JSON body with
    "documents" and no "texts" is Weaviate's and is answered here, in Weaviate's shape, with
    errors as {"error"}; for any other body (TEI's) this returns None and TEI's handler goes on."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() == MSGPACK:
        return None
    try:
        data = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict) or "documents" not in data or "texts" in data:
        return None
    try:
        try:
            body = RerankRequest.model_validate(data)
        except ValidationError as exc:
            raise WireError("INVALID_INPUT", describe(exc)) from None
        return await _rerank(request, None, body)
    except RemoraError as exc:
        retry = exc.retry_after if isinstance(exc, Retryable) else None
        # The bare {"error"} body of the /weaviate/ routes, not TEI's.
        return error_response(WEAVIATE_PREFIX, exc.code, exc.message, retry_after=retry)


# -- ner-transformers -----------------------------------------------------------------------------


async def ner(request: Request) -> Response:
    state = remora(request)
    body = await read_body(request, NerRequest)
    name = _named(request) or state.default_extractor
    if name is None:
        raise WireError("INVALID_INPUT", "no default_extractor is configured on this server; use "
                        "NER_INFERENCE_API=<sidecar>/weaviate/<model>")
    if not body.text:  # Weaviate skips empty properties; nothing to find
        return json_response({"text": body.text, "tokens": []})
    result = await state.service.extract(request, name, [body.text])
    tokens = [
        {
            "entity": e.label,
            "certainty": e.score,
            "distance": 2.0 * (1.0 - e.score),
            "word": e.text,
            "startPosition": e.start,
            "endPosition": e.end,
        }
        for e in result.rows[0]
    ]
    return json_response({"text": body.text, "tokens": tokens})


# -- the routes -----------------------------------------------------------------------------------


_MODEL_PARAMETER = {"name": "model", "in": "path", "required": True, "schema": {"type": "string"},
                    "description": "A registered model id or alias (it may hold slashes)"}


def _add(path: str, endpoint: Any, method: str, schema: type[BaseModel] | None = None, status: int = 200) -> None:
    # The endpoints read the model from path_params themselves (the root routes have none), so
    # OpenAPI is told about it here.
    extra: dict[str, Any] = body_schema(schema) if schema is not None else {}
    if "{model:path}" in path:
        extra["parameters"] = [_MODEL_PARAMETER]
    router.add_api_route(path, endpoint, methods=[method], openapi_extra=extra or None, status_code=status)


# Weaviate builds `{url}/vectors` and `{url}/ner/`; the reference containers also answer
# `/vectors/`, and `/ner` costs nothing (Weaviate's client follows no redirect).
for _root in ("", PREFIX):
    _add(f"{_root}/.well-known/ready", ready, "GET", status=204)
    _add(f"{_root}/.well-known/live", live, "GET", status=204)
    _add(f"{_root}/meta", meta, "GET")
    _add(f"{_root}/vectors", vectors, "POST", VectorsRequest)
    _add(f"{_root}/vectors/", vectors, "POST", VectorsRequest)
    _add(f"{_root}/ner/", ner, "POST", NerRequest)
    _add(f"{_root}/ner", ner, "POST", NerRequest)
_add(f"{PREFIX}/rerank", rerank, "POST", RerankRequest)
