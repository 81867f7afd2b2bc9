"""What the compatibility routes (OpenAI, TEI, Cohere/Jina rerank) share: text-only inputs and
the OpenAPI request-body schema."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticCustomError

TOKEN_IDS_MESSAGE = (
    "token-id arrays are not supported: Remora tokenizes with the model's own tokenizer; "
    "send text (a string or a list of strings)"
)


def text_only(value: Any) -> Any:
    """A pydantic before-validator for `str | list[str]` fields: token-id inputs (a list of ints
    or a list of int lists, which OpenAI and TEI also accept) get a message that says why."""
    if isinstance(value, list) and any(isinstance(item, int | list) for item in value):
        raise PydanticCustomError("token_ids", TOKEN_IDS_MESSAGE)
    return value


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
