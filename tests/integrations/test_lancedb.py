"""LanceDB with Remora as its embedding and rerank provider, on a real local LanceDB and a live sidecar.

Rows go in as text only and text queries come out: the vectors LanceDB stores are the sidecar's
document vectors, the ones it searches with are the query vectors, a table reopened in a new
process rebuilds its function from the schema metadata, ColBERT matrices are searched by MaxSim,
the reranker's `_relevance_score` is the sidecar's score, and a dead sidecar or an unknown model
is an error, never a row without a vector.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import lancedb
import numpy as np
import pyarrow as pa
import pytest
from lancedb.embeddings import TextEmbeddingFunction, get_registry, register
from lancedb.index import FTS
from lancedb.pydantic import LanceModel, MultiVector, Vector
from lancedb.query import LanceVectorQueryBuilder

from remora.integrations.lancedb import (
    RemoraEmbeddings,
    RemoraError,
    RemoraMultivectorEmbeddings,
    RemoraReranker,
    RemoraUnavailable,
)
from tests.integrations.conftest import DENSE, MULTIVECTOR, Sidecar
from tests.sidecar.server import ServerProcess, free_port

pytestmark = pytest.mark.integration

DOCS = [
    "Remoras attach themselves to sharks and ride along with them.",
    "The central bank raised interest rates by half a percentage point.",
    "Knead the dough, let it rise, then bake the bread at 220 degrees.",
    "The striker scored twice in the championship final.",
    "Volcanic eruptions throw ash and sulfur dioxide into the sky.",
    "The violinist played a Bach partita at the concert hall.",
]
QUERIES = {  # unambiguous with real MiniLM weights: query -> index of its passage
    "Which fish hitch a ride on sharks?": 0,
    "How do I make a loaf of bread?": 2,
    "Who won the football match?": 3,
}
KEY_VAR = "remora_lancedb_test_key"


def native(sidecar: Sidecar, texts: list[str], *, model: str, input_type: str = "document",
           output: str = "dense", **extra: Any) -> np.ndarray | list[np.ndarray]:
    """What the sidecar's /v1/encode answers, asked directly (not through the integration)."""
    body = {"model": model, "inputs": texts, "input_type": input_type, "outputs": [output], **extra}
    response = httpx.post(f"{sidecar.url}/v1/encode", json=body, timeout=60)
    assert response.status_code == 200, response.text
    data = response.json()
    if output == "dense":
        return np.array(data["embeddings"], dtype=np.float32)
    return [np.array(m, dtype=np.float32) for m in data["multivector"]]


def native_scores(sidecar: Sidecar, query: str, documents: list[str], model: str | None) -> np.ndarray:
    body: dict[str, Any] = {"query": query, "documents": documents}
    if model is not None:
        body["model"] = model
    response = httpx.post(f"{sidecar.url}/v1/score", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return np.array(response.json()["scores"], dtype=np.float32)


def dense_table(db: lancedb.DBConnection, function: RemoraEmbeddings, name: str = "docs") -> lancedb.table.Table:
    class Doc(LanceModel):
        id: int
        text: str = function.SourceField()
        vector: Vector(function.ndims()) = function.VectorField()  # type: ignore[valid-type]

    table = db.create_table(name, schema=Doc)
    table.add([{"id": i, "text": text} for i, text in enumerate(DOCS)])  # text only
    return table


def stored(table: lancedb.table.Table) -> pa.Table:
    return table.to_arrow().sort_by("id")


# -- dense ---------------------------------------------------------------------------------------


def test_text_goes_in_and_text_queries_come_out(sidecar: Sidecar, tmp_path: Path) -> None:
    function = get_registry().get("remora").create(url=sidecar.url, model=DENSE)
    assert isinstance(function, RemoraEmbeddings) and function.ndims() == 384
    table = dense_table(lancedb.connect(tmp_path), function)

    vectors = np.array(stored(table)["vector"].to_pylist(), dtype=np.float32)
    np.testing.assert_array_equal(vectors, native(sidecar, DOCS, model=DENSE))
    for query, want in QUERIES.items():
        hits = table.search(query).limit(2).to_list()
        assert hits[0]["id"] == want, (query, [h["text"] for h in hits])
        query_vector = native(sidecar, [query], model=DENSE, input_type="query")[0]
        np.testing.assert_array_equal(function.compute_query_embeddings(query)[0], query_vector)
        # LanceDB's default metric is squared L2: the distance proves which vector it searched with
        np.testing.assert_allclose(hits[0]["_distance"], ((query_vector - vectors[want]) ** 2).sum(), rtol=1e-4)

    config = json.loads(table.schema.metadata[b"embedding_functions"])
    assert config == [{"name": "remora", "model": {"url": sidecar.url, "model": DENSE},
                       "source_column": "text", "vector_column": "vector"}]


def test_dimensions_keep_the_first_dimensions(sidecar: Sidecar, tmp_path: Path) -> None:
    function = get_registry().get("remora").create(url=sidecar.url, model=DENSE, dimensions=128)
    assert function.ndims() == 128
    table = dense_table(lancedb.connect(tmp_path), function)
    assert table.schema.field("vector").type == pa.list_(pa.float32(), 128)
    vectors = np.array(stored(table)["vector"].to_pylist(), dtype=np.float32)
    np.testing.assert_array_equal(vectors, native(sidecar, DOCS, model=DENSE, dimensions=128))
    assert table.search("How do I make a loaf of bread?").limit(1).to_list()[0]["id"] == 2


REOPEN = """
import json, os, sys
import lancedb
from lancedb.embeddings import get_registry
import remora.integrations.lancedb  # registers "remora": nothing else tells LanceDB what it is

get_registry().set_var(sys.argv[3], os.environ["TEST_KEY"])  # a secret is never in the table
table = lancedb.connect(sys.argv[1]).open_table("docs")
function = table.embedding_functions["vector"].function
table.add([{"id": 99, "text": "Penguins waddle across the Antarctic ice."}])
hits = {q: table.search(q).limit(1).select(["id"]).to_list()[0]["id"] for q in json.loads(sys.argv[2])}
print(json.dumps({"class": type(function).__name__, "url": function.client.url, "model": function.model,
                  "key": function.api_key == os.environ["TEST_KEY"], "hits": hits, "rows": table.count_rows()}))
"""


def test_a_new_process_rebuilds_the_function_from_the_schema(
    sidecar: Sidecar, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REMORA_URL", sidecar.url)  # no url in the config: each process uses its own
    secret = "not-a-real-key-7f3a"
    get_registry().set_var(KEY_VAR, secret)
    with pytest.raises(ValueError, match="Sensitive key 'api_key'"):
        get_registry().get("remora").create(model=DENSE, api_key=secret)
    function = get_registry().get("remora").create(model=DENSE, api_key=f"$var:{KEY_VAR}")
    assert function.api_key == secret and secret not in repr(function)
    table = dense_table(lancedb.connect(tmp_path / "db"), function)
    metadata = table.schema.metadata[b"embedding_functions"].decode()
    assert json.loads(metadata)[0]["model"] == {"model": DENSE, "api_key": f"$var:{KEY_VAR}"}
    assert secret not in metadata

    queries = {**QUERIES, "birds that live on the ice in Antarctica": 99}
    script = tmp_path / "reopen.py"
    script.write_text(REOPEN)
    env = {**os.environ, "REMORA_URL": sidecar.url, "TEST_KEY": secret}
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "db"), json.dumps(list(queries)), KEY_VAR],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {"class": "RemoraEmbeddings", "url": sidecar.url, "model": DENSE, "key": True,
                    "hits": queries, "rows": len(DOCS) + 1}

    # the row the other process added as text holds the sidecar's document vector
    reopened = lancedb.connect(tmp_path / "db").open_table("docs")
    added = reopened.search().where("id = 99").to_list()[0]
    want = native(sidecar, ["Penguins waddle across the Antarctic ice."], model=DENSE)[0]
    np.testing.assert_array_equal(np.array(added["vector"], dtype=np.float32), want)


def test_the_key_reaches_a_guarded_sidecar_and_only_its_name_is_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "guarded-key-51c2"
    monkeypatch.delenv("REMORA_API_KEY", raising=False)
    monkeypatch.setenv("MY_REMORA_KEY", secret)
    get_registry().set_var(KEY_VAR, secret)
    guarded = ServerProcess(env={"REMORA_API_KEY": secret}, log=tmp_path / "server.log").wait_healthy()
    try:
        db = lancedb.connect(tmp_path / "db")
        query = "How do I make a loaf of bread?"
        for name, saved in (("by_var", {"api_key": f"$var:{KEY_VAR}"}), ("by_env", {"api_key_env": "MY_REMORA_KEY"})):
            function = get_registry().get("remora").create(url=guarded.url, **saved)  # no model: the default
            table = dense_table(db, function, name)
            assert table.search(query).limit(1).to_list()[0]["id"] == QUERIES[query]
            metadata = table.schema.metadata[b"embedding_functions"].decode()
            assert json.loads(metadata)[0]["model"] == {"url": guarded.url, **saved} and secret not in metadata
        keyless = get_registry().get("remora").create(url=guarded.url)
        started = time.monotonic()
        with pytest.raises(RemoraError) as caught:
            keyless.compute_query_embeddings_with_retry(query)
        assert (caught.value.status, caught.value.code) == (401, "UNAUTHORIZED")
        assert time.monotonic() - started < 1.0  # not retried
    finally:
        assert guarded.stop() == 0, guarded.logs()


# -- multivector ---------------------------------------------------------------------------------


def maxsim(query: np.ndarray, document: np.ndarray) -> float:
    """ColBERT's late interaction: each query vector's best cosine over the document, summed."""
    unit = lambda m: m / np.linalg.norm(m, axis=1, keepdims=True)  # noqa: E731
    return float((unit(query) @ unit(document).T).max(axis=1).sum())


def test_multivector_rows_are_searched_by_maxsim(sidecar: Sidecar, tmp_path: Path) -> None:
    colbert = get_registry().get("remora-multivector").create(url=sidecar.url, model=MULTIVECTOR)
    assert isinstance(colbert, RemoraMultivectorEmbeddings)
    longest = native(sidecar, [" ".join(["remora"] * 8192)], model=MULTIVECTOR, output="multivector")[0]
    assert (colbert.ndims(), colbert.dim()) == (len(longest), 24)

    class Doc(LanceModel):
        id: int
        text: str = colbert.SourceField()
        vector: MultiVector(colbert.dim()) = colbert.VectorField()  # type: ignore[valid-type]

    table = lancedb.connect(tmp_path).create_table("colbert", schema=Doc)
    table.add([{"id": i, "text": text} for i, text in enumerate(DOCS)])
    documents = native(sidecar, DOCS, model=MULTIVECTOR, output="multivector")
    for row, document in zip(stored(table)["vector"].to_pylist(), documents, strict=True):
        # every row holds ndims() vectors: the document's own, repeated in order
        assert len(document) < colbert.ndims()
        np.testing.assert_array_equal(np.array(row, dtype=np.float32),
                                      document[np.arange(colbert.ndims()) % len(document)])

    for query in QUERIES:
        q = native(sidecar, [query], model=MULTIVECTOR, input_type="query", output="multivector")[0]
        np.testing.assert_array_equal(colbert.compute_query_embeddings(query)[0], q)
        by_hand = {i: maxsim(q, document) for i, document in enumerate(documents)}
        search = table.search(query)
        assert isinstance(search, LanceVectorQueryBuilder)  # a text query on a function's column
        hits = search.distance_type("cosine").limit(len(DOCS)).to_list()
        assert [h["id"] for h in hits] == sorted(by_hand, key=lambda i: -by_hand[i])
        # LanceDB's multivector cosine distance: the sum over query vectors of (1 - best cosine)
        np.testing.assert_allclose([h["_distance"] for h in hits], [len(q) - by_hand[h["id"]] for h in hits],
                                   rtol=1e-5, atol=1e-5)
        # its default metric (squared L2) ranks unit vectors the same way
        assert [h["id"] for h in table.search(query).limit(len(DOCS)).to_list()] == [h["id"] for h in hits]


def test_multivector_rows_longer_than_vectors_per_row_keep_their_first_vectors(
    sidecar: Sidecar, tmp_path: Path
) -> None:
    colbert = get_registry().get("remora-multivector").create(url=sidecar.url, model=MULTIVECTOR, vectors_per_row=4)
    assert (colbert.ndims(), colbert.dim()) == (4, 24)

    class Doc(LanceModel):
        text: str = colbert.SourceField()
        vector: MultiVector(24) = colbert.VectorField()  # type: ignore[valid-type]

    table = lancedb.connect(tmp_path).create_table("short", schema=Doc)
    table.add([{"text": DOCS[0]}])
    document = native(sidecar, [DOCS[0]], model=MULTIVECTOR, output="multivector")[0]
    np.testing.assert_array_equal(np.array(table.to_arrow()["vector"][0].as_py(), dtype=np.float32), document[:4])


@register("remora-test-unpadded")
class _Unpadded(TextEmbeddingFunction):
    """LanceDB's own contract, without Remora: one matrix of `len(text)` 2-d vectors per text."""

    def ndims(self) -> int:
        return 2

    def generate_embeddings(self, texts: Any, *args: Any, **kwargs: Any) -> list[Any]:
        return [[[1.0, 0.0]] * len(text) for text in texts]


def test_lancedb_still_nulls_multivectors_whose_length_is_not_ndims(tmp_path: Path) -> None:
    """Why RemoraMultivectorEmbeddings stores exactly ndims() vectors a row: when this fails, LanceDB
    keeps matrices of any length and the padding can go."""
    function = _Unpadded.create()

    class Doc(LanceModel):
        text: str = function.SourceField()
        vector: MultiVector(2) = function.VectorField()  # type: ignore[valid-type]

    table = lancedb.connect(tmp_path).create_table("unpadded", schema=Doc)
    table.add([{"text": "ab"}, {"text": "abc"}])
    assert [row["vector"] for row in table.to_arrow().to_pylist()] == [[[1.0, 0.0]] * 2, None]


# -- rerank --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ranked(sidecar: Sidecar, tmp_path_factory: pytest.TempPathFactory) -> lancedb.table.Table:
    """DOCS embedded with MiniLM, with a native (offline) full-text index on the text."""
    function = get_registry().get("remora").create(url=sidecar.url, model=DENSE)
    table = dense_table(lancedb.connect(tmp_path_factory.mktemp("ranked")), function)
    table.create_index("text", config=FTS())
    return table


def assert_reranked(sidecar: Sidecar, query: str, hits: list[dict[str, Any]], model: str | None) -> None:
    scores = [h["_relevance_score"] for h in hits]
    want = native_scores(sidecar, query, [h["text"] for h in hits], model)
    np.testing.assert_array_equal(np.array(scores, dtype=np.float32), want)  # float32, as LanceDB's rerankers
    assert scores == sorted(scores, reverse=True)


def test_hybrid_search_is_reranked_by_the_sidecar(sidecar: Sidecar, ranked: lancedb.table.Table) -> None:
    reranker = RemoraReranker(DENSE, url=sidecar.url)  # cosine of real MiniLM: a meaningful order
    query = "Which fish hitch a ride on sharks?"
    hits = ranked.search(query, query_type="hybrid").rerank(reranker).limit(len(DOCS)).to_list()
    assert {h["id"] for h in hits} == set(range(len(DOCS)))  # the vector and FTS candidates, merged
    assert hits[0]["id"] == QUERIES[query]
    assert_reranked(sidecar, query, hits, DENSE)
    assert not {"_distance", "_score"} & set(hits[0])

    every = RemoraReranker(DENSE, url=sidecar.url, return_score="all")
    hits = ranked.search(query, query_type="hybrid").rerank(every).limit(3).to_list()
    assert len(hits) == 3 and {"_distance", "_score", "_relevance_score"} <= set(hits[0])
    assert_reranked(sidecar, query, hits, DENSE)


def test_vector_search_is_reranked_by_the_sidecar(sidecar: Sidecar, ranked: lancedb.table.Table) -> None:
    query = "How do I make a loaf of bread?"
    top = {h["id"] for h in ranked.search(query).limit(3).to_list()}
    hits = ranked.search(query).limit(3).rerank(RemoraReranker(DENSE, url=sidecar.url)).to_list()
    assert {h["id"] for h in hits} == top and hits[0]["id"] == QUERIES[query]
    assert_reranked(sidecar, query, hits, DENSE)
    assert "_distance" not in hits[0]
    hits = ranked.search(query).limit(3).rerank(RemoraReranker(DENSE, url=sidecar.url, return_score="all")).to_list()
    assert "_distance" in hits[0]


def test_full_text_search_is_reranked_by_the_default_reranker(sidecar: Sidecar, ranked: lancedb.table.Table) -> None:
    query = "the bread and the bank"
    reranker = RemoraReranker(column="text", url=sidecar.url)  # no model: the sidecar's default_reranker
    hits = ranked.search(query, query_type="fts").rerank(reranker).limit(5).to_list()
    assert {h["id"] for h in hits} == {1, 2}  # the FTS matches, whatever their new order
    assert_reranked(sidecar, query, hits, None)
    assert "_score" not in hits[0]


# -- errors --------------------------------------------------------------------------------------


def broken_table(db: lancedb.DBConnection, function: RemoraEmbeddings) -> lancedb.table.Table:
    class Doc(LanceModel):  # an explicit width: defining it asks the sidecar nothing
        text: str = function.SourceField()
        vector: Vector(384) = function.VectorField()  # type: ignore[valid-type]

    return db.create_table("broken", schema=Doc)


def test_a_closed_port_raises_and_adds_nothing(sidecar: Sidecar, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    function = get_registry().get("remora").create(url=url, model=DENSE, max_retries=0)
    table = broken_table(lancedb.connect(tmp_path), function)
    # LanceDB reads the embedded rows through Arrow's C stream, which hands a Python error back
    # as a RuntimeError carrying its message: the type is lost, the explanation is not
    with pytest.raises(RuntimeError, match=rf"Remora sidecar {url}/v1/encode: unreachable"):
        table.add([{"text": "a passage"}])
    assert table.count_rows() == 0
    with pytest.raises(RemoraUnavailable, match=url):
        table.search("a question").to_list()
    with pytest.raises(RemoraUnavailable):
        function.ndims()

    patient = get_registry().get("remora").create(url=url, model=DENSE)  # the default: 2 retries
    started = time.monotonic()
    with pytest.raises(RemoraUnavailable):
        patient.compute_query_embeddings_with_retry("a question")
    assert time.monotonic() - started >= 1.4  # 0.5 s, then 1 s


def test_an_unknown_model_raises_and_adds_nothing(sidecar: Sidecar, tmp_path: Path) -> None:
    function = get_registry().get("remora").create(url=sidecar.url, model="no-such-model")
    table = broken_table(lancedb.connect(tmp_path), function)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="404 MODEL_NOT_FOUND: model 'no-such-model' is not registered"):
        table.add([{"text": "a passage"}])
    assert time.monotonic() - started < 1.0  # a permanent error is not retried
    assert table.count_rows() == 0
    with pytest.raises(RemoraError) as caught:
        table.search("a question").to_list()
    assert (caught.value.status, caught.value.code) == (404, "MODEL_NOT_FOUND")

    colbert = get_registry().get("remora-multivector").create(url=sidecar.url, model="no-such-model")
    with pytest.raises(RemoraError, match="MODEL_NOT_FOUND"):
        colbert.dim()


def test_a_failing_reranker_fails_the_search(sidecar: Sidecar, ranked: lancedb.table.Table) -> None:
    with pytest.raises(RemoraError, match="MODEL_NOT_FOUND"):
        ranked.search("bread", query_type="hybrid").rerank(RemoraReranker("no-such-model", url=sidecar.url)).to_list()
    closed = RemoraReranker(DENSE, url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(RemoraUnavailable):
        ranked.search("bread").rerank(closed).to_list()
    with pytest.raises(ValueError, match="no column 'body'"):
        ranked.search("bread").rerank(RemoraReranker(DENSE, column="body", url=sidecar.url)).to_list()
