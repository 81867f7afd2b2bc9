"""Promise: limits on body size, batch size and text length, and the server keeps serving.

On a real server with small limits from the environment (REMORA_MAX_REQUEST_BYTES=1MiB,
REMORA_MAX_INPUTS=8; the tiny model holds 128 positions): a larger body is 413
PAYLOAD_TOO_LARGE whether or not it declares its length, a ninth text is 413 TOO_MANY_INPUTS on
every route family, an over-long text is 413 INPUT_TOO_LONG with truncate=false and is cut with
truncate=true, even as long as the body limit allows. After each, an ordinary request is served.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.security.support import MAX_INPUTS, MAX_REQUEST_BYTES, Hardened, assert_error, still_serving

pytestmark = pytest.mark.integration

MAX_TOKENS = 128  # the tiny model's position table


def encode_body(size: int) -> bytes:
    """A JSON encode request of exactly `size` bytes: one text padded to fit."""
    empty = json.dumps({"model": "tiny", "inputs": [""], "truncate": True}).encode()
    text = ("remora " * size)[: size - len(empty)]
    body = json.dumps({"model": "tiny", "inputs": [text], "truncate": True}).encode()
    assert len(body) == size
    return body


def peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_a_body_over_the_limit_is_refused(hardened: Hardened) -> None:
    client = hardened.client
    over = encode_body(MAX_REQUEST_BYTES + 1)
    headers = {"Content-Type": "application/json"}
    for path in ("/v1/encode", "/v1/embeddings", "/embed", "/v1/models"):
        response = client.post(path, content=over, headers=headers)
        assert response.status_code == 413, (path, response.text)
        still_serving(client)
    assert_error(client.post("/v1/encode", content=over, headers=headers), 413, "PAYLOAD_TOO_LARGE")
    still_serving(client)


def test_a_body_without_a_length_is_cut_off_at_the_limit(hardened: Hardened) -> None:
    """Chunked transfer declares no length: the gate counts as it reads and stops past the limit."""
    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        yield b'{"model": "tiny", "inputs": ["'
        for _ in range(64):  # 4 MiB offered, four times the limit
            sent += 65536
            yield b"x" * 65536
        yield b'"]}'

    response = hardened.client.post("/v1/encode", content=chunks(), headers={"Content-Type": "application/json"})
    assert_error(response, 413, "PAYLOAD_TOO_LARGE")
    still_serving(hardened.client)


def test_a_text_as_long_as_the_body_allows_is_cut_not_run(hardened: Hardened) -> None:
    """A body of exactly the limit passes the gate; its ~200k-token text is cut to the model's
    128 positions, fast and without a jump in the server's memory."""
    client = hardened.client
    still_serving(client)  # the model is loaded before the memory is measured
    before = peak_rss_bytes(hardened.server.proc.pid)
    started = time.monotonic()
    response = client.post("/v1/encode", content=encode_body(MAX_REQUEST_BYTES),
                           headers={"Content-Type": "application/json"})
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["tokens"] == MAX_TOKENS
    wide = "鮣" * (MAX_REQUEST_BYTES // 3 - 100)  # 3 UTF-8 bytes each: the most characters per byte of CJK
    response = client.post("/v1/encode", json={"model": "tiny", "inputs": [wide]})
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["tokens"] <= MAX_TOKENS
    growth = peak_rss_bytes(hardened.server.proc.pid) - before
    assert growth < 512 * 2**20, f"peak memory grew by {growth / 2**20:.0f} MiB"
    assert elapsed < 30, elapsed
    still_serving(client)


def test_more_inputs_than_allowed_are_refused(hardened: Hardened) -> None:
    client = hardened.client
    texts = [f"text {i}" for i in range(MAX_INPUTS + 1)]
    refused = {
        "/v1/encode": {"model": "tiny", "inputs": texts},
        "/v1/embeddings": {"model": "tiny", "input": texts},
        "/v1/score": {"model": "tiny", "query": "q", "documents": texts},
        "/v1/rerank": {"model": "tiny", "query": "q", "documents": texts},
        "/embed": {"inputs": texts},
    }
    for path, body in refused.items():
        response = client.post(path, json=body)
        # TEI answers an over-sized batch with its own 422 Validation error, as TEI does.
        assert response.status_code == (422 if path == "/embed" else 413), (path, response.text)
        if path.startswith("/v1/encode"):
            assert_error(response, 413, "TOO_MANY_INPUTS")
        still_serving(client)
    # The control: exactly the limit is served.
    response = client.post("/v1/encode", json={"model": "tiny", "inputs": texts[:MAX_INPUTS]})
    assert response.status_code == 200 and len(response.json()["embeddings"]) == MAX_INPUTS


def test_an_over_long_text_is_refused_or_cut_as_asked(hardened: Hardened) -> None:
    client = hardened.client
    long_text = " ".join(f"word{i}" for i in range(400))  # far past 128 tokens
    assert_error(client.post("/v1/encode", json={"model": "tiny", "inputs": ["short", long_text], "truncate": False}),
                 413, "INPUT_TOO_LONG")
    assert_error(client.post("/v1/score", json={"model": "tiny", "query": long_text, "documents": ["d"],
                                                "truncate": False}), 413, "INPUT_TOO_LONG")
    still_serving(client)
    cut = client.post("/v1/encode", json={"model": "tiny", "inputs": [long_text], "truncate": True})
    assert cut.status_code == 200, cut.text
    assert cut.json()["usage"]["tokens"] == MAX_TOKENS
    # Cut means the first 128 tokens: the same vector as the text's own first part.
    head = client.post("/v1/encode", json={"model": "tiny", "inputs": [long_text[: len(long_text) // 2]]})
    assert head.json()["embeddings"] == cut.json()["embeddings"]
