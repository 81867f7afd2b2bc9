"""The client-side Qdrant helpers against two real Qdrant engines: qdrant-client's local mode
(`QdrantClient(":memory:")`) and qdrant-edge (Qdrant's Rust engine in-process, a shard on disk).

A collection with a dense (MiniLM, real weights), a sparse (SPLADE) and a multi-vector (ColBERT)
named vector is created and filled from text only, through the helpers; text queries must find
the right neighbour, sparse and multi-vector rankings must equal scores computed by hand from the
sidecar's own vectors, query-then-rerank must order by the sidecar's /v1/score, and a sidecar that
is down or refuses must raise before anything is written.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import qdrant_edge as qe
from qdrant_client import QdrantClient, models

from remora.integrations.client import RemoraClient, RemoraError, RemoraUnavailable
from remora.integrations.qdrant import (
    Reranked,
    VectorSpec,
    create_collection,
    query_text,
    query_then_rerank,
    upsert_texts,
)
from remora.integrations.qdrant.edge import (
    edge_config,
    edge_query_text,
    edge_query_then_rerank,
    edge_upsert_texts,
)
from tests.integrations.conftest import DENSE, MULTIVECTOR, RERANKER, SPARSE
from tests.sidecar.server import free_port

pytestmark = pytest.mark.integration

DOCS = [
    "Remoras attach themselves to sharks with a suction disc on their heads.",
    "The central bank raised interest rates to fight inflation.",
    "Fresh basil, tomatoes and mozzarella make a classic Italian salad.",
    "The goalkeeper saved a penalty in the last minute of the football match.",
    "Python is a programming language popular for data science.",
]
# Query -> the one document it is about (real MiniLM weights make these unambiguous).
QUERIES = {
    "which fish clings to sharks?": 0,
    "monetary policy and inflation": 1,
    "a recipe with tomatoes and cheese": 2,
    "who won the soccer game": 3,
    "writing code for machine learning": 4,
}
SPECS = [
    VectorSpec("dense", DENSE),
    VectorSpec("sparse", SPARSE, "sparse"),
    VectorSpec("colbert", MULTIVECTOR, "multivector"),
]
COLLECTION = "docs"


class Engine:
    """One Qdrant engine behind the same few calls, so every test runs on both."""

    def __init__(self, kind: str, root: Path) -> None:
        self.kind, self.root = kind, root
        self.client: QdrantClient | None = None
        self.shard: qe.EdgeShard | None = None

    def create(self, remora: RemoraClient, specs: Sequence[VectorSpec] = SPECS) -> None:
        if self.kind == "local":
            self.client = QdrantClient(":memory:")
            create_collection(self.client, COLLECTION, remora, specs)
        else:
            self.shard = qe.EdgeShard.create(str(self.root / "shard"), edge_config(remora, specs))

    def upsert(self, remora: RemoraClient, texts: Sequence[str], specs: Sequence[VectorSpec] = SPECS) -> list[Any]:
        if self.client is not None:
            return upsert_texts(self.client, COLLECTION, remora, texts, specs, ids=list(range(len(texts))))
        assert self.shard is not None
        return edge_upsert_texts(self.shard, remora, texts, specs, ids=list(range(len(texts))))

    def query(self, remora: RemoraClient, text: str, spec: VectorSpec, limit: int = 10) -> list[tuple[str, float]]:
        """(payload text, score) of the hits, best first."""
        if self.client is not None:
            hits: Sequence[Any] = query_text(self.client, COLLECTION, remora, text, spec, limit=limit)
        else:
            assert self.shard is not None
            hits = edge_query_text(self.shard, remora, text, spec, limit=limit)
        return [(hit.payload["text"], hit.score) for hit in hits]

    def rerank(self, remora: RemoraClient, text: str, specs: Sequence[VectorSpec], **kwargs: Any) -> list[Reranked[Any]]:
        if self.client is not None:
            return query_then_rerank(self.client, COLLECTION, remora, text, specs, **kwargs)
        assert self.shard is not None
        return edge_query_then_rerank(self.shard, remora, text, specs, **kwargs)

    def count(self) -> int:
        if self.client is not None:
            return self.client.count(COLLECTION, exact=True).count
        assert self.shard is not None
        return self.shard.count(qe.CountRequest(exact=True))

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.shard is not None:
            self.shard.close()


@pytest.fixture(params=["local", "edge"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    found = Engine(request.param, tmp_path)
    yield found
    found.close()


@pytest.fixture
def filled(engine: Engine, remora: RemoraClient) -> Engine:
    engine.create(remora)
    assert engine.upsert(remora, DOCS) == list(range(len(DOCS)))
    assert engine.count() == len(DOCS)
    return engine


def test_collection_is_sized_from_the_sidecar(remora: RemoraClient) -> None:
    qdrant = QdrantClient(":memory:")
    create_collection(qdrant, COLLECTION, remora, SPECS)
    params = qdrant.get_collection(COLLECTION).config.params
    assert isinstance(params.vectors, dict) and params.sparse_vectors is not None
    assert params.vectors["dense"].size == 384 and params.vectors["dense"].multivector_config is None
    colbert = params.vectors["colbert"]
    assert colbert.size == 24 and colbert.multivector_config is not None
    assert colbert.multivector_config.comparator == models.MultiVectorComparator.MAX_SIM
    assert set(params.sparse_vectors) == {"sparse"}
    config = edge_config(remora, SPECS)
    assert config.vectors["dense"].size == 384 and config.vectors["colbert"].size == 24
    assert config.vectors["colbert"].multivector_config is not None and set(config.sparse_vectors) == {"sparse"}


def test_text_query_finds_the_right_neighbour(filled: Engine, remora: RemoraClient) -> None:
    for query, want in QUERIES.items():
        hits = filled.query(remora, query, SPECS[0], limit=2)
        assert hits[0][0] == DOCS[want], (query, hits)
        assert hits[0][1] > hits[1][1]


def _sparse_score(query: Any, doc: Any) -> float:
    weights = dict(zip(doc.indices, doc.values, strict=True))
    return float(sum(v * weights.get(i, 0.0) for i, v in zip(query.indices, query.values, strict=True)))


def _maxsim(query: list[list[float]], doc: list[list[float]]) -> float:
    # Qdrant's MaxSim over cosine: each query token's best match among the document's tokens, summed.
    q, d = np.array(query, dtype=np.float64), np.array(doc, dtype=np.float64)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return float((q @ d.T).max(axis=1).sum())


@pytest.mark.parametrize("kind", ["sparse", "multivector"])
def test_sparse_and_multivector_rank_as_computed_by_hand(filled: Engine, remora: RemoraClient, kind: str) -> None:
    spec = SPECS[1] if kind == "sparse" else SPECS[2]
    for query in list(QUERIES)[:3]:
        if kind == "sparse":
            q = remora.embed_sparse([query], model=SPARSE, input_type="query")[0]
            docs = remora.embed_sparse(DOCS, model=SPARSE)
            expected = {text: _sparse_score(q, doc) for text, doc in zip(DOCS, docs, strict=True)}
        else:
            qm = remora.embed_multivector([query], model=MULTIVECTOR, input_type="query")[0]
            dms = remora.embed_multivector(DOCS, model=MULTIVECTOR)
            expected = {text: _maxsim(qm, doc) for text, doc in zip(DOCS, dms, strict=True)}
        hits = filled.query(remora, query, spec)
        # Qdrant leaves out sparse vectors that share no index with the query; every other point is ranked.
        assert {text for text, _ in hits} == {text for text, score in expected.items() if score != 0.0}
        for text, score in hits:
            assert score == pytest.approx(expected[text], rel=1e-4, abs=1e-5), (query, text)
        by_hand = [expected[text] for text, _ in hits]
        assert by_hand == sorted(by_hand, reverse=True), (query, hits)


def test_query_then_rerank_orders_by_the_sidecar_score(filled: Engine, remora: RemoraClient) -> None:
    query = "which fish clings to sharks?"
    # Hybrid first stage (dense + sparse prefetches, fused by rank), a cross-encoder second stage.
    reranked = filled.rerank(remora, query, SPECS[:2], candidates=4, limit=3, reranker=RERANKER)
    assert len(reranked) == 3
    assert all(r.text == r.point.payload["text"] for r in reranked)
    # The candidates were the fused top 4: all four scored, the best three kept, best first.
    candidates = [r.text for r in filled.rerank(remora, query, SPECS[:2], candidates=4, limit=4, reranker=RERANKER)]
    assert len(set(candidates)) == 4
    scores = dict(zip(candidates, remora.score(query, candidates, model=RERANKER), strict=True))
    assert [r.text for r in reranked] == sorted(candidates, key=lambda t: -scores[t])[:3]
    assert [r.score for r in reranked] == pytest.approx([scores[r.text] for r in reranked], abs=1e-6)
    # Reranked by MiniLM's cosine (a meaningful score): the on-topic passage comes first.
    cosine = filled.rerank(remora, query, SPECS[2], candidates=5, limit=1, reranker=DENSE)
    assert [r.text for r in cosine] == [DOCS[0]]


def test_sidecar_failures_raise_and_write_nothing(engine: Engine, remora: RemoraClient) -> None:
    engine.create(remora)
    down = RemoraClient(f"http://127.0.0.1:{free_port()}", api_key=None, timeout=5)
    with pytest.raises(RemoraUnavailable) as unreachable:
        engine.upsert(down, DOCS)
    assert down.url in str(unreachable.value)
    assert engine.count() == 0
    # The first model answers, the second does not exist: still nothing written.
    broken = [SPECS[0], VectorSpec("sparse", "no-such-model", "sparse")]
    with pytest.raises(RemoraError) as refused:
        engine.upsert(remora, DOCS, broken)
    assert refused.value.status == 404 and "no-such-model" in str(refused.value)
    assert engine.count() == 0
    with pytest.raises(RemoraUnavailable):
        engine.query(down, "which fish clings to sharks?", SPECS[0])
