"""The compatibility APIs over real HTTP to a real `remora serve` process: OpenAI's
/v1/embeddings (also through the official `openai` client when it is installed), Cohere/Jina's
/v1/rerank and /v2/rerank, and text-embeddings-inference's /embed, /rerank, /tokenize, /info and
/health, with each family's error shape.

Vectors and scores are compared with the in-process engine (1e-5 absolute). The server holds
MiniLM (the default model) and a cross-encoder made of MiniLM's encoder plus a seeded random
one-label head (the default reranker).
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from remora.core import Engine, EngineSettings
from tests.helpers import copy_wordpiece_tokenizer, minilm_dir, write_json
from tests.sidecar.samples import QUERY, TEXTS
from tests.sidecar.server import ServerProcess

pytestmark = pytest.mark.integration

ATOL = 1e-5
DOCS = [
    "Sea otters crack shellfish open with rocks they carry.",
    "The stock market closed higher on Tuesday.",
    "otter",
    "中文 🦈 ünïcödé",
    "Otters are semi-aquatic mammals that eat fish and shellfish.",
]
QUERY_PROMPT = "query: "
DOC_PROMPT = "passage: "


# -- fixtures ------------------------------------------------------------------------------


def build_minilm_cross_encoder(target: Path, seed: int = 0) -> Path:
    """MiniLM's encoder under a seeded random one-label classification head (large enough
    that the scores spread out rather than all sitting near 0.5)."""
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    model = BertForSequenceClassification.from_pretrained(str(minilm_dir()), num_labels=1).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.classifier.weight.copy_(torch.randn(model.classifier.weight.shape, generator=gen) * 0.2)
        model.classifier.bias.fill_(0.1)
    target.mkdir(parents=True)
    model.save_pretrained(str(target), safe_serialization=True)
    copy_wordpiece_tokenizer(target)
    return target


@pytest.fixture(scope="module")
def ce_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_minilm_cross_encoder(tmp_path_factory.mktemp("compat-ce") / "ce")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, ce_dir: Path) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("compat-server")
    config = root / "models.yaml"
    write_json(config, {  # JSON is YAML
        "default_model": "minilm",
        "default_reranker": "ce",
        "models": [
            {"id": "minilm", "path": str(minilm_dir()), "preload": True, "aliases": ["text-embedding-3-small"]},
            {"id": "ce", "path": str(ce_dir), "preload": True},
            {"id": "minilm-q", "path": str(minilm_dir()), "query_prompt": QUERY_PROMPT,
             "document_prompt": DOC_PROMPT},
        ],
    })
    process = ServerProcess(config=config, log=root / "server.log")
    process.wait_healthy().wait_ready()
    yield process
    assert process.stop() == 0, process.logs()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def engine(ce_dir: Path) -> Engine:
    engine = Engine(EngineSettings(num_threads=1, register_defaults=False))
    engine.register("minilm", minilm_dir())
    engine.register("ce", ce_dir)
    engine.register("minilm-q", minilm_dir(), query_prompt=QUERY_PROMPT, document_prompt=DOC_PROMPT)
    return engine


@pytest.fixture(scope="module")
def reference(engine: Engine) -> np.ndarray:
    return engine.encode("minilm", TEXTS)


@pytest.fixture(scope="module")
def ref_scores(engine: Engine) -> np.ndarray:
    scores = engine.score("ce", QUERY, DOCS)
    gaps = np.diff(np.sort(scores))
    assert gaps.min() > 1e-4, f"reference scores too close to order reliably: {scores}"
    return scores


def token_count(engine: Engine, texts: list[str]) -> int:
    return sum(engine.model("minilm").tokenizer.encode(texts).lengths)


def pair_token_count(engine: Engine, docs: list[str]) -> int:
    return sum(engine.model("ce").tokenizer.encode_pairs([QUERY] * len(docs), docs).lengths)


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


def openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    return dict(error)


def tei_error(response: httpx.Response, status: int, error_type: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error_type"] == error_type, body
    assert isinstance(body["error"], str) and body["error"]
    return str(body["error"])


# -- OpenAI /v1/embeddings -----------------------------------------------------------------


def test_openai_embeddings_match_engine(client: httpx.Client, engine: Engine, reference: np.ndarray) -> None:
    body = ok(client.post("/v1/embeddings", json={"input": TEXTS, "model": "minilm", "user": "u-1", "extra": 1}))
    assert set(body) == {"object", "data", "model", "usage"}
    assert body["object"] == "list"
    assert body["model"] == "minilm"
    assert [d["index"] for d in body["data"]] == list(range(len(TEXTS)))
    assert all(d["object"] == "embedding" and set(d) == {"object", "embedding", "index"} for d in body["data"])
    got = np.asarray([d["embedding"] for d in body["data"]], dtype=np.float32)
    np.testing.assert_allclose(got, reference, atol=ATOL, rtol=0)
    tokens = token_count(engine, TEXTS)
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}


def test_openai_single_string_alias_and_default_model(client: httpx.Client, reference: np.ndarray) -> None:
    for payload in ({"input": TEXTS[0]}, {"input": TEXTS[0], "model": "text-embedding-3-small"}):
        body = ok(client.post("/v1/embeddings", json=payload))
        assert body["model"] == "minilm"
        assert len(body["data"]) == 1
        np.testing.assert_allclose(body["data"][0]["embedding"], reference[0], atol=ATOL, rtol=0)


def test_openai_base64_decodes_to_the_same_floats(client: httpx.Client, reference: np.ndarray) -> None:
    floats = ok(client.post("/v1/embeddings", json={"input": TEXTS, "encoding_format": "float"}))
    b64 = ok(client.post("/v1/embeddings", json={"input": TEXTS, "encoding_format": "base64"}))
    decoded = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in b64["data"]])
    assert decoded.shape == reference.shape
    np.testing.assert_array_equal(decoded, np.asarray([d["embedding"] for d in floats["data"]], dtype=np.float32))
    np.testing.assert_allclose(decoded, reference, atol=ATOL, rtol=0)


def test_openai_dimensions_are_renormalised_prefixes(client: httpx.Client, reference: np.ndarray) -> None:
    body = ok(client.post("/v1/embeddings", json={"input": TEXTS, "dimensions": 64}))
    got = np.asarray([d["embedding"] for d in body["data"]], dtype=np.float32)
    assert got.shape == (len(TEXTS), 64)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    prefix = reference[:, :64]
    np.testing.assert_allclose(got, prefix / np.linalg.norm(prefix, axis=1, keepdims=True), atol=ATOL, rtol=0)
    openai_error(client.post("/v1/embeddings", json={"input": "x", "dimensions": 385}), 422)


def test_openai_refuses_token_arrays_and_bad_requests(client: httpx.Client) -> None:
    for tokens in ([101, 7592, 102], [[101, 102], [101, 7592, 102]]):
        error = openai_error(client.post("/v1/embeddings", json={"input": tokens}), 422)
        assert "token" in error["message"] and "text" in error["message"], error
        assert error["type"] == "invalid_request_error"
    error = openai_error(client.post("/v1/embeddings", json={"input": "x", "encoding_format": "int8"}), 422)
    assert "encoding_format" in error["message"]
    openai_error(client.post("/v1/embeddings", json={"input": []}), 422)
    openai_error(client.post("/v1/embeddings", content=b"{nope", headers={"content-type": "application/json"}), 400)


def test_openai_python_client(server: ServerProcess, reference: np.ndarray) -> None:
    openai = pytest.importorskip("openai")
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0) as oa:
        # The client asks for base64 by default and decodes it itself.
        result = oa.embeddings.create(model="minilm", input=TEXTS)
        got = np.asarray([d.embedding for d in result.data], dtype=np.float32)
        np.testing.assert_allclose(got, reference, atol=ATOL, rtol=0)
        assert result.model == "minilm" and result.usage.prompt_tokens > 0
        short = oa.embeddings.create(model="minilm", input="a", dimensions=32, encoding_format="float")
        assert len(short.data[0].embedding) == 32
        with pytest.raises(openai.NotFoundError):
            oa.embeddings.create(model="no-such-model", input="a")
        with pytest.raises(openai.UnprocessableEntityError):
            oa.embeddings.create(model="minilm", input=[[1, 2, 3]])


# -- Cohere / Jina rerank ------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/rerank", "/v2/rerank"])
def test_rerank_scores_order_and_documents(client: httpx.Client, engine: Engine, ref_scores: np.ndarray,
                                           path: str) -> None:
    documents: list[Any] = [d if i % 2 else {"text": d} for i, d in enumerate(DOCS)]
    body = ok(client.post(path, json={"model": "ce", "query": QUERY, "documents": documents, "top_n": 3,
                                      "return_documents": True, "max_chunks_per_doc": 10, "rank_fields": ["text"]}))
    assert set(body) == {"id", "model", "results", "usage", "meta"}
    uuid.UUID(body["id"])
    assert body["model"] == "ce"
    assert body["meta"] == {"billed_units": {"search_units": 1}}
    assert body["usage"] == {"total_tokens": pair_token_count(engine, DOCS)}
    want = np.argsort(-ref_scores, kind="stable")[:3].tolist()
    assert [r["index"] for r in body["results"]] == want
    for result in body["results"]:
        assert set(result) == {"index", "relevance_score", "document"}
        assert result["document"] == {"text": DOCS[result["index"]]}
        assert abs(result["relevance_score"] - float(ref_scores[result["index"]])) <= ATOL


def test_rerank_defaults(client: httpx.Client, ref_scores: np.ndarray) -> None:
    """No model (the default reranker), no top_n (all), no return_documents (no document)."""
    body = ok(client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS}))
    assert body["model"] == "ce"
    assert [r["index"] for r in body["results"]] == np.argsort(-ref_scores, kind="stable").tolist()
    assert all(set(r) == {"index", "relevance_score"} for r in body["results"])
    np.testing.assert_allclose([r["relevance_score"] for r in sorted(body["results"], key=lambda r: r["index"])],
                               ref_scores, atol=ATOL, rtol=0)
    assert len(ok(client.post("/v2/rerank", json={"query": QUERY, "documents": DOCS, "top_n": 50}))["results"]) == 5


def test_rerank_errors(client: httpx.Client) -> None:
    openai_error(client.post("/v1/rerank", json={"query": QUERY, "documents": ["a"], "model": "nope"}), 404)
    openai_error(client.post("/v1/rerank", json={"query": QUERY, "documents": []}), 422)
    openai_error(client.post("/v1/rerank", json={"query": QUERY, "documents": ["a"], "top_n": 0}), 422)
    openai_error(client.post("/v2/rerank", json={"query": QUERY, "documents": [{"title": "no text"}]}), 422)
    # TEI's /embed_sparse on a model without a sparse output is a TEI validation error.
    response = client.post("/embed_sparse", json={"inputs": ["a"], "model": "minilm"})
    assert response.status_code == 422, response.text
    assert response.json()["error_type"] == "Validation"


def test_rerank_with_an_embedder_ranks_by_cosine(client: httpx.Client, engine: Engine) -> None:
    docs = ["Otters float on their backs.", "Quarterly revenue grew.", "Sea otters eat urchins."]
    want = engine.score("minilm", QUERY, docs)
    body = ok(client.post("/v2/rerank", json={"query": QUERY, "documents": docs, "model": "minilm"}))
    got = {r["index"]: r["relevance_score"] for r in body["results"]}
    np.testing.assert_allclose([got[i] for i in range(3)], want, atol=ATOL, rtol=0)
    assert [r["index"] for r in body["results"]] == list(np.argsort(-want))


# -- TEI -----------------------------------------------------------------------------------


def test_tei_embed_matches_engine(client: httpx.Client, engine: Engine, reference: np.ndarray) -> None:
    got = np.asarray(ok(client.post("/embed", json={"inputs": TEXTS})), dtype=np.float32)
    np.testing.assert_allclose(got, reference, atol=ATOL, rtol=0)
    single = ok(client.post("/embed", json={"inputs": TEXTS[2], "truncate": None, "truncation_direction": "Right"}))
    assert len(single) == 1
    np.testing.assert_allclose(single[0], reference[2], atol=ATOL, rtol=0)
    raw = np.asarray(ok(client.post("/embed", json={"inputs": TEXTS, "normalize": False})), dtype=np.float32)
    np.testing.assert_allclose(raw, engine.encode("minilm", TEXTS, normalize=False), atol=ATOL, rtol=0)
    cut = np.asarray(ok(client.post("/embed", json={"inputs": TEXTS, "dimensions": 100})), dtype=np.float32)
    prefix = reference[:, :100]
    np.testing.assert_allclose(cut, prefix / np.linalg.norm(prefix, axis=1, keepdims=True), atol=ATOL, rtol=0)
    # MiniLM has no prompts: query and document prompt names leave the text as it is.
    for name in ("query", "document", "passage"):
        named = np.asarray(ok(client.post("/embed", json={"inputs": TEXTS[:1], "prompt_name": name})), np.float32)
        np.testing.assert_allclose(named, reference[:1], atol=ATOL, rtol=0)
    other = np.asarray(ok(client.post("/embed", json={"inputs": ["a"], "model": "text-embedding-3-small"})))
    np.testing.assert_allclose(other[0], reference[4], atol=ATOL, rtol=0)


def test_tei_prompt_names(client: httpx.Client, engine: Engine) -> None:
    texts = TEXTS[:3]
    for name, is_query in (("query", True), ("document", False), ("passage", False), (None, False)):
        got = ok(client.post("/embed", json={"inputs": texts, "prompt_name": name, "model": "minilm-q"}))
        want = engine.encode("minilm-q", texts, is_query=is_query)
        np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=ATOL, rtol=0)
    assert not np.allclose(want, engine.encode("minilm-q", texts, is_query=True), atol=1e-3)
    # /tokenize counts the prompt in: offsets index the prompted text.
    tokens = ok(client.post("/tokenize", json={"inputs": "Hello", "prompt_name": "query", "model": "minilm-q"}))[0]
    assert [t["text"] for t in tokens] == ["[CLS]", "query", ":", "Hello", "[SEP]"]
    assert (tokens[3]["start"], tokens[3]["stop"]) == (len(QUERY_PROMPT), len(QUERY_PROMPT) + len("Hello"))


def test_tei_embed_errors(client: httpx.Client) -> None:
    assert "empty" in tei_error(client.post("/embed", json={"inputs": []}), 400, "Empty")
    message = tei_error(client.post("/embed", json={"inputs": TEXTS[3], "truncate": False}), 422, "Validation")
    assert "256" in message
    assert "left" in tei_error(client.post("/embed", json={"inputs": "a", "truncation_direction": "left"}),
                               422, "Validation")
    # Left is fine when nothing is cut.
    ok(client.post("/embed", json={"inputs": "a", "truncate": False, "truncation_direction": "Left"}))
    assert "prompt_name" in tei_error(client.post("/embed", json={"inputs": "a", "prompt_name": "bogus"}),
                                      422, "Validation")
    message = tei_error(client.post("/embed", json={"inputs": [[101, 102]]}), 422, "Validation")
    assert message.startswith("inputs: token-id arrays are not supported"), message
    tei_error(client.post("/embed", json={"inputs": 5}), 422, "Validation")
    tei_error(client.post("/embed", json={"inputs": "a", "normalize": "maybe"}), 422, "Validation")
    tei_error(client.post("/embed", json={"inputs": "a", "truncation_direction": "up"}), 422, "Validation")
    tei_error(client.post("/embed", json={"inputs": "a", "dimensions": 0}), 422, "Validation")
    tei_error(client.post("/embed", content=b'{"inputs": ', headers={"content-type": "application/json"}),
              422, "Validation")
    tei_error(client.post("/embed", json=["a"]), 422, "Validation")
    assert "nope" in tei_error(client.post("/embed", json={"inputs": "a", "model": "nope"}), 404, "Validation")


def test_tei_rerank_order_raw_scores_and_text(client: httpx.Client, engine: Engine, ref_scores: np.ndarray) -> None:
    ranks = ok(client.post("/rerank", json={"query": QUERY, "texts": DOCS, "return_text": True}))
    assert [r["index"] for r in ranks] == np.argsort(-ref_scores, kind="stable").tolist()
    for rank in ranks:
        assert set(rank) == {"index", "text", "score"}
        assert rank["text"] == DOCS[rank["index"]]
        assert abs(rank["score"] - float(ref_scores[rank["index"]])) <= ATOL
    raw = ok(client.post("/rerank", json={"query": QUERY, "texts": DOCS, "raw_scores": True, "truncate": True}))
    logits = engine.score("ce", QUERY, DOCS, apply_activation=False)
    assert [r["index"] for r in raw] == [r["index"] for r in ranks]  # sigmoid keeps the order
    assert all(set(r) == {"index", "score"} for r in raw)
    for rank in raw:
        assert abs(rank["score"] - float(logits[rank["index"]])) <= ATOL
    assert abs(1 / (1 + np.exp(-raw[0]["score"])) - ranks[0]["score"]) <= ATOL


def test_tei_rerank_errors(client: httpx.Client) -> None:
    assert tei_error(client.post("/rerank", json={"query": QUERY, "texts": []}), 400, "Empty") == (
        "`texts` cannot be empty"
    )
    tei_error(client.post("/rerank", json={"query": QUERY}), 422, "Validation")
    tei_error(client.post("/rerank", json={"query": QUERY, "texts": "a"}), 422, "Validation")
    # An embedder reranks by cosine (a Remora extension: TEI serves cross-encoders only).
    assert len(ok(client.post("/rerank", json={"query": QUERY, "texts": ["a"], "model": "minilm"}))) == 1
    tei_error(client.post("/rerank", json={"query": QUERY, "texts": ["a"], "model": "nope"}), 404, "Validation")


def test_tei_tokenize_ids_and_offsets(client: httpx.Client) -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    texts = [TEXTS[0], TEXTS[2], "running ##ing [SEP] Ünï"]
    body = ok(client.post("/tokenize", json={"inputs": texts}))
    assert len(body) == len(texts)
    for text, tokens in zip(texts, body, strict=True):
        assert [t["id"] for t in tokens] == tokenizer.encode(text).ids
        assert set(tokens[0]) == {"id", "text", "special", "start", "stop"}
        assert tokens[0] == {"id": 101, "text": "[CLS]", "special": True, "start": None, "stop": None}
        assert tokens[-1]["special"] and tokens[-1]["text"] == "[SEP]" and tokens[-1]["start"] is None
        data = text.encode("utf-8")
        last = 0
        for token in tokens[1:-1]:
            assert not token["special"]
            # TEI's offsets: bytes of the UTF-8 input; the text is that slice of the input.
            assert data[token["start"]:token["stop"]].decode("utf-8") == token["text"]
            assert token["start"] >= last
            last = token["stop"]
    plain = ok(client.post("/tokenize", json={"inputs": "Hello", "add_special_tokens": False}))
    assert plain == [[{"id": 7592, "text": "Hello", "special": False, "start": 0, "stop": 5}]]
    assert ok(client.post("/tokenize", json={"inputs": "Hello", "prompt_name": "query"}))[0][1]["text"] == "Hello"
    tei_error(client.post("/tokenize", json={"inputs": []}), 400, "Empty")
    tei_error(client.post("/tokenize", json={"inputs": "a", "prompt_name": "x"}), 422, "Validation")
    tei_error(client.post("/tokenize", json={"inputs": 3}), 422, "Validation")


def test_tei_info_and_health(client: httpx.Client) -> None:
    info = ok(client.get("/info"))
    assert info["model_id"] == "minilm" and info["served_model_name"] == "minilm"
    assert info["model_sha"] is None and info["sha"] is None and info["docker_label"] is None
    assert info["model_dtype"] == "float32"
    assert info["model_type"] == {"embedding": {"pooling": "mean"}}
    for field in ("max_concurrent_requests", "max_input_length", "max_batch_tokens", "max_batch_requests",
                  "max_client_batch_size", "tokenization_workers"):
        assert isinstance(info[field], int) and info[field] > 0, field
    assert info["max_input_length"] == 256
    assert info["auto_truncate"] is True
    assert isinstance(info["version"], str) and info["version"]
    ce = ok(client.get("/info", params={"model": "ce"}))
    assert ce["model_type"] == {"reranker": {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}}
    tei_error(client.get("/info", params={"model": "nope"}), 404, "Validation")
    health = client.get("/health")
    assert health.status_code == 200 and health.content == b""


def test_openapi_documents_the_request_bodies(client: httpx.Client) -> None:
    spec = ok(client.get("/openapi.json"))
    for path, field in (("/v1/embeddings", "input"), ("/v1/rerank", "documents"), ("/v2/rerank", "query"),
                        ("/embed", "inputs"), ("/rerank", "texts"), ("/tokenize", "add_special_tokens")):
        schema = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert field in schema["properties"], path
        assert "$ref" not in str(schema), path  # inlined: nothing dangles
