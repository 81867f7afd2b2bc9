"""Running the app under uvicorn, with a shutdown that drains.

On SIGTERM (or SIGINT) uvicorn stops accepting connections and waits up to the grace period
for requests in flight; the lifespan then lets the scheduler finish what is queued. /readyz
turns 503 at the first signal so load balancers stop sending traffic.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from types import FrameType

import uvicorn

from remora.sidecar.app import create_app
from remora.sidecar.settings import ServerSettings
from remora.sidecar.state import Remora


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: Remora) -> None:
        super().__init__(config)
        self.remora = state

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.remora.draining = True
        super().handle_exit(sig, frame)
        # uvicorn (>= 0.29) re-raises captured signals once it has shut down, which would end a
        # drained server with -SIGTERM instead of exit code 0.
        self._captured_signals.clear()


KEEP_ALIVE_S = 75


def serve(settings: ServerSettings, *, host: str, port: int, log_level: str = "info", access_log: bool = False) -> int:
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=access_log,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        # Never None, which waits forever (int() made any grace under 1 s that); whole seconds, rounded up.
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_s),
        # Clients keep idle connections open for a while (httpx: 5 s, the same as uvicorn's
        # default): a server that closes at the same moment loses the request sent into the
        # closing connection. Outlasting clients' and proxies' idle timeouts (load balancers: 60 s)
        # leaves the close to them.
        timeout_keep_alive=KEEP_ALIVE_S,
        server_header=False,
        proxy_headers=False,
        lifespan="on",
    )
    server = _Server(config, app.state.remora)
    server.run()
    return 0 if server.started else 1
