"""The webhook's HTTPS server: `POST /mutate` (AdmissionReview) and `GET /healthz`, under uvicorn.

The API server only calls webhooks over TLS. cert-manager (or the chart's own job) rotates the
certificate in the mounted Secret; the server picks up the new files without a restart, so a
rotation never leaves it serving an expired certificate (which, with failurePolicy Ignore, would
silently stop injection).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from remora.sidecar.webhook.config import InjectionConfig
from remora.sidecar.webhook.review import BadReview, review

log = logging.getLogger("remora.webhook")

# A pod object is bounded by etcd's 1.5 MiB; an AdmissionReview carries at most two of them.
MAX_BODY = 16 * 2**20


class TLSError(ValueError):
    """The certificate or key cannot be loaded."""


class CertReloader:
    """Loads the certificate and key into one SSLContext and reloads them when the files change.

    `load_cert_chain` on a live context applies to the handshakes that follow; connections already
    open keep the old certificate until they close."""

    def __init__(self, certfile: Path, keyfile: Path) -> None:
        self.certfile, self.keyfile = certfile, keyfile
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.set_alpn_protocols(["http/1.1"])  # uvicorn's h11/httptools speak HTTP/1.1 only
        self.reloads = 0
        self._stamp = self._stat()
        try:
            self.context.load_cert_chain(str(certfile), str(keyfile))
        except (OSError, ssl.SSLError) as exc:
            raise TLSError(f"cannot load the TLS certificate {certfile} with key {keyfile}: {exc}") from None

    def _stat(self) -> tuple[tuple[int, int, int], ...]:
        # A mounted Secret swaps a symlink to a new directory: inode and mtime both change.
        try:
            stats = [os.stat(p) for p in (self.certfile, self.keyfile)]
        except OSError:
            return ()
        return tuple((s.st_ino, s.st_mtime_ns, s.st_size) for s in stats)

    def check(self) -> bool:
        """Reload if the files changed; True when a new certificate was loaded."""
        stamp = self._stat()
        if not stamp or stamp == self._stamp:
            return False
        try:
            self.context.load_cert_chain(str(self.certfile), str(self.keyfile))
        except (OSError, ssl.SSLError) as exc:  # mid-rotation, say: keep serving the old one, retry
            log.warning("TLS certificate changed but does not load yet (%s); keeping the old one", exc)
            return False
        self._stamp = stamp
        self.reloads += 1
        log.info("TLS certificate reloaded from %s", self.certfile)
        return True


def create_app(config: InjectionConfig, *, certs: CertReloader | None = None, reload_every: float = 30.0) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(_watch(certs, reload_every)) if certs is not None else None
        yield
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app = FastAPI(title="Remora sidecar-injection webhook", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)

    @app.get("/healthz")
    async def healthz() -> Response:
        return JSONResponse({"status": "ok"})

    @app.post("/mutate")
    async def mutate_route(request: Request) -> Response:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                return _error(413, f"the body exceeds {MAX_BODY} bytes")
        try:
            data = json.loads(body)
        except ValueError:
            return _error(400, "the body is not valid JSON")
        try:
            return JSONResponse(review(data, config))
        except BadReview as exc:
            return _error(400, str(exc))

    return app


def _error(status: int, message: str) -> Response:
    return JSONResponse({"error": message}, status_code=status)


async def _watch(certs: CertReloader, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        certs.check()


def make_server(config: InjectionConfig, *, host: str, port: int, certfile: Path, keyfile: Path,
                log_level: str = "info", reload_every: float = 30.0) -> uvicorn.Server:
    """The uvicorn server, TLS loaded; raises TLSError for an unusable certificate before binding."""
    certs = CertReloader(certfile, keyfile)
    settings = uvicorn.Config(
        create_app(config, certs=certs, reload_every=reload_every),
        host=host,
        port=port,
        ssl_certfile=str(certfile),
        ssl_keyfile=str(keyfile),
        log_level=log_level,
        access_log=False,  # every pod creation and probe would log; decisions are logged instead
        server_header=False,
        lifespan="on",
    )
    settings.load()
    # Serve the context CertReloader refreshes rather than the one uvicorn loaded once (uvicorn's
    # ssl_context_factory says the same, but only from 0.47 on).
    settings.ssl = certs.context
    return uvicorn.Server(settings)


def serve(config: InjectionConfig, *, host: str, port: int, certfile: Path, keyfile: Path,
          log_level: str = "info") -> int:
    """Run until SIGTERM."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = make_server(config, host=host, port=port, certfile=certfile, keyfile=keyfile, log_level=log_level)
    server.run()
    return 0 if server.started else 1
