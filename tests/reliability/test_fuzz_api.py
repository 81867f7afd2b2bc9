"""Hostile input over real HTTP: schemathesis on every route of the live server's own OpenAPI,
then a list of malformed bodies, each followed by a request that must succeed.

One `remora serve` (default limits: 4 MiB bodies, 1,024 texts) with a tiny seeded encoder
(default model), a cross-encoder (default reranker) and a token classifier (default extractor)
under REMORA_MODEL_ROOTS, and a second one with the body limit raised to 12 MiB.

The bar, from README's error contract: bad input is a 4xx with a machine-readable code in the
route family's error shape, never a 5xx, never a reset connection, never a hang, and the server
keeps serving. Fuzzing checks, on every generated case, zero 5xx and no transport error, the error
shape, that schema-invalid (negative) cases are refused, and schemathesis' response-schema and
content-type conformance against the response the OpenAPI documents for the status. Every status
answered must be documented, every documented answer with a body must carry a schema (each route
family's error body included: sidecar/openapi.py), and a mismatch is listed in OPENAPI_MISMATCHES
(not silenced); there is none.
"""

from __future__ import annotations

import pkgutil
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgpack
import orjson
import pytest
import requests
import schemathesis
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import content_type_conformance, negative_data_rejection, response_schema_conformance
from schemathesis.core.failures import FailureGroup

from remora.sidecar.errors import STATUS, is_plain, is_tei
from tests.helpers import randomize_layernorms, save_tiny, tiny_bert_config, write_json
from tests.sidecar.server import ServerProcess
from tests.zoo_models import build_bert_ner

pytestmark = pytest.mark.integration

MSGPACK = "application/msgpack"
EXAMPLES = 10  # per operation and generation mode (positive and negative): ~550 requests in all
RAISED_LIMIT = 12 * 2**20
TINY_POSITIONS = 128

# Where the OpenAPI and the server disagree on a documented response: (operation, check).
OPENAPI_MISMATCHES: set[tuple[str, str]] = set()
# Answers documented without a body: the readiness routes' 204 and TEI's empty 200 from /health.
BODILESS = {("GET", "204"), ("GET /health", "200")}


@schemathesis.serializer(MSGPACK)
def _msgpack_body(context: Any, value: Any) -> bytes:
    # The native routes take msgpack as well as JSON; schemathesis knows no msgpack of its own.
    return bytes(msgpack.packb(value, use_bin_type=True))


# -- servers ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny (a seeded 64-d BERT encoder, 128 positions), ce (a one-label cross-encoder) and ner (a
    BIO token classifier) under one model root, and the registry naming them the defaults."""
    from transformers import BertForSequenceClassification, BertModel

    root = tmp_path_factory.mktemp("fuzz") / "models"
    torch.manual_seed(0)
    encoder = BertModel(tiny_bert_config(), add_pooling_layer=False).eval()
    randomize_layernorms(encoder, 0)
    save_tiny(encoder, root / "tiny")
    torch.manual_seed(0)
    save_tiny(BertForSequenceClassification(tiny_bert_config(num_labels=1)).eval(), root / "ce")
    build_bert_ner(root / "ner")
    write_json(root.parent / "models.yaml", {  # JSON is YAML
        "default_model": "tiny", "default_reranker": "ce", "default_extractor": "ner",
        "models": [{"id": name, "path": str(root / name)} for name in ("tiny", "ce", "ner")],
    })
    return root


@dataclass
class Servers:
    default: ServerProcess
    raised: ServerProcess  # REMORA_MAX_REQUEST_BYTES=12MiB


@pytest.fixture(scope="module")
def servers(model_root: Path) -> Iterator[Servers]:
    config = model_root.parent / "models.yaml"
    env = {"REMORA_MODEL_ROOTS": str(model_root)}
    default = ServerProcess(config=config, env=env, log=model_root.parent / "default.log")
    raised = ServerProcess(config=config, env={**env, "REMORA_MAX_REQUEST_BYTES": str(RAISED_LIMIT)},
                           log=model_root.parent / "raised.log")
    try:
        default.wait_healthy()
        raised.wait_healthy()
        yield Servers(default, raised)
    finally:
        codes = (default.stop(), raised.stop())
    assert codes == (0, 0), default.logs() + raised.logs()


@pytest.fixture(scope="module")
def client(servers: Servers) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=servers.default.url, timeout=30) as client:
        yield client


# -- the error contract -----------------------------------------------------------------------------------

TEI_KINDS = {"Empty", "Validation", "Overloaded", "Unhealthy", "Backend"}


def error_code(path: str, response: httpx.Response | requests.Response) -> str:
    """The machine-readable code of an error answer, checked against its route family's shape:
    native and OpenAI {"error": {"code", "message", "type"}} with the code's own status; TEI
    {"error", "error_type", "code"}; Qdrant and Weaviate {"error", "code"}, every Qdrant client
    error a 400. The root /rerank is TEI's and Weaviate's reranker both."""
    body = response.json()
    assert isinstance(body, dict) and "error" in body, (path, response.text[:300])
    if is_plain(path) or (path == "/rerank" and "error_type" not in body):
        assert isinstance(body["error"], str) and body["code"] in STATUS, body
        code = str(body["code"])
        if path.startswith("/v1/qdrant/") and response.status_code < 500:
            assert response.status_code in (400, 401, 403, 429), (response.status_code, body)
        else:
            assert response.status_code == STATUS[code], (response.status_code, body)
        return code
    if is_tei(path):
        assert isinstance(body["error"], str) and body["error_type"] in TEI_KINDS and body["code"] in STATUS, body
        return str(body["code"])
    error = body["error"]
    assert isinstance(error, dict) and isinstance(error.get("message"), str) and error.get("type"), body
    assert error["code"] in STATUS and response.status_code == STATUS[error["code"]], (response.status_code, body)
    return str(error["code"])


# -- fuzzing every route ------------------------------------------------------------------------------------


@dataclass
class Findings:
    sent: Counter[str] = field(default_factory=Counter)  # operation -> requests
    statuses: Counter[int] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    transport_errors: list[str] = field(default_factory=list)
    bad_error_shapes: list[str] = field(default_factory=list)
    mismatches: dict[tuple[str, str], set[int]] = field(default_factory=lambda: defaultdict(set))
    undocumented: set[tuple[str, int]] = field(default_factory=set)  # statuses the OpenAPI does not list
    no_negative_cases: set[str] = field(default_factory=set)


def only_free_strings(operation: Any) -> bool:
    """No body, and no inputs but string path parameters: nothing a negative case could break."""
    raw = operation.definition.raw
    params = raw.get("parameters", [])
    return "requestBody" not in raw and all(p["in"] == "path" and p["schema"].get("type") == "string" for p in params)


def run_operation(operation: Any, mode: GenerationMode, base_url: str, session: requests.Session,
                  findings: Findings) -> None:
    label = operation.label

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case: Any) -> None:
        if case.media_type == MSGPACK:
            try:
                msgpack.packb(case.body, use_bin_type=True)
            except (OverflowError, TypeError):  # an integer past 64 bits: JSON can carry it
                case.media_type = "application/json"
        try:
            response = case.call(base_url=base_url, session=session, timeout=30)
        except requests.RequestException as exc:
            findings.transport_errors.append(f"{label}: {exc!r} <- {case.as_curl_command(base_url=base_url)[:400]}")
            return
        findings.sent[label] += 1
        findings.statuses[response.status_code] += 1
        if str(response.status_code) not in operation.definition.raw.get("responses", {}):
            findings.undocumented.add((label, response.status_code))
        path = response.request.path_url.split("?")[0]
        if response.status_code >= 500:
            findings.server_errors.append(
                f"{label}: {response.status_code} {response.text[:200]} <- {case.as_curl_command(base_url=base_url)[:400]}"
            )
        elif response.status_code >= 400:
            try:
                error_code(path, response)
            except (AssertionError, ValueError) as exc:
                findings.bad_error_shapes.append(f"{label}: {exc}")
        for check in (response_schema_conformance, content_type_conformance, negative_data_rejection):
            try:
                case.validate_response(response, checks=[check])
            except FailureGroup:  # the check's name is the finding
                findings.mismatches[label, check.__name__].add(response.status_code)

    try:
        fuzz()
    except Unsatisfiable:
        findings.no_negative_cases.add(label)


def assert_every_response_has_a_schema(spec: dict[str, Any]) -> None:
    """So that the response-schema and content-type checks judge every answer: each documented
    response but the body-less ones names its media types, each error its JSON schema; and nothing
    is left of FastAPI's default 422 {"detail"}. (Routes without a response model document their
    200 as JSON with an open schema.)"""
    missing = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            label = f"{method.upper()} {path}"
            for status, response in op["responses"].items():
                content = response.get("content", {})
                if (method.upper(), status) in BODILESS or (label, status) in BODILESS:
                    assert content == {}, (label, status, content)
                    continue
                if not content or (int(status) >= 400 and not (
                        set(content) == {"application/json"} and content["application/json"].get("schema"))):
                    missing.append((label, status))
    assert missing == [], f"responses documented without their media type or schema: {missing}"
    assert not {"HTTPValidationError", "ValidationError"} & set(spec["components"]["schemas"])


def test_every_route_answers_fuzzed_requests_without_a_server_error(servers: Servers, client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    assert_every_response_has_a_schema(spec)
    operations = [result.ok() for result in schemathesis.openapi.from_dict(spec).get_all_operations()]
    # Registering models last: a model the fuzzer registers from a hub repo that is not in the
    # cache fails to load (502 MODEL_LOAD_FAILED, as documented) if a later case names it.
    operations.sort(key=lambda op: op.label == "POST /v1/models")
    findings = Findings()
    with requests.Session() as session:
        for operation in operations:
            modes = [GenerationMode.POSITIVE]
            if not only_free_strings(operation):
                modes.append(GenerationMode.NEGATIVE)
            for mode in modes:
                run_operation(operation, mode, servers.default.url, session, findings)

    assert findings.server_errors == [], "\n".join(findings.server_errors)
    assert findings.transport_errors == [], "\n".join(findings.transport_errors)
    assert findings.bad_error_shapes == [], "\n".join(findings.bad_error_shapes)
    assert findings.undocumented == set(), "statuses the OpenAPI does not document"
    unknown = {key: statuses for key, statuses in findings.mismatches.items() if key not in OPENAPI_MISMATCHES}
    assert unknown == {}, f"responses that do not match the OpenAPI: {unknown}"
    labels = {op.label for op in operations}
    assert set(findings.sent) == labels, f"operations that got no request: {labels - set(findings.sent)}"
    assert findings.no_negative_cases == set(), "operations with inputs that no negative case could break"
    assert findings.statuses[200] > 50, findings.statuses  # positive cases reach the models
    # Still serving, and the fuzzer registered nothing over the models the other tests use.
    for name in ("tiny", "ce", "ner"):
        status = client.get(f"/v1/models/{name}").json()
        assert status["source"].endswith(f"/{name}") and status["state"] in ("available", "loaded"), status
    assert client.post("/v1/encode", json={"inputs": ["still here"]}).status_code == 200


def test_openapi_lists_every_route_the_app_serves(servers: Servers, client: httpx.Client) -> None:
    """The served routes, read from the app and from each module's router, against the live
    server's /openapi.json: fuzzing from the OpenAPI reaches every route but the documented few."""
    from fastapi.routing import APIRoute
    from starlette.routing import Route

    import remora.sidecar.routes as routes_package
    from remora.sidecar.app import create_app
    from remora.sidecar.settings import server_settings

    app = create_app(server_settings({}))
    routers = {}
    for module in pkgutil.iter_modules(routes_package.__path__):
        imported = __import__(f"{routes_package.__name__}.{module.name}", fromlist=["router"])
        if hasattr(imported, "router"):
            routers[module.name] = imported.router
    served: set[tuple[str, str]] = set()
    for route in app.router.routes:
        original = getattr(route, "original_router", None)
        if original is not None:
            assert any(original is r for r in routers.values()), f"a router from outside sidecar/routes: {route}"
        elif isinstance(route, Route):
            served |= {(m, route.path_format) for m in route.methods or () if m != "HEAD"}
    included = {name for name, r in routers.items() if any(getattr(x, "original_router", None) is r
                                                               for x in app.router.routes)}
    assert included == set(routers), f"route modules the app does not include: {set(routers) - included}"
    for router in routers.values():
        for route in router.routes:
            assert isinstance(route, APIRoute), route
            served |= {(m, route.path_format) for m in route.methods if m != "HEAD"}

    spec = client.get("/openapi.json").json()
    documented = {(method.upper(), path) for path, ops in spec["paths"].items() for method in ops}
    assert documented - served == set()
    hidden = {
        ("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/docs/oauth2-redirect"), ("GET", "/redoc"),
        ("POST", "/embeddings"),  # OpenAI's route without its /v1 prefix, as TEI also serves it
    }
    assert served - documented == hidden


# -- the malformed list ---------------------------------------------------------------------------------------


def nested_json(depth: int) -> bytes:
    """An array nested `depth` deep (orjson parses up to 1,024 levels, and writes fewer)."""
    return b"[" * depth + b"]" * depth


def nested_msgpack(depth: int) -> bytes:
    return b"\x91" * (depth - 1) + b"\x90"


def mp(value: Any) -> bytes:
    return bytes(msgpack.packb(value, use_bin_type=True))


def js(value: Any) -> bytes:
    return orjson.dumps(value)


# A valid body per path: the control request sent after each malformed one.
VALID: dict[str, dict[str, Any]] = {
    "/v1/encode": {"inputs": ["control"]},
    "/v1/embeddings": {"input": ["control"]},
    "/v1/score": {"query": "q", "documents": ["control"]},
    "/v1/rerank": {"query": "q", "documents": ["control"]},
    "/v1/extract": {"inputs": ["John lives in Paris"]},
    "/embed": {"inputs": ["control"]},
    "/rerank": {"query": "q", "texts": ["control"]},
    "/tokenize": {"inputs": "control"},
    "/v1/qdrant/inference": {"inputs": [{"data": "control", "data_type": "text", "model": "tiny"}]},
    "/vectors": {"text": "control"},
    "/weaviate/tiny/vectors": {"text": "control"},
    "/weaviate/ce/rerank": {"query": "q", "documents": ["control"]},
    "/ner/": {"text": "John lives in Paris"},
}

ENCODE_KEY = b'{"inputs": ["a"], "dimensions": '
QDRANT_OPTION = b'{"inputs": [{"data": "a", "data_type": "text", "model": "tiny", "options": {"%s": '
QDRANT_KEY = QDRANT_OPTION % b"dimensions"
MANY = ["a"] * 100_000


@dataclass(frozen=True)
class Bad:
    path: str
    body: bytes | Callable[[], bytes]
    status: int
    code: str
    content_type: str | None = "application/json"


def param(name: str, bad: Bad) -> Any:
    return pytest.param(bad, id=name)


MALFORMED = [
    # msgpack
    param("msgpack-truncated", Bad("/v1/encode", mp({"inputs": ["abc"]})[:-2], 400, "INVALID_JSON", MSGPACK)),
    param("msgpack-str32-declares-4GiB", Bad("/v1/encode", b"\x81\xa6inputs\xdb\xff\xff\xff\xff", 400, "INVALID_JSON", MSGPACK)),
    param("msgpack-array32-declares-4G-items", Bad("/v1/encode", b"\x81\xa6inputs\xdd\xff\xff\xff\xff", 400, "INVALID_JSON", MSGPACK)),
    param("msgpack-map32-declares-4G-keys", Bad("/v1/encode", b"\xdf\xff\xff\xff\xff", 400, "INVALID_JSON", MSGPACK)),
    param("msgpack-bin32-declares-4GiB", Bad("/v1/encode", b"\x81\xa6inputs\xc6\xff\xff\xff\xff", 400, "INVALID_JSON", MSGPACK)),
    param("msgpack-ext32-declares-4GiB", Bad("/v1/encode", b"\x81\xa6inputs\xc9\xff\xff\xff\xff\x05", 400, "INVALID_JSON", MSGPACK)),
    param("msgpack-ext-type-value", Bad("/v1/encode", mp({"inputs": msgpack.ExtType(5, b"xyz")}), 422, "INVALID_INPUT", MSGPACK)),
    param("msgpack-ext-type-body", Bad("/v1/encode", mp(msgpack.ExtType(5, b"xyz")), 422, "INVALID_INPUT", MSGPACK)),
    param("msgpack-timestamp", Bad("/v1/encode", mp({"inputs": [msgpack.Timestamp(1, 0)]}), 422, "INVALID_INPUT", MSGPACK)),
    param("msgpack-int-key", Bad("/v1/encode", mp({1: "x"}), 400, "INVALID_JSON", MSGPACK)),
    param("msgpack-bytes-for-text", Bad("/v1/encode", mp({"inputs": [b"abc"]}), 422, "INVALID_INPUT", MSGPACK)),
    param("msgpack-bad-utf8", Bad("/v1/encode", b"\x81\xa6inputs\x91\xa3\xed\xa0\x80", 400, "INVALID_JSON", MSGPACK)),
    param("msgpack-array-body", Bad("/v1/encode", mp(["a"]), 422, "INVALID_INPUT", MSGPACK)),
    param("msgpack-trailing-bytes", Bad("/v1/encode", mp({"inputs": ["a"]}) + b"\x00", 400, "INVALID_JSON", MSGPACK)),
    param("msgpack-100k-nested", Bad("/v1/encode", b"\x91" * 100_000, 400, "INVALID_JSON", MSGPACK)),
    param("msgpack-nan-dimensions", Bad("/v1/encode", mp({"inputs": ["a"], "dimensions": float("nan")}), 422, "INVALID_INPUT", MSGPACK)),
    param("msgpack-uint64-dimensions", Bad("/v1/encode", mp({"inputs": ["a"], "dimensions": 2**64 - 1}), 422, "INVALID_INPUT", MSGPACK)),
    param("msgpack-inf-top_n", Bad("/v1/rerank", mp({"query": "q", "documents": ["a"], "top_n": float("inf")}), 422, "INVALID_INPUT", MSGPACK)),
    param("msgpack-int64-min-top_n", Bad("/v1/rerank", mp({"query": "q", "documents": ["a"], "top_n": -(2**63)}), 422, "INVALID_INPUT", MSGPACK)),
    param("msgpack-qdrant", Bad("/v1/qdrant/inference", b"\x91" * 100_000, 400, "INVALID_JSON", MSGPACK)),
    # JSON
    param("json-truncated", Bad("/v1/encode", b'{"inputs": ["ab', 400, "INVALID_JSON")),
    param("json-trailing-garbage", Bad("/v1/encode", b'{"inputs": ["ab"]} xyz', 400, "INVALID_JSON")),
    # Duplicate keys: the last one wins (as orjson and Python's json read them).
    param("json-duplicate-keys", Bad("/v1/encode", b'{"inputs": ["ab"], "inputs": 5}', 422, "INVALID_INPUT")),
    param("json-empty-body", Bad("/v1/encode", b"", 400, "INVALID_JSON")),
    *[param(f"json-{name}-body", Bad(path, body, 422, "INVALID_INPUT"))
      for name, body in (("array", b"[]"), ("string", b'"s"'), ("number", b"1"), ("null", b"null"), ("bool", b"true"))
      for path in ("/v1/encode", "/vectors", "/weaviate/tiny/vectors")],
    param("json-array-body-qdrant", Bad("/v1/qdrant/inference", b"[]", 400, "INVALID_INPUT")),
    param("json-truncated-qdrant", Bad("/v1/qdrant/inference", b'{"inputs": [{"data', 400, "INVALID_JSON")),
    param("json-truncated-weaviate", Bad("/weaviate/tiny/vectors", b'{"text": "a', 400, "INVALID_JSON", None)),
    param("json-truncated-weaviate-rerank", Bad("/weaviate/ce/rerank", b'{"query": "q", "documents": ["', 400, "INVALID_JSON", None)),
    param("json-truncated-ner", Bad("/ner/", b'{"text": ', 400, "INVALID_JSON", None)),
    param("json-truncated-tei", Bad("/embed", b'{"inputs": [', 422, "INVALID_INPUT")),  # TEI: 422 Validation
    # Not UTF-8
    param("non-utf8-body", Bad("/v1/encode", b'{"inputs": ["\xff\xfe"]}', 400, "INVALID_JSON")),
    param("non-utf8-body-qdrant", Bad("/v1/qdrant/inference", b'{"inputs": [{"data": "\xff", "data_type": "text", "model": "tiny"}]}', 400, "INVALID_JSON")),
    param("non-utf8-body-weaviate", Bad("/vectors", b'{"text": "\xc3\x28"}', 400, "INVALID_JSON")),
    param("lone-surrogate", Bad("/v1/encode", b'{"inputs": ["\\ud800"]}', 400, "INVALID_JSON")),
    param("lone-low-surrogate-weaviate", Bad("/weaviate/tiny/vectors", b'{"text": "\\udfff"}', 400, "INVALID_JSON")),
    param("lone-surrogate-qdrant", Bad("/v1/qdrant/inference", b'{"inputs": [{"data": "\\ud800", "data_type": "text", "model": "tiny"}]}', 400, "INVALID_JSON")),
    param("lone-surrogate-tokenize", Bad("/tokenize", b'{"inputs": "\\ud800"}', 422, "INVALID_INPUT")),
    # NaN, infinities and numbers past float64 / int64 in numeric fields
    *[param(f"dimensions-{name}", Bad("/v1/encode", ENCODE_KEY + value + b"}", status, code))
      for name, value, status, code in (
          ("NaN", b"NaN", 400, "INVALID_JSON"), ("Infinity", b"Infinity", 400, "INVALID_JSON"),
          ("minus-Infinity", b"-Infinity", 400, "INVALID_JSON"), ("1e400", b"1e400", 400, "INVALID_JSON"),
          ("400-digits", b"9" * 400, 400, "INVALID_JSON"), ("2^64", b"18446744073709551616", 422, "INVALID_INPUT"),
          ("2^63", b"9223372036854775808", 422, "INVALID_INPUT"), ("1.5", b"1.5", 422, "INVALID_INPUT"),
          ("zero", b"0", 422, "INVALID_INPUT"), ("negative", b"-3", 422, "INVALID_INPUT"))],
    param("top_n-1e400", Bad("/v1/rerank", b'{"query": "q", "documents": ["a"], "top_n": 1e400}', 400, "INVALID_JSON")),
    param("top_n-2^64", Bad("/v1/rerank", b'{"query": "q", "documents": ["a"], "top_n": 18446744073709551616}', 422, "INVALID_INPUT")),
    param("threshold-huge", Bad("/v1/extract", b'{"inputs": ["a"], "threshold": 1e300}', 422, "INVALID_INPUT")),
    param("openai-dimensions-NaN", Bad("/v1/embeddings", b'{"input": ["a"], "dimensions": NaN}', 400, "INVALID_JSON")),
    param("tei-dimensions-2^63", Bad("/embed", b'{"inputs": ["a"], "dimensions": 9223372036854775808}', 422, "INVALID_INPUT")),
    param("qdrant-dimensions-1e400", Bad("/v1/qdrant/inference", QDRANT_KEY + b"1e400}}]}", 400, "INVALID_JSON")),
    param("qdrant-dimensions-2^63", Bad("/v1/qdrant/inference", QDRANT_KEY + b"9223372036854775808}}]}", 400, "INVALID_INPUT")),
    param("qdrant-dimensions-float", Bad("/v1/qdrant/inference", QDRANT_KEY + b"2.5}}]}", 400, "INVALID_INPUT")),
    param("weaviate-dimensions-2^64", Bad("/vectors", b'{"text": "a", "config": {"dimensions": 18446744073709551616}}', 422, "INVALID_INPUT")),
    # 100,000-item batches (the default limit is 1,024 texts)
    param("batch-100k-encode", Bad("/v1/encode", lambda: js({"inputs": MANY}), 413, "TOO_MANY_INPUTS")),
    param("batch-100k-encode-msgpack", Bad("/v1/encode", lambda: mp({"inputs": MANY}), 413, "TOO_MANY_INPUTS", MSGPACK)),
    param("batch-100k-openai", Bad("/v1/embeddings", lambda: js({"input": MANY}), 413, "TOO_MANY_INPUTS")),
    param("batch-100k-score", Bad("/v1/score", lambda: js({"query": "q", "documents": MANY}), 413, "TOO_MANY_INPUTS")),
    param("batch-100k-rerank", Bad("/v1/rerank", lambda: js({"query": "q", "documents": MANY}), 413, "TOO_MANY_INPUTS")),
    param("batch-100k-extract", Bad("/v1/extract", lambda: js({"inputs": MANY}), 413, "TOO_MANY_INPUTS")),
    param("batch-100k-tei", Bad("/embed", lambda: js({"inputs": MANY}), 422, "INVALID_INPUT")),  # TEI: 422 Validation
    param("batch-100k-tei-rerank", Bad("/rerank", lambda: js({"query": "q", "texts": MANY}), 422, "INVALID_INPUT")),
    param("batch-100k-weaviate-rerank", Bad("/weaviate/ce/rerank", lambda: js({"query": "q", "documents": MANY}), 413, "TOO_MANY_INPUTS")),
    param("batch-20k-qdrant", Bad("/v1/qdrant/inference", lambda: js({"inputs": [{"data": "a", "data_type": "text", "model": "tiny"}] * 20_000}), 400, "TOO_MANY_INPUTS")),
    # 10 MB texts: over the default 4 MiB body limit
    param("text-10MB", Bad("/v1/encode", lambda: js({"inputs": ["remora " * 1_500_000]}), 413, "PAYLOAD_TOO_LARGE")),
    param("text-10MB-qdrant", Bad("/v1/qdrant/inference", lambda: js({"inputs": [{"data": "r" * 10_000_000, "data_type": "text", "model": "tiny"}]}), 400, "PAYLOAD_TOO_LARGE")),
    param("text-10MB-weaviate", Bad("/weaviate/tiny/vectors", lambda: js({"text": "r " * 5_000_000}), 413, "PAYLOAD_TOO_LARGE")),
    # Deeply nested JSON
    param("json-100k-nested", Bad("/v1/encode", b"[" * 100_000, 400, "INVALID_JSON")),
    param("json-100k-nested-objects", Bad("/v1/encode", b'{"a":' * 100_000, 400, "INVALID_JSON")),
    param("json-100k-nested-qdrant", Bad("/v1/qdrant/inference", b"[" * 100_000, 400, "INVALID_JSON")),
    param("json-100k-nested-weaviate", Bad("/vectors", b"[" * 100_000, 400, "INVALID_JSON")),
    param("json-100k-nested-tei-rerank", Bad("/rerank", b"[" * 100_000, 422, "INVALID_INPUT")),
    param("json-1000-nested-encode-inputs", Bad("/v1/encode", b'{"inputs": ' + nested_json(1000) + b"}", 422, "INVALID_INPUT")),
    # Regression: the option value's repr in the message raised RecursionError (a 500).
    param("json-1000-nested-qdrant-option", Bad("/v1/qdrant/inference", QDRANT_OPTION % b"output" + nested_json(1000) + b"}}]}",
                                                400, "INVALID_INPUT")),
    param("json-1000-nested-qdrant-dimensions", Bad("/v1/qdrant/inference",
                                                    QDRANT_OPTION % b"dimensions" + nested_json(1000) + b"}}]}", 400, "INVALID_INPUT")),
    param("msgpack-1000-nested-qdrant-option", Bad("/v1/qdrant/inference", mp({"inputs": [
        {"data": "a", "data_type": "text", "model": "tiny", "options": {"output": "x"}}]})[:-2] + nested_msgpack(1000),
        400, "INVALID_INPUT", MSGPACK)),
]


@pytest.mark.parametrize("bad", MALFORMED)
def test_malformed_input_is_a_documented_4xx_and_the_server_keeps_serving(client: httpx.Client, bad: Bad) -> None:
    body = bad.body() if callable(bad.body) else bad.body
    headers = {"Content-Type": bad.content_type} if bad.content_type else {}
    started = time.monotonic()
    response = client.post(bad.path, content=body, headers=headers)  # a reset or a hang raises here
    elapsed = time.monotonic() - started
    assert response.status_code == bad.status, response.text[:300]
    assert error_code(bad.path, response) == bad.code, response.text[:300]
    assert elapsed < 10, f"{elapsed:.1f}s"
    control = client.post(bad.path, json=VALID[bad.path])
    assert control.status_code == 200, control.text[:300]
    assert client.post("/v1/encode", json=VALID["/v1/encode"]).status_code == 200


def test_duplicate_keys_take_the_last_value(client: httpx.Client) -> None:
    response = client.post("/v1/encode", content=b'{"inputs": 5, "inputs": ["ab"]}',
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 200 and len(response.json()["embeddings"]) == 1, response.text[:300]


def test_a_nan_timeout_header_is_invalid_input(client: httpx.Client) -> None:
    for value in ("nan", "inf", "-5", "0", "soon"):
        response = client.post("/v1/encode", json=VALID["/v1/encode"], headers={"Remora-Timeout-Ms": value})
        assert response.status_code == 422 and error_code("/v1/encode", response) == "INVALID_INPUT", (value, response.text)
    assert client.post("/v1/encode", json=VALID["/v1/encode"], headers={"Remora-Timeout-Ms": "5000"}).status_code == 200


def text_of_bytes(size: int) -> str:
    return ("remora " * (size // 7 + 1))[:size]


def test_a_10MB_text_under_a_raised_limit_is_cut_or_refused_as_asked(servers: Servers) -> None:
    """REMORA_MAX_REQUEST_BYTES=12MiB: a 10 MB text passes the gate; truncate=true cuts it to the
    model's 128 positions, truncate=false refuses it with INPUT_TOO_LONG, each in a few seconds
    (Remora tokenizes only the head of a text far past the model's length)."""
    text = text_of_bytes(10_000_000)
    body = {"inputs": [text]}
    with httpx.Client(base_url=servers.raised.url, timeout=60) as client:
        over = client.post("/v1/encode", content=js({"inputs": [text + text[:3_000_000]]}),
                           headers={"Content-Type": "application/json"})
        assert over.status_code == 413 and error_code("/v1/encode", over) == "PAYLOAD_TOO_LARGE", over.text[:300]
        for truncate in (True, False):
            started = time.monotonic()
            response = client.post("/v1/encode", content=js({**body, "truncate": truncate}),
                                   headers={"Content-Type": "application/json"})
            elapsed = time.monotonic() - started
            if truncate:
                assert response.status_code == 200, response.text[:300]
                assert response.json()["usage"]["tokens"] == TINY_POSITIONS
            else:
                assert response.status_code == 413 and error_code("/v1/encode", response) == "INPUT_TOO_LONG"
            assert elapsed < 10, f"{elapsed:.1f}s"
        # The same 10 MB through Qdrant's hook and Weaviate's module: cut too.
        qdrant = client.post("/v1/qdrant/inference", content=js({"inputs": [
            {"data": text, "data_type": "text", "model": "tiny"}]}), headers={"Content-Type": "application/json"})
        assert qdrant.status_code == 200 and len(qdrant.json()["embeddings"][0]) == 64, qdrant.text[:300]
        weaviate = client.post("/weaviate/tiny/vectors", content=js({"text": text}))
        assert weaviate.status_code == 200 and weaviate.json()["dim"] == 64, weaviate.text[:300]
        assert client.post("/v1/encode", json=VALID["/v1/encode"]).status_code == 200


def test_texts_at_the_body_limit_do_not_hold_up_other_requests(servers: Servers, client: httpx.Client) -> None:
    """Two 4 MB texts (just under the default limit) at once, and a small request beside them: it
    is answered in well under a second (tokenizing them whole held both tokenizer threads ~10 s)."""
    body = js({"inputs": [text_of_bytes(4 * 2**20 - 64)]})
    results: list[int] = []

    def big() -> None:
        with httpx.Client(base_url=servers.default.url, timeout=60) as own:
            results.append(own.post("/v1/encode", content=body, headers={"Content-Type": "application/json"}).status_code)

    threads = [threading.Thread(target=big) for _ in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)  # the bodies are on their way
    started = time.monotonic()
    control = client.post("/v1/encode", json=VALID["/v1/encode"])
    latency = time.monotonic() - started
    for thread in threads:
        thread.join()
    assert control.status_code == 200 and results == [200, 200]
    assert latency < 2.0, f"{latency:.2f}s"


def test_a_pair_of_long_texts_is_scored_in_linear_time(client: httpx.Client) -> None:
    """A 100 kB query against a 100 kB document (and the same through TEI's /rerank): 200 in
    seconds. Truncating such a pair with `tokenizers` builds every pair of overflowing windows:
    at 35 kB each 25,757 of them, 2.5 GB; at 100 kB each the process ran out of memory."""
    long_text = text_of_bytes(100_000)
    for path, body in (("/v1/score", {"query": long_text, "documents": [long_text[::-1], "short"]}),
                       ("/rerank", {"query": long_text, "texts": [long_text]})):
        started = time.monotonic()
        response = client.post(path, json=body)
        assert response.status_code == 200, response.text[:300]
        assert time.monotonic() - started < 10
    assert client.post("/v1/score", json=VALID["/v1/score"]).status_code == 200
