"""Promise: API keys are compared in constant time, and only the exact key opens the server.

Timing is not measured (flaky on shared machines). Instead the gate's decision is shown to be
`hmac.compare_digest`'s: with a spy that always answers False the right key is refused, with one
that always answers True a wrong key passes, so no `==` or prefix test decides anywhere. Over
real HTTP every near miss (a prefix, an extra character, another case, an empty key, the key in
the wrong place) is 401.
"""

from __future__ import annotations

import hmac
import socket
from collections.abc import Callable, Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from remora.sidecar.middleware import Gate, body_key_ok
from tests.security.support import API_KEY, Hardened, assert_error, still_serving

KEY = "gate-key-0123456789"


async def _ok(request: Request) -> Response:
    return PlainTextResponse("ok")


def gate_client() -> TestClient:
    app = Starlette(routes=[Route("/v1/thing", _ok, methods=["GET", "POST"]), Route("/healthz", _ok)])
    return TestClient(Gate(app, api_key=KEY, exempt=("/healthz",), max_body=1024))


Calls = list[tuple[bytes, bytes]]


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[bool | None], Calls]]:
    """spy(answer): record every compare_digest call; answer None delegates to the real one."""
    real = hmac.compare_digest

    def install(answer: bool | None) -> Calls:
        calls: Calls = []

        def compare_digest(a: bytes, b: bytes) -> bool:
            calls.append((a, b))
            return real(a, b) if answer is None else answer

        monkeypatch.setattr(hmac, "compare_digest", compare_digest)
        return calls

    yield install


def test_the_gate_compares_with_compare_digest(spy: Callable[[bool | None], Calls]) -> None:
    calls = spy(None)
    client = gate_client()
    assert client.get("/v1/thing", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert client.get("/v1/thing", headers={"X-API-Key": KEY}).status_code == 200
    assert client.get("/v1/thing", headers={"Authorization": "Bearer guess"}).status_code == 401
    assert calls == [(KEY.encode(), KEY.encode()), (KEY.encode(), KEY.encode()), (b"guess", KEY.encode())]


def test_the_decision_is_compare_digests_alone(spy: Callable[[bool | None], Calls]) -> None:
    """Were anything else (==, startswith) deciding, one of these would not follow the spy."""
    spy(False)
    client = gate_client()
    assert client.get("/v1/thing", headers={"Authorization": f"Bearer {KEY}"}).status_code == 401
    assert client.get("/v1/thing", headers={"X-API-Key": KEY}).status_code == 401
    assert not body_key_ok({"remora_body_key_required": KEY.encode()}, KEY)
    spy(True)
    client = gate_client()
    assert client.get("/v1/thing", headers={"Authorization": "Bearer guess"}).status_code == 200
    assert body_key_ok({"remora_body_key_required": KEY.encode()}, "guess")
    # Only an absent or empty key is refused before any comparison.
    assert client.get("/v1/thing").status_code == 401
    assert client.get("/v1/thing", headers={"X-API-Key": ""}).status_code == 401


NEAR_MISSES = {
    "none": {},
    "wrong": {"Authorization": "Bearer wrong"},
    "prefix": {"Authorization": f"Bearer {API_KEY[:-1]}"},
    "first-char": {"Authorization": f"Bearer {API_KEY[0]}"},
    "extra-char": {"Authorization": f"Bearer {API_KEY}x"},
    "space-then-more": {"Authorization": f"Bearer {API_KEY} x"},
    "other-case": {"Authorization": f"Bearer {API_KEY.swapcase()}"},
    "doubled": {"Authorization": f"Bearer {API_KEY}{API_KEY}"},
    "empty-bearer": {"Authorization": "Bearer"},
    "basic-scheme": {"Authorization": f"Basic {API_KEY}"},
    "no-scheme": {"Authorization": API_KEY},
    "x-api-key-wrong": {"X-API-Key": "wrong"},
    "x-api-key-prefix": {"X-API-Key": API_KEY[:-1]},
    "x-api-key-empty": {"X-API-Key": ""},
    "non-ascii": {"Authorization": b"Bearer \xff\xfe" + API_KEY.encode()},  # type: ignore[dict-item]
    "cookie": {"Cookie": f"api_key={API_KEY}"},
    "other-header": {"X-Api-Token": API_KEY},
}


@pytest.mark.integration
@pytest.mark.parametrize("miss", NEAR_MISSES)
def test_near_misses_are_refused(hardened: Hardened, miss: str) -> None:
    url = hardened.server.url
    with httpx.Client(base_url=url, headers=NEAR_MISSES[miss], timeout=30) as client:
        for response in (
            client.post("/v1/encode", json={"model": "tiny", "inputs": ["x"]}),
            client.get("/v1/models"),
            client.post("/v1/models", json={"id": "intruder", "path": str(hardened.root / "tiny")}),
            client.post("/v1/models/tiny/unload"),
            client.get("/openapi.json"),
            client.post(f"/v1/encode?api_key={API_KEY}", json={"inputs": ["x"]}),
        ):
            assert_error(response, 401, "UNAUTHORIZED")
            assert response.headers["www-authenticate"] == "Bearer"
    ids = {m["id"] for m in hardened.client.get("/v1/models").json()["data"]}
    assert "intruder" not in ids
    still_serving(hardened.client)


@pytest.mark.integration
def test_the_exact_key_is_let_in(hardened: Hardened) -> None:
    """The control for the near misses: the same requests with the key pass the gate."""
    for headers in ({"Authorization": f"Bearer {API_KEY}"}, {"Authorization": f"bearer {API_KEY}"},
                    {"X-API-Key": API_KEY}):
        response = httpx.post(f"{hardened.server.url}/v1/encode", json={"model": "tiny", "inputs": ["x"]},
                              headers=headers, timeout=30)
        assert response.status_code == 200, (headers, response.text)


@pytest.mark.integration
def test_qdrant_body_token_near_misses_are_refused(hardened: Hardened) -> None:
    """Qdrant carries the key in the body: the same comparison, the same refusals."""
    url = f"{hardened.server.url}/v1/qdrant/inference"

    def body(token: object) -> dict[str, object]:
        return {"inputs": [{"data": "x", "data_type": "text", "model": "tiny", "options": {}}],
                "inference": "update", "token": token}

    for token in ("wrong", API_KEY[:-1], API_KEY + "x", "", None, API_KEY.swapcase()):
        response = httpx.post(url, json=body(token), timeout=30)
        assert response.status_code == 401, (token, response.text)
    assert httpx.post(url, json=body(API_KEY), timeout=30).status_code == 200


@pytest.mark.integration
def test_whitespace_around_the_key_is_not_part_of_it(hardened: Hardened) -> None:
    """HTTP strips the whitespace around a header value (RFC 9110, 5.5): `Bearer <key> ` is the key
    itself. Written as raw bytes, since clients refuse to send it. Whitespace inside is not."""

    def status(value: bytes) -> int:
        with socket.create_connection(("127.0.0.1", hardened.server.port), timeout=30) as sock:
            sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: " + value
                         + b"\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        return int(data.split(b" ", 2)[1])

    key = API_KEY.encode()
    assert status(b"Bearer " + key + b"  ") == 200
    assert status(b"Bearer " + key + b"\t") == 200
    assert status(b"Bearer " + key[:8] + b" " + key[8:]) == 401
