"""Model administration, health, auth, metrics and shutdown over real HTTP to real `remora serve`
processes: /healthz, /readyz, /v1/models (list, get, register, load, unload, pin, reload), the
API-key gate, /metrics after real traffic, and draining on SIGTERM."""

from __future__ import annotations

import shutil
import signal
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from remora.core.defaults import DEFAULT_MODEL_ID
from tests.helpers import minilm_dir, write_json
from tests.sidecar.server import ServerProcess

pytestmark = pytest.mark.integration

API_KEY = "s3cret-key"


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code, error
    assert error["message"]
    return error


def wait_for(condition: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def model_ids(client: httpx.Client) -> set[str]:
    response = client.get("/v1/models")
    assert response.status_code == 200
    return {m["id"] for m in response.json()["data"]}


def encodes(client: httpx.Client, model: str) -> int:
    return client.post("/v1/encode", json={"model": model, "inputs": ["ping"]}).status_code


# -- the admin server: a registry file, model roots, a preload that fails at first ---------------


class Admin:
    def __init__(self, root: Path, outside: Path, config: Path, base: list[dict[str, Any]], server: ServerProcess,
                 client: httpx.Client) -> None:
        self.root, self.outside, self.config, self.base = root, outside, config, base
        self.server, self.client = server, client

    def write(self, models: list[dict[str, Any]]) -> None:
        write_json(self.config, {"models": models})


@pytest.fixture(scope="module")
def admin(tmp_path_factory: pytest.TempPathFactory, tiny_encoder_dir: Path) -> Iterator[Admin]:
    base_dir = tmp_path_factory.mktemp("admin")
    root, outside = base_dir / "root", base_dir / "outside"
    root.mkdir()
    shutil.copytree(tiny_encoder_dir, root / "tiny")
    shutil.copytree(tiny_encoder_dir, outside / "tiny")
    (root / "late").mkdir()  # empty: its preload fails until the test fills it
    (root / "escape").symlink_to(outside / "tiny", target_is_directory=True)
    (root / "outside-link").symlink_to(outside, target_is_directory=True)
    config = base_dir / "models.yaml"
    base = [
        {"id": "minilm", "path": str(minilm_dir()), "preload": True},
        {"id": "late", "path": str(root / "late"), "preload": True},
        {"id": "tiny", "path": "root/tiny"},  # relative to the registry file
        {"id": "doomed", "path": str(root / "tiny")},
    ]
    write_json(config, {"models": base})
    # MiniLM's own directory is a root too, so the registry may name it.
    roots = f"{root}:{minilm_dir()}"
    server = ServerProcess(config=config, env={"REMORA_MODEL_ROOTS": roots}, log=base_dir / "server.log")
    server.wait_healthy()
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield Admin(root, outside, config, base, server, client)
    assert server.stop() == 0, server.logs()


def test_healthz(default_server: ServerProcess) -> None:
    response = httpx.get(f"{default_server.url}/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_waits_for_preloaded_models(admin: Admin, tiny_encoder_dir: Path) -> None:
    client = admin.client
    wait_for(lambda: client.get("/v1/models/minilm").json()["state"] == "loaded", what="minilm preload")
    wait_for(lambda: client.get("/v1/models/late").json()["state"] == "failed", what="late preload failure")
    not_ready = client.get("/readyz")
    assert not_ready.status_code == 503
    assert not_ready.json() == {"status": "loading", "waiting_for": ["late"]}
    late = client.get("/v1/models/late").json()
    assert late["error"]["code"] and late["error"]["message"]
    assert client.get("/healthz").status_code == 200  # alive, just not ready
    assert encodes(client, "minilm") == 200  # loaded models serve while others are not ready

    shutil.copytree(tiny_encoder_dir, admin.root / "late", dirs_exist_ok=True)
    loaded = client.post("/v1/models/late/load")
    assert loaded.status_code == 200, loaded.text
    assert loaded.json()["state"] == "loaded" and loaded.json()["error"] is None
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ready"}


def test_models_list_shows_state_bytes_and_last_use(admin: Admin) -> None:
    client = admin.client
    before = time.time()
    assert encodes(client, "minilm") == 200
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    models = {m["id"]: m for m in body["data"]}
    assert {"minilm", "late", "tiny", "doomed", DEFAULT_MODEL_ID} <= set(models)
    minilm = models["minilm"]
    assert minilm["state"] == "loaded" and minilm["preload"] is True and minilm["object"] == "model"
    assert 80e6 < minilm["bytes"] < 100e6  # 22.7M float32 parameters
    assert before - 1 <= minilm["last_used"] <= time.time() + 1
    tiny = models["tiny"]
    assert tiny["state"] == "available" and tiny["bytes"] == 0 and tiny["last_used"] is None
    assert tiny["source"] == str(admin.root / "tiny")
    assert body["memory"]["used_bytes"] == sum(m["bytes"] for m in body["data"])
    assert body["memory"]["budget_bytes"] > body["memory"]["used_bytes"]
    later = client.get("/v1/models/minilm").json()["last_used"]
    time.sleep(0.05)
    assert encodes(client, "minilm") == 200
    assert client.get("/v1/models/minilm").json()["last_used"] > later


def test_load_unload_pin_unpin(admin: Admin) -> None:
    client = admin.client
    loaded = client.post("/v1/models/tiny/load").json()
    assert loaded["state"] == "loaded" and loaded["bytes"] > 0
    unloaded = client.post("/v1/models/tiny/unload").json()
    assert unloaded["unloaded"] is True and unloaded["state"] == "available" and unloaded["bytes"] == 0
    assert client.post("/v1/models/tiny/unload").json()["unloaded"] is False
    assert client.get("/v1/models/tiny").json()["state"] == "available"

    pinned = client.post("/v1/models/tiny/pin").json()
    assert pinned["pinned"] is True
    # A pinned model is kept in memory: pinning loads it, and the server stays ready.
    wait_for(lambda: client.get("/v1/models/tiny").json()["state"] == "loaded", what="pinned model loaded")
    wait_for(lambda: client.get("/readyz").status_code == 200, what="ready after pinning")
    unpinned = client.post("/v1/models/tiny/unpin").json()
    assert unpinned["pinned"] is False and unpinned["state"] == "loaded"
    client.post("/v1/models/tiny/pin")
    after = client.post("/v1/models/tiny/unload").json()  # an explicit unload lifts the pin
    assert after["unloaded"] is True and after["pinned"] is False
    assert encodes(client, "tiny") == 200  # and it loads again on use

    for action in ("load", "unload", "pin", "unpin"):
        assert_error(client.post(f"/v1/models/no-such-model/{action}"), 404, "MODEL_NOT_FOUND")
        assert_error(client.post(f"/v1/models/-bad/{action}"), 422, "INVALID_MODEL_ID")
    assert client.get("/readyz").status_code == 200


def test_get_model_and_aliases(admin: Admin, default_server: ServerProcess) -> None:
    for server in (admin.server, default_server):
        response = httpx.get(f"{server.url}/v1/models/sentence-transformers/all-MiniLM-L6-v2")
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["id"] == DEFAULT_MODEL_ID
        assert "sentence-transformers/all-MiniLM-L6-v2" in body["aliases"]
    assert admin.client.get("/v1/models/tiny").json()["id"] == "tiny"
    assert_error(admin.client.get("/v1/models/no-such-model"), 404, "MODEL_NOT_FOUND")
    assert_error(admin.client.get("/v1/models/no/such/model"), 404, "MODEL_NOT_FOUND")
    assert_error(admin.client.get("/v1/models/-bad"), 422, "INVALID_MODEL_ID")


# -- registering through the API --------------------------------------------------------------


def test_register_a_path_inside_the_roots(admin: Admin) -> None:
    client = admin.client
    response = client.post("/v1/models", json={"id": "api-tiny", "path": str(admin.root / "tiny")})
    assert response.status_code == 201, response.text
    assert response.json()["id"] == "api-tiny" and response.json()["state"] == "available"
    got = client.post("/v1/encode", json={"model": "api-tiny", "inputs": ["a text", "another"]})
    assert got.status_code == 200, got.text
    assert got.json()["dim"] == 64
    same = client.post("/v1/encode", json={"model": "tiny", "inputs": ["a text", "another"]}).json()
    np.testing.assert_allclose(got.json()["embeddings"], same["embeddings"], atol=1e-6)
    # preload starts the load at once
    pre = client.post("/v1/models", json={"id": "api-pre", "path": str(admin.root / "tiny"), "preload": True})
    assert pre.status_code == 201 and pre.json()["state"] in ("loading", "loaded")
    wait_for(lambda: client.get("/v1/models/api-pre").json()["state"] == "loaded", what="api-pre loaded")


@pytest.mark.parametrize("where", ["outside", "symlink-dir", "symlink-parent", "dotdot"])
def test_register_outside_the_roots_is_refused(admin: Admin, where: str) -> None:
    path = {
        "outside": admin.outside / "tiny",
        "symlink-dir": admin.root / "escape",  # inside the root, pointing outside
        "symlink-parent": admin.root / "outside-link" / "tiny",
        "dotdot": Path(f"{admin.root}/../outside/tiny"),
    }[where]
    assert path.is_dir()  # a real model directory: only its place is wrong
    response = admin.client.post("/v1/models", json={"id": f"evil-{where}", "path": str(path)})
    assert_error(response, 403, "PATH_NOT_ALLOWED")
    assert_error(admin.client.get(f"/v1/models/evil-{where}"), 404, "MODEL_NOT_FOUND")


def test_register_refusals(admin: Admin, default_server: ServerProcess) -> None:
    # No roots configured: the API registers no path at all.
    response = httpx.post(f"{default_server.url}/v1/models", json={"id": "x", "path": str(admin.root / "tiny")})
    assert_error(response, 403, "PATH_NOT_ALLOWED")
    client = admin.client
    assert_error(client.post("/v1/models", json={"id": "x", "path": str(admin.root / "missing")}), 422, "INVALID_INPUT")
    assert_error(client.post("/v1/models", json={"id": "x"}), 422, "INVALID_INPUT")
    assert_error(client.post("/v1/models", json={"id": "x", "path": str(admin.root / "tiny"), "hf": "a/b"}),
                 422, "INVALID_INPUT")
    assert_error(client.post("/v1/models", json={"id": "../x", "path": str(admin.root / "tiny")}),
                 422, "INVALID_MODEL_ID")
    assert_error(client.post("/v1/models", json={"id": "x", "path": str(admin.root / "tiny"), "preload": "yes"}),
                 422, "INVALID_INPUT")
    assert_error(client.post("/v1/models", json={"id": "x", "path": str(admin.root / "tiny"), "dtype": "int3"}),
                 422, "INVALID_INPUT")
    assert "x" not in model_ids(client)


# -- registry reload ------------------------------------------------------------------------------


def test_reload_on_sighup(admin: Admin) -> None:
    client = admin.client
    models = [m for m in admin.base if m["id"] != "doomed"] + [{"id": "added", "path": str(admin.root / "tiny")}]
    admin.write(models)
    admin.server.signal(signal.SIGHUP)
    wait_for(lambda: client.get("/v1/models/added").status_code == 200, what="SIGHUP reload")
    assert encodes(client, "added") == 200
    assert_error(client.post("/v1/encode", json={"model": "doomed", "inputs": ["x"]}), 404, "MODEL_NOT_FOUND")
    assert encodes(client, "api-tiny") == 200  # models registered through the API are left alone
    assert encodes(client, "minilm") == 200


def test_reload_route(admin: Admin) -> None:
    client = admin.client
    models = [dict(m) for m in admin.base]
    next(m for m in models if m["id"] == "tiny")["normalize"] = True
    admin.write(models)
    response = client.post("/v1/models/reload")
    assert response.status_code == 200, response.text
    assert response.json() == {"added": ["doomed"], "changed": ["tiny"], "removed": ["added"]}
    assert encodes(client, "doomed") == 200
    assert_error(client.post("/v1/encode", json={"model": "added", "inputs": ["x"]}), 404, "MODEL_NOT_FOUND")
    vectors = np.asarray(client.post("/v1/encode", json={"model": "tiny", "inputs": ["x"]}).json()["embeddings"])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)  # the changed option applies
    assert client.post("/v1/models/reload").json() == {"added": [], "changed": [], "removed": []}


BROKEN_FILES: dict[str, Callable[[Admin], str]] = {
    "not-yaml": lambda a: "models: [\n  - id: x\n    path: {",
    "not-a-mapping": lambda a: "- just\n- a list\n",
    "unknown-key": lambda a: f'{{"models": [{{"id": "fresh", "path": "{a.root / "tiny"}", "colour": "red"}}]}}',
    "no-source": lambda a: '{"models": [{"id": "fresh"}]}',
    # a good new entry first, then a bad one: nothing of the file may apply
    "bad-id-after-a-good-entry": lambda a: _models(a, {"id": "fresh", "path": str(a.root / "tiny")},
                                                   {"id": "../x", "path": str(a.root / "tiny")}),
    "bad-alias": lambda a: _models(a, {"id": "fresh", "path": str(a.root / "tiny"), "aliases": ["/etc/x"]}),
    "missing-directory": lambda a: _models(a, {"id": "fresh", "path": str(a.root / "tiny")},
                                           {"id": "gone", "path": str(a.root / "nowhere")}),
    "outside-the-roots": lambda a: _models(a, {"id": "fresh", "path": str(a.root / "tiny")},
                                           {"id": "evil", "path": str(a.root / "escape")}),
}


def _models(admin: Admin, *extra: dict[str, Any]) -> str:
    import json

    return json.dumps({"models": [m for m in admin.base if m["id"] != "doomed"] + list(extra)})


@pytest.mark.parametrize("case", list(BROKEN_FILES))
def test_a_broken_registry_changes_nothing(admin: Admin, case: str) -> None:
    client = admin.client
    before = client.get("/v1/models").json()["data"]
    admin.config.write_text(BROKEN_FILES[case](admin))
    assert_error(client.post("/v1/models/reload"), 422, "INVALID_INPUT")
    assert client.get("/v1/models").json()["data"] == before
    assert encodes(client, "doomed") == 200
    assert client.get("/healthz").status_code == 200


def test_a_broken_registry_on_sighup_changes_nothing(admin: Admin) -> None:
    client = admin.client
    ids = model_ids(client)
    admin.config.write_text(BROKEN_FILES["bad-id-after-a-good-entry"](admin))
    failures = admin.server.logs().count("registry reload failed")
    admin.server.signal(signal.SIGHUP)
    wait_for(lambda: admin.server.logs().count("registry reload failed") > failures, what="the reload to fail")
    assert model_ids(client) == ids
    assert "fresh" not in ids
    assert encodes(client, "doomed") == 200
    admin.write(admin.base)  # leave a good file behind
    assert client.post("/v1/models/reload").status_code == 200


def test_reload_without_a_registry_file(default_server: ServerProcess) -> None:
    assert_error(httpx.post(f"{default_server.url}/v1/models/reload"), 422, "INVALID_INPUT")


# -- auth -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("auth") / "server.log"
    server = ServerProcess(env={"REMORA_API_KEY": API_KEY}, log=log).wait_healthy()
    yield server
    assert server.stop() == 0, server.logs()


@pytest.fixture(scope="module")
def auth_health_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The key from a file (a mounted secret), and health routes behind it too."""
    base = tmp_path_factory.mktemp("auth-health")
    (base / "key").write_text(API_KEY + "\n")
    env = {"REMORA_API_KEY_FILE": str(base / "key"), "REMORA_AUTH_HEALTH": "1"}
    server = ServerProcess(env=env, log=base / "server.log", api_key=API_KEY).wait_healthy()
    yield server
    assert server.stop() == 0, server.logs()


def _refused(response: httpx.Response) -> None:
    assert_error(response, 401, "UNAUTHORIZED")
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer wrong"},
    {"Authorization": f"Bearer {API_KEY[:-1]}"},  # a prefix of the key
    {"Authorization": f"Bearer {API_KEY}x"},
    {"Authorization": "Bearer"},
    {"Authorization": f"Basic {API_KEY}"},
    {"Authorization": API_KEY},
    {"X-API-Key": "wrong"},
    {"X-API-Key": ""},
], ids=lambda h: repr(h))
def test_requests_without_the_key_are_refused(auth_server: ServerProcess, headers: dict[str, str]) -> None:
    _refused(httpx.get(f"{auth_server.url}/v1/models", headers=headers))
    _refused(httpx.post(f"{auth_server.url}/v1/encode", json={"inputs": ["x"]}, headers=headers))
    _refused(httpx.post(f"{auth_server.url}/v1/models/reload", headers=headers))


@pytest.mark.parametrize("headers", [
    {"Authorization": f"Bearer {API_KEY}"},
    {"Authorization": f"bearer {API_KEY}"},
    {"X-API-Key": API_KEY},
])
def test_requests_with_the_key_pass(auth_server: ServerProcess, headers: dict[str, str]) -> None:
    assert httpx.get(f"{auth_server.url}/v1/models", headers=headers).status_code == 200
    response = httpx.post(f"{auth_server.url}/v1/encode", json={"inputs": ["x"]}, headers=headers, timeout=60)
    assert response.status_code == 200, response.text


def test_health_and_metrics_are_exempt(auth_server: ServerProcess) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(f"{auth_server.url}{path}").status_code == 200, path


def test_auth_health_guards_health_and_metrics(auth_health_server: ServerProcess) -> None:
    url = auth_health_server.url
    for path in ("/healthz", "/readyz", "/metrics", "/v1/models"):
        _refused(httpx.get(f"{url}{path}"))
        _refused(httpx.get(f"{url}{path}", headers={"Authorization": "Bearer wrong"}))
        assert httpx.get(f"{url}{path}", headers={"X-API-Key": API_KEY}).status_code == 200, path
        assert httpx.get(f"{url}{path}", headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200, path


def test_without_a_key_everything_is_open(default_server: ServerProcess) -> None:
    url = default_server.url
    for path in ("/healthz", "/readyz", "/metrics", "/v1/models"):
        assert httpx.get(f"{url}{path}").status_code == 200, path
        assert httpx.get(f"{url}{path}", headers={"Authorization": "Bearer anything"}).status_code == 200, path
    assert httpx.post(f"{url}/v1/encode", json={"inputs": ["x"]}, timeout=60).status_code == 200


# -- metrics --------------------------------------------------------------------------------------

BUDGET = 150_000_000  # one MiniLM (~90 MB) and the tiny cross-encoder fit, two MiniLMs do not


class Scrape:
    def __init__(self, text: str) -> None:
        from prometheus_client.parser import text_string_to_metric_families

        self.types: dict[str, str] = {}
        self.samples: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for sample in family.samples:
                self.samples[sample.name].append((sample.labels, sample.value))

    def value(self, name: str, **labels: str) -> float:
        found = [v for lab, v in self.samples[name] if all(lab.get(k) == want for k, want in labels.items())]
        assert len(found) == 1, f"{name}{labels}: {found} in {self.samples[name]}"
        return found[0]

    def labelsets(self, name: str) -> list[dict[str, str]]:
        return [lab for lab, _ in self.samples[name]]


@pytest.fixture(scope="module")
def metrics_server(tmp_path_factory: pytest.TempPathFactory, ce_dir: Path) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("metrics")
    (base / "broken").mkdir()
    write_json(base / "models.yaml", {"models": [
        {"id": "minilm", "path": str(minilm_dir())},
        {"id": "minilm-b", "path": str(minilm_dir())},
        {"id": "ce", "path": str(ce_dir), "pinned": True},
        {"id": "broken", "path": str(base / "broken")},
    ]})
    server = ServerProcess(config=base / "models.yaml", env={"REMORA_MEMORY_BUDGET": str(BUDGET)},
                           log=base / "server.log")
    server.wait_healthy().wait_ready()
    yield server
    assert server.stop() == 0, server.logs()


def test_metrics_after_traffic(metrics_server: ServerProcess) -> None:
    batches = [["a short text"], ["Sea otters crack shellfish open with rocks they carry."] * 5,
               ["word " * 300, "two words", ""]]
    with httpx.Client(base_url=metrics_server.url, timeout=60) as client:
        tokens = 0
        for texts in batches:
            response = client.post("/v1/encode", json={"model": "minilm", "inputs": texts})
            assert response.status_code == 200, response.text
            tokens += response.json()["usage"]["tokens"]
        scored = client.post("/v1/score", json={"model": "ce", "query": "otters", "documents": ["a", "b c", "d"]})
        assert scored.status_code == 200, scored.text
        assert client.post("/v1/encode", json={"inputs": []}).status_code == 422
        assert client.post("/v1/encode", json={"model": "nope", "inputs": ["x"]}).status_code == 404
        other = client.post("/v1/encode", json={"model": "minilm-b", "inputs": ["x"]})  # evicts minilm
        assert other.status_code == 200
        assert client.get("/v1/models/minilm").json()["state"] == "available"
        assert client.post("/v1/models/minilm/load").status_code == 200  # evicts minilm-b
        assert client.get("/v1/models/minilm-b").json()["state"] == "available"
        broken = client.post("/v1/encode", json={"model": "broken", "inputs": ["x"]})
        assert broken.status_code == 502, broken.text
        assert client.post("/v1/models/ce/unload").json()["unloaded"] is True
        models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
        response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    m = Scrape(response.text)

    expected_types = {
        "remora_requests": "counter", "remora_request_duration_seconds": "histogram",
        "remora_queue_depth": "gauge", "remora_queue_wait_seconds": "histogram", "remora_batch_tokens": "histogram",
        "remora_batch_size": "histogram", "remora_tokens": "counter", "remora_inflight_requests": "gauge",
        "remora_model_loaded": "gauge", "remora_model_memory_bytes": "gauge", "remora_memory_budget_bytes": "gauge",
        "remora_memory_used_bytes": "gauge", "remora_model_loads": "counter", "remora_model_load_seconds": "histogram",
        "remora_model_evictions": "counter",
    }
    for name, kind in expected_types.items():
        assert m.types.get(name) == kind, (name, m.types.get(name))

    # requests by model, route template and status
    assert m.value("remora_requests_total", model="minilm", route="/v1/encode", status="200") == 3
    assert m.value("remora_requests_total", model="minilm-b", route="/v1/encode", status="200") == 1
    assert m.value("remora_requests_total", model="ce", route="/v1/score", status="200") == 1
    assert m.value("remora_requests_total", model="", route="/v1/encode", status="422") == 1
    assert m.value("remora_requests_total", model="", route="/v1/encode", status="404") == 1
    assert m.value("remora_requests_total", model="broken", route="/v1/encode", status="502") == 1
    assert m.value("remora_requests_total", route="/v1/models/{model_id:path}/load", status="200") == 1
    assert all(set(lab) == {"model", "route", "status"} for lab in m.labelsets("remora_requests_total"))
    # latency histogram per route: all 7 encode requests, whatever their status
    assert m.value("remora_request_duration_seconds_count", route="/v1/encode") == 7
    assert m.value("remora_request_duration_seconds_bucket", route="/v1/encode", le="+Inf") == 7
    assert m.value("remora_request_duration_seconds_sum", route="/v1/encode") > 0
    # tokens: the counter, the batch histogram and the responses' usage agree
    assert m.value("remora_tokens_total", model="minilm") == tokens
    assert m.value("remora_batch_tokens_sum", model="minilm") == tokens
    assert m.value("remora_tokens_total", model="ce") == scored.json()["usage"]["tokens"]
    assert m.value("remora_batch_size_sum", model="minilm") == sum(len(t) for t in batches)
    assert m.value("remora_batch_size_sum", model="ce") == 3
    # every request waits once before its first batch
    assert m.value("remora_queue_wait_seconds_count", model="minilm") == 3
    assert m.value("remora_queue_wait_seconds_count", model="ce") == 1
    assert 0 <= m.value("remora_queue_wait_seconds_sum", model="minilm") < 5
    # gauges, read at scrape time
    for model_id in models:
        assert m.value("remora_queue_depth", model=model_id) == 0
    assert m.value("remora_inflight_requests") == 1  # the scrape itself
    assert m.value("remora_model_loaded", model="minilm") == 1
    assert m.value("remora_model_loaded", model="minilm-b") == 0
    assert m.value("remora_model_loaded", model="ce") == 0
    assert m.value("remora_model_loaded", model="broken") == 0
    assert m.value("remora_model_memory_bytes", model="minilm") == models["minilm"]["bytes"] > 80e6
    assert m.value("remora_model_memory_bytes", model="minilm-b") == 0
    assert m.value("remora_memory_budget_bytes") == BUDGET
    assert m.value("remora_memory_used_bytes") == sum(x["bytes"] for x in models.values()) == models["minilm"]["bytes"]
    # loads, load time and evictions
    assert m.value("remora_model_loads_total", model="minilm", result="ok") == 2
    assert m.value("remora_model_loads_total", model="minilm-b", result="ok") == 1
    assert m.value("remora_model_loads_total", model="ce", result="ok") == 1
    assert m.value("remora_model_loads_total", model="broken", result="error") == 1
    assert m.value("remora_model_load_seconds_count", model="minilm") == 2
    assert 0 < m.value("remora_model_load_seconds_sum", model="minilm") < 60
    assert m.value("remora_model_evictions_total", model="minilm", reason="budget") == 1
    assert m.value("remora_model_evictions_total", model="minilm-b", reason="budget") == 1
    assert m.value("remora_model_evictions_total", model="ce", reason="unload") == 1
    assert len(m.samples["remora_model_evictions_total"]) == 3


# -- graceful shutdown ----------------------------------------------------------------------------

GRACE = 20.0


def test_sigterm_drains_in_flight_requests(tmp_path: Path) -> None:
    server = ServerProcess(env={"REMORA_SHUTDOWN_GRACE": str(GRACE)}, log=tmp_path / "server.log").wait_healthy()
    try:
        long_texts = ["Vector databases store embeddings next to the documents they describe. " * 25] * 8
        assert httpx.post(f"{server.url}/v1/encode", json={"inputs": ["warm"]}, timeout=60).status_code == 200

        def slow(_: int) -> httpx.Response:
            return httpx.post(f"{server.url}/v1/encode", json={"inputs": long_texts}, timeout=60)

        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(slow, i) for i in range(4)]

            def all_in_flight() -> bool:
                metrics = Scrape(httpx.get(f"{server.url}/metrics").text)
                return metrics.value("remora_inflight_requests") >= 5  # the four and the scrape

            wait_for(all_in_flight, what="the slow requests to be in flight")
            signalled = time.monotonic()
            server.signal(signal.SIGTERM)

            def not_ready() -> bool:
                try:
                    ready = httpx.get(f"{server.url}/readyz", timeout=5)
                except httpx.ConnectError:
                    return True  # the listener is already closed
                assert ready.status_code in (200, 503), ready.text
                return ready.status_code == 503 and ready.json()["status"] == "draining"

            wait_for(not_ready, timeout=2.0, what="/readyz to turn 503 after SIGTERM")
            time.sleep(0.3)
            still_running = sum(not f.done() for f in futures)
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"{server.url}/healthz", timeout=5)
            responses = [f.result() for f in futures]
        assert still_running > 0, "the requests finished before the signal took effect; make them slower"
        for response in responses:
            assert response.status_code == 200, response.text
            assert len(response.json()["embeddings"]) == len(long_texts)
        code = server.proc.wait(timeout=GRACE)
        assert code == 0, server.logs()
        assert time.monotonic() - signalled < GRACE
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.url}/healthz", timeout=5)
    finally:
        server.stop()


def test_sigterm_grace_period_bounds_the_wait(tmp_path: Path) -> None:
    """A request that would outlast the grace period is cut off; the server still exits cleanly."""
    server = ServerProcess(env={"REMORA_SHUTDOWN_GRACE": "0.5"}, log=tmp_path / "server.log").wait_healthy()
    try:
        texts = ["Vector databases store embeddings next to the documents they describe. " * 25] * 128  # ~14 s

        def slow() -> httpx.Response:
            return httpx.post(f"{server.url}/v1/encode", json={"inputs": texts}, timeout=60)

        with ThreadPoolExecutor(1) as pool:
            future = pool.submit(slow)
            wait_for(lambda: Scrape(httpx.get(f"{server.url}/metrics").text).value("remora_inflight_requests") >= 2,
                     what="the slow request to be in flight")
            time.sleep(0.3)
            signalled = time.monotonic()
            server.signal(signal.SIGTERM)
            code = server.proc.wait(timeout=GRACE)
            elapsed = time.monotonic() - signalled
            try:
                response: httpx.Response | None = future.result()
            except httpx.HTTPError:
                response = None  # the connection closed without an answer
        assert code == 0, server.logs()
        # the grace (rounded up to 1 s), the scheduler's own wait and one batch, not the ~14 s of work
        assert elapsed < 6.0, elapsed
        assert response is None or response.status_code != 200
    finally:
        server.stop()
