"""The gate in front of every route: API-key auth and the request body limit.

Pure ASGI (no per-request task or buffering): a refused request is answered before its body
is read, and an over-long body is cut off as soon as it passes the limit.
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from remora.sidecar.errors import error_response


class BodyTooLarge(Exception):
    pass


class Gate:
    def __init__(self, app: ASGIApp, *, api_key: str | None, exempt: tuple[str, ...], max_body: int) -> None:
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.exempt = exempt
        self.max_body = max_body

    def _authorized(self, scope: Scope) -> bool:
        if self.api_key is None or scope["path"] in self.exempt:
            return True
        headers = dict(scope["headers"])
        auth = headers.get(b"authorization", b"")
        token = auth[7:].strip() if auth[:7].lower() == b"bearer " else headers.get(b"x-api-key", b"").strip()
        # Constant-time: the comparison must not leak how much of a guess was right.
        return bool(token) and hmac.compare_digest(token, self.api_key)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if not self._authorized(scope):
            response = error_response(path, "UNAUTHORIZED", "a valid API key is required (Authorization: Bearer <key>)")
            response.headers["WWW-Authenticate"] = "Bearer"
            await response(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            await self._too_large(scope, receive, send)
            return

        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._too_large(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            scope["path"], "PAYLOAD_TOO_LARGE", f"the request body is over the {self.max_body}-byte limit"
        )
        # The rest of the body is not read: close the connection rather than drain it.
        response.headers["Connection"] = "close"
        await response(scope, receive, send)
