"""Text queries against a qdrant-client collection: the query embedded with each model's query
prompt, and query-then-rerank (Qdrant prefetches candidates, the sidecar's score orders them)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Unpack

from qdrant_client import QdrantClient, models

from remora.integrations.client import RemoraClient

from .points import to_qdrant
from .rerank import Reranked
from .shared import Named, QueryOptions, RerankOptions, nearest_text, rerank_text
from .vectors import VectorSpec, embed_query

RRF = models.FusionQuery(fusion=models.Fusion.RRF)


@dataclass(frozen=True)
class CollectionSearcher:
    """A qdrant-client collection as the `Searcher` the neutral query flows ask."""

    qdrant: QdrantClient
    collection_name: str

    def nearest(
        self, target: Named, limit: int, query_filter: models.Filter | None, with_payload: bool
    ) -> list[models.ScoredPoint]:
        using, vector = target
        response = self.qdrant.query_points(
            self.collection_name,
            query=to_qdrant(vector),
            using=using,
            limit=limit,
            query_filter=query_filter,
            with_payload=with_payload,
        )
        return list(response.points)

    def fused(
        self, targets: Sequence[Named], limit: int, query_filter: models.Filter | None
    ) -> list[models.ScoredPoint]:
        prefetch = [
            models.Prefetch(query=to_qdrant(vector), using=using, limit=limit, filter=query_filter)
            for using, vector in targets
        ]
        response = self.qdrant.query_points(
            self.collection_name, prefetch=prefetch, query=RRF, limit=limit, with_payload=True
        )
        return list(response.points)


def query_vector(
    remora: RemoraClient, text: str, spec: VectorSpec
) -> list[float] | models.SparseVector | list[list[float]]:
    """`text` as a query for the vector `spec` names (the model's query prompt applied)."""
    return to_qdrant(embed_query(remora, text, [spec])[spec.name])


def query_text(
    qdrant: QdrantClient,
    collection_name: str,
    remora: RemoraClient,
    text: str,
    spec: VectorSpec,
    **options: Unpack[QueryOptions[models.Filter]],
) -> list[models.ScoredPoint]:
    """The `limit` nearest points to `text` by the vector `spec` names; `options` (`limit`,
    `query_filter`, `with_payload`) as `QueryOptions` says."""
    return nearest_text(CollectionSearcher(qdrant, collection_name), remora, text, spec, options)


def query_then_rerank(
    qdrant: QdrantClient,
    collection_name: str,
    remora: RemoraClient,
    text: str,
    specs: VectorSpec | Sequence[VectorSpec],
    **options: Unpack[RerankOptions[models.Filter]],
) -> list[Reranked[models.ScoredPoint]]:
    """The `limit` best of `candidates` points, ordered by the sidecar's /v1/score.

    One spec: its nearest `candidates`. Several (hybrid, e.g. dense + sparse): each prefetches
    `candidates`, fused by reciprocal rank, and the fused top `candidates` are reranked.
    `options` (`candidates`, `limit`, `reranker`, `text_field`, `query_filter`) as
    `RerankOptions` says; `reranker` None uses the sidecar's default reranker.
    """
    return rerank_text(CollectionSearcher(qdrant, collection_name), remora, text, specs, options)
