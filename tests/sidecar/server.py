"""A real `remora serve` process on a free port, for tests over real HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """`python -m remora.sidecar.cli serve` in a child process; `url` once healthy."""

    def __init__(self, *, config: Path | None = None, env: Mapping[str, str] | None = None,
                 log: Path | None = None, api_key: str | None = None, drop_env: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        # Sent by wait_healthy / wait_ready, for servers that guard health routes (REMORA_AUTH_HEALTH).
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.url = f"http://127.0.0.1:{self.port}"
        args = [sys.executable, "-m", "remora.sidecar.cli", "serve", "--port", str(self.port)]
        if config is not None:
            args += ["--config", str(config)]
        environ = {k: v for k, v in os.environ.items() if k not in drop_env}
        environ = {**environ, "REMORA_THREADS": "1", **(env or {})}
        self.log_path = log
        self._log = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, env=environ, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_healthy(self, timeout: float = 60.0) -> ServerProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.logs()}")
            try:
                if httpx.get(f"{self.url}/healthz", headers=self.headers, timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not healthy after {timeout}s: {self.logs()}")

    def wait_ready(self, timeout: float = 60.0) -> ServerProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if httpx.get(f"{self.url}/readyz", headers=self.headers, timeout=1.0).status_code == 200:
                return self
            time.sleep(0.1)
        raise TimeoutError(f"server not ready after {timeout}s: {self.logs()}")

    def logs(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return self.log_path.read_text(errors="replace")[-4000:]

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not subprocess.DEVNULL:
            self._log.close()
        return int(self.proc.returncode)
