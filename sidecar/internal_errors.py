"""Unexpected exceptions become a 500 on the request that raised them, and on nothing else.

An `Exception` handler registered with FastAPI runs in Starlette's outermost error middleware,
which re-raises after answering; uvicorn then closes the connection. A keep-alive client that
has already sent its next request on that connection sees it reset: one failing request would
take an unrelated one down with it. This middleware sits inside the others, answers the 500
itself and does not re-raise, so the connection stays open and metrics count the 500.
"""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Receive, Scope, Send

from remora.sidecar.errors import error_response
from remora.sidecar.middleware import StartTracker

log = logging.getLogger("remora")


class InternalErrors:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tracked = StartTracker(send)
        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            path = scope["path"]
            # The traceback goes to the log; the request's content never does (only its path).
            log.exception("internal error on %s", path)
            if tracked.started:
                raise  # half a response is out: only closing the connection can say it failed
            response = error_response(path, "INTERNAL", f"internal error: {type(exc).__name__}")
            await response(scope, receive, send)
