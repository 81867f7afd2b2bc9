"""The same helpers for qdrant-edge (`qdrant-edge-py`: Qdrant's engine in-process, one shard
on local disk), whose API differs from qdrant-client's: `EdgeConfig` instead of
create_collection, `UpdateOperation.upsert_points` instead of upsert, `Query.Nearest` requests.

    from qdrant_edge import EdgeShard
    shard = EdgeShard.create("./shard", edge_config(remora, specs))
    edge_upsert_texts(shard, remora, ["a passage", "another"], specs)
    hits = edge_query_text(shard, remora, "a question", specs[0], limit=5)

Imports qdrant_edge, which the `qdrant` extra does not install: `pip install qdrant-edge-py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Unpack

import qdrant_edge as qe

from remora.integrations.client import RemoraClient, SparseVector

from .rerank import Reranked
from .shared import (
    Named,
    PointOptions,
    QueryOptions,
    RerankOptions,
    TextPoint,
    embed_points,
    nearest_text,
    rerank_text,
    vector_params,
    write_points,
)
from .vectors import PointId, Vector, VectorSpec

RRF_K = 60  # the usual reciprocal-rank constant (Qdrant's server default as well)


def to_edge(vector: Vector) -> list[float] | qe.SparseVector | list[list[float]]:
    """A sidecar vector as qdrant-edge takes it."""
    if isinstance(vector, SparseVector):
        return qe.SparseVector(vector.indices, vector.values)
    return vector


def edge_point(point: TextPoint) -> qe.Point:
    """A TextPoint as qdrant-edge's Point."""
    return qe.Point(point.id, {name: to_edge(v) for name, v in point.vectors.items()}, point.payload)


@dataclass(frozen=True)
class ShardSearcher:
    """A qdrant-edge shard as the `Searcher` the neutral query flows ask."""

    shard: qe.EdgeShard

    def nearest(
        self, target: Named, limit: int, query_filter: qe.Filter | None, with_payload: bool
    ) -> list[qe.ScoredPoint]:
        using, vector = target
        query = qe.Query.Nearest(to_edge(vector), using=using)
        return self.shard.query(
            qe.QueryRequest(limit=limit, query=query, filter=query_filter, with_payload=with_payload)
        )

    def fused(self, targets: Sequence[Named], limit: int, query_filter: qe.Filter | None) -> list[qe.ScoredPoint]:
        prefetches = [
            qe.Prefetch(limit=limit, query=qe.Query.Nearest(to_edge(vector), using=using), filter=query_filter)
            for using, vector in targets
        ]
        # The stub's ScoringQueryType names Fusion, not its Rrf class, which is what the engine takes.
        fusion: Any = qe.Fusion.Rrf(k=RRF_K)
        return self.shard.query(
            qe.QueryRequest(limit=limit, prefetches=prefetches, query=fusion, with_payload=True)
        )


def edge_config(
    remora: RemoraClient,
    specs: Sequence[VectorSpec],
    *,
    distance: qe.Distance = qe.Distance.Cosine,
    **kwargs: Any,
) -> qe.EdgeConfig:
    """A shard configuration with one named vector per spec (sizes from the sidecar): dense
    with `distance`, multi-vector with MaxSim, sparse by dot product. `kwargs` go to EdgeConfig."""

    def params(size: int, multivector: bool) -> qe.EdgeVectorParams:
        maxsim = qe.MultiVectorConfig(qe.MultiVectorComparator.MaxSim) if multivector else None
        return qe.EdgeVectorParams(size=size, distance=distance, multivector_config=maxsim)

    dense, sparse = vector_params(remora, specs, params, qe.EdgeSparseVectorParams)
    return qe.EdgeConfig(vectors=dense or None, sparse_vectors=sparse or None, **kwargs)


def edge_points(
    remora: RemoraClient, texts: Sequence[str], specs: Sequence[VectorSpec], **options: Unpack[PointOptions]
) -> list[qe.Point]:
    """One qdrant-edge Point per text with every spec's vector and the text in its payload;
    `options` (`ids`, `payloads`, `text_field`) as `PointOptions` says."""
    return [edge_point(point) for point in embed_points(remora, texts, specs, **options)]


def edge_upsert_texts(
    shard: qe.EdgeShard,
    remora: RemoraClient,
    texts: Sequence[str],
    specs: Sequence[VectorSpec],
    **options: Unpack[PointOptions],
) -> list[PointId]:
    """Embed `texts` and upsert them into the shard; the ids written. Every vector is computed
    before the write, so a failing sidecar raises `RemoraError` and writes nothing."""

    def write(points: list[TextPoint]) -> None:
        shard.update(qe.UpdateOperation.upsert_points([edge_point(point) for point in points]))

    return write_points(remora, texts, specs, write, **options)


def edge_query_text(
    shard: qe.EdgeShard,
    remora: RemoraClient,
    text: str,
    spec: VectorSpec,
    **options: Unpack[QueryOptions[qe.Filter]],
) -> list[qe.ScoredPoint]:
    """The `limit` nearest points to `text` by the vector `spec` names (query prompt applied);
    `options` (`limit`, `query_filter`, `with_payload`) as `QueryOptions` says."""
    return nearest_text(ShardSearcher(shard), remora, text, spec, options)


def edge_query_then_rerank(
    shard: qe.EdgeShard,
    remora: RemoraClient,
    text: str,
    specs: VectorSpec | Sequence[VectorSpec],
    **options: Unpack[RerankOptions[qe.Filter]],
) -> list[Reranked[qe.ScoredPoint]]:
    """As search.query_then_rerank: prefetch `candidates` (several specs: fused by reciprocal
    rank), then order them by the sidecar's /v1/score and keep `limit`; `options` as
    `RerankOptions` says."""
    return rerank_text(ShardSearcher(shard), remora, text, specs, options)
