"""Qdrant's inference-service contract: POST /v1/qdrant/inference, so a self-hosted Qdrant whose
`inference.address` (env `QDRANT__INFERENCE__ADDRESS`) points here embeds `models.Document`
itself, on upsert and on query.

What Qdrant sends (qdrant/qdrant v1.19.0, src/common/inference/service.rs `InferenceRequest`,
inference_input.rs `InferenceInput`), one POST per upsert or query with every distinct inference
object of it:

    {"inputs": [{"data": "<text>", "data_type": "text", "model": "<name>", "options": null}],
     "inference": "update", "token": null}

- `data_type` is "text" for a Document, "image" / "object" for Image / InferenceObject: Remora
  embeds text only, so the others are a 400 that Qdrant shows its caller as a bad request.
- `options` is the Document's options as the caller gave them (null when none; `{}` when the
  Document came over gRPC). Remora reads two keys, any other is a 400:
  `output` ("dense" | "sparse" | "multivector") picks one output of a model that has several
  (BGE-M3); without it a model gives its first: dense, sparse for a SPLADE model, multi-vector for
  a ColBERT model. `dimensions` keeps the first N dense components, renormalised (Matryoshka).
- `inference`: "update" (the upsert path) applies the model's document prompt, "search" (the
  query path) its query prompt. Qdrant always sends it; a missing one counts as "update", as
  Qdrant's `InferenceType` defaults to Update.
- `token`: the JWT `sub` of the Qdrant caller, else Qdrant's `inference.token`; Qdrant sends no
  Authorization header. With REMORA_API_KEY set, a request without a valid header key must carry
  the key as this token (set `QDRANT__INFERENCE__TOKEN` to it), else 401, which Qdrant reports
  as a service error. Qdrant also forwards its caller's headers that end in `-api-key` (so a
  caller's `x-api-key` header reaches the Gate too).

The answer: 200 `{"embeddings": [...one per input, in input order...], "usage": {"models":
{"<name>": {"tokens": N}}}}`, each embedding dense `[f32]`, sparse `{"indices", "values"}` or
multi-vector `[[f32]]` (Qdrant's untagged `VectorPersisted`). Qdrant zips the embeddings with its
inputs, so the count must match. Inputs are grouped per (model, options): one engine call each,
run concurrently, put back in input order.

Errors: `{"error": message}` (errors.py). Every client error is a 400 (Qdrant: "Inference request
validation failed: <error>"); 401/403/429/5xx stay what they are. Every input of a request counts
against REMORA_MAX_INPUTS (1,024 by default), and Qdrant sends all of an upsert batch's documents
at once: keep batches under it (divided by the named vectors per point), or raise it.
"""

from __future__ import annotations

import asyncio
import reprlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from remora.core.errors import InvalidInput
from remora.core.model import Encoded
from remora.sidecar.codec import WireError, body_schema, json_response, read_body, sparse_for_wire
from remora.sidecar.errors import error_response
from remora.sidecar.middleware import body_key_ok
from remora.sidecar.openapi import error_responses
from remora.sidecar.service import Result
from remora.sidecar.state import remora

QDRANT_PATH = "/v1/qdrant/inference"
router = APIRouter(tags=["qdrant"], responses=error_responses(QDRANT_PATH))

Output = Literal["dense", "sparse", "multivector"]
OPTIONS = ("output", "dimensions")


class InferenceInput(BaseModel):
    # Unknown fields are ignored: a newer Qdrant adding one must not break embedding.
    model_config = ConfigDict(extra="ignore", strict=True)

    data: Any = Field(..., description="The text (a JSON string for data_type 'text')")
    data_type: str = Field(..., description="'text' (a Document); 'image' and 'object' are refused")
    model: str = Field(..., min_length=1, description="A registered model id or alias")
    options: dict[str, Any] | None = Field(
        None, description="Remora reads 'output' (dense | sparse | multivector) and 'dimensions' (int)"
    )


class InferenceRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    inputs: list[InferenceInput]
    inference: Literal["update", "search"] | None = Field(
        None, description="update: the model's document prompt; search: its query prompt"
    )
    token: str | None = Field(None, description="The API key, when REMORA_API_KEY is set and no header carries it")


class ModelUsage(BaseModel):
    tokens: int


class InferenceUsage(BaseModel):
    models: dict[str, ModelUsage]


class InferenceResponse(BaseModel):
    embeddings: list[Any] = Field(
        ..., description="One per input, in order: dense [f32], sparse {indices, values} or multi-vector [[f32]]"
    )
    usage: InferenceUsage


@dataclass(frozen=True)
class Group:
    """Inputs sharing one engine call: the same model name and the same options."""

    model: str
    output: Output | None
    dimensions: int | None


@router.post(QDRANT_PATH, response_model=InferenceResponse, openapi_extra=body_schema(InferenceRequest))
async def inference(request: Request) -> Response:
    state = remora(request)
    gate = request.scope.get("state", {})
    try:
        body = await read_body(request, InferenceRequest)
    except WireError:
        # A body we cannot read still has to prove its key before it is told what is wrong.
        if not body_key_ok(gate, _token_in(await request.body())):
            return _unauthorized(request)
        raise
    if not body_key_ok(gate, body.token):
        return _unauthorized(request)

    groups: dict[Group, list[int]] = {}
    texts: list[str] = []
    for i, item in enumerate(body.inputs):
        texts.append(_text_of(i, item))
        groups.setdefault(_group_of(i, item), []).append(i)
    state.service.check_texts(texts, "inputs")  # empty, or over REMORA_MAX_INPUTS in all

    is_query = body.inference == "search"
    order = list(groups.items())
    results = await asyncio.gather(
        *(_encode(request, group, [texts[i] for i in positions], is_query=is_query) for group, positions in order),
        return_exceptions=True,
    )
    embeddings: list[Any] = [None] * len(texts)
    usage: dict[str, dict[str, int]] = {}
    for (group, positions), result in zip(order, results, strict=True):
        if isinstance(result, BaseException):
            raise result
        vectors = _vectors_of(group, result.rows)
        for position, vector in zip(positions, vectors, strict=True):
            embeddings[position] = vector
        tokens = usage.setdefault(group.model, {"tokens": 0})
        tokens["tokens"] += result.tokens
    return json_response({"embeddings": embeddings, "usage": {"models": usage}})


async def _encode(request: Request, group: Group, texts: list[str], *, is_query: bool) -> Result:
    service = remora(request).service
    return await service.encode_outputs(
        request,
        group.model,
        texts,
        outputs=(group.output,) if group.output else None,
        is_query=is_query,
        dimensions=group.dimensions,
    )


def _text_of(i: int, item: InferenceInput) -> str:
    if item.data_type != "text":
        if item.data_type in ("image", "object"):
            raise InvalidInput(
                f"inputs[{i}]: data_type {item.data_type!r} is not supported: Remora embeds text only "
                f"(send models.Document for model {item.model!r})"
            )
        raise InvalidInput(f"inputs[{i}]: unknown data_type {item.data_type!r}; expected 'text'")
    if not isinstance(item.data, str):
        raise InvalidInput(f"inputs[{i}]: a text input's data must be a string, not {type(item.data).__name__}")
    return item.data


def _group_of(i: int, item: InferenceInput) -> Group:
    options = item.options or {}
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise InvalidInput(
            f"inputs[{i}]: unknown option(s) {', '.join(map(repr, unknown))} for model {item.model!r}; "
            f"Remora reads {' and '.join(map(repr, OPTIONS))}"
        )
    output = options.get("output")
    if output is not None and output not in ("dense", "sparse", "multivector"):
        raise InvalidInput(
            f"inputs[{i}]: option 'output' must be 'dense', 'sparse' or 'multivector', not {_shown(output)}"
        )
    dimensions = options.get("dimensions")
    # bool is an int in Python; JSON true is no width.
    if dimensions is not None and (not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1):
        raise InvalidInput(f"inputs[{i}]: option 'dimensions' must be a positive integer, not {_shown(dimensions)}")
    if dimensions is not None and output not in (None, "dense"):
        raise InvalidInput(f"inputs[{i}]: option 'dimensions' applies to dense output only, not {_shown(output)}")
    return Group(item.model, output, dimensions)


def _shown(value: Any) -> str:
    """A caller's option value in a message: bounded in depth and length (the repr of a JSON
    array nested a thousand deep raises RecursionError; a megabyte string is no message)."""
    return reprlib.repr(value)


def _vectors_of(group: Group, encoded: Encoded) -> Sequence[Any]:
    """The group's vectors in Qdrant's shapes: the output asked for, else the model's one."""
    wanted = group.output or next(
        (name for name in ("dense", "sparse", "multivector") if getattr(encoded, name) is not None), None
    )
    if group.dimensions is not None and wanted != "dense":
        raise InvalidInput(f"option 'dimensions' applies to dense output only; model {group.model!r} gives {wanted}")
    if wanted == "dense" and encoded.dense is not None:
        return list(encoded.dense.astype(np.float32, copy=False))
    if wanted == "sparse" and encoded.sparse is not None:
        return [sparse_for_wire(vector) for vector in encoded.sparse]
    if wanted == "multivector" and encoded.multivector is not None:
        return encoded.multivector
    raise InvalidInput(f"model {group.model!r} gave no {wanted or 'encode'} output")


def _token_in(raw: bytes) -> str | None:
    """The body's token, from a body that may not pass validation."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    token = data.get("token") if isinstance(data, dict) else None
    return token if isinstance(token, str) else None


def _unauthorized(request: Request) -> Response:
    return error_response(
        request.url.path,
        "UNAUTHORIZED",
        "a valid API key is required: set Qdrant's inference token (QDRANT__INFERENCE__TOKEN) to REMORA_API_KEY",
    )
