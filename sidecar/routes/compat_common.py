"""What the compatibility routes (OpenAI, TEI, Cohere/Jina rerank) share: text-only inputs."""

from __future__ import annotations

from typing import Any

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
