"""Chroma with Remora as its embedding provider, against a live sidecar and real Chroma.

A collection created with `RemoraEmbeddingFunction` takes documents as text only, answers text
queries with the right neighbours (real MiniLM weights), and is reopened in a fresh Python process
with no embedding function passed: Chroma rebuilds ours from the persisted config. Both through
`PersistentClient` and through the real `chroma run` server with `HttpClient`. Reranking follows
the sidecar's /v1/score, and a sidecar that is down or refuses surfaces as a RemoraError out of
`add` / `query` with nothing written.

Chroma 1.5.9's local modes (PersistentClient and the single-node `chroma run`) refuse sparse vector
indexes ("Sparse vector indexing is not enabled in local") and `Search`; so the sparse function is
tested on its contract and on Chroma's own schema serialisation, the path a distributed Chroma
uses to rebuild it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import chromadb
import httpx
import numpy as np
import pytest
from chromadb import Schema, SparseVectorIndexConfig
from chromadb.api.types import SparseVector, validate_embedding_function, validate_sparse_embedding_function
from chromadb.utils.embedding_functions import known_embedding_functions, sparse_known_embedding_functions

from remora.integrations.chroma import (
    RemoraEmbeddingFunction,
    RemoraError,
    RemoraSparseEmbeddingFunction,
    RemoraUnavailable,
    query_and_rerank,
    rerank,
)
from tests.helpers import write_json
from tests.integrations.conftest import DENSE, RERANKER, SPARSE, Sidecar
from tests.sidecar.server import ServerProcess, free_port

pytestmark = pytest.mark.integration

DOCS = {
    "remora": "Remoras are fish that attach themselves to sharks and whales with a suction disc.",
    "bread": "Mash three ripe bananas, stir in flour and butter, and bake the loaf for an hour.",
    "market": "The stock market closed higher on Tuesday as bank shares rallied.",
    "volcano": "The volcano erupted overnight, sending lava and a column of ash over the island.",
    "football": "The striker scored twice in the second half and her team won the cup final.",
    "python": "Python lists are dynamic arrays, so appending an item takes amortised constant time.",
}
QUERIES = {  # query text -> the one document it is about
    "which fish hitchhike on sharks?": "remora",
    "how do I make banana bread?": "bread",
    "an eruption of molten rock": "volcano",
    "who won the soccer match?": "football",
}
NEW_DOC = "Penguins huddle together to stay warm through the Antarctic winter."
NEW_QUERY = "birds keeping warm in the cold south"

# Reopens a collection in a fresh interpreter with NO embedding function passed: only the
# registration that importing remora.integrations.chroma performs, and the persisted config.
REOPEN = """
import json, sys
import chromadb
from remora.integrations.chroma import RemoraEmbeddingFunction

spec = json.loads(sys.argv[1])
if "path" in spec:
    client = chromadb.PersistentClient(spec["path"])
else:
    client = chromadb.HttpClient(host="127.0.0.1", port=spec["port"])
collection = client.get_collection(spec["name"])
function = collection.configuration["embedding_function"]
found = collection.query(query_texts=spec["queries"], n_results=2)
collection.add(ids=["new"], documents=[spec["new_doc"]])
print(json.dumps({
    "class": f"{type(function).__module__}.{type(function).__qualname__}",
    "is_remora": isinstance(function, RemoraEmbeddingFunction),
    "config": function.get_config(),
    "space": collection.configuration["hnsw"]["space"],
    "ids": found["ids"],
    "distances": found["distances"],
    "new": collection.query(query_texts=[spec["new_query"]], n_results=1)["ids"][0],
    "count": collection.count(),
}))
"""


def reopen(spec: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """Run REOPEN in a new Python process and return what it printed."""
    environ = {**os.environ, "ANONYMIZED_TELEMETRY": "False", **env}
    done = subprocess.run([sys.executable, "-c", REOPEN, json.dumps(spec)], env=environ, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def fill(collection: chromadb.Collection) -> None:
    collection.add(ids=list(DOCS), documents=list(DOCS.values()))  # text only: no vectors by hand


def nearest(collection: chromadb.Collection) -> dict[str, Any]:
    found = collection.query(query_texts=list(QUERIES), n_results=2)
    assert [ids[0] for ids in found["ids"]] == list(QUERIES.values())
    return dict(found)


def native(sidecar: Sidecar, route: str, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(f"{sidecar.url}{route}", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


# -- the dense function over PersistentClient -------------------------------------------------


def test_persistent_collection_is_rebuilt_in_a_fresh_process(sidecar: Sidecar, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # url=None is persisted as None: every process that opens the collection follows $REMORA_URL.
    monkeypatch.setenv("REMORA_URL", sidecar.url)
    function = RemoraEmbeddingFunction(DENSE)
    assert not function.is_legacy() and known_embedding_functions["remora"] is RemoraEmbeddingFunction
    validate_embedding_function(function)  # Chroma's check of the `__call__(self, input)` signature
    path = tmp_path / "chroma"
    client = chromadb.PersistentClient(str(path))
    collection = client.create_collection("docs", embedding_function=function)
    fill(collection)
    before = nearest(collection)

    persisted = collection.configuration_json["embedding_function"]
    assert persisted == {"type": "known", "name": "remora", "config": function.get_config()}
    assert persisted["config"]["url"] is None and persisted["config"]["model"] == DENSE
    assert collection.configuration_json["hnsw"]["space"] == "cosine"  # default_space of unit vectors

    # What Chroma stored equals the sidecar's vectors for the documents (document mode).
    stored = collection.get(ids=list(DOCS), include=["embeddings"])["embeddings"]
    want = native(sidecar, "/v1/encode", {"model": DENSE, "inputs": list(DOCS.values()), "input_type": "document"})
    np.testing.assert_allclose(np.asarray(stored), np.asarray(want["embeddings"]), atol=1e-6, rtol=0)
    query = function.embed_query(["which fish hitchhike on sharks?"])
    want = native(sidecar, "/v1/encode", {"model": DENSE, "inputs": ["which fish hitchhike on sharks?"],
                                          "input_type": "query"})
    np.testing.assert_array_equal(np.asarray(query), np.asarray(want["embeddings"], dtype=np.float32))

    after = reopen({"path": str(path), "name": "docs", "queries": list(QUERIES), "new_doc": NEW_DOC,
                    "new_query": NEW_QUERY}, {"REMORA_URL": sidecar.url})
    assert after["is_remora"], after["class"]
    assert after["class"] == "remora.integrations.chroma.functions.RemoraEmbeddingFunction"
    assert after["config"] == function.get_config() and after["space"] == "cosine"
    assert after["ids"] == before["ids"]
    np.testing.assert_allclose(after["distances"], before["distances"], atol=1e-5)
    assert after["new"] == ["new"] and after["count"] == len(DOCS) + 1  # it embeds documents too


def test_configuration_updates_keep_the_vectors_comparable(sidecar: Sidecar, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REMORA_TEST_KEY", "s3cret")
    function = RemoraEmbeddingFunction(DENSE, url=sidecar.url, api_key_env_var="REMORA_TEST_KEY")
    assert function.client.api_key == "s3cret"  # read from the named variable...
    client = chromadb.PersistentClient(str(tmp_path / "chroma"))
    collection = client.create_collection("config", embedding_function=function)
    assert "s3cret" not in json.dumps(collection.configuration_json)  # ...and never persisted
    assert collection.configuration_json["embedding_function"]["config"]["api_key_env_var"] == "REMORA_TEST_KEY"
    with pytest.warns(UserWarning, match="not persisted"):
        direct = RemoraEmbeddingFunction(DENSE, url=sidecar.url, api_key="also-secret")
    assert "also-secret" not in json.dumps(direct.get_config()) and direct.client.api_key == "also-secret"

    with pytest.raises(ValueError, match="'model' cannot change"):  # Chroma calls validate_config_update
        collection.modify(configuration={"embedding_function": RemoraEmbeddingFunction("other", url=sidecar.url)})
    with pytest.raises(ValueError, match="'dimensions' cannot change"):
        collection.modify(configuration={"embedding_function": RemoraEmbeddingFunction(DENSE, dimensions=64)})
    moved = "http://127.0.0.1:9"  # the sidecar may move: the URL is not part of the vector space
    collection.modify(configuration={"embedding_function": RemoraEmbeddingFunction(DENSE, url=moved)})
    assert client.get_collection("config").configuration_json["embedding_function"]["config"]["url"] == moved

    for bad, message in [
        ({"model": DENSE, "api_key": "x"}, "must not hold an API key"),
        ({"model": DENSE, "prompt": "query: "}, "unknown keys"),
        ({"url": sidecar.url}, "needs 'model'"),
        ({"model": DENSE, "dimensions": "64"}, "'dimensions' must be int"),
        ({"model": DENSE, "dimensions": True}, "'dimensions' must be int"),
        ({"model": DENSE, "dimensions": 0}, "at least 1"),
        ({"model": DENSE, "normalize": 1}, "'normalize' must be bool"),
    ]:
        with pytest.raises(ValueError, match=message):
            RemoraEmbeddingFunction.validate_config(bad)
    with pytest.raises(ValueError):
        RemoraEmbeddingFunction(DENSE, dimensions=-1)
    raw = RemoraEmbeddingFunction(DENSE, normalize=False)
    assert raw.default_space() == "ip" and RemoraEmbeddingFunction.build_from_config(raw.get_config()).normalize is False


@pytest.fixture(scope="module")
def prompted(sidecar: Sidecar, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second sidecar serving the same MiniLM and SPLADE weights with query and document prompts,
    so query mode and document mode give different vectors (the shared registry has no prompts)."""
    if not sidecar.dirs:
        pytest.skip("REMORA_URL names an external sidecar: its registry has no prompted models")
    root = tmp_path_factory.mktemp("prompted-sidecar")
    prompts = {"query_prompt": "query: ", "document_prompt": "passage: "}
    write_json(root / "models.json", {"default_model": "minilm-q", "models": [
        {"id": "minilm-q", "path": str(sidecar.dirs[DENSE]), **prompts},
        {"id": "splade-q", "path": str(sidecar.dirs[SPARSE]), **prompts},
    ]})
    server = ServerProcess(config=root / "models.json", log=root / "server.log").wait_healthy()
    try:
        yield server.url
    finally:
        assert server.stop() == 0, server.logs()


def test_documents_and_queries_are_embedded_in_their_own_mode(prompted: str) -> None:
    texts = ["Remoras ride on sharks.", "which fish ride on sharks?"]

    def encode(model: str, mode: str, outputs: list[str]) -> list[Any]:
        body = {"model": model, "inputs": texts, "input_type": mode, "outputs": outputs}
        response = httpx.post(f"{prompted}/v1/encode", json=body, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()["embeddings" if outputs == ["dense"] else "sparse"]

    dense = RemoraEmbeddingFunction("minilm-q", url=prompted)
    documents, queries = np.asarray(dense(texts)), np.asarray(dense.embed_query(texts))
    np.testing.assert_array_equal(documents, np.asarray(encode("minilm-q", "document", ["dense"]), dtype=np.float32))
    np.testing.assert_array_equal(queries, np.asarray(encode("minilm-q", "query", ["dense"]), dtype=np.float32))
    assert np.abs(documents - queries).max() > 1e-3  # the prompts made a difference

    sparse = RemoraSparseEmbeddingFunction("splade-q", url=prompted)
    for mode, vectors in [("document", sparse(texts)), ("query", sparse.embed_query(texts))]:
        want = encode("splade-q", mode, ["sparse"])
        assert [(v.indices, v.values) for v in vectors] == [(w["indices"], w["values"]) for w in want]
    assert [v.indices for v in sparse(texts)] != [v.indices for v in sparse.embed_query(texts)]


# -- the dense function over the real `chroma run` server -------------------------------------


@dataclass(frozen=True)
class ChromaServer:
    port: int
    log: Path


def chroma_executable() -> str:
    beside = Path(sys.executable).with_name("chroma")  # the venv's script, installed by chromadb
    found = str(beside) if beside.exists() else shutil.which("chroma")
    assert found, "the `chroma` command (installed by chromadb) is not on this Python's path"
    return found


@pytest.fixture(scope="module")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChromaServer]:
    root = tmp_path_factory.mktemp("chroma-server")
    port, log = free_port(), root / "chroma.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [chroma_executable(), "run", "--path", str(root / "data"), "--host", "127.0.0.1", "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "ANONYMIZED_TELEMETRY": "False"},
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"chroma run exited with {proc.returncode}: {log.read_text()[-3000:]}"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"chroma run not answering: {log.read_text()[-3000:]}"
            time.sleep(0.2)
        yield ChromaServer(port, log)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_chroma_server_collection_is_rebuilt_in_a_fresh_client(sidecar: Sidecar, chroma_server: ChromaServer) -> None:
    # An explicit URL is persisted as given; the fresh client's $REMORA_URL points at a closed
    # port, so its queries only succeed if the function was rebuilt from the stored config.
    function = RemoraEmbeddingFunction(DENSE, url=sidecar.url)
    client = chromadb.HttpClient(host="127.0.0.1", port=chroma_server.port)
    collection = client.create_collection("docs-http", embedding_function=function)
    fill(collection)
    before = nearest(collection)
    assert collection.configuration_json["embedding_function"]["config"]["url"] == sidecar.url

    after = reopen({"port": chroma_server.port, "name": "docs-http", "queries": list(QUERIES), "new_doc": NEW_DOC,
                    "new_query": NEW_QUERY}, {"REMORA_URL": f"http://127.0.0.1:{free_port()}"})
    assert after["is_remora"], after["class"]
    assert after["config"] == function.get_config() and after["space"] == "cosine"
    assert after["ids"] == before["ids"]
    np.testing.assert_allclose(after["distances"], before["distances"], atol=1e-5)
    assert after["new"] == ["new"] and client.get_collection("docs-http").count() == len(DOCS) + 1


# -- the sparse function ----------------------------------------------------------------------

SPARSE_TEXTS = ["Remoras ride on sharks.", "x", "The stock market closed higher on Tuesday. " * 4, "中文 🦈"]

SPARSE_REOPEN = """
import json, sys
from chromadb import Schema
from remora.integrations.chroma import RemoraSparseEmbeddingFunction

schema = Schema.deserialize_from_json(json.loads(sys.argv[1]))
function = schema.keys["sparse"].sparse_vector.sparse_vector_index.config.embedding_function
assert isinstance(function, RemoraSparseEmbeddingFunction), type(function)
vectors = function(json.loads(sys.argv[2]))
print(json.dumps({"config": function.get_config(), "vectors": [[v.indices, v.values] for v in vectors]}))
"""


def test_sparse_function_equals_the_sidecar_and_survives_chromas_schema(sidecar: Sidecar) -> None:
    function = RemoraSparseEmbeddingFunction(SPARSE, url=sidecar.url)
    assert sparse_known_embedding_functions["remora_sparse"] is RemoraSparseEmbeddingFunction
    validate_sparse_embedding_function(function)

    for mode, vectors in [("document", function(SPARSE_TEXTS)), ("query", function.embed_query(SPARSE_TEXTS))]:
        want = native(sidecar, "/v1/encode", {"model": SPARSE, "inputs": SPARSE_TEXTS, "outputs": ["sparse"],
                                              "input_type": mode})["sparse"]
        assert all(isinstance(v, SparseVector) for v in vectors)
        assert [(v.indices, v.values) for v in vectors] == [(w["indices"], w["values"]) for w in want]
        assert all(v.indices == sorted(set(v.indices)) for v in vectors)
        assert any(v.indices for v in vectors)

    # Chroma persists a sparse index's function in the collection schema and rebuilds it from the
    # registry; do exactly that, through JSON, in a fresh interpreter.
    schema = Schema().create_index(SparseVectorIndexConfig(source_key="#document", embedding_function=function),
                                   key="sparse")
    stored = schema.serialize_to_json()
    entry = stored["keys"]["sparse"]["sparse_vector"]["sparse_vector_index"]["config"]["embedding_function"]
    assert entry == {"name": "remora_sparse", "type": "known", "config": function.get_config()}
    done = subprocess.run([sys.executable, "-c", SPARSE_REOPEN, json.dumps(stored), json.dumps(SPARSE_TEXTS)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-4000:]
    rebuilt = json.loads(done.stdout.strip().splitlines()[-1])
    assert rebuilt["config"] == function.get_config()
    assert rebuilt["vectors"] == [[v.indices, v.values] for v in function(SPARSE_TEXTS)]

    with pytest.raises(ValueError, match="needs 'model'"):
        RemoraSparseEmbeddingFunction.validate_config({"url": sidecar.url})
    with pytest.raises(ValueError, match="'model' cannot change"):
        function.validate_config_update(function.get_config(), {**function.get_config(), "model": DENSE})
    with pytest.raises(RemoraError):  # a dense-only model has no sparse output: an error, not empty vectors
        RemoraSparseEmbeddingFunction(DENSE, url=sidecar.url)(["x"])


def test_local_chroma_refuses_sparse_indexes(tmp_path: Path, sidecar: Sidecar) -> None:
    """Why the sparse function has no collection test here: if this starts failing, Chroma's local
    mode has gained sparse indexes, and a collection test like the dense ones belongs here."""
    schema = Schema().create_index(
        SparseVectorIndexConfig(source_key="#document", embedding_function=RemoraSparseEmbeddingFunction(
            SPARSE, url=sidecar.url)), key="sparse")
    with pytest.raises(Exception, match="Sparse vector indexing is not enabled in local"):
        chromadb.PersistentClient(str(tmp_path / "chroma")).create_collection("sparse", schema=schema)


# -- rerank -----------------------------------------------------------------------------------


@pytest.fixture
def docs(sidecar: Sidecar, tmp_path: Path) -> chromadb.Collection:
    client = chromadb.PersistentClient(str(tmp_path / "chroma"))
    collection = client.create_collection("rerank", embedding_function=RemoraEmbeddingFunction(DENSE, url=sidecar.url))
    collection.add(ids=list(DOCS), documents=list(DOCS.values()), metadatas=[{"topic": k} for k in DOCS])
    return collection


@pytest.mark.parametrize("model", [DENSE, RERANKER])
def test_rerank_follows_the_sidecars_score(sidecar: Sidecar, docs: chromadb.Collection, model: str) -> None:
    query, k = "which fish hitchhike on sharks?", 4
    found = docs.query(query_texts=[query], n_results=len(DOCS), include=["documents", "metadatas", "distances"])
    with sidecar.client() as remora:
        ranked = rerank(query, found, top_k=k, model=model, client=remora)
    candidates = found["documents"][0][:k]  # type: ignore[index]
    want = native(sidecar, "/v1/score", {"model": model, "query": query, "documents": candidates})["scores"]
    order = sorted(range(k), key=lambda i: -want[i])
    assert ranked.ids == [found["ids"][0][i] for i in order]  # only the vector top k, reordered
    assert ranked.documents == [candidates[i] for i in order]
    assert ranked.scores == [want[i] for i in order] and ranked.scores == sorted(ranked.scores, reverse=True)
    assert [m["topic"] for m in ranked.metadatas] == ranked.ids
    assert ranked.distances == [found["distances"][0][i] for i in order]  # type: ignore[index]
    if model == DENSE:  # cosine of real MiniLM: the passage about remoras wins
        assert ranked.ids[0] == "remora"


def test_query_and_rerank(sidecar: Sidecar, docs: chromadb.Collection) -> None:
    query = "how do I make banana bread?"
    with sidecar.client() as remora:
        best = query_and_rerank(docs, query, candidates=5, top_n=2, model=DENSE, client=remora)
        assert len(best) == 2 and best.ids[0] == "bread"
        by_topic = query_and_rerank(docs, query, candidates=5, where={"topic": "market"}, model=DENSE, client=remora)
        assert by_topic.ids == ["market"]
        flat = rerank(query, docs.get(include=["documents"]), model=DENSE, client=remora)  # a get() result
        assert flat.ids[0] == "bread" and sorted(flat.ids) == sorted(DOCS)
    with pytest.raises(ValueError, match="no documents"):
        rerank(query, docs.query(query_texts=[query], include=["distances"]))


# -- errors -----------------------------------------------------------------------------------


def test_a_sidecar_that_is_down_or_refuses_raises_and_writes_nothing(sidecar: Sidecar, tmp_path: Path) -> None:
    client = chromadb.PersistentClient(str(tmp_path / "chroma"))
    down = f"http://127.0.0.1:{free_port()}"
    closed = client.create_collection("down", embedding_function=RemoraEmbeddingFunction(DENSE, url=down, timeout=5))
    with pytest.raises(RemoraUnavailable) as unreachable:
        closed.add(ids=["a"], documents=["Remoras ride on sharks."])
    assert down in str(unreachable.value) and closed.count() == 0
    with pytest.raises(RemoraUnavailable):
        closed.query(query_texts=["sharks"], n_results=1)

    good = client.create_collection("good", embedding_function=RemoraEmbeddingFunction(DENSE, url=sidecar.url))
    fill(good)
    # Same registered name, another (unknown) model: Chroma lets it replace the persisted one here.
    wrong = client.get_collection("good", embedding_function=RemoraEmbeddingFunction("no-such-model", url=sidecar.url))
    with pytest.raises(RemoraError) as refused:
        wrong.add(ids=["z"], documents=["never stored"])
    assert refused.value.status == 404 and refused.value.code == "MODEL_NOT_FOUND" and "no-such-model" in str(refused.value)
    with pytest.raises(RemoraError, match="MODEL_NOT_FOUND"):
        wrong.query(query_texts=["sharks"], n_results=1)
    with pytest.raises(RemoraError, match="MODEL_NOT_FOUND"):
        wrong.upsert(ids=["remora"], documents=["overwritten?"])
    assert good.count() == len(DOCS) and good.get(ids=["z"])["ids"] == []
    assert good.get(ids=["remora"])["documents"] == [DOCS["remora"]]

    found = good.query(query_texts=["sharks"], n_results=2, include=["documents"])
    with sidecar.client() as remora, pytest.raises(RemoraError, match="MODEL_NOT_FOUND"):
        rerank("sharks", found, model="no-such-reranker", client=remora)
