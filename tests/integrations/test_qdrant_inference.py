"""Contract test of POST /v1/qdrant/inference: the requests a self-hosted Qdrant sends to its
`inference.address`, replayed byte for byte over real HTTP against a live sidecar.

No Qdrant server binary runs here, so the bodies below are written out as Qdrant serialises them,
read from qdrant/qdrant v1.19.0 (commit 74f3e85b9473c62560006c043e13737ce6b48412):

- src/common/inference/service.rs: `InferenceRequest {inputs, inference: Option<InferenceType>,
  token: Option<String>}` (derive Serialize, no skip attributes: a missing token is `null`);
  `InferenceType` lowercase "update" | "search"; `infer_remote` posts it with reqwest's
  `.json()` (compact serde_json, `content-type: application/json`, reqwest's `accept: */*`,
  `user-agent: Qdrant/1.19.0` from lib/common/common/src/defaults.rs), no Authorization header
  (the token is in the body: the caller's JWT `sub`, else config `inference.token`), plus the
  caller's headers ending in `-api-key` (api_keys.rs). The answer is `InferenceResponse
  {embeddings: Vec<VectorPersisted>, usage: Option<InferenceUsage>}`; a 400 body is read as
  `{"error": String}`; 401/403/5xx become service errors.
- src/common/inference/inference_input.rs: `InferenceInput {data, data_type, model, options:
  Option<HashMap>}` in that field order; data_type snake_case "text" | "image" | "object"; a
  Document's options are `null` when the REST caller gave none (lib/api/src/rest/schema.rs
  `Document.options: Option<DocumentOptions>`), `{}` when it came over gRPC
  (lib/api/src/conversions/inference.rs always wraps the proto map).
- lib/shard/src/operations/point_ops.rs: `VectorPersisted` is untagged Dense([f32]) |
  Sparse({indices, values}) | MultiDense([[f32]]); lib/api/src/rest/models.rs
  `InferenceUsage {models: {name: {tokens: u64}}}`.
- src/common/inference/local_model.rs: "bm25" / "qdrant/bm25" inputs are embedded inside Qdrant
  and never sent; infer_processing.rs zips the embeddings with the inputs (so counts must match).
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest

from tests.helpers import write_json
from tests.integrations.conftest import DENSE, MULTIVECTOR, SPARSE, Sidecar
from tests.sidecar.server import ServerProcess

pytestmark = pytest.mark.integration

PATH = "/v1/qdrant/inference"
# What reqwest puts on Qdrant's POST besides host and content-length (which `replay` adds).
QDRANT_HEADERS = (("content-type", "application/json"), ("accept", "*/*"), ("user-agent", "Qdrant/1.19.0"))

SHARKS = "Remoras ride on sharks."
STOCKS = "The stock market closed higher."
# serde_json escapes '"', '\\' and control characters and writes other characters as raw UTF-8.
ESCAPED_WIRE = r'Quote \" backslash \\ line\nbreak\ttab 中文 🦈'
ESCAPED = 'Quote " backslash \\ line\nbreak\ttab 中文 🦈'

DENSE_UPDATE = (
    '{"inputs":[{"data":"Remoras ride on sharks.","data_type":"text","model":"minilm","options":null},'
    '{"data":"The stock market closed higher.","data_type":"text","model":"minilm","options":null}],'
    '"inference":"update","token":null}'
)
MULTI_SEARCH = (
    '{"inputs":[{"data":"Remoras ride on sharks.","data_type":"text","model":"colbert","options":null}],'
    '"inference":"search","token":null}'
)
MULTI_UPDATE = MULTI_SEARCH.replace('"search"', '"update"')
SPARSE_UPDATE = (
    '{"inputs":[{"data":"Remoras ride on sharks.","data_type":"text","model":"splade","options":null},'
    '{"data":"' + ESCAPED_WIRE + '","data_type":"text","model":"splade","options":null}],'
    '"inference":"update","token":null}'
)
# One upsert of points with three named vectors: Qdrant collects every distinct Document of the
# batch into one request (a HashSet, so in no particular order).
MIXED_UPDATE = (
    '{"inputs":['
    '{"data":"Remoras ride on sharks.","data_type":"text","model":"colbert","options":null},'
    '{"data":"Remoras ride on sharks.","data_type":"text","model":"minilm","options":null},'
    '{"data":"The stock market closed higher.","data_type":"text","model":"splade","options":null},'
    '{"data":"' + ESCAPED_WIRE + '","data_type":"text","model":"minilm","options":null},'
    '{"data":"Remoras ride on sharks.","data_type":"text","model":"splade","options":null},'
    '{"data":"The stock market closed higher.","data_type":"text","model":"colbert","options":null}'
    '],"inference":"update","token":null}'
)
# Options as the caller gave them; `{}` is what a Document sent over gRPC carries.
OPTIONS_SEARCH = (
    '{"inputs":['
    '{"data":"Remoras ride on sharks.","data_type":"text","model":"minilm","options":{"dimensions":8}},'
    '{"data":"Remoras ride on sharks.","data_type":"text","model":"minilm","options":{}},'
    '{"data":"Remoras ride on sharks.","data_type":"text","model":"colbert","options":{"output":"multivector"}}'
    '],"inference":"search","token":null}'
)


def replay(url: str, body: str | bytes, headers: tuple[tuple[str, str], ...] = QDRANT_HEADERS) -> tuple[int, Any]:
    """POST `body` to the inference path with exactly `headers` (plus host and content-length),
    as Qdrant's reqwest client does; (status, parsed JSON)."""
    raw = body.encode() if isinstance(body, str) else body
    where = urlsplit(url)
    connection = http.client.HTTPConnection(where.hostname or "127.0.0.1", where.port, timeout=120)
    try:
        connection.putrequest("POST", PATH, skip_host=True, skip_accept_encoding=True)
        connection.putheader("host", where.netloc)
        for name, value in headers:
            connection.putheader(name, value)
        connection.putheader("content-length", str(len(raw)))
        connection.endheaders(raw)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def ok(url: str, body: str) -> dict[str, Any]:
    status, answer = replay(url, body)
    assert status == 200, answer
    # Exactly what Qdrant's InferenceResponse reads.
    assert set(answer) == {"embeddings", "usage"} and set(answer["usage"]) == {"models"}
    return answer


def encode(url: str, model: str, texts: list[str], *, query: bool, output: str = "dense", **extra: Any) -> dict[str, Any]:
    body = {"model": model, "inputs": texts, "input_type": "query" if query else "document", "outputs": [output], **extra}
    response = httpx.post(f"{url}/v1/encode", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def test_dense_upsert_equals_native_encode(sidecar: Sidecar) -> None:
    answer = ok(sidecar.url, DENSE_UPDATE)
    want = encode(sidecar.url, DENSE, [SHARKS, STOCKS], query=False)
    assert answer["embeddings"] == want["embeddings"]  # the same floats, in input order
    assert len(answer["embeddings"][0]) == 384
    assert answer["usage"] == {"models": {DENSE: {"tokens": want["usage"]["tokens"]}}}
    # Real MiniLM: two unrelated sentences are far apart, so the order really was kept.
    a, b = np.array(answer["embeddings"])
    assert float(a @ b) < 0.5


def test_search_uses_query_mode_and_update_document_mode(sidecar: Sidecar) -> None:
    search, update = ok(sidecar.url, MULTI_SEARCH), ok(sidecar.url, MULTI_UPDATE)
    as_query = encode(sidecar.url, MULTIVECTOR, [SHARKS], query=True, output="multivector")
    as_document = encode(sidecar.url, MULTIVECTOR, [SHARKS], query=False, output="multivector")
    assert search["embeddings"] == as_query["multivector"]
    assert update["embeddings"] == as_document["multivector"]
    assert search["embeddings"] != update["embeddings"]  # ColBERT's [Q] vs [D] marker and query padding
    matrix = search["embeddings"][0]  # a multi-vector: [tokens][dim]
    assert len(matrix) > 1 and {len(row) for row in matrix} == {24}
    assert search["usage"]["models"][MULTIVECTOR]["tokens"] == as_query["usage"]["tokens"]


def test_sparse_model_answers_sparse_vectors(sidecar: Sidecar) -> None:
    answer = ok(sidecar.url, SPARSE_UPDATE)
    want = encode(sidecar.url, SPARSE, [SHARKS, ESCAPED], query=False, output="sparse")
    assert answer["embeddings"] == want["sparse"]
    for vector in answer["embeddings"]:
        assert set(vector) == {"indices", "values"} and vector["indices"]
        assert vector["indices"] == sorted(set(vector["indices"])) and len(vector["values"]) == len(vector["indices"])
    assert answer["usage"]["models"][SPARSE]["tokens"] == want["usage"]["tokens"]


def test_mixed_models_in_one_request_keep_input_order(sidecar: Sidecar) -> None:
    answer = ok(sidecar.url, MIXED_UPDATE)
    dense = encode(sidecar.url, DENSE, [SHARKS, ESCAPED], query=False)
    sparse = encode(sidecar.url, SPARSE, [STOCKS, SHARKS], query=False, output="sparse")
    multi = encode(sidecar.url, MULTIVECTOR, [SHARKS, STOCKS], query=False, output="multivector")
    assert answer["embeddings"] == [
        multi["multivector"][0],
        dense["embeddings"][0],
        sparse["sparse"][0],
        dense["embeddings"][1],
        sparse["sparse"][1],
        multi["multivector"][1],
    ]
    assert answer["usage"] == {"models": {
        DENSE: {"tokens": dense["usage"]["tokens"]},
        SPARSE: {"tokens": sparse["usage"]["tokens"]},
        MULTIVECTOR: {"tokens": multi["usage"]["tokens"]},
    }}


def test_options_pick_dimensions_and_output(sidecar: Sidecar) -> None:
    answer = ok(sidecar.url, OPTIONS_SEARCH)
    short = encode(sidecar.url, DENSE, [SHARKS], query=True, dimensions=8)
    full = encode(sidecar.url, DENSE, [SHARKS], query=True)
    multi = encode(sidecar.url, MULTIVECTOR, [SHARKS], query=True, output="multivector")
    assert answer["embeddings"] == [short["embeddings"][0], full["embeddings"][0], multi["multivector"][0]]
    assert len(answer["embeddings"][0]) == 8
    # Two groups of the same model (with and without options) add up under its one name.
    assert answer["usage"]["models"][DENSE]["tokens"] == short["usage"]["tokens"] + full["usage"]["tokens"]


def _one(model: str = DENSE, data: str = '"Remoras ride on sharks."', data_type: str = "text",
         options: str = "null", inference: str = '"update"') -> str:
    return (f'{{"inputs":[{{"data":{data},"data_type":"{data_type}","model":"{model}","options":{options}}}],'
            f'"inference":{inference},"token":null}}')


BAD_REQUESTS = {
    # What a qdrant-client models.Image / models.InferenceObject turns into: Remora embeds text only.
    "image": (_one(data='"https://example.com/remora.png"', data_type="image"), "text only", "INVALID_INPUT"),
    "object": (_one(data='{"text":"Remoras"}', data_type="object"), "text only", "INVALID_INPUT"),
    "unknown data_type": (_one(data_type="audio"), "data_type", "INVALID_INPUT"),
    "data not a string": (_one(data="42"), "string", "INVALID_INPUT"),
    "unknown model": (_one(model="no-such-model"), "no-such-model", "MODEL_NOT_FOUND"),
    "empty model": (_one(model=""), "model", "INVALID_INPUT"),
    "model that does not encode": (_one(model="reranker"), "reranker", "UNSUPPORTED_TASK"),
    "unknown option": (_one(options='{"lang":"en"}'), "lang", "INVALID_INPUT"),
    "bad output": (_one(options='{"output":"sparse-ish"}'), "output", "INVALID_INPUT"),
    "output the model lacks": (_one(model=SPARSE, options='{"output":"dense"}'), "dense", "UNSUPPORTED_TASK"),
    "dimensions not an int": (_one(options='{"dimensions":"8"}'), "dimensions", "INVALID_INPUT"),
    "dimensions zero": (_one(options='{"dimensions":0}'), "dimensions", "INVALID_INPUT"),
    "dimensions over the width": (_one(options='{"dimensions":385}'), "dimensions", "INVALID_INPUT"),
    "dimensions of a multi-vector": (_one(model=MULTIVECTOR, options='{"dimensions":8}'), "dense", "INVALID_INPUT"),
    "bad inference": (_one(inference='"delete"'), "inference", "INVALID_INPUT"),
    "no inputs": ('{"inputs":[],"inference":"update","token":null}', "empty", "EMPTY_INPUT"),
    "missing inputs": ('{"inference":"update","token":null}', "inputs", "INVALID_INPUT"),
    "not JSON": ('{"inputs":[{"data":', "JSON", "INVALID_JSON"),
    "not an object": ("[]", "object", "INVALID_INPUT"),
    "too many inputs": (
        '{"inputs":[' + ",".join(['{"data":"x","data_type":"text","model":"minilm","options":null}'] * 1025)
        + '],"inference":"update","token":null}',
        "1025",
        "TOO_MANY_INPUTS",
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_is_a_400_with_an_error_message(sidecar: Sidecar, case: str) -> None:
    body, says, code = BAD_REQUESTS[case]
    status, answer = replay(sidecar.url, body)
    # Qdrant reads {"error": String} from a 400 and shows it to its caller as a bad request.
    assert status == 400, (case, answer)
    assert isinstance(answer, dict) and isinstance(answer.get("error"), str), answer
    assert says.lower() in answer["error"].lower(), answer
    assert answer["code"] == code, answer  # Remora's own code rides along; Qdrant ignores it


def test_the_server_keeps_serving_after_bad_requests(sidecar: Sidecar) -> None:
    for body, _, _ in BAD_REQUESTS.values():
        replay(sidecar.url, body)
    answer = ok(sidecar.url, DENSE_UPDATE)
    assert len(answer["embeddings"]) == 2


# -- the body token, with REMORA_API_KEY set ---------------------------------------------------

KEY = "remora-test-key"
ALIAS = "acme/minilm-e5"  # an alias: usage must name the model as Qdrant asked for it


@pytest.fixture(scope="module")
def guarded(sidecar: Sidecar, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second sidecar with an API key, serving MiniLM under an alias with e5-style prompts
    (so document and query mode give different dense vectors)."""
    if sidecar.server is None:
        pytest.skip("needs a local sidecar (REMORA_URL names an external one)")
    root = tmp_path_factory.mktemp("qdrant-guarded")
    config = root / "models.json"
    write_json(config, {"models": [{
        "id": "minilm-e5", "path": str(sidecar.dirs[DENSE]), "aliases": [ALIAS],
        "query_prompt": "query: ", "document_prompt": "passage: ",
    }]})
    server = ServerProcess(config=config, env={"REMORA_API_KEY": KEY}, log=root / "server.log", api_key=KEY)
    server.wait_healthy()
    try:
        yield server.url
    finally:
        assert server.stop() == 0, server.logs()


def _guarded_body(token: str, inference: str = "update") -> str:
    return (f'{{"inputs":[{{"data":"Remoras ride on sharks.","data_type":"text","model":"{ALIAS}","options":null}}],'
            f'"inference":"{inference}","token":{token}}}')


def test_body_token_opens_the_route(guarded: str) -> None:
    authorized = {"Authorization": f"Bearer {KEY}"}
    for inference, input_type in (("update", "document"), ("search", "query")):
        status, answer = replay(guarded, _guarded_body(f'"{KEY}"', inference))
        assert status == 200, answer
        want = httpx.post(f"{guarded}/v1/encode", headers=authorized, timeout=120,
                          json={"model": ALIAS, "inputs": [SHARKS], "input_type": input_type}).json()
        assert answer["embeddings"] == want["embeddings"]
        assert answer["usage"] == {"models": {ALIAS: {"tokens": want["usage"]["tokens"]}}}
    update = replay(guarded, _guarded_body(f'"{KEY}"'))[1]["embeddings"]
    search = replay(guarded, _guarded_body(f'"{KEY}"', "search"))[1]["embeddings"]
    assert update != search  # "passage: " vs "query: "


@pytest.mark.parametrize("token", ["null", '"wrong-key"', '""', f'"{KEY} "'])
def test_wrong_or_missing_token_is_a_401(guarded: str, token: str) -> None:
    status, answer = replay(guarded, _guarded_body(token))
    # Qdrant: "Authentication failed for inference service (401 Unauthorized): ..."
    assert status == 401 and isinstance(answer.get("error"), str), answer


def test_auth_comes_before_validation(guarded: str) -> None:
    broken = _guarded_body(f'"{KEY}"').replace('"inference":"update"', '"inference":"delete"')
    assert replay(guarded, broken)[0] == 400  # the right key: told what is wrong
    assert replay(guarded, broken.replace(KEY, "wrong"))[0] == 401  # a wrong one: told nothing
    assert replay(guarded, '{"inputs":')[0] == 401


def test_header_key_needs_no_body_token(guarded: str) -> None:
    # A caller's `x-api-key` header is one Qdrant forwards (it ends in "-api-key").
    headers = (*QDRANT_HEADERS, ("x-api-key", KEY))
    status, answer = replay(guarded, _guarded_body("null"), headers)
    assert status == 200 and len(answer["embeddings"][0]) == 384
    status, _ = replay(guarded, _guarded_body("null"), (*QDRANT_HEADERS, ("x-api-key", "wrong")))
    assert status == 401
