"""Prompt templates a model was trained with, as pure functions of the request's text.

Qwen3-Reranker judges a (query, document) pair written into a chat: a fixed system turn, the
instruction, query and document as the user turn, and an empty thinking block opening the
assistant turn, whose next token ("yes" / "no") is the verdict. The reference tokenizes the
prefix and suffix apart and truncates only the body between them, so all three are exposed.
"""

from __future__ import annotations

RERANKER_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
    'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
RERANKER_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
RERANKER_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


def reranker_body(query: str, document: str, instruction: str | None = None) -> str:
    """The user turn's content; `instruction` None means the model's default one."""
    instruction = RERANKER_INSTRUCTION if instruction is None else instruction
    return f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}"


def reranker_text(query: str, document: str, instruction: str | None = None) -> str:
    """The whole templated sequence the reranker reads (tokenize it without added special tokens)."""
    return RERANKER_PREFIX + reranker_body(query, document, instruction) + RERANKER_SUFFIX
