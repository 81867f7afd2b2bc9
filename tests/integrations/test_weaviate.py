"""Weaviate's transformers modules against a live sidecar, by contract replay.

No Weaviate server runs here, so each test sends, over a raw socket, the bytes Weaviate's Go
module clients send (weaviate/weaviate: usecases/modulecomponents/clients/transformers/
transformers.go, modules/reranker-transformers/clients/ranker.go, modules/ner-transformers/
clients/ner.go; net/http with no header set, so no Content-Type and no API key), reads the answer
as those clients do, and checks it against the sidecar's native routes. The weaviate-client
configuration helpers are checked on the JSON the client would send to create a collection.
"""

from __future__ import annotations

import gzip
import http.client
import json
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from weaviate.classes.config import Configure, DataType, Property
from weaviate.collections.classes.config import _CollectionConfigCreate

from remora.integrations.weaviate import (
    RemoraError,
    RemoraUnavailable,
    check_inference_url,
    module_url,
    reranker,
    server_env,
    text2vec,
)
from tests.helpers import minilm_dir, write_json
from tests.integrations.conftest import DENSE, NER, RERANKER, SPARSE, Sidecar
from tests.sidecar.server import ServerProcess, free_port

pytestmark = pytest.mark.integration

KEY = "weaviate-test-key"
QUERY_PROMPT, DOC_PROMPT = "query: ", "passage: "


# -- what Go's net/http puts on the wire ----------------------------------------------------------


def go_json(value: Any) -> bytes:
    """encoding/json.Marshal: no spaces, fields in struct order, UTF-8 kept, and <, >, & (and
    U+2028/U+2029) escaped as \\u003c, \\u003e, \\u0026 (Go's HTML-safe default)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                          ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escaped)
    return text.encode()


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        # Go's clients json.Unmarshal every answer, errors included: it must be JSON.
        return json.loads(self.body)

    def error(self) -> str:
        """What Weaviate shows for a refused request: the `error` field of a non-200."""
        assert self.status != 200, self.body
        data = self.json()
        assert isinstance(data, dict) and isinstance(data.get("error"), str) and data["error"], data
        return str(data["error"])


def go(method: str, url: str, body: bytes | None = None, *, headers: dict[str, str] | None = None) -> Answer:
    """The request Go's http.Transport writes for `http.NewRequestWithContext(ctx, method, url,
    bytes.NewReader(body))` with no header set: Host, User-Agent, Content-Length (with a body),
    Accept-Encoding: gzip, and nothing else. `headers` only for the tests that add an API key."""
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    lines = [f"{method} {parts.path}{'?' + parts.query if parts.query else ''} HTTP/1.1",
             f"Host: {parts.netloc}", "User-Agent: Go-http-client/1.1"]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    lines.append("Accept-Encoding: gzip")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    assert b"content-type" not in head.lower()  # what Weaviate leaves out
    with socket.create_connection((parts.hostname, parts.port), timeout=120) as sock:
        sock.sendall(head + (body or b""))
        response = http.client.HTTPResponse(sock)
        response.begin()
        data = response.read()
        got = {k.lower(): v for k, v in response.getheaders()}
    if got.get("content-encoding") == "gzip":  # Go's transport undoes it
        data = gzip.decompress(data)
    return Answer(response.status, got, data)


def vec_request(text: str, task: str, *, pooling: str = "masked_mean", dimensions: int | None = None) -> bytes:
    """transformers.go vecRequest: dims, vector and error without omitempty (0, null, ""), the
    config's fields with omitempty (dimensions only when the collection sets it)."""
    config: dict[str, Any] = {"pooling_strategy": pooling, "task_type": task}
    if dimensions is not None:
        config["dimensions"] = dimensions
    return go_json({"text": text, "dims": 0, "vector": None, "error": "", "config": config})


def rank_request(query: str, documents: list[str]) -> bytes:
    """ranker.go RankInput: "property" has no omitempty and is never set, so it is ""."""
    return go_json({"query": query, "documents": documents, "property": ""})


def rank_like_weaviate(url: str, query: str, documents: list[str]) -> list[dict[str, Any]]:
    """ranker.go Rank: chunks of 32 documents sent in parallel, answers joined in chunk order."""
    chunks = [documents[i : i + 32] for i in range(0, len(documents), 32)]
    with ThreadPoolExecutor(len(chunks)) as pool:
        answers = list(pool.map(lambda c: go("POST", f"{url}/rerank", rank_request(query, c)), chunks))
    joined: list[dict[str, Any]] = []
    for chunk, answer in zip(chunks, answers, strict=True):
        assert answer.status == 200, answer.body
        data = answer.json()
        assert data["query"] == query and len(data["scores"]) == len(chunk)
        joined += data["scores"]
    return joined


def native(url: str, route: str, body: dict[str, Any], key: str | None = None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = httpx.post(f"{url}{route}", json=body, headers=headers, timeout=120)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def encoded(url: str, model: str, text: str, input_type: str, key: str | None = None, **extra: Any) -> np.ndarray:
    body = {"model": model, "inputs": [text], "input_type": input_type, **extra}
    return np.array(native(url, "/v1/encode", body, key)["embeddings"][0], dtype=np.float32)


# -- the exact bytes --------------------------------------------------------------------------------


def test_the_replayed_bodies_are_go_s_bytes() -> None:
    """The helpers write, byte for byte, what the Go structs marshal to (checked on literals)."""
    assert vec_request("Remoras ride on sharks.", "passage") == (
        b'{"text":"Remoras ride on sharks.","dims":0,"vector":null,"error":"",'
        b'"config":{"pooling_strategy":"masked_mean","task_type":"passage"}}'
    )
    assert vec_request("a <b> & c", "query", dimensions=64) == (
        b'{"text":"a \\u003cb\\u003e \\u0026 c","dims":0,"vector":null,"error":"",'
        b'"config":{"pooling_strategy":"masked_mean","task_type":"query","dimensions":64}}'
    )
    assert rank_request("q?", ["a", "b"]) == b'{"query":"q?","documents":["a","b"],"property":""}'
    assert go_json({"text": "Barack Obama visited Paris."}) == b'{"text":"Barack Obama visited Paris."}'


# -- text2vec-transformers --------------------------------------------------------------------------


def test_startup_checks_and_meta(sidecar: Sidecar) -> None:
    for base in (sidecar.url, module_url(sidecar.url, DENSE), module_url(sidecar.url, RERANKER)):
        assert go("GET", f"{base}/.well-known/ready").status == 204  # Weaviate: any status <= 299
        assert go("GET", f"{base}/.well-known/live").status == 204
    root = go("GET", f"{sidecar.url}/meta")
    assert root.status == 200
    meta = root.json()
    assert meta["model"]["_name_or_path"] == DENSE and meta["model"]["model_type"] == "bert"  # MiniLM's config.json
    assert meta["remora"]["default_reranker"] == RERANKER and meta["remora"]["default_extractor"] == NER
    per_model = go("GET", f"{module_url(sidecar.url, RERANKER)}/meta").json()
    assert per_model["model"]["_name_or_path"] == RERANKER and per_model["remora"]["model"] == RERANKER
    unknown = module_url(sidecar.url, "no-such-model")
    for path in ("/.well-known/ready", "/meta"):
        answer = go("GET", unknown + path)
        assert answer.status == 404 and "no-such-model" in answer.error()


TEXTS = ["Remoras ride on sharks.", "a <b> & c", "中文 🦈 ünïcödé", "The stock market closed higher on Tuesday. " * 40]


@pytest.mark.parametrize("base", ["root", "prefixed"])
def test_vectors_equal_the_native_encode(sidecar: Sidecar, base: str) -> None:
    url = sidecar.url if base == "root" else module_url(sidecar.url, DENSE)
    for text in TEXTS:
        for task, input_type in (("passage", "document"), ("query", "query")):
            # Weaviate's path, and (once) the reference container's alias with a slash.
            for path in ("/vectors", "/vectors/") if text == TEXTS[0] else ("/vectors",):
                answer = go("POST", url + path, vec_request(text, task))
                assert answer.status == 200, answer.body
                data = answer.json()
                assert data["text"] == text  # Go's \u003c escapes decoded
                vector = np.array(data["vector"], dtype=np.float32)
                assert data["dim"] == data["dims"] == vector.shape[0] == 384
                np.testing.assert_array_equal(vector, encoded(sidecar.url, DENSE, text, input_type))


def test_dimensions_truncate_and_pooling_is_the_model_s(sidecar: Sidecar) -> None:
    text = TEXTS[0]
    full = encoded(sidecar.url, DENSE, text, "document")
    answer = go("POST", f"{sidecar.url}/vectors", vec_request(text, "passage", dimensions=64))
    data = answer.json()
    vector = np.array(data["vector"], dtype=np.float32)
    assert data["dims"] == vector.shape[0] == 64
    np.testing.assert_allclose(vector, full[:64] / np.linalg.norm(full[:64]), atol=1e-6)
    np.testing.assert_array_equal(vector, encoded(sidecar.url, DENSE, text, "document", dimensions=64))
    # "cls" (Weaviate's other choice) is accepted; the model pools as it is configured.
    cls = go("POST", f"{sidecar.url}/vectors", vec_request(text, "passage", pooling="cls")).json()
    np.testing.assert_array_equal(np.array(cls["vector"], dtype=np.float32), full)


def test_the_path_prefix_selects_the_model(sidecar: Sidecar) -> None:
    """Different collections, different models: the SPARSE model has no dense output, the
    default MiniLM has, so the same body succeeds at one prefix and is refused at the other."""
    body = vec_request("Remoras ride on sharks.", "passage")
    assert go("POST", f"{module_url(sidecar.url, DENSE)}/vectors", body).status == 200
    refused = go("POST", f"{module_url(sidecar.url, SPARSE)}/vectors", body)
    assert 400 <= refused.status < 500 and refused.error()
    refused = go("POST", f"{module_url(sidecar.url, RERANKER)}/vectors", body)  # a cross-encoder embeds nothing
    assert 400 <= refused.status < 500 and refused.error()


def test_query_and_passage_prompts(prompted: ServerProcess) -> None:
    """task_type "query" -> the model's query prompt, "passage" -> its document prompt; header-less
    Weaviate reaches the /weaviate/ routes of a keyed sidecar opened with REMORA_WEAVIATE_OPEN=1."""
    url = module_url(prompted.url, "minilm-q")
    text = "Remoras ride on sharks."
    got = {task: np.array(go("POST", f"{url}/vectors", vec_request(text, task)).json()["vector"], dtype=np.float32)
           for task in ("query", "passage")}
    np.testing.assert_array_equal(got["query"], encoded(prompted.url, "minilm-q", text, "query", KEY))
    np.testing.assert_array_equal(got["passage"], encoded(prompted.url, "minilm-q", text, "document", KEY))
    np.testing.assert_array_equal(got["query"], encoded(prompted.url, "minilm", QUERY_PROMPT + text, "document", KEY))
    assert not np.allclose(got["query"], got["passage"], atol=1e-3)
    # Hub-style ids hold a slash; the prefix takes them whole (and aliases).
    slashed = go("POST", f"{module_url(prompted.url, 'org/minilm-q')}/vectors", vec_request(text, "query"))
    np.testing.assert_array_equal(np.array(slashed.json()["vector"], dtype=np.float32), got["query"])
    # A body without task_type (older Weaviate versions send none) is a passage.
    older = go_json({"text": text, "dims": 0, "vector": None, "error": "", "config": {"pooling_strategy": "masked_mean"}})
    np.testing.assert_array_equal(np.array(go("POST", f"{url}/vectors", older).json()["vector"], dtype=np.float32),
                                  got["passage"])


# -- reranker-transformers --------------------------------------------------------------------------

QUESTION = "which fish ride on sharks?"
DOCS = ["Stock prices rose.", "Remoras attach to sharks.", "Suckerfish follow whales."]


def test_rerank_scores_in_input_order(sidecar: Sidecar) -> None:
    url = module_url(sidecar.url, DENSE)  # an embedder reranks by cosine: real weights, a real ranking
    answer = go("POST", f"{url}/rerank", rank_request(QUESTION, DOCS))
    assert answer.status == 200, answer.body
    data = answer.json()
    assert data["query"] == QUESTION and [s["document"] for s in data["scores"]] == DOCS
    scores = [s["score"] for s in data["scores"]]
    assert scores == native(sidecar.url, "/v1/score", {"model": DENSE, "query": QUESTION, "documents": DOCS})["scores"]
    assert int(np.argmax(scores)) == 1  # input order kept: Weaviate gives scores[i] to object i


def test_rerank_in_chunks_of_32_at_the_root_and_prefixed(sidecar: Sidecar) -> None:
    documents = [f"passage {i}: remoras and sharks share the reef number {i * 7 % 11}" for i in range(70)]
    want = native(sidecar.url, "/v1/score", {"model": RERANKER, "query": QUESTION, "documents": documents})["scores"]
    root = rank_like_weaviate(sidecar.url, QUESTION, documents)  # the default reranker, via TEI's /rerank path
    prefixed = rank_like_weaviate(module_url(sidecar.url, RERANKER), QUESTION, documents)
    assert [s["document"] for s in root] == [s["document"] for s in prefixed] == documents
    np.testing.assert_allclose([s["score"] for s in root], want, atol=1e-6, rtol=0)
    np.testing.assert_allclose([s["score"] for s in prefixed], want, atol=1e-6, rtol=0)
    assert len({round(s["score"], 6) for s in root}) > 10  # a real spread, not a constant


def test_tei_rerank_on_the_same_path_is_unchanged(sidecar: Sidecar) -> None:
    """TEI's body ({"query", "texts"}) still gets TEI's ranking and TEI's errors at /rerank."""
    ranks = httpx.post(f"{sidecar.url}/rerank", json={"query": QUESTION, "texts": DOCS}, timeout=60).json()
    want = native(sidecar.url, "/v1/score", {"query": QUESTION, "documents": DOCS})["scores"]
    assert sorted(r["index"] for r in ranks) == [0, 1, 2]
    assert [r["score"] for r in ranks] == sorted(want, reverse=True)
    both = httpx.post(f"{sidecar.url}/rerank", json={"query": QUESTION, "texts": DOCS, "documents": DOCS}, timeout=60)
    assert isinstance(both.json(), list)  # "texts" present: TEI's
    missing = httpx.post(f"{sidecar.url}/rerank", json={"query": QUESTION}, timeout=60)
    assert missing.status_code == 422 and missing.json()["error_type"] == "Validation"
    weaviate_error = go("POST", f"{sidecar.url}/rerank", b'{"query":"q","documents":"not a list","property":""}')
    assert weaviate_error.status == 422 and weaviate_error.error() and "error_type" not in weaviate_error.json()


# -- ner-transformers -------------------------------------------------------------------------------

NER_TEXT = "Barack Obama visited Paris with Angela Merkel and the United Nations."


@pytest.mark.parametrize("base", ["root", "prefixed"])
def test_ner_tokens_match_the_native_extract(sidecar: Sidecar, base: str) -> None:
    url = sidecar.url if base == "root" else module_url(sidecar.url, NER)
    answer = go("POST", f"{url}/ner/", go_json({"text": NER_TEXT}))  # ner.go: "/ner/", slash included
    assert answer.status == 200, answer.body
    data = answer.json()
    assert data["text"] == NER_TEXT
    want = native(sidecar.url, "/v1/extract", {"model": NER, "inputs": [NER_TEXT]})["results"][0]["entities"]
    assert want, "the seeded tagger finds entities in this text; the comparison below must not be empty"
    tokens = data["tokens"]
    assert [(t["entity"], t["word"], t["startPosition"], t["endPosition"]) for t in tokens] == [
        (e["label"], e["text"], e["start"], e["end"]) for e in want
    ]
    for token, entity in zip(tokens, want, strict=True):
        assert set(token) == {"entity", "certainty", "distance", "word", "startPosition", "endPosition"}
        assert NER_TEXT[token["startPosition"] : token["endPosition"]] == token["word"]
        assert token["certainty"] == pytest.approx(entity["score"], abs=1e-6)
        assert token["distance"] == pytest.approx(2 * (1 - token["certainty"]), abs=1e-9)
    assert go("POST", f"{url}/ner/", go_json({"text": ""})).json() == {"text": "", "tokens": []}


# -- errors -------------------------------------------------------------------------------------


def test_errors_are_non_200_with_an_error_field_and_the_server_keeps_serving(sidecar: Sidecar) -> None:
    dense = module_url(sidecar.url, DENSE)
    refused = {
        "not JSON": go("POST", f"{sidecar.url}/vectors", b"{not json"),
        "no text": go("POST", f"{dense}/vectors", b'{"dims":0,"vector":null,"error":"","config":{}}'),
        "unknown model": go("POST", f"{module_url(sidecar.url, 'no-such-model')}/vectors", vec_request("x", "query")),
        "dimensions 0": go("POST", f"{dense}/vectors", vec_request("x", "passage", dimensions=0)),
        "dimensions too many": go("POST", f"{dense}/vectors", vec_request("x", "passage", dimensions=385)),
        "unknown task": go("POST", f"{dense}/vectors", vec_request("x", "document")),
        "unknown pooling": go("POST", f"{dense}/vectors", vec_request("x", "passage", pooling="max")),
        "ner on an embedder": go("POST", f"{dense}/ner/", go_json({"text": "Paris"})),
        "rerank unknown model": go("POST", f"{module_url(sidecar.url, 'nope')}/rerank", rank_request("q", ["a"])),
        "wrong method": go("GET", f"{dense}/vectors"),
        "unknown route": go("GET", f"{dense}/nothing-here"),
    }
    for what, answer in refused.items():
        assert answer.status >= 400, what
        assert answer.error(), what  # Weaviate: "fail with status N: <error>"
        assert answer.headers["content-type"] == "application/json", what
    assert refused["unknown model"].status == 404 and "no-such-model" in refused["unknown model"].error()
    assert refused["not JSON"].status == 400
    assert go("POST", f"{sidecar.url}/vectors", vec_request("still serving", "passage")).status == 200


# -- an API key: Weaviate sends none ------------------------------------------------------------


def _server(root: Path, env: dict[str, str], models: list[dict[str, Any]]) -> ServerProcess:
    config = root / "models.json"
    write_json(config, {"default_model": models[0]["id"], "models": models})  # JSON is YAML
    return ServerProcess(config=config, env=env, log=root / "server.log")


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two sidecars with REMORA_API_KEY, started side by side: one opened to Weaviate
    (REMORA_WEAVIATE_OPEN=1) with a prompted MiniLM, one not opened."""
    opened = _server(tmp_path_factory.mktemp("weaviate-open"), {"REMORA_API_KEY": KEY, "REMORA_WEAVIATE_OPEN": "1"}, [
        {"id": "minilm", "path": str(minilm_dir())},
        {"id": "minilm-q", "path": str(minilm_dir()), "query_prompt": QUERY_PROMPT, "document_prompt": DOC_PROMPT,
         "aliases": ["org/minilm-q"]},
    ])
    closed = _server(tmp_path_factory.mktemp("weaviate-closed"), {"REMORA_API_KEY": KEY},
                     [{"id": "minilm", "path": str(minilm_dir())}])
    try:
        yield opened.wait_healthy(), closed.wait_healthy()
    finally:
        assert opened.stop() == 0, opened.logs()
        assert closed.stop() == 0, closed.logs()


@pytest.fixture(scope="module")
def prompted(keyed: tuple[ServerProcess, ServerProcess]) -> ServerProcess:
    return keyed[0]


@pytest.fixture(scope="module")
def closed(keyed: tuple[ServerProcess, ServerProcess]) -> ServerProcess:
    return keyed[1]


def test_a_keyed_sidecar_opens_only_the_weaviate_routes(prompted: ServerProcess, closed: ServerProcess) -> None:
    body = vec_request("Remoras ride on sharks.", "passage")
    bearer = {"Authorization": f"Bearer {KEY}"}
    # Opened: /weaviate/<model>/... without a key; the root routes still need it.
    assert go("POST", f"{module_url(prompted.url, 'minilm')}/vectors", body).status == 200
    assert go("GET", f"{module_url(prompted.url, 'minilm')}/.well-known/ready").status == 204
    root = go("POST", f"{prompted.url}/vectors", body)
    assert root.status == 401 and root.error()
    assert go("GET", f"{prompted.url}/meta").status == 401
    assert go("POST", f"{prompted.url}/ner/", go_json({"text": "Paris"})).status == 401
    assert go("POST", f"{prompted.url}/vectors", body, headers=bearer).status == 200
    assert go("GET", f"{prompted.url}/.well-known/ready").status == 204  # health routes are open anyway
    # Not opened: the /weaviate/ routes need the key like every other.
    shut = go("POST", f"{module_url(closed.url, 'minilm')}/vectors", body)
    assert shut.status == 401 and shut.error()
    assert go("POST", f"{module_url(closed.url, 'minilm')}/vectors", body, headers=bearer).status == 200
    with pytest.raises(RemoraError) as info:
        check_inference_url(module_url(closed.url, "minilm"))
    assert info.value.status == 401 and info.value.code == "UNAUTHORIZED" and "REMORA_WEAVIATE_OPEN" in str(info.value)
    assert check_inference_url(module_url(prompted.url, "minilm-q"))["model"]["_name_or_path"] == "minilm-q"


# -- the weaviate-client configuration helpers -----------------------------------------------------


def test_text2vec_config_is_what_weaviate_reads() -> None:
    config = text2vec("http://remora:8080/", "minilm", dimensions=128)._to_dict()
    assert config == {
        "vectorizer": {"text2vec-transformers": {
            "poolingStrategy": "masked_mean", "vectorizeClassName": False,
            "inferenceUrl": "http://remora:8080/weaviate/minilm", "dimensions": 128,
        }},
        "vectorIndexType": "hnsw",
    }
    pair = text2vec("http://remora:8080", "passages", query_model="BAAI/bge-small-en-v1.5", name="body")
    assert pair._to_dict()["vectorizer"]["text2vec-transformers"] == {
        "poolingStrategy": "masked_mean", "vectorizeClassName": False,
        "passageInferenceUrl": "http://remora:8080/weaviate/passages",
        "queryInferenceUrl": "http://remora:8080/weaviate/BAAI/bge-small-en-v1.5",
    }
    assert text2vec("http://remora:8080")._to_dict()["vectorizer"]["text2vec-transformers"]["inferenceUrl"] == (
        "http://remora:8080"  # the sidecar's default model
    )
    with pytest.raises(ValueError, match="http"):
        module_url("remora:8080", "minilm")


def test_the_collection_create_request(sidecar: Sidecar) -> None:
    """The JSON weaviate-client POSTs to /v1/schema, and the URL in it replayed as Weaviate would."""
    create = _CollectionConfigCreate(
        name="docs",
        properties=[Property(name="body", data_type=DataType.TEXT)],
        vector_config=[text2vec(sidecar.url, DENSE, name="body_vector")],
        reranker_config=reranker(),
    )._to_dict()
    assert create["class"] == "Docs"
    assert create["moduleConfig"] == {"reranker-transformers": {}}
    vectorizer = create["vectorConfig"]["body_vector"]["vectorizer"]
    assert list(vectorizer) == ["text2vec-transformers"]
    url = vectorizer["text2vec-transformers"]["inferenceUrl"]
    assert url == f"{sidecar.url}/weaviate/{DENSE}"
    assert reranker()._to_dict() == Configure.Reranker.transformers()._to_dict()
    # Weaviate's URLBuilder: fmt.Sprintf("%s%s", inferenceUrl, "/vectors").
    answer = go("POST", url + "/vectors", vec_request("Remoras ride on sharks.", "passage"))
    np.testing.assert_array_equal(np.array(answer.json()["vector"], dtype=np.float32),
                                  encoded(sidecar.url, DENSE, "Remoras ride on sharks.", "document"))


def test_server_env(sidecar: Sidecar) -> None:
    env = server_env(sidecar.url, vectorizer_model=DENSE, reranker_model=RERANKER)
    assert env == {
        "ENABLE_MODULES": "text2vec-transformers,reranker-transformers,ner-transformers",
        "DEFAULT_VECTORIZER_MODULE": "text2vec-transformers",
        "TRANSFORMERS_INFERENCE_API": f"{sidecar.url}/weaviate/{DENSE}",
        "RERANKER_INFERENCE_API": f"{sidecar.url}/weaviate/{RERANKER}",
        "NER_INFERENCE_API": sidecar.url,
    }
    # Weaviate's startup (WaitForStartup) and /v1/meta calls succeed on every URL it is given.
    for name in ("TRANSFORMERS_INFERENCE_API", "RERANKER_INFERENCE_API", "NER_INFERENCE_API"):
        assert go("GET", env[name] + "/.well-known/ready").status == 204, name
        assert isinstance(go("GET", env[name] + "/meta").json(), dict), name
    pair = server_env("http://remora:8080", vectorizer_model="p", query_vectorizer_model="q",
                      modules=["text2vec-transformers"], extra_modules=["backup-filesystem"], default_vectorizer=False)
    assert pair == {
        "ENABLE_MODULES": "text2vec-transformers,backup-filesystem",
        "TRANSFORMERS_PASSAGE_INFERENCE_API": "http://remora:8080/weaviate/p",
        "TRANSFORMERS_QUERY_INFERENCE_API": "http://remora:8080/weaviate/q",
    }
    with pytest.raises(ValueError, match="modules"):
        server_env("http://remora:8080", modules=["text2vec-openai"])


def test_check_inference_url_says_what_is_wrong(sidecar: Sidecar) -> None:
    assert check_inference_url(sidecar.url)["model"]["_name_or_path"] == DENSE
    assert check_inference_url(module_url(sidecar.url, NER))["remora"]["model"] == NER
    with pytest.raises(RemoraError) as info:
        check_inference_url(module_url(sidecar.url, "no-such-model"))
    assert info.value.status == 404 and info.value.code == "MODEL_NOT_FOUND" and "no-such-model" in str(info.value)
    with pytest.raises(RemoraUnavailable) as down:
        check_inference_url(f"http://127.0.0.1:{free_port()}/weaviate/{DENSE}", timeout=5)
    assert down.value.status is None and "unreachable" in str(down.value)
