"""The second stage of query-then-rerank, for hits from either Qdrant client: read each hit's
text from its payload, score it against the query through the sidecar, keep the best."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from remora.integrations.client import RemoraClient


class Hit(Protocol):
    """What both qdrant-client's and qdrant-edge's ScoredPoint have."""

    @property
    def id(self) -> Any: ...

    @property
    def score(self) -> float: ...

    @property
    def payload(self) -> Mapping[str, Any] | None: ...


H = TypeVar("H", bound=Hit)


@dataclass(frozen=True)
class Reranked(Generic[H]):
    """A candidate after reranking: `score` is the sidecar's relevance, `point` the hit as the
    database returned it (its own `score` is the first-stage one)."""

    point: H
    score: float
    text: str

    @property
    def id(self) -> Any:
        return self.point.id


def rerank_hits(
    remora: RemoraClient,
    query: str,
    hits: Sequence[H],
    *,
    limit: int,
    model: str | None = None,
    text_field: str = "text",
) -> list[Reranked[H]]:
    """The `limit` best hits by the sidecar's /v1/score of (query, payload text), best first
    (ties keep the first-stage order). `model` None uses the sidecar's default reranker."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    texts: list[str] = []
    for hit in hits:
        text = (hit.payload or {}).get(text_field)
        if not isinstance(text, str):
            raise ValueError(
                f"point {hit.id!r} has no text in payload field {text_field!r} to rerank "
                "(upsert through upsert_texts, or pass text_field)"
            )
        texts.append(text)
    if not texts:
        return []
    scores = remora.score(query, texts, model=model)
    ranked = sorted(range(len(texts)), key=lambda i: -scores[i])
    return [Reranked(hits[i], scores[i], texts[i]) for i in ranked[:limit]]
