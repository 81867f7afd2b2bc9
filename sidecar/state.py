"""What the routes share: the engine, the async service, metrics, settings and the registry."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from remora.core.defaults import DEFAULT_MODEL_ID
from remora.core.engine import Engine
from remora.sidecar.metrics import Metrics
from remora.sidecar.registry import Registry
from remora.sidecar.service import Service
from remora.sidecar.settings import ServerSettings


@dataclass
class Remora:
    engine: Engine
    service: Service
    metrics: Metrics
    settings: ServerSettings
    registry: Registry
    ready: bool = False  # preloaded models are in memory
    draining: bool = False  # SIGTERM received: finishing work, refusing new

    @property
    def default_model(self) -> str:
        """The model for requests that name none: the registry's default_model, else its first
        entry, else the embedded default."""
        current = self.registry.current
        if current.default_model:
            return current.default_model
        if current.entries:
            return current.entries[0].id
        return DEFAULT_MODEL_ID

    @property
    def default_reranker(self) -> str | None:
        current = self.registry.current
        if current.default_reranker:
            return current.default_reranker
        for entry in current.entries:
            if "score" in dict(entry.options).get("tasks", ()):
                return entry.id
        return None

    @property
    def default_extractor(self) -> str | None:
        return self.registry.current.default_extractor


def remora(request: Request) -> Remora:
    state: Remora = request.app.state.remora
    return state
