"""The model pool over real HTTP: a `remora serve` child process with several MiniLM copies in a
memory budget that holds two of them, a corrupt copy, and (a second server) a tiny queue bound."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from remora.core.memory import estimate_model_bytes
from tests.helpers import link_model_copy, minilm_dir
from tests.sidecar.server import ServerProcess

pytestmark = pytest.mark.integration

COPIES = ("m1", "m2", "m3")


def write_registry(root: Path, entries: list[str]) -> Path:
    config = root / "registry.yaml"
    config.write_text("models:\n" + "".join(entries))
    return config


def metrics(client: httpx.Client) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def sample(values: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return values.get((name, frozenset(labels.items())), 0.0)


def encode(client: httpx.Client, model: str, inputs: list[str], **headers: str) -> httpx.Response:
    return client.post("/v1/encode", json={"model": model, "inputs": inputs}, headers=headers)


@pytest.fixture(scope="module")
def budget() -> int:
    one = estimate_model_bytes(minilm_dir(), torch.float32)
    return 2 * one + 16 * 2**20  # two copies and a little room for activations, never three


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, budget: int) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("pool-http")
    names = (*COPIES, "single", "nowait")
    for name in names:
        link_model_copy(minilm_dir(), root / name)
    broken = link_model_copy(minilm_dir(), root / "broken")
    weights = broken / "model.safetensors"
    data = weights.read_bytes()
    weights.unlink()  # a hard link: write a truncated file of its own, never into the original
    weights.write_bytes(data[: len(data) // 2])
    config = write_registry(root, [f"  - id: {name}\n    path: {name}\n" for name in (*names, "broken")])
    server = ServerProcess(config=config, env={"REMORA_DEVICE": "cpu", "REMORA_MEMORY_BUDGET": str(budget)}, log=root / "server.log")
    server.wait_healthy()
    yield server
    assert server.stop() == 0, server.logs()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120, limits=httpx.Limits(max_connections=64)) as client:
        yield client


def concurrently(count: int, work: Callable[[int], Any]) -> list[Any]:
    barrier = threading.Barrier(count)

    def run(index: int) -> Any:
        barrier.wait(30)
        return work(index)

    with ThreadPoolExecutor(count) as executor:
        return list(executor.map(run, range(count)))


def test_interleaved_models_within_the_budget(client: httpx.Client, budget: int) -> None:
    texts = ["the remora rides along with the shark", "vector databases store embeddings"]

    def client_session(index: int) -> list[tuple[int, str, Any]]:
        out = []
        for step in range(6):
            model = COPIES[(index + step) % 3]
            response = encode(client, model, texts)
            out.append((response.status_code, model, response.json()))
        return out

    results = [r for session in concurrently(4, client_session) for r in session]
    assert [status for status, _, _ in results] == [200] * len(results), [r for r in results if r[0] != 200]
    vectors = np.array([body["embeddings"] for _, _, body in results])  # [requests, 2, 384]
    assert {body["model"] for _, _, body in results} == set(COPIES)
    # The copies hold the same weights: whichever copy and batch served a request, the same vectors.
    assert np.abs(vectors - vectors[0]).max() <= 1e-5

    values = metrics(client)
    evictions = sum(sample(values, "remora_model_evictions_total", model=m, reason="budget") for m in COPIES)
    assert evictions > 0, "three models in a budget of two must evict"
    used = sample(values, "remora_memory_used_bytes")
    assert sample(values, "remora_memory_budget_bytes") == budget
    assert 0 < used <= budget
    listing = client.get("/v1/models").json()
    assert listing["memory"]["used_bytes"] <= listing["memory"]["budget_bytes"] == budget
    assert sum(m["state"] == "loaded" for m in listing["data"]) <= 2


def test_concurrent_cold_requests_load_once(client: httpx.Client) -> None:
    assert client.get("/v1/models/single").json()["state"] == "available"
    responses = concurrently(12, lambda i: encode(client, "single", [f"cold request {i}"]))
    assert [r.status_code for r in responses] == [200] * 12
    values = metrics(client)
    assert sample(values, "remora_model_loads_total", model="single", result="ok") == 1
    assert sample(values, "remora_model_loads_total", model="single", result="error") == 0


def test_no_wait_on_a_cold_model(client: httpx.Client) -> None:
    response = encode(client, "nowait", ["hello"], **{"Remora-No-Wait": "1"})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "MODEL_LOADING"
    assert int(response.headers["Retry-After"]) >= 1
    # It started the load: a request that waits gets the model.
    response = encode(client, "nowait", ["hello"])
    assert response.status_code == 200
    assert sample(metrics(client), "remora_model_loads_total", model="nowait", result="ok") == 1


def test_corrupt_model_fails_alone(client: httpx.Client) -> None:
    for _ in range(2):
        response = encode(client, "broken", ["hello"])
        assert response.status_code == 502
        error = response.json()["error"]
        # The truncated file is a weights error: the specific code of a failed load (MODEL_LOAD_FAILED family).
        assert error["code"] == "WEIGHTS_INVALID"
        assert "corrupt safetensors" in error["message"] and "model.safetensors" in error["message"]
        assert encode(client, "m1", ["still serving"]).status_code == 200
    described = client.get("/v1/models/broken").json()
    assert described["state"] == "failed"
    assert described["error"]["code"] == "WEIGHTS_INVALID"
    assert "corrupt safetensors" in described["error"]["message"]
    listed = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert listed["broken"]["state"] == "failed"
    assert listed["broken"]["error"] == described["error"]
    assert all(m["error"] is None for name, m in listed.items() if name != "broken")
    values = metrics(client)
    assert sample(values, "remora_model_loads_total", model="broken", result="error") == 1  # failed once, remembered


@pytest.fixture(scope="module")
def queue_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("queue-http")
    link_model_copy(minilm_dir(), root / "q")
    config = write_registry(root, ["  - id: q\n    path: q\n    preload: true\n"])
    server = ServerProcess(config=config, env={"REMORA_DEVICE": "cpu", "REMORA_MAX_QUEUE": "8"}, log=root / "server.log")
    server.wait_healthy().wait_ready()
    yield server
    assert server.stop() == 0, server.logs()


def test_full_queue_answers_429(queue_server: ServerProcess) -> None:
    long_texts = [f"text {i}: " + "the remora rides along with the shark " * 40 for i in range(8)]  # 256 tokens each
    with httpx.Client(base_url=queue_server.url, timeout=120, limits=httpx.Limits(max_connections=64)) as client:
        responses = concurrently(16, lambda i: encode(client, "q", long_texts))
        statuses = sorted(r.status_code for r in responses)
        assert set(statuses) == {200, 429}, statuses
        for response in responses:
            if response.status_code == 429:
                assert response.json()["error"]["code"] == "QUEUE_FULL"
                assert int(response.headers["Retry-After"]) >= 1
        ok = statuses.count(200)
        # Refused requests queued nothing: only the accepted ones' tokens ran.
        assert sample(metrics(client), "remora_tokens_total", model="q") == ok * 8 * 256
