"""Faults, one test each, against real `remora serve` processes on tiny seeded models (and MiniLM
where a forward pass must take a while): weights deleted or corrupted while a model is loaded and
while it loads, loads that raise, out of memory in a forward pass, a client that disconnects, a
slow client, SIGTERM during a load and during a batch, and a registry file edited to something
invalid. Each test states what Remora promises: a clear error for the model concerned, everything
else keeps serving (a control request right after), the process stays up, and the metrics count
the event.

Four servers start together (they take seconds each, mostly importing torch): `main` hosts most
faults; in `gate` and `term` a pinned model holds the memory budget so that a load stays under way
(waiting for memory) while the test strikes; `oom` carries the out-of-memory injection
(tests/reliability/faultinject/); `term` gets SIGTERM in the middle of a batch and of a load.
Tests of one server share it; each uses its own model copies, so their order does not matter.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from remora.core.memory import estimate_model_bytes
from tests.helpers import (
    link_model_copy,
    minilm_dir,
    save_tiny_bert_encoder,
    write_json,
)
from tests.sidecar.server import ServerProcess
from tests.sidecar.test_admin import Scrape, assert_error, wait_for

pytestmark = pytest.mark.integration

FAULTINJECT = Path(__file__).parent / "faultinject"
# 25 sentences: past MiniLM's 256-token limit, so each text is exactly 256 tokens after truncation.
LONG = "Vector databases store embeddings next to the documents they describe. " * 25
MINILM_TOKENS = 256
OOM_LIMIT = 40  # the oom server's injected limit: a forward pass of `oom` over more tokens fails
TERM_GRACE = 4.0


# -- model directories and servers ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny seeded BERT encoder (64-d, 128 positions) with MiniLM's WordPiece tokenizer."""
    return save_tiny_bert_encoder(tmp_path_factory.mktemp("faults-tiny") / "model")


def copy(src: Path, target: Path) -> Path:
    """A real copy (never hard links): these tests damage the files."""
    shutil.copytree(src, target)
    return target


def edit_config(model_dir: Path, **changes: Any) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    write_json(model_dir / "config.json", {**config, **changes})


WEIGHT_FAULTS = ("deleted", "truncated", "garbage")


def damage(weights: Path, fault: str) -> None:
    """Break a weights file as it happens on disk: removed, or cut short or overwritten with
    garbage in place (the same inode: what `cp` over it, a full disk or a bad copy leave)."""
    if fault == "deleted":
        weights.unlink()
        return
    size = weights.stat().st_size
    with weights.open("r+b") as handle:
        if fault == "truncated":
            handle.truncate(size // 2)
        else:
            handle.write(np.random.default_rng(7).bytes(size))


DAMAGE_MESSAGE = {"deleted": "no weights in", "truncated": "corrupt safetensors", "garbage": "corrupt safetensors"}

# Configs the loader must refuse, each with the code and a piece of the message it must give.
LOAD_RAISES: dict[str, tuple[Callable[[Path], object], str, str]] = {
    "unsupported-architecture": (lambda d: edit_config(d, architectures=["NoSuchModel"], model_type="nosuch"),
                                 "UNSUPPORTED_ARCHITECTURE", "NoSuchModel"),
    "config-not-json": (lambda d: (d / "config.json").write_text("{ this is not json"),
                        "MODEL_LOAD_FAILED", "config.json"),
    # Every checkpoint shape matches, but 5 heads do not divide a hidden size of 64.
    "heads-do-not-divide": (lambda d: edit_config(d, num_attention_heads=5), "MODEL_LOAD_FAILED", "does not run"),
    "shapes-disagree": (lambda d: edit_config(d, hidden_size=32), "WEIGHTS_INVALID", "has shape"),
    "layer-missing": (lambda d: edit_config(d, num_hidden_layers=3), "WEIGHTS_INVALID", "missing tensors"),
}


@dataclass
class Served:
    process: ServerProcess
    client: httpx.Client
    root: Path  # the model directories
    config: Path  # the registry file
    models: list[dict[str, Any]]  # what the registry file lists

    @property
    def log(self) -> str:
        assert self.process.log_path is not None
        return self.process.log_path.read_text(errors="replace")


def _registry(base: Path, models: dict[str, Path], extra: dict[str, dict[str, Any]]) -> tuple[Path, list[dict[str, Any]]]:
    entries = [{"id": name, "path": str(path), **extra.get(name, {})} for name, path in models.items()]
    config = base / "models.json"
    write_json(config, {"models": entries})
    return config, entries


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, tiny: Path) -> Iterator[dict[str, Served]]:
    """All four servers, started at once (each takes seconds, mostly importing torch)."""
    one_tiny = estimate_model_bytes(tiny, torch.float32) * 3 // 2  # room for one tiny model, never two
    specs: dict[str, tuple[dict[str, Path], dict[str, dict[str, Any]], dict[str, str]]] = {}
    bases = {name: tmp_path_factory.mktemp(name) for name in ("main", "gate", "oom", "term")}

    root = bases["main"]
    main = {"ctl": copy(tiny, root / "ctl"), "churned": copy(tiny, root / "churned"),
            "slow": link_model_copy(minilm_dir(), root / "slow")}
    for fault in WEIGHT_FAULTS:
        main[f"loaded-{fault}"] = copy(tiny, root / f"loaded-{fault}")
    for case, (breaks, _, _) in LOAD_RAISES.items():
        main[case] = copy(tiny, root / case)
        breaks(main[case])
    specs["main"] = (main, {}, {})

    root = bases["gate"]
    gate = {"holder": copy(tiny, root / "holder")}
    for fault in WEIGHT_FAULTS:
        gate[f"loading-{fault}"] = copy(tiny, root / f"loading-{fault}")
    specs["gate"] = (gate, {"holder": {"pinned": True}}, {"REMORA_MEMORY_BUDGET": str(one_tiny)})

    root = bases["oom"]
    specs["oom"] = (
        {"oom": copy(tiny, root / "oom"), "idle": copy(tiny, root / "idle")}, {},
        {"PYTHONPATH": os.pathsep.join(p for p in (str(FAULTINJECT), os.environ.get("PYTHONPATH", "")) if p),
         "REMORA_FAULT_OOM": f"oom:{OOM_LIMIT}",
         "REMORA_MAX_WAIT_MS": "250"},  # concurrent requests meet in one batch
    )
    root = bases["term"]
    specs["term"] = (
        {"slow": link_model_copy(minilm_dir(), root / "slow"), "holder": copy(tiny, root / "holder"),
         "victim": copy(tiny, root / "victim")},
        {"holder": {"pinned": True}},
        # MiniLM and the pinned tiny model fit; a second tiny model waits while MiniLM is busy.
        {"REMORA_MEMORY_BUDGET": str(estimate_model_bytes(minilm_dir(), torch.float32) + one_tiny),
         "REMORA_SHUTDOWN_GRACE": str(TERM_GRACE), "REMORA_LOAD_TIMEOUT": "60"},
    )

    started: dict[str, tuple[ServerProcess, Path, Path, list[dict[str, Any]]]] = {}
    for name, (models, extra, env) in specs.items():
        config, entries = _registry(bases[name], models, extra)
        process = ServerProcess(config=config, env={"REMORA_DEVICE": "cpu", **env}, log=bases[name] / "server.log")
        started[name] = (process, bases[name], config, entries)
    served = {}
    try:
        for name, (process, root, config, entries) in started.items():
            process.wait_healthy()
            served[name] = Served(process, httpx.Client(base_url=process.url, timeout=60), root, config, entries)
        yield served
    finally:
        for server in served.values():
            server.client.close()
        for process, *_ in started.values():  # all at once: each takes a moment to drain and exit
            if process.proc.poll() is None:
                process.signal(signal.SIGTERM)
        for process, *_ in started.values():
            # Exited before stop(), which would signal again: a second SIGTERM after uvicorn has
            # given the handlers back kills the exiting interpreter (-15).
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.proc.wait(timeout=30)
        codes = {name: process.stop() for name, (process, *_) in started.items()}
    assert all(code == 0 for code in codes.values()), codes


@pytest.fixture(scope="module")
def main(fleet: dict[str, Served]) -> Served:
    return fleet["main"]


@pytest.fixture(scope="module")
def gate(fleet: dict[str, Served]) -> Served:
    return fleet["gate"]


# -- helpers ---------------------------------------------------------------------------------------


def encode(client: httpx.Client, model: str, inputs: list[str], **headers: str) -> httpx.Response:
    return client.post("/v1/encode", json={"model": model, "inputs": inputs}, headers=headers)


def vectors(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(response.json()["embeddings"], dtype=np.float32)


def still_serving(server: Served, model: str = "ctl") -> None:
    """The control request: another model answers right after the fault, and the process lives."""
    response = encode(server.client, model, ["the control request"])
    assert response.status_code == 200, response.text
    assert server.process.proc.poll() is None


def scrape(client: httpx.Client) -> Scrape:
    response = client.get("/metrics")
    assert response.status_code == 200
    return Scrape(response.text)


def count(metrics: Scrape, name: str, **labels: str) -> float:
    """A counter's value for these labels (0 when it never counted them)."""
    return sum(v for lab, v in metrics.samples[name] if all(lab.get(k) == want for k, want in labels.items()))


def state(client: httpx.Client, model: str) -> str:
    return str(client.get(f"/v1/models/{model}").json()["state"])


def in_background(work: Callable[[], httpx.Response]) -> Future[httpx.Response]:
    pool = ThreadPoolExecutor(1)
    future = pool.submit(work)
    pool.shutdown(wait=False)
    return future


# Raw HTTP over a socket, for clients that misbehave at the transport level.


def http_request(body: bytes, path: str = "/v1/encode") -> tuple[bytes, bytes]:
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return head, body


def connect(server: Served, *, receive_buffer: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:  # before connecting, so the advertised window stays small
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(60)
    sock.connect(("127.0.0.1", server.process.port))
    return sock


def read_response(sock: socket.socket, data: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one response; `data` is what was read of it already."""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before the response headers: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers["content-length"])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed in the middle of the response body"
        body += chunk
    return status, headers, body


def latencies(client: httpx.Client, times: int = 8) -> list[float]:
    out = []
    for _ in range(times):
        started = time.perf_counter()
        assert encode(client, "ctl", ["how fast is the control model"]).status_code == 200
        out.append(time.perf_counter() - started)
    return out


# -- weights deleted or corrupted ------------------------------------------------------------------


@pytest.mark.parametrize("fault", WEIGHT_FAULTS)
def test_weights_damaged_while_loaded(main: Served, fault: str) -> None:
    """Weights deleted, truncated in place or overwritten with garbage while the model is loaded:
    the model keeps serving from memory (the same vectors). Once it is evicted (an unload), the
    reload fails with 502 WEIGHTS_INVALID naming the file or directory, for that model only; the
    failure is remembered (no reload per request) and counted once in
    remora_model_loads_total{result="error"}; the control model serves throughout."""
    client, model = main.client, f"loaded-{fault}"
    served = vectors(encode(client, model, ["a text before the fault", "and another"]))
    damage(main.root / model / "model.safetensors", fault)

    again = vectors(encode(client, model, ["a text before the fault", "and another"]))
    np.testing.assert_allclose(again, served, atol=1e-6)
    still_serving(main)

    assert client.post(f"/v1/models/{model}/unload").json()["unloaded"] is True
    for _ in range(2):
        error = assert_error(encode(client, model, ["after the eviction"]), 502, "WEIGHTS_INVALID")
        assert DAMAGE_MESSAGE[fault] in error["message"] and str(main.root / model) in error["message"]
        still_serving(main)
    described = client.get(f"/v1/models/{model}").json()
    assert described["state"] == "failed" and described["error"]["code"] == "WEIGHTS_INVALID"
    metrics = scrape(client)
    assert count(metrics, "remora_model_loads_total", model=model, result="ok") == 1
    assert count(metrics, "remora_model_loads_total", model=model, result="error") == 1
    assert count(metrics, "remora_model_evictions_total", model=model, reason="unload") == 1
    assert count(metrics, "remora_requests_total", model=model, route="/v1/encode", status="502") == 2


@pytest.mark.parametrize("fault", WEIGHT_FAULTS)
def test_weights_damaged_while_loading(gate: Served, fault: str) -> None:
    """Weights deleted, truncated or garbled while the model's load is under way: the load waits
    for memory that a pinned model holds (state `loading`) when the file is damaged; once the pin
    is lifted the load goes on and fails with 502 WEIGHTS_INVALID for the waiting request, and
    only that model is failed; the pinned model, evicted to make room, serves again right after."""
    client, model = gate.client, f"loading-{fault}"
    client.post("/v1/models/holder/pin")
    wait_for(lambda: state(client, "holder") == "loaded", what="the pinned model to load")
    before = scrape(client)

    waiting = in_background(lambda: encode(client, model, ["waits for memory"]))
    wait_for(lambda: state(client, model) == "loading", what="the load to wait for memory")
    time.sleep(0.2)
    assert not waiting.done() and state(client, model) == "loading"
    damage(gate.root / model / "model.safetensors", fault)
    client.post("/v1/models/holder/unpin")  # room frees: the load goes on, onto the damaged file

    error = assert_error(waiting.result(timeout=30), 502, "WEIGHTS_INVALID")
    assert DAMAGE_MESSAGE[fault] in error["message"] and str(gate.root / model) in error["message"]
    assert state(client, model) == "failed"
    still_serving(gate, "holder")
    after = scrape(client)
    assert count(after, "remora_model_loads_total", model=model, result="error") == 1
    assert count(after, "remora_model_loads_total", model=model, result="ok") == 0
    evicted = "remora_model_evictions_total"
    assert count(after, evicted, model="holder", reason="budget") == count(before, evicted, model="holder",
                                                                            reason="budget") + 1


def test_weights_rewritten_in_place_during_loads(main: Served) -> None:
    """A weights file rewritten in place (truncated, then written again, as `cp` over it does)
    over and over while the model loads and unloads: every load either succeeds or fails with
    502 WEIGHTS_INVALID, and the process never dies. It did: tensors were read through a memory
    map, and a read past the file's new end killed the whole server with SIGBUS (core/weights.py
    now reads with ordinary reads). Once the file is whole again the model loads and serves."""
    client, weights = main.client, main.root / "churned" / "model.safetensors"
    data = weights.read_bytes()
    stop = threading.Event()
    rewrites = 0

    def rewrite_in_place() -> None:
        nonlocal rewrites
        while not stop.is_set():
            with weights.open("r+b") as handle:
                handle.truncate(len(data) // 3)
                time.sleep(0.002)
                handle.seek(0)
                handle.write(data)
            rewrites += 1
            time.sleep(0.002)

    writer = threading.Thread(target=rewrite_in_place)
    writer.start()
    answers: dict[str, int] = {}
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            response = client.post("/v1/models/churned/load")
            key = "ok" if response.status_code == 200 else f"{response.status_code} {response.json()['error']['code']}"
            answers[key] = answers.get(key, 0) + 1
            client.post("/v1/models/churned/unload")
    finally:
        stop.set()
        writer.join()
    assert main.process.proc.poll() is None, main.process.logs()
    assert set(answers) <= {"ok", "502 WEIGHTS_INVALID"}, answers
    assert answers.get("502 WEIGHTS_INVALID", 0) > 0 and rewrites > 10, (answers, rewrites)  # the fault struck
    assert weights.read_bytes() == data
    assert client.post("/v1/models/churned/load").status_code == 200
    np.testing.assert_allclose(vectors(encode(client, "churned", ["whole again"])),
                               vectors(encode(client, "ctl", ["whole again"])), atol=1e-6)
    metrics = scrape(client)
    assert count(metrics, "remora_model_loads_total", model="churned", result="error") == answers["502 WEIGHTS_INVALID"]


# -- a load that raises ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(LOAD_RAISES))
def test_load_that_raises(main: Served, case: str) -> None:
    """A model whose load raises (an unknown architecture, a config.json that is not JSON, a config
    whose heads do not divide its hidden size, shapes that disagree with the checkpoint, a layer
    the checkpoint lacks): 502 with the precise code (MODEL_LOAD_FAILED family) and a message that
    names the problem; the model shows `failed` with that error, later requests get it without
    another load, remora_model_loads_total{result="error"} counts each load; an explicit load
    retries (and fails the same way); the control model serves throughout."""
    client = main.client
    _, code, says = LOAD_RAISES[case]
    for _ in range(2):
        error = assert_error(encode(client, case, ["will not load"]), 502, code)
        assert says in error["message"], error
        still_serving(main)
    described = client.get(f"/v1/models/{case}").json()
    assert described["state"] == "failed" and described["error"]["code"] == code
    assert count(scrape(client), "remora_model_loads_total", model=case, result="error") == 1
    assert_error(client.post(f"/v1/models/{case}/load"), 502, code)
    assert count(scrape(client), "remora_model_loads_total", model=case, result="error") == 2
    still_serving(main)


# -- out of memory in a forward pass ---------------------------------------------------------------


def test_out_of_memory_in_a_forward_pass(fleet: dict[str, Served]) -> None:
    """Out of memory in a forward pass, injected (a CPU machine cannot run out for real): the
    server process loads tests/reliability/faultinject/sitecustomize.py, which makes model `oom`
    raise torch.OutOfMemoryError for any forward pass over more than 40 tokens. Three requests
    meet in one batch: one with a 60-token text, two short. Per core/scheduler.py the idle model
    is evicted (remora_model_evictions_total{reason="oom"}), the batch retried, then split: the
    long sequence alone cannot run and fails its request with 503 RESOURCE_EXHAUSTED and
    Retry-After; the two short requests in the same batch succeed with the right vectors. The
    evicted model and short requests serve right after; the process stays up."""
    server = fleet["oom"]
    client = server.client
    short = ["a short text", "another brief one"]
    long_text = " ".join(["remora"] * 60)
    assert encode(client, "idle", ["loaded, then idle"]).status_code == 200
    alone = [vectors(encode(client, "oom", [text])) for text in short]  # each well under the limit
    before = scrape(client)

    barrier = threading.Barrier(3)

    def send(texts: list[str]) -> httpx.Response:
        barrier.wait(10)
        return encode(client, "oom", texts)

    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(send, texts) for texts in ([long_text], [short[0]], [short[1]])]
        failed, *served = [f.result(timeout=60) for f in futures]

    error = assert_error(failed, 503, "RESOURCE_EXHAUSTED")
    assert "out of memory" in error["message"]
    assert int(failed.headers["Retry-After"]) >= 1
    for response, expected in zip(served, alone, strict=True):
        np.testing.assert_allclose(vectors(response), expected, atol=1e-5)
    after = scrape(client)
    # One scheduled batch held all three: the split happened inside it.
    assert count(after, "remora_batch_size_count", model="oom") - count(before, "remora_batch_size_count", model="oom") == 1
    assert count(after, "remora_batch_size_sum", model="oom") - count(before, "remora_batch_size_sum", model="oom") == 3
    assert count(after, "remora_model_evictions_total", model="idle", reason="oom") == 1
    assert count(after, "remora_requests_total", model="oom", route="/v1/encode", status="503") == 1
    assert count(after, "remora_model_loaded", model="oom") == 1  # the model that ran out is not dropped
    injected = [line for line in server.log.splitlines() if line.startswith("faultinject: out of memory in oom")]
    assert injected and injected[0].startswith("faultinject: out of memory in oom: 3 sequences"), injected
    assert any(line.startswith("faultinject: out of memory in oom: 1 sequences") for line in injected), injected

    still_serving(server, "idle")  # evicted, loads again
    np.testing.assert_allclose(vectors(encode(client, "oom", [short[0]])), alone[0], atol=1e-5)
    assert_error(encode(client, "oom", [long_text]), 503, "RESOURCE_EXHAUSTED")  # alone, it still cannot run
    still_serving(server, "oom")


# -- clients that misbehave ------------------------------------------------------------------------


def test_client_disconnects_mid_request(main: Served) -> None:
    """Two clients leave in the middle of their requests: one whose batches are running (16 texts
    of 256 tokens on MiniLM, two forward passes), one still queued behind it. The server stays
    up, counts both as 499 in remora_requests_total, drops the queued request before compute (its
    tokens never reach remora_tokens_total), lets the running one finish harmlessly, and leaks
    nothing: remora_inflight_requests and remora_queue_depth return to their baseline and the
    model's leases (in_use) to 0."""
    client = main.client
    assert encode(client, "slow", ["warm up"]).status_code == 200
    before = scrape(client)

    def depth() -> float:
        return count(scrape(client), "remora_queue_depth", model="slow")

    running = connect(main)
    running.sendall(b"".join(http_request(json.dumps({"model": "slow", "inputs": [LONG] * 16}).encode())))
    wait_for(lambda: depth() >= 8, what="the first request to queue")  # first: its batches run first
    queued = connect(main)
    queued.sendall(b"".join(http_request(json.dumps({"model": "slow", "inputs": [LONG] * 5}).encode())))
    # A forward pass takes 8 texts of 256 tokens: while the first runs, its other 8 wait, then the second's 5.
    wait_for(lambda: depth() == 8 + 5, what="the second request to queue behind the first")
    for sock in (queued, running):
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def settled() -> bool:
        metrics = scrape(client)
        return (count(metrics, "remora_inflight_requests") == 1  # this scrape
                and count(metrics, "remora_queue_depth", model="slow") == 0
                and client.get("/v1/models/slow").json()["in_use"] == 0)

    wait_for(settled, timeout=60, what="the server to settle")
    after = scrape(client)
    closed = "remora_requests_total"
    assert count(after, closed, model="slow", status="499") - count(before, closed, model="slow", status="499") == 2
    tokens = count(after, "remora_tokens_total", model="slow") - count(before, "remora_tokens_total", model="slow")
    assert tokens == 16 * MINILM_TOKENS  # the running request finished; the queued one never ran
    still_serving(main)
    assert main.process.proc.poll() is None


def test_an_idle_keep_alive_connection_outlasts_the_clients_expiry(main: Served) -> None:
    """A client keeps an idle connection for a while (httpx: 5 s) and then sends on it. Were the
    server to close idle connections as soon (uvicorn's default), a request sent as it closed
    would be lost: the server keeps them longer (sidecar/server.py KEEP_ALIVE_S), so the second
    request on the same socket, 6 s later, is answered."""
    head, body = http_request(json.dumps({"model": "ctl", "inputs": ["kept alive"]}).encode())
    sock = connect(main)
    try:
        sock.sendall(head + body)
        assert read_response(sock)[0] == 200
        time.sleep(6.0)
        sock.sendall(head + body)
        assert read_response(sock)[0] == 200
    finally:
        sock.close()


def test_slow_client(main: Served) -> None:
    """A client that sends its body slowly, and one that reads its response (1000 vectors)
    slowly through a 4 kB receive window: other clients are served meanwhile at their normal
    latency (median at most 3x the baseline + 50 ms, none over a second), and each slow client
    still gets its complete, correct answer."""
    client = main.client
    baseline = statistics.median(latencies(client))
    reference = vectors(encode(client, "ctl", ["sent one byte at a time"]))

    # A body that trickles in.
    head, body = http_request(json.dumps({"model": "ctl", "inputs": ["sent one byte at a time"]}).encode())
    sender = connect(main)
    sender.sendall(head + body[:10])
    during = []
    for index in range(10, len(body)):
        sender.sendall(body[index:index + 1])
        if index % 4 == 0:
            during += latencies(client, 1)
        time.sleep(0.01)
    assert len(during) >= 8
    status, _, answer = read_response(sender)
    sender.close()
    assert status == 200
    np.testing.assert_allclose(np.asarray(json.loads(answer)["embeddings"]), reference, atol=1e-6)

    # A response read slowly.
    texts = ["read back slowly"] * 1000
    reader = connect(main, receive_buffer=4096)
    reader.sendall(b"".join(http_request(json.dumps({"model": "ctl", "inputs": texts}).encode())))
    started, trickled = time.monotonic(), b""
    while time.monotonic() - started < 1.5:
        during += latencies(client, 2)
        trickled += reader.recv(512)
        time.sleep(0.05)
    status, _, answer = read_response(reader, trickled)
    reader.close()
    assert status == 200
    embeddings = np.asarray(json.loads(answer)["embeddings"])
    assert embeddings.shape == (1000, 64)
    np.testing.assert_allclose(embeddings, np.repeat(vectors(encode(client, "ctl", ["read back slowly"])), 1000, 0),
                               atol=1e-6)

    assert statistics.median(during) <= 3 * baseline + 0.05, (baseline, during)
    assert max(during) < 1.0, during
    still_serving(main)


# -- SIGTERM ---------------------------------------------------------------------------------------


def test_sigterm_during_a_batch_and_a_load(fleet: dict[str, Served]) -> None:
    """SIGTERM while a batch runs and a model load is under way (grace 4 s; MiniLM, 8 texts of
    256 tokens per forward pass; a tiny model's load waiting for memory that busy MiniLM and a
    pinned model hold; load timeout 60 s). New connections are refused at once; the requests
    whose work fits in the grace (one running, one queued behind it) complete with 200 and all
    their vectors; the one that would outlast it (64 texts, eight more passes) and the one waiting
    for the load get a clean 503 SHUTTING_DOWN with Retry-After, never a bare 500 or a reset; the
    process exits 0 within the grace plus the forward pass then running.
    Before the fixes the cut-off requests got uvicorn's plain-text 500 (sidecar/service.py now
    answers the cancellation), the cut-off request's remaining passes ran for a second grace period
    (sidecar/app.py), and the process did not exit until the waiting load gave up, a minute later
    (core/pool.py)."""
    server = fleet["term"]
    client, url = server.client, server.process.url
    wait_for(lambda: state(client, "holder") == "loaded", what="the pinned model to load")
    assert encode(client, "slow", ["warm up"]).status_code == 200

    def depth() -> float:
        return count(scrape(client), "remora_queue_depth", model="slow")

    def send(model: str, texts: list[str]) -> Future[httpx.Response]:
        return in_background(lambda: httpx.post(f"{url}/v1/encode", json={"model": model, "inputs": texts},
                                                timeout=60))

    running = send("slow", [LONG] * 8)
    wait_for(lambda: count(scrape(client), "remora_inflight_requests") >= 2, what="the first request")
    time.sleep(0.2)  # in its forward pass
    queued = send("slow", [LONG] * 8)
    wait_for(lambda: depth() >= 8, what="the second request to queue")
    outlasting = send("slow", [LONG] * 64)
    wait_for(lambda: depth() >= 64, what="the third request to queue")
    loading = send("victim", ["waits for memory"])
    wait_for(lambda: state(client, "victim") == "loading", what="the load to wait for memory")
    assert not queued.done(), "the second request ran before the signal; make the batches slower"
    signalled = time.monotonic()
    server.process.signal(signal.SIGTERM)
    time.sleep(0.3)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/healthz", timeout=5)

    for finished in (running.result(timeout=60), queued.result(timeout=60)):
        assert finished.status_code == 200, finished.text
        assert len(finished.json()["embeddings"]) == 8
    for cut_off in (outlasting.result(timeout=60), loading.result(timeout=60)):
        assert_error(cut_off, 503, "SHUTTING_DOWN")
        assert int(cut_off.headers["Retry-After"]) >= 1
    assert server.process.proc.wait(timeout=30) == 0
    assert time.monotonic() - signalled < TERM_GRACE + 4.0  # the grace, then at most one pass
    assert "Exception in ASGI application" not in server.log


# -- the registry file -----------------------------------------------------------------------------


def sighup_fails(server: Served) -> None:
    """SIGHUP, then wait for the server to log one more failed reload."""
    failures = server.log.count("registry reload failed")
    server.process.signal(signal.SIGHUP)
    wait_for(lambda: server.log.count("registry reload failed") > failures, what="the reload to fail")


def test_invalid_registry_then_sighup(main: Served) -> None:
    """The registry file edited to something invalid (not YAML, an unknown key, a directory that
    does not exist, a duplicate id, an empty file), then SIGHUP each time: the error is logged ("registry reload
    failed") and counted (remora_registry_reloads_total{result="error"}), the models stay exactly
    as they were and keep serving. A valid edit and SIGHUP afterwards apply: the new model serves,
    counted as result="ok"."""
    client = main.client
    listing = {m["id"]: m["source"] for m in client.get("/v1/models").json()["data"]}
    ctl = str(main.root / "ctl")
    invalid = {  # the file, and what the logged error must say
        "not-yaml": ("models: [\n  - id: x\n    path: {", "cannot read model registry"),
        "unknown-key": (json.dumps({"models": [*main.models, {"id": "fresh", "path": ctl, "colour": "red"}]}),
                        "unknown keys ['colour']"),
        "missing-directory": (json.dumps({"models": [*main.models, {"id": "fresh", "path": str(main.root / "nowhere")}]}),
                              str(main.root / "nowhere")),
        "duplicate-id": (json.dumps({"models": [*main.models, {"id": "ctl", "path": ctl}]}), "appears twice"),
        # A file caught mid-write: read as "no models", it would unregister every model.
        "empty": ("", "the registry is empty"),
    }
    for name, (text, says) in invalid.items():
        main.config.write_text(text)
        sighup_fails(main)
        logged = [line for line in main.log.splitlines() if "registry reload failed" in line][-1]
        assert says in logged, (name, logged)
        assert {m["id"]: m["source"] for m in client.get("/v1/models").json()["data"]} == listing, name
        still_serving(main)
    assert count(scrape(client), "remora_registry_reloads_total", result="error") == len(invalid)

    write_json(main.config, {"models": [*main.models, {"id": "added", "path": ctl}]})
    main.process.signal(signal.SIGHUP)
    wait_for(lambda: client.get("/v1/models/added").status_code == 200, what="the valid reload")
    np.testing.assert_allclose(vectors(encode(client, "added", ["x"])), vectors(encode(client, "ctl", ["x"])), atol=1e-6)
    metrics = scrape(client)
    assert count(metrics, "remora_registry_reloads_total", result="ok") == 1
    assert count(metrics, "remora_registry_reloads_total", result="error") == len(invalid)
    assert main.process.proc.poll() is None
