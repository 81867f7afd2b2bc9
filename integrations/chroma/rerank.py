"""Rerank Chroma query results through a Remora sidecar.

Chroma has no reranker registry, so reranking is the caller's step: take the candidates a vector
query returned, score each document against the query text with the sidecar's `/v1/score` (a
cross-encoder, or cosine for an embedding model), and order them best first:

    hits = query_and_rerank(collection, "which fish ride on sharks?", candidates=20, top_n=5)
    for id_, document, score in zip(hits.ids, hits.documents, hits.scores):
        ...
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from chromadb.api.models.Collection import Collection

from remora.integrations.client import RemoraClient


@dataclass(frozen=True)
class Reranked:
    """Reranked candidates, best first; `distances` are the vector query's, kept for reference."""

    ids: list[str]
    documents: list[str]
    scores: list[float]
    metadatas: list[Mapping[str, Any] | None]
    distances: list[float | None]

    def __len__(self) -> int:
        return len(self.ids)

    def head(self, n: int) -> Reranked:
        """The best `n`."""
        return Reranked(self.ids[:n], self.documents[:n], self.scores[:n], self.metadatas[:n], self.distances[:n])


def rerank(
    query: str,
    result: Mapping[str, Any],
    *,
    top_k: int | None = None,
    query_index: int = 0,
    model: str | None = None,
    client: RemoraClient | None = None,
) -> Reranked:
    """Rerank the first `top_k` candidates of one query in `result` (all when None), best first.

    `result` is what `collection.query(...)` returned (nested lists: one per query text, pick one
    with `query_index`) or `collection.get(...)` returned (flat lists). It must include documents:
    the reranker reads the text. `model` is the sidecar's scoring model (None: its default
    reranker); `client` defaults to one for `$REMORA_URL`. Ties keep the vector order.
    """
    ids = _column(result, "ids", query_index)
    if ids is None:
        raise ValueError("the result has no 'ids'")
    documents = _column(result, "documents", query_index)
    if documents is None:
        raise ValueError("the result has no documents: query with include=['documents', ...] to rerank")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    count = len(ids) if top_k is None else min(top_k, len(ids))
    metadatas = _column(result, "metadatas", query_index) or [None] * len(ids)
    distances = _column(result, "distances", query_index) or [None] * len(ids)
    ids, documents, metadatas, distances = ids[:count], documents[:count], metadatas[:count], distances[:count]
    for i, document in enumerate(documents):
        if not isinstance(document, str):
            raise ValueError(f"candidate {ids[i]!r} has no document text to rerank")
    if not ids:
        return Reranked([], [], [], [], [])

    owned = client is None
    scorer = client or RemoraClient()
    try:
        scores = scorer.score(query, documents, model=model)
    finally:
        if owned:
            scorer.close()
    order = sorted(range(len(ids)), key=lambda i: -scores[i])  # stable: ties keep the vector order
    return Reranked(
        ids=[ids[i] for i in order],
        documents=[documents[i] for i in order],
        scores=[scores[i] for i in order],
        metadatas=[metadatas[i] for i in order],
        distances=[distances[i] for i in order],
    )


def query_and_rerank(
    collection: Collection,
    query: str,
    *,
    candidates: int = 20,
    top_n: int | None = None,
    where: Mapping[str, Any] | None = None,
    model: str | None = None,
    client: RemoraClient | None = None,
) -> Reranked:
    """Query `collection` by text for `candidates` neighbours, rerank them, keep the best `top_n`.

    The query is embedded by the collection's own embedding function (e.g. the persisted
    `RemoraEmbeddingFunction`); only the rerank goes through `client`.
    """
    result = collection.query(
        query_texts=[query],
        n_results=candidates,
        where=dict(where) if where is not None else None,
        include=["documents", "metadatas", "distances"],
    )
    ranked = rerank(query, result, model=model, client=client)
    return ranked if top_n is None else ranked.head(top_n)


def _column(result: Mapping[str, Any], key: str, query_index: int) -> list[Any] | None:
    """One query's column: the `query_index`-th list of a query() result, or a get() result's flat list."""
    column = result.get(key)
    if column is None:
        return None
    if not isinstance(column, Sequence) or isinstance(column, str):
        raise ValueError(f"the result's {key!r} is not a list")
    ids = result.get("ids") or []
    if not (ids and not isinstance(ids[0], str)):  # flat ids: a get() result
        return list(column)
    if not 0 <= query_index < len(column):
        raise ValueError(f"query_index {query_index} is out of range: the result holds {len(column)} queries")
    one = column[query_index]
    return list(one) if one is not None else None
