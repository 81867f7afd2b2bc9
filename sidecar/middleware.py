"""The gate in front of every route: API-key auth and the request body limit.

Pure ASGI (no per-request task or buffering): a refused request is answered before its body
is read, and an over-long body is cut off as soon as it passes the limit.
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from remora.sidecar.errors import error_response

# Set in a request's scope state when its key must come from its body; the value is the key.
BODY_KEY_REQUIRED = "remora_body_key_required"


class BodyTooLarge(Exception):
    pass


class StartTracker:
    """`send`, remembering whether the response has started (after that, no error response fits)."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.started = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        await self.send(message)


def key_matches(given: bytes | None, expected: bytes) -> bool:
    # Constant-time: the comparison must not leak how much of a guess was right.
    return bool(given) and hmac.compare_digest(given or b"", expected)


def body_key_ok(state: dict[str, object], token: str | None) -> bool:
    """For a body-token path: whether the request may go on (its header key was good, or no key
    is configured, or the key in its body matches)."""
    expected = state.get(BODY_KEY_REQUIRED)
    if not isinstance(expected, bytes):
        return True
    return key_matches(token.encode() if isinstance(token, str) else None, expected)


class Gate:
    def __init__(
        self,
        app: ASGIApp,
        *,
        api_key: str | None,
        exempt: tuple[str, ...],
        max_body: int,
        exempt_prefixes: tuple[str, ...] = (),
        body_token_paths: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.exempt = exempt
        self.exempt_prefixes = exempt_prefixes
        # Callers that carry the key inside the JSON body (Qdrant's inference hook sends "token"):
        # without a header key the request goes on, marked, and the route checks the body's key.
        self.body_token_paths = body_token_paths
        self.max_body = max_body

    def _authorized(self, scope: Scope) -> bool:
        path = scope["path"]
        if self.api_key is None or path in self.exempt or bool(self.exempt_prefixes and path.startswith(self.exempt_prefixes)):
            return True
        headers = dict(scope["headers"])
        auth = headers.get(b"authorization", b"")
        token = auth[7:].strip() if auth[:7].lower() == b"bearer " else headers.get(b"x-api-key", b"").strip()
        return key_matches(token, self.api_key)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if not self._authorized(scope):
            if path in self.body_token_paths:
                scope.setdefault("state", {})[BODY_KEY_REQUIRED] = self.api_key
                await self._limited(scope, receive, send)
                return
            response = error_response(path, "UNAUTHORIZED", "a valid API key is required (Authorization: Bearer <key>)")
            response.headers["WWW-Authenticate"] = "Bearer"
            await response(scope, receive, send)
            return
        await self._limited(scope, receive, send)

    async def _limited(self, scope: Scope, receive: Receive, send: Send) -> None:
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            await self._too_large(scope, receive, send)
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise BodyTooLarge
            return message

        tracked = StartTracker(send)
        try:
            await self.app(scope, limited_receive, tracked)
        except BodyTooLarge:
            if not tracked.started:
                await self._too_large(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            scope["path"], "PAYLOAD_TOO_LARGE", f"the request body is over the {self.max_body}-byte limit"
        )
        # The rest of the body is not read: close the connection rather than drain it.
        response.headers["Connection"] = "close"
        await response(scope, receive, send)
