"""The model zoo over real HTTP to a real `remora serve` process: SPLADE and BGE-M3 sparse vectors,
ColBERT and BGE-M3 multi-vectors, quantised encodings, token-classification and GLiNER extraction,
and a yes/no (Qwen3-Reranker) reranker, on tiny seeded models served from one registry file.

Every answer is compared with the in-process engine on the same directories: vectors, scores and
entity scores within 1e-5, sparse index sets, token counts, entity spans and quantised codes
exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgpack
import numpy as np
import pytest

from remora.core import Engine, EngineSettings
from remora.core.model import Encoded
from remora.core.quantize import quantize, quantize_int8
from tests.helpers import minilm_dir, write_json
from tests.sidecar.server import ServerProcess
from tests.sidecar.test_native import assert_error
from tests.zoo_models import (
    COLBERT_QUERY_LENGTH,
    build_bert_ner,
    build_bge_m3,
    build_pylate,
    build_qwen,
    build_splade,
    write_synthetic_gliner,
)

pytestmark = pytest.mark.integration

ATOL = 1e-5
TEXTS = [
    "Remora FISH swim beside Sharks and eat what the shark leaves behind",
    "x",
    "The quick brown fox jumps over the lazy dog. " * 20,  # past the tiny models' 128 tokens
    "中文 🦈 ünïcödé",
]
QUERY = "what is a remora?"
DOCS = [
    "Remoras, also called suckerfish, attach to sharks!",
    "x",
    "...!!!",
    "The stock market closed higher on Tuesday.",
]
NER_TEXTS = [
    "Barack Obama visited Paris with Angela Merkel on 3 March 2015.",
    "Apple Inc. and Microsoft compete in Cupertino, California.",
    "Tim Cook leads Apple; Satya Nadella leads Microsoft, and Sundar Pichai leads Google.",
    "",
    "Ünïcödé names like Zoë Ångström and 中文 文本 appear here 🦈!",
]
GLINER_LABELS = ["person", "organization", "location"]
ENCODINGS = ("float16", "int8", "uint8", "binary", "ubinary")
MSGPACK = {"Content-Type": "application/msgpack"}

# The registry: model id -> its options (its directory comes from `zoo_dirs`)
MODELS: dict[str, dict[str, Any]] = {
    "minilm": {},
    "splade": {},
    "colbert": {},
    "m3": {},
    "ner": {},
    "gliner": {},
    "rr": {"head": "yes_no"},
}


@dataclass(frozen=True)
class Zoo:
    client: httpx.Client
    engine: Engine
    server: ServerProcess


@pytest.fixture(scope="module")
def zoo_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("zoo")
    build_qwen(root / "rr", "Qwen3ForCausalLM", 8, tie_word_embeddings=True)
    return {
        "minilm": minilm_dir(),
        "splade": build_splade(root / "splade"),
        "colbert": build_pylate(root / "colbert"),
        "m3": build_bge_m3(root / "m3")[0],
        "ner": build_bert_ner(root / "ner"),
        "gliner": write_synthetic_gliner(root / "gliner"),
        "rr": root / "rr",
    }


@pytest.fixture(scope="module")
def zoo(zoo_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zoo]:
    root = tmp_path_factory.mktemp("zoo-server")
    config = root / "models.yaml"
    write_json(config, {  # JSON is YAML
        "default_model": "minilm",
        "default_extractor": "ner",
        "models": [{"id": name, "path": str(zoo_dirs[name]), **options} for name, options in MODELS.items()],
    })
    engine = Engine(EngineSettings(register_defaults=False, num_threads=1))
    for name, options in MODELS.items():
        engine.register(name, zoo_dirs[name], **options)
    server = ServerProcess(config=config, log=root / "server.log").wait_healthy()
    try:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            yield Zoo(client, engine, server)
    finally:
        engine.close()
        assert server.stop() == 0, server.logs()


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return response.json()


def unpack(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.content[:300]
    assert response.headers["content-type"] == "application/msgpack"
    return msgpack.unpackb(response.content, raw=False)


def assert_sparse(got: list[dict[str, Any]], want: list[Any]) -> None:
    assert len(got) == len(want)
    for vector, expected in zip(got, want, strict=True):
        assert vector["indices"] == expected.indices.tolist()
        np.testing.assert_allclose(vector["values"], expected.values, atol=ATOL, rtol=0)
    assert sum(len(v["indices"]) for v in got) > len(got)  # real vectors, not empty ones


def assert_matrices(got: list[Any], want: list[np.ndarray]) -> None:
    assert len(got) == len(want)
    for matrix, expected in zip(got, want, strict=True):
        array = np.asarray(matrix, dtype=np.float32).reshape(-1, expected.shape[1])
        assert array.shape == expected.shape
        np.testing.assert_allclose(array, expected, atol=ATOL, rtol=0)


def engine_outputs(zoo: Zoo, model: str, texts: list[str], outputs: tuple[str, ...] | None,
                   **kwargs: Any) -> Encoded:
    return zoo.engine.encode_outputs(model, texts, outputs=outputs, **kwargs)


# -- SPLADE --------------------------------------------------------------------------------


def test_splade_sparse_matches_engine(zoo: Zoo) -> None:
    want = engine_outputs(zoo, "splade", TEXTS, ("sparse",)).sparse
    assert want is not None
    body = ok(zoo.client.post("/v1/encode", json={"model": "splade", "inputs": TEXTS, "outputs": ["sparse"]}))
    assert body["model"] == "splade"
    assert "embeddings" not in body or body["embeddings"] is None
    assert body["usage"]["tokens"] > len(TEXTS)
    assert_sparse(body["sparse"], want)
    # no outputs: a SPLADE model's first (and only) output is its sparse one
    default = ok(zoo.client.post("/v1/encode", json={"model": "splade", "inputs": TEXTS}))
    assert_sparse(default["sparse"], want)
    assert default.get("embeddings") is None


def test_splade_embed_sparse_tei_shape(zoo: Zoo) -> None:
    want = engine_outputs(zoo, "splade", TEXTS, ("sparse",)).sparse
    assert want is not None
    response = zoo.client.post("/embed_sparse", json={"model": "splade", "inputs": TEXTS})
    assert response.status_code == 200, response.text
    got = response.json()
    assert len(got) == len(TEXTS)
    for row, expected in zip(got, want, strict=True):
        assert [item["index"] for item in row] == expected.indices.tolist()
        np.testing.assert_allclose([item["value"] for item in row], expected.values, atol=ATOL, rtol=0)
    single = zoo.client.post("/embed_sparse", json={"model": "splade", "inputs": TEXTS[0]})
    assert [item["index"] for item in single.json()[0]] == want[0].indices.tolist()


def test_splade_has_no_dense_output(zoo: Zoo) -> None:
    response = zoo.client.post("/v1/encode", json={"model": "splade", "inputs": ["x"], "outputs": ["dense"]})
    assert_error(response, 422, "UNSUPPORTED_TASK")
    assert_error(zoo.client.post("/v1/encode", json={"model": "splade", "inputs": ["x"], "outputs": ["multivector"]}),
                 422, "UNSUPPORTED_TASK")


def test_sparse_in_msgpack(zoo: Zoo) -> None:
    want = engine_outputs(zoo, "splade", TEXTS, ("sparse",)).sparse
    assert want is not None
    body = unpack(zoo.client.post("/v1/encode", content=msgpack.packb({"model": "splade", "inputs": TEXTS}),
                                  headers=MSGPACK))
    assert_sparse(body["sparse"], want)


# -- ColBERT -------------------------------------------------------------------------------


@pytest.mark.parametrize("input_type", ["query", "document"])
def test_colbert_multivector_matches_engine(zoo: Zoo, input_type: str) -> None:
    is_query = input_type == "query"
    want = engine_outputs(zoo, "colbert", DOCS, ("multivector",), is_query=is_query).multivector
    assert want is not None
    request = {"model": "colbert", "inputs": DOCS, "outputs": ["multivector"], "input_type": input_type}
    body = ok(zoo.client.post("/v1/encode", json=request))
    assert body["dim"] == want[0].shape[1] == 24
    assert body.get("embeddings") is None and body.get("sparse") is None
    assert_matrices(body["multivector"], want)
    if is_query:  # expanded with [MASK] to the query length
        assert [len(m) for m in body["multivector"]] == [COLBERT_QUERY_LENGTH] * len(DOCS)
    else:
        assert len({len(m) for m in body["multivector"]}) > 1
    # msgpack: one bytes per matrix, float32 row-major little-endian
    packed = unpack(zoo.client.post("/v1/encode", content=msgpack.packb(request), headers=MSGPACK))
    for matrix, expected in zip(packed["multivector"], want, strict=True):
        assert isinstance(matrix, bytes) and len(matrix) == expected.size * 4
    assert_matrices([np.frombuffer(m, dtype="<f4") for m in packed["multivector"]], want)


def test_colbert_score_is_maxsim(zoo: Zoo) -> None:
    want = zoo.engine.score("colbert", QUERY, DOCS)
    body = ok(zoo.client.post("/v1/score", json={"model": "colbert", "query": QUERY, "documents": DOCS}))
    assert body["model"] == "colbert"
    np.testing.assert_allclose(body["scores"], want, atol=ATOL, rtol=0)
    assert np.ptp(want) > 1e-2
    # MaxSim of the served query and document matrices
    query = ok(zoo.client.post("/v1/encode", json={"model": "colbert", "inputs": [QUERY], "input_type": "query"}))
    docs = ok(zoo.client.post("/v1/encode", json={"model": "colbert", "inputs": DOCS}))
    q = np.asarray(query["multivector"][0], dtype=np.float32)
    maxsim = [float((q @ np.asarray(d, dtype=np.float32).T).max(axis=1).sum()) for d in docs["multivector"]]
    np.testing.assert_allclose(body["scores"], maxsim, atol=1e-4, rtol=0)


# -- BGE-M3 --------------------------------------------------------------------------------


def test_bge_m3_three_outputs_in_one_request(zoo: Zoo) -> None:
    outputs = ("dense", "sparse", "multivector")
    want = engine_outputs(zoo, "m3", TEXTS, outputs)
    assert want.dense is not None and want.sparse is not None and want.multivector is not None
    request = {"model": "m3", "inputs": TEXTS, "outputs": list(outputs)}
    body = ok(zoo.client.post("/v1/encode", json=request))
    assert body["dim"] == 64
    np.testing.assert_allclose(np.asarray(body["embeddings"], dtype=np.float32), want.dense, atol=ATOL, rtol=0)
    assert_sparse(body["sparse"], want.sparse)
    assert_matrices(body["multivector"], want.multivector)
    # the same in msgpack
    packed = unpack(zoo.client.post("/v1/encode", content=msgpack.packb(request), headers=MSGPACK))
    dense = np.stack([np.frombuffer(row, dtype="<f4") for row in packed["embeddings"]])
    np.testing.assert_allclose(dense, want.dense, atol=ATOL, rtol=0)
    assert_sparse(packed["sparse"], want.sparse)
    assert_matrices([np.frombuffer(m, dtype="<f4") for m in packed["multivector"]], want.multivector)
    # default output: dense; and its score is the cosine of dense vectors
    default = ok(zoo.client.post("/v1/encode", json={"model": "m3", "inputs": TEXTS}))
    assert default.get("sparse") is None and default.get("multivector") is None
    np.testing.assert_allclose(default["embeddings"], want.dense, atol=ATOL, rtol=0)
    score = ok(zoo.client.post("/v1/score", json={"model": "m3", "query": QUERY, "documents": DOCS}))
    np.testing.assert_allclose(score["scores"], zoo.engine.score("m3", QUERY, DOCS), atol=ATOL, rtol=0)


# -- quantised encodings -------------------------------------------------------------------

QUANT_DTYPES = {"float16": "<f2", "int8": "i1", "uint8": "u1", "binary": "i1", "ubinary": "u1"}


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_dense_encoding_matches_quantize(zoo: Zoo, encoding: str) -> None:
    vectors = zoo.engine.encode("minilm", TEXTS)
    want = quantize(vectors, encoding)
    width = 384 if encoding in ("float16", "int8", "uint8") else 48
    assert want.shape == (len(TEXTS), width)
    request = {"inputs": TEXTS, "encoding": encoding}
    body = ok(zoo.client.post("/v1/encode", json=request))
    assert body["model"] == "minilm" and body["encoding"] == encoding and body["dim"] == 384
    got = np.asarray(body["embeddings"])
    if encoding == "float16":
        np.testing.assert_array_equal(got.astype(np.float16), want)
    else:
        np.testing.assert_array_equal(got, want.astype(np.int64))
    if encoding in ("int8", "uint8"):
        scales = np.asarray(body["scales"], dtype=np.float32)
        np.testing.assert_allclose(scales, quantize_int8(vectors)[1], atol=1e-7, rtol=0)
        codes = got - (128 if encoding == "uint8" else 0)
        assert codes.min() >= -127 and codes.max() <= 127
        error = np.abs(vectors - codes * scales[:, None])
        assert np.all(error <= scales[:, None] / 2 + 1e-6), error.max()
    else:
        assert body.get("scales") is None
    # msgpack: one bytes per vector, in the encoding's dtype
    packed = unpack(zoo.client.post("/v1/encode", content=msgpack.packb(request), headers=MSGPACK))
    rows = packed["embeddings"]
    assert all(isinstance(row, bytes) and len(row) == width * np.dtype(QUANT_DTYPES[encoding]).itemsize
               for row in rows)
    decoded = np.stack([np.frombuffer(row, dtype=QUANT_DTYPES[encoding]) for row in rows])
    np.testing.assert_array_equal(decoded, want)
    if encoding in ("int8", "uint8"):
        np.testing.assert_array_equal(np.asarray(packed["scales"], dtype=np.float32), scales)


def test_multivector_encoding(zoo: Zoo) -> None:
    want = engine_outputs(zoo, "colbert", DOCS, ("multivector",)).multivector
    assert want is not None
    request = {"model": "colbert", "inputs": DOCS, "outputs": ["multivector"], "encoding": "float16"}
    body = ok(zoo.client.post("/v1/encode", json=request))
    for matrix, expected in zip(body["multivector"], want, strict=True):
        np.testing.assert_array_equal(np.asarray(matrix, dtype=np.float16), quantize(expected, "float16"))
    packed = unpack(zoo.client.post("/v1/encode", content=msgpack.packb({**request, "encoding": "ubinary"}),
                                    headers=MSGPACK))
    for matrix, expected in zip(packed["multivector"], want, strict=True):
        np.testing.assert_array_equal(np.frombuffer(matrix, dtype=np.uint8).reshape(len(expected), -1),
                                      quantize(expected, "ubinary"))


# -- /v1/extract ---------------------------------------------------------------------------


def assert_entities(got: list[dict[str, Any]], want: list[list[Any]], texts: list[str]) -> None:
    assert len(got) == len(want) == len(texts)
    for item, expected, text in zip(got, want, texts, strict=True):
        entities = item["entities"]
        assert [(e["text"], e["label"], e["start"], e["end"]) for e in entities] == [
            (e.text, e.label, e.start, e.end) for e in expected
        ], text
        for entity in entities:
            assert entity["text"] == text[entity["start"] : entity["end"]]
        np.testing.assert_allclose([e["score"] for e in entities], [e.score for e in expected], atol=ATOL, rtol=0)


def test_extract_ner_matches_engine(zoo: Zoo) -> None:
    want = zoo.engine.extract("ner", NER_TEXTS)
    assert sum(len(e) for e in want) > 5  # the seeded model does tag entities
    body = ok(zoo.client.post("/v1/extract", json={"model": "ner", "inputs": NER_TEXTS}))
    assert body["model"] == "ner" and body["usage"]["tokens"] > len(NER_TEXTS)
    assert_entities(body["results"], want, NER_TEXTS)
    # no model: the registry's default_extractor
    default = ok(zoo.client.post("/v1/extract", json={"inputs": NER_TEXTS}))
    assert default["model"] == "ner"
    assert_entities(default["results"], want, NER_TEXTS)
    # a single string
    single = ok(zoo.client.post("/v1/extract", json={"inputs": NER_TEXTS[0]}))
    assert_entities(single["results"], want[:1], NER_TEXTS[:1])
    # msgpack
    packed = unpack(zoo.client.post("/v1/extract", content=msgpack.packb({"inputs": NER_TEXTS}), headers=MSGPACK))
    assert_entities(packed["results"], want, NER_TEXTS)


def test_extract_options_match_engine(zoo: Zoo) -> None:
    labels = sorted({e.label for found in zoo.engine.extract("ner", NER_TEXTS) for e in found})
    assert len(labels) > 1
    keep = labels[:1]
    want = zoo.engine.extract("ner", NER_TEXTS, labels=keep)
    body = ok(zoo.client.post("/v1/extract", json={"inputs": NER_TEXTS, "labels": keep}))
    assert_entities(body["results"], want, NER_TEXTS)
    assert {e["label"] for item in body["results"] for e in item["entities"]} == set(keep)
    for aggregation in ("first", "average", "max"):
        want = zoo.engine.extract("ner", NER_TEXTS, aggregation=aggregation, threshold=0.3)
        request = {"inputs": NER_TEXTS, "aggregation": aggregation, "threshold": 0.3}
        assert_entities(ok(zoo.client.post("/v1/extract", json=request))["results"], want, NER_TEXTS)


def test_extract_refusals(zoo: Zoo) -> None:
    for model in ("minilm", "splade", "rr"):
        assert_error(zoo.client.post("/v1/extract", json={"model": model, "inputs": ["Paris"]}),
                     422, "UNSUPPORTED_TASK")
    assert_error(zoo.client.post("/v1/extract", json={"inputs": ["Paris"], "aggregation": "mean"}),
                 422, "INVALID_INPUT")
    assert_error(zoo.client.post("/v1/extract", json={"inputs": ["Paris"], "threshold": 2.0}), 422, "INVALID_INPUT")
    assert_error(zoo.client.post("/v1/extract", json={"inputs": []}), 422, "EMPTY_INPUT")
    assert_error(zoo.client.post("/v1/extract", json={"inputs": ["Paris"], "model": "nope"}), 404, "MODEL_NOT_FOUND")
    # an extraction model cannot encode or score
    assert_error(zoo.client.post("/v1/encode", json={"model": "ner", "inputs": ["Paris"]}), 422, "UNSUPPORTED_TASK")


def test_gliner_needs_labels_and_matches_engine(zoo: Zoo) -> None:
    for labels in (None, [], ["person", " "]):
        request: dict[str, Any] = {"model": "gliner", "inputs": NER_TEXTS}
        if labels is not None:
            request["labels"] = labels
        assert_error(zoo.client.post("/v1/extract", json=request), 422, "INVALID_INPUT")
    want = zoo.engine.extract("gliner", NER_TEXTS, labels=GLINER_LABELS, threshold=0.3)
    assert sum(len(e) for e in want) > 3
    request = {"model": "gliner", "inputs": NER_TEXTS, "labels": GLINER_LABELS, "threshold": 0.3}
    assert_entities(ok(zoo.client.post("/v1/extract", json=request))["results"], want, NER_TEXTS)


# -- the yes/no reranker -------------------------------------------------------------------


def test_yes_no_reranker_score_and_rerank(zoo: Zoo) -> None:
    want = zoo.engine.score("rr", QUERY, DOCS)
    assert np.ptp(want) > 1e-4
    body = ok(zoo.client.post("/v1/score", json={"model": "rr", "query": QUERY, "documents": DOCS}))
    assert body["model"] == "rr"
    np.testing.assert_allclose(body["scores"], want, atol=ATOL, rtol=0)
    assert all(0 < s < 1 for s in body["scores"])  # P(yes)
    raw = ok(zoo.client.post("/v1/score", json={"model": "rr", "query": QUERY, "documents": DOCS,
                                                "raw_scores": True}))
    np.testing.assert_allclose(raw["scores"], zoo.engine.score("rr", QUERY, DOCS, apply_activation=False),
                               atol=ATOL, rtol=0)

    rerank = ok(zoo.client.post("/v2/rerank", json={"model": "rr", "query": QUERY, "documents": DOCS,
                                                    "return_documents": True}))
    assert rerank["model"] == "rr"
    results = rerank["results"]
    assert [r["index"] for r in results] == np.argsort(-want, kind="stable").tolist()
    for result in results:
        assert result["relevance_score"] == pytest.approx(float(want[result["index"]]), abs=ATOL)
        assert result["document"]["text"] == DOCS[result["index"]]
    top = ok(zoo.client.post("/v2/rerank", json={"model": "rr", "query": QUERY, "documents": DOCS, "top_n": 2}))
    assert [r["index"] for r in top["results"]] == [r["index"] for r in results[:2]]


def test_no_internal_errors_were_logged(zoo: Zoo) -> None:
    assert zoo.client.get("/healthz").status_code == 200
    logs = zoo.server.logs()
    assert "Traceback" not in logs and "internal error" not in logs, logs
