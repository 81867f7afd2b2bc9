"""Remora as Qdrant's embedding / rerank provider, from the client side (qdrant-client; no torch).

Describe a collection's named vectors once, then work in text:

    from qdrant_client import QdrantClient
    from remora.integrations.client import RemoraClient
    from remora.integrations.qdrant import VectorSpec, create_collection, upsert_texts, query_then_rerank

    remora, qdrant = RemoraClient("http://127.0.0.1:8080"), QdrantClient(":memory:")
    specs = [VectorSpec("dense", "minilm"), VectorSpec("sparse", "splade", "sparse")]
    create_collection(qdrant, "docs", remora, specs)
    upsert_texts(qdrant, "docs", remora, ["Remoras ride on sharks.", "Stocks rose."], specs)
    best = query_then_rerank(qdrant, "docs", remora, "fish on sharks", specs, limit=1)

The server-side alternative, where Qdrant itself calls the sidecar for `models.Document`, is the
sidecar's /v1/qdrant/inference route (sidecar/routes/qdrant.py). qdrant-edge helpers live in
`remora.integrations.qdrant.edge` (qdrant-edge-py is not part of the `qdrant` extra).
"""

from remora.integrations.qdrant.points import (
    collection_vectors,
    create_collection,
    text_points,
    to_qdrant,
    upsert_texts,
)
from remora.integrations.qdrant.rerank import Reranked, rerank_hits
from remora.integrations.qdrant.search import query_text, query_then_rerank, query_vector
from remora.integrations.qdrant.vectors import (
    Kind,
    Vector,
    VectorSpec,
    embed_named,
    embed_query,
    vector_sizes,
)

__all__ = [
    "Kind",
    "Reranked",
    "Vector",
    "VectorSpec",
    "collection_vectors",
    "create_collection",
    "embed_named",
    "embed_query",
    "query_text",
    "query_then_rerank",
    "query_vector",
    "rerank_hits",
    "text_points",
    "to_qdrant",
    "upsert_texts",
    "vector_sizes",
]
