"""Fixtures: the embedded-default server, shared by the route tests of a module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sidecar.server import ServerProcess


@pytest.fixture(scope="session")
def default_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """`remora serve` with no config: the embedded MiniLM as the default model."""
    log = Path(tmp_path_factory.mktemp("default-server")) / "server.log"
    server = ServerProcess(log=log).wait_healthy()
    yield server
    assert server.stop() == 0, server.logs()
