"""Remora's native API over real HTTP to a real `remora serve` process: /v1/encode, /v1/score,
/v1/extract, JSON and msgpack, and every malformed request a client can send.

Vectors are compared with the in-process engine and with sentence-transformers (1e-5 absolute,
cosine >= 0.99999); scores with the in-process engine (1e-5).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgpack
import numpy as np
import pytest

from remora.core import Engine, EngineSettings
from remora.core.defaults import DEFAULT_MODEL_ID
from tests.helpers import minilm_dir, write_json
from tests.sidecar.samples import QUERY, TEXTS
from tests.sidecar.server import ServerProcess

pytestmark = pytest.mark.integration

ATOL = 1e-5
DOCS = ["Sea otters crack shellfish open with rocks they carry.", "", "The stock market closed higher. " * 40,
        "otter", "中文 🦈 ünïcödé"]
QUERY_PROMPT = "query: "
MAX_INPUTS = 8


def vectors(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(response.json()["embeddings"], dtype=np.float32)


def assert_close(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    cosine = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert cosine.min() >= 0.99999, cosine
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


def token_counts(texts: list[str]) -> list[int]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return [len(e.ids) for e in tokenizer.encode_batch(texts)]


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"]


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(default_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=default_server.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(EngineSettings(num_threads=1))


@pytest.fixture(scope="module")
def second_server(tmp_path_factory: pytest.TempPathFactory, ce_dir: Path) -> Iterator[ServerProcess]:
    """A registry server: MiniLM, MiniLM with a query prompt, and the cross-encoder as the default
    reranker; at most MAX_INPUTS texts per request."""
    root = tmp_path_factory.mktemp("second-server")
    config = root / "models.yaml"
    write_json(config, {  # JSON is YAML
        "default_model": "minilm",
        "default_reranker": "ce",
        "models": [
            {"id": "minilm", "path": str(minilm_dir())},
            {"id": "minilm-q", "path": str(minilm_dir()), "query_prompt": QUERY_PROMPT},
            {"id": "ce", "path": str(ce_dir)},
        ],
    })
    server = ServerProcess(config=config, env={"REMORA_MAX_INPUTS": str(MAX_INPUTS)}, log=root / "server.log")
    server.wait_healthy()
    yield server
    assert server.stop() == 0, server.logs()


@pytest.fixture(scope="module")
def second(second_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=second_server.url, timeout=60) as c:
        yield c


# -- /v1/encode ----------------------------------------------------------------------------


def test_encode_matches_engine_and_sentence_transformers(client: httpx.Client, engine: Engine) -> None:
    from sentence_transformers import SentenceTransformer

    response = client.post("/v1/encode", json={"inputs": TEXTS})
    got = vectors(response)
    body = response.json()
    assert body["model"] == DEFAULT_MODEL_ID
    assert body["dim"] == 384
    assert got.shape == (len(TEXTS), 384)
    assert_close(got, engine.encode(DEFAULT_MODEL_ID, TEXTS))
    reference = SentenceTransformer(str(minilm_dir()), device="cpu").encode(TEXTS, convert_to_numpy=True)
    assert_close(got, reference)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # usage counts the real tokens run: the long text is cut at max_seq_len (256)
    assert body["usage"]["tokens"] == sum(min(n, 256) for n in token_counts(TEXTS))
    assert client.post("/v1/encode", json={"inputs": ["a"]}).json()["usage"]["tokens"] == 3  # [CLS] a [SEP]


def test_encode_single_string_and_alias(client: httpx.Client, engine: Engine) -> None:
    response = client.post("/v1/encode", json={"inputs": TEXTS[0], "model": "sentence-transformers/all-MiniLM-L6-v2"})
    got = vectors(response)
    assert got.shape == (1, 384)
    assert response.json()["model"] == DEFAULT_MODEL_ID  # the alias resolves to the id
    assert_close(got, engine.encode(DEFAULT_MODEL_ID, [TEXTS[0]]))


def test_encode_normalize_false(client: httpx.Client, engine: Engine) -> None:
    got = vectors(client.post("/v1/encode", json={"inputs": TEXTS, "normalize": False}))
    want = engine.encode(DEFAULT_MODEL_ID, TEXTS, normalize=False)
    assert_close(got, want)
    norms = np.linalg.norm(got, axis=1)
    assert np.all(np.abs(norms - 1.0) > 0.01), norms  # really not normalised


def test_encode_dimensions(client: httpx.Client, engine: Engine) -> None:
    got = vectors(client.post("/v1/encode", json={"inputs": TEXTS, "dimensions": 64}))
    full = engine.encode(DEFAULT_MODEL_ID, TEXTS)[:, :64]
    assert_close(got, full / np.linalg.norm(full, axis=1, keepdims=True))
    for bad in (0, 385, -1):
        assert_error(client.post("/v1/encode", json={"inputs": ["x"], "dimensions": bad}), 422, "INVALID_INPUT")


def test_encode_truncate_false_rejects_long_text(client: httpx.Client) -> None:
    long_text = "word " * 600
    assert_error(client.post("/v1/encode", json={"inputs": ["short", long_text], "truncate": False}),
                 413, "INPUT_TOO_LONG")
    # the same text is cut (not refused) by default
    assert vectors(client.post("/v1/encode", json={"inputs": [long_text]})).shape == (1, 384)


def test_encode_input_type_query_applies_the_query_prompt(second: httpx.Client) -> None:
    engine = Engine(EngineSettings(register_defaults=False, num_threads=1))
    engine.register("minilm-q", minilm_dir(), query_prompt=QUERY_PROMPT)
    query = vectors(second.post("/v1/encode", json={"model": "minilm-q", "inputs": TEXTS, "input_type": "query"}))
    document = vectors(second.post("/v1/encode", json={"model": "minilm-q", "inputs": TEXTS}))
    assert_close(query, engine.encode("minilm-q", TEXTS, is_query=True))
    assert_close(document, engine.encode("minilm-q", TEXTS))
    assert np.abs(query - document).max() > 1e-2  # the prompt changed the vectors
    # an explicit prompt replaces the model's
    explicit = vectors(second.post("/v1/encode", json={"model": "minilm-q", "inputs": TEXTS, "prompt": "search: "}))
    assert_close(explicit, engine.encode("minilm-q", TEXTS, prompt="search: "))


def test_default_model_of_a_registry_server(second: httpx.Client) -> None:
    response = second.post("/v1/encode", json={"inputs": ["x"]})
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "minilm"


# -- msgpack -------------------------------------------------------------------------------


def test_msgpack_request_gets_msgpack_float32_bytes(client: httpx.Client) -> None:
    want = vectors(client.post("/v1/encode", json={"inputs": TEXTS}))
    response = client.post("/v1/encode", content=msgpack.packb({"inputs": TEXTS}),
                           headers={"Content-Type": "application/msgpack"})
    assert response.status_code == 200, response.content[:200]
    assert response.headers["content-type"] == "application/msgpack"
    body = msgpack.unpackb(response.content, raw=False)
    assert body["model"] == DEFAULT_MODEL_ID and body["dim"] == 384
    assert body["usage"]["tokens"] > 0
    assert len(body["embeddings"]) == len(TEXTS)
    for row, expected in zip(body["embeddings"], want, strict=True):
        assert isinstance(row, bytes) and len(row) == 384 * 4
        np.testing.assert_allclose(np.frombuffer(row, dtype="<f4"), expected, atol=1e-6, rtol=0)


def test_accept_msgpack_with_a_json_request(client: httpx.Client) -> None:
    want = vectors(client.post("/v1/encode", json={"inputs": TEXTS[:2]}))
    response = client.post("/v1/encode", json={"inputs": TEXTS[:2]}, headers={"Accept": "application/msgpack"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/msgpack"
    rows = msgpack.unpackb(response.content, raw=False)["embeddings"]
    got = np.stack([np.frombuffer(r, dtype="<f4") for r in rows])
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


def test_msgpack_score_and_bad_msgpack(second: httpx.Client, client: httpx.Client) -> None:
    response = second.post("/v1/score", content=msgpack.packb({"query": QUERY, "documents": DOCS}),
                           headers={"Content-Type": "application/msgpack"})
    assert response.status_code == 200
    scores = msgpack.unpackb(response.content, raw=False)["scores"]
    assert len(scores) == len(DOCS) and all(0 < s < 1 for s in scores)
    bad = client.post("/v1/encode", content=b"\xc1\xc1", headers={"Content-Type": "application/msgpack"})
    assert_error(bad, 400, "INVALID_JSON")
    not_a_map = client.post("/v1/encode", content=msgpack.packb(["x"]), headers={"Content-Type": "application/msgpack"})
    assert_error(not_a_map, 422, "INVALID_INPUT")


# -- /v1/score -----------------------------------------------------------------------------


def test_score_matches_engine(second: httpx.Client, ce_dir: Path) -> None:
    engine = Engine(EngineSettings(register_defaults=False, num_threads=1))
    engine.register("ce", ce_dir)
    response = second.post("/v1/score", json={"model": "ce", "query": QUERY, "documents": DOCS})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "ce"
    got = np.asarray(body["scores"], dtype=np.float32)
    want = engine.score("ce", QUERY, DOCS)
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
    assert np.ptp(got) > 1e-3  # the documents score differently (100x the tolerance)
    assert body["usage"]["tokens"] > len(DOCS) * 3

    raw = second.post("/v1/score", json={"model": "ce", "query": QUERY, "documents": DOCS, "raw_scores": True})
    logits = np.asarray(raw.json()["scores"], dtype=np.float32)
    np.testing.assert_allclose(logits, engine.score("ce", QUERY, DOCS, apply_activation=False), atol=ATOL, rtol=0)
    np.testing.assert_allclose(1 / (1 + np.exp(-logits)), got, atol=ATOL, rtol=0)
    assert np.abs(logits - got).max() > 1e-3  # raw really is raw

    # no model: the registry's default reranker
    default = second.post("/v1/score", json={"query": QUERY, "documents": DOCS})
    assert default.json()["model"] == "ce"
    np.testing.assert_allclose(default.json()["scores"], got, atol=ATOL, rtol=0)


def test_score_errors(client: httpx.Client, second: httpx.Client) -> None:
    # no default reranker on the default server
    assert_error(client.post("/v1/score", json={"query": "q", "documents": ["d"]}), 422, "INVALID_INPUT")
    # a cross-encoder cannot encode; an embedder has no sparse or multi-vector output
    assert_error(second.post("/v1/encode", json={"model": "ce", "inputs": ["d"]}), 422, "UNSUPPORTED_TASK")
    for output in ("sparse", "multivector"):
        assert_error(client.post("/v1/encode", json={"inputs": ["d"], "outputs": [output]}), 422, "UNSUPPORTED_TASK")
    assert_error(client.post("/v1/encode", json={"inputs": ["d"], "outputs": ["colour"]}), 422, "INVALID_INPUT")


def test_score_with_an_embedder_is_cosine(second: httpx.Client) -> None:
    """An embedder scores by the cosine of the query's (query prompt applied) and the documents'
    embeddings; checked against sentence-transformers' own similarity on the same model."""
    from sentence_transformers import SentenceTransformer, util

    st = SentenceTransformer(str(minilm_dir()), device="cpu")
    docs = [d for d in DOCS if d]
    want = util.cos_sim(st.encode([QUERY_PROMPT + QUERY]), st.encode(docs))[0].numpy()
    response = second.post("/v1/score", json={"model": "minilm-q", "query": QUERY, "documents": docs})
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json()["scores"], want, atol=ATOL, rtol=0)
    explicit = second.post("/v1/encode", json={"model": "minilm-q", "inputs": docs, "outputs": ["dense"]})
    assert np.abs(vectors(explicit) - st.encode(docs)).max() <= ATOL
    assert_error(second.post("/v1/score", json={"query": "q", "documents": []}), 422, "EMPTY_INPUT")
    assert_error(second.post("/v1/score", json={"documents": ["d"]}), 422, "INVALID_INPUT")
    assert_error(second.post("/v1/score", json={"query": "q", "documents": "d"}), 422, "INVALID_INPUT")
    assert_error(second.post("/v1/score", json={"query": "q", "documents": ["d"], "raw_scores": "no"}),
                 422, "INVALID_INPUT")


# -- /v1/extract ---------------------------------------------------------------------------


def test_extract_without_model_or_default_extractor(client: httpx.Client) -> None:
    """The default server has no default_extractor: a body without `model` is refused, and so is
    the embedded MiniLM, which does not extract (tests/sidecar/test_zoo_http.py covers extraction)."""
    response = client.post("/v1/extract", json={"inputs": ["Paris is in France"]})
    assert_error(response, 422, "INVALID_INPUT")
    assert "default_extractor" in response.json()["error"]["message"]
    assert_error(client.post("/v1/extract", json={"model": DEFAULT_MODEL_ID, "inputs": ["Paris"]}),
                 422, "UNSUPPORTED_TASK")


# -- bad input -----------------------------------------------------------------------------


def _chunks(total: int, size: int = 2**20) -> Iterator[bytes]:
    yield b'{"inputs": ["'
    for _ in range(total // size):
        yield b"x" * size
    yield b'"]}'


TEN_MB = 10 * 2**20

BAD_REQUESTS: dict[str, tuple[dict[str, Any], int, str]] = {
    "malformed-json": ({"content": b'{"inputs": ["a"'}, 400, "INVALID_JSON"),
    "not-json-at-all": ({"content": b"inputs=a"}, 400, "INVALID_JSON"),
    "empty-body": ({"content": b""}, 400, "INVALID_JSON"),
    "json-array-body": ({"json": [{"inputs": ["a"]}]}, 422, "INVALID_INPUT"),
    "json-string-body": ({"json": "a"}, 422, "INVALID_INPUT"),
    "inputs-of-numbers": ({"json": {"inputs": [1]}}, 422, "INVALID_INPUT"),
    "inputs-a-number": ({"json": {"inputs": 5}}, 422, "INVALID_INPUT"),
    "inputs-null": ({"json": {"inputs": None}}, 422, "INVALID_INPUT"),
    "inputs-missing": ({"json": {}}, 422, "INVALID_INPUT"),
    "truncate-a-string": ({"json": {"inputs": ["a"], "truncate": "yes"}}, 422, "INVALID_INPUT"),
    "dimensions-a-string": ({"json": {"inputs": ["a"], "dimensions": "8"}}, 422, "INVALID_INPUT"),
    "input-type-unknown": ({"json": {"inputs": ["a"], "input_type": "passage"}}, 422, "INVALID_INPUT"),
    "unknown-field": ({"json": {"inputs": ["a"], "texts": ["a"]}}, 422, "INVALID_INPUT"),
    "empty-list": ({"json": {"inputs": []}}, 422, "EMPTY_INPUT"),
    "too-many-inputs": ({"json": {"inputs": ["a"] * 1025}}, 413, "TOO_MANY_INPUTS"),
    "10mb-content-length": ({"content": b'{"inputs": ["' + b"x" * TEN_MB + b'"]}'}, 413, "PAYLOAD_TOO_LARGE"),
    "10mb-chunked": ({"content": "chunked"}, 413, "PAYLOAD_TOO_LARGE"),
    "unknown-model": ({"json": {"inputs": ["a"], "model": "no-such-model"}}, 404, "MODEL_NOT_FOUND"),
    "model-id-dotdot": ({"json": {"inputs": ["a"], "model": "../etc/passwd"}}, 422, "INVALID_MODEL_ID"),
    "model-id-absolute": ({"json": {"inputs": ["a"], "model": "/etc/passwd"}}, 422, "INVALID_MODEL_ID"),
    "model-id-inner-dotdot": ({"json": {"inputs": ["a"], "model": "a/../../b"}}, 422, "INVALID_MODEL_ID"),
    "invalid-utf8": ({"content": b'{"inputs": ["caf\xe9 \xff\xfe"]}'}, 400, "INVALID_JSON"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_request_is_refused_and_the_server_keeps_serving(client: httpx.Client, case: str) -> None:
    kwargs, status, code = BAD_REQUESTS[case]
    if kwargs.get("content") == "chunked":
        kwargs = {"content": _chunks(TEN_MB)}
    headers = {} if "json" in kwargs else {"Content-Type": "application/json"}
    response = client.post("/v1/encode", headers=headers, **kwargs)
    if case == "10mb-chunked":
        assert "content-length" not in response.request.headers
        assert response.request.headers["transfer-encoding"] == "chunked"
    assert_error(response, status, code)
    good = client.post("/v1/encode", json={"inputs": ["still serving"]})
    assert good.status_code == 200, good.text


def test_too_many_inputs_follows_remora_max_inputs(second: httpx.Client) -> None:
    assert_error(second.post("/v1/encode", json={"inputs": ["a"] * (MAX_INPUTS + 1)}), 413, "TOO_MANY_INPUTS")
    assert_error(second.post("/v1/score", json={"query": "q", "documents": ["a"] * (MAX_INPUTS + 1)}),
                 413, "TOO_MANY_INPUTS")
    assert vectors(second.post("/v1/encode", json={"inputs": ["a"] * MAX_INPUTS})).shape == (MAX_INPUTS, 384)


def test_unknown_route_and_wrong_method(client: httpx.Client) -> None:
    assert_error(client.get("/v1/nope"), 404, "NOT_FOUND")
    assert_error(client.post("/v1/encodings", json={"inputs": ["a"]}), 404, "NOT_FOUND")
    wrong = client.get("/v1/encode")
    assert_error(wrong, 405, "METHOD_NOT_ALLOWED")
    assert "POST" in wrong.headers.get("allow", "")
    assert_error(client.put("/v1/score", json={}), 405, "METHOD_NOT_ALLOWED")
    assert client.post("/v1/encode", json={"inputs": ["ok"]}).status_code == 200


def test_no_internal_errors_were_logged(client: httpx.Client, default_server: ServerProcess) -> None:
    """Every refusal above was an answer, not a crash."""
    assert client.get("/healthz").status_code == 200
    logs = default_server.logs()
    assert "Traceback" not in logs and "internal error" not in logs, logs


def test_openapi_documents_every_request_body_without_dangling_refs(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]

    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                yield node["$ref"]
            for value in node.values():
                yield from refs(value)
        elif isinstance(node, list):
            for item in node:
                yield from refs(item)

    dangling = [r for r in refs(spec) if r.removeprefix("#/components/schemas/") not in schemas]
    assert dangling == []
    for path in ("/v1/encode", "/v1/score", "/v1/embeddings", "/v1/rerank", "/embed", "/rerank", "/v1/models"):
        body = spec["paths"][path]["post"]["requestBody"]["content"]
        assert {"application/json", "application/msgpack"} <= set(body), path
    assert "inputs" in spec["paths"]["/v1/encode"]["post"]["requestBody"]["content"]["application/json"]["schema"][
        "properties"
    ]
