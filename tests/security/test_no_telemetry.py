"""Promise: no telemetry. The sidecar makes no network connection of its own.

A real `remora serve` runs with Python's audit hooks recording every outbound attempt (connect,
sendto, name lookups, urllib and http.client) to a file (tests/security/audit/sitecustomize.py).
The hub's offline and no-telemetry switches are taken out of its environment, so nothing but
Remora's own code stands between it and the network. It serves every route family, is asked for
a hub (`hf:`) model that is not in the cache, reloads its registry and shuts down. Every recorded
attempt must be to loopback: the recorder's own control connection, and nothing else.
"""

from __future__ import annotations

import ast
import ipaddress
import json
import os
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import write_json
from tests.sidecar.server import ServerProcess

pytestmark = pytest.mark.integration

AUDIT_DIR = Path(__file__).parent / "audit"
OFFLINE_SWITCHES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY",
                    "DO_NOT_TRACK", "REMORA_HF_DOWNLOAD")


def loopback(target: str) -> bool:
    """Whether a recorded target (the repr of a socket address, a host name or a URL) is local."""
    try:
        value = ast.literal_eval(target)
    except (ValueError, SyntaxError):
        return False
    host = value[0] if isinstance(value, tuple) and value else value
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    if not isinstance(host, str):
        return False
    if host.startswith("/") or host.startswith("\0"):  # an AF_UNIX path
        return True
    if "://" in host:
        host = host.split("://", 1)[1].split("/", 1)[0]
        host = host[1:].split("]", 1)[0] if host.startswith("[") else host.rsplit(":", 1)[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def test_loopback_classifier() -> None:
    assert loopback("('127.0.0.1', 8080)") and loopback("('::1', 80, 0, 0)") and loopback("'localhost'")
    assert loopback("'http://127.0.0.1:9/x'") and loopback("'/tmp/sock'")
    assert not loopback("('10.0.0.1', 443)") and not loopback("'huggingface.co'")
    assert not loopback("'https://huggingface.co/api/models/x'") and not loopback("('2606:4700::1', 443, 0, 0)")


def test_the_server_makes_no_outbound_connection(tmp_path: Path, tiny_dir: Path, ce_dir: Path) -> None:
    net_log = tmp_path / "net.jsonl"
    registry = tmp_path / "models.yaml"
    write_json(registry, {"default_model": "tiny", "models": [
        {"id": "tiny", "path": str(tiny_dir)},
        {"id": "ce", "path": str(ce_dir)},
        {"id": "hubonly", "hf": "remora-test/not-in-the-cache"},
    ]})
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        control_port = listener.getsockname()[1]
        env = {
            "PYTHONPATH": os.pathsep.join(p for p in (str(AUDIT_DIR), os.environ.get("PYTHONPATH", "")) if p),
            "REMORA_TEST_NET_LOG": str(net_log),
            "REMORA_TEST_NET_CONTROL": str(control_port),
            "HF_HOME": str(tmp_path / "hf"),  # an empty hub cache
        }
        server = ServerProcess(config=registry, env=env, log=tmp_path / "server.log", drop_env=OFFLINE_SWITCHES)
        try:
            server.wait_healthy()
            with httpx.Client(base_url=server.url, timeout=60) as client:
                calls = [
                    client.post("/v1/encode", json={"model": "tiny", "inputs": ["a", "b"]}),
                    client.post("/v1/score", json={"model": "ce", "query": "q", "documents": ["d"]}),
                    client.post("/v1/embeddings", json={"model": "tiny", "input": "a"}),
                    client.post("/embed", json={"inputs": "a"}),
                    client.post("/v1/rerank", json={"model": "ce", "query": "q", "documents": ["d"]}),
                    client.get("/v1/models"),
                    client.get("/metrics"),
                    client.get("/readyz"),
                    client.get("/docs"),
                    client.get("/openapi.json"),
                ]
                assert all(c.status_code == 200 for c in calls), [(str(c.request.url), c.status_code) for c in calls]
                # Not cached, downloads not enabled: refused with a code, and without a download.
                hub = client.post("/v1/encode", json={"model": "hubonly", "inputs": ["a"]})
                assert 400 <= hub.status_code < 600 and hub.status_code != 500, hub.text
                assert hub.json()["error"]["code"], hub.text
                server.signal(signal.SIGHUP)
                time.sleep(1.0)
                assert client.post("/v1/encode", json={"model": "tiny", "inputs": ["c"]}).status_code == 200
        finally:
            assert server.stop() == 0, server.logs()
    records = [json.loads(line) for line in net_log.read_text().splitlines()] if net_log.exists() else []
    control = [r for r in records if r["event"] == "socket.connect" and f", {control_port})" in r["target"]]
    assert control, f"the audit hook recorded no control connection, so it recorded nothing: {records}"
    outbound = [r for r in records if not loopback(r["target"])]
    assert not outbound, f"the server reached out: {outbound}"
