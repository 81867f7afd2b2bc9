"""The engine facade: register local models, then `encode` and `score` with them.

Models load lazily on first use and stay loaded until `unload`. Usable without any server:

    engine = Engine()
    vectors = engine.encode("all-MiniLM-L6-v2", ["a text", "another"])
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from remora.core.config import EngineSettings, ModelSpec
from remora.core.cpus import usable_cpus
from remora.core.defaults import DEFAULT_MODEL_ALIASES, DEFAULT_MODEL_ID, INSTALL_HINT, default_model_dir
from remora.core.errors import InvalidInput, ModelLoadError, ModelNotFound, PathNotAllowed
from remora.core.layers.attention import select_attention
from remora.core.loader import load_model
from remora.core.model import LoadedModel, Runtime

_SPEC_OPTIONS = {
    "tasks",
    "pooling",
    "include_prompt",
    "normalize",
    "max_seq_len",
    "dtype",
    "query_prompt",
    "document_prompt",
    "aliases",
}


@dataclass(frozen=True)
class ModelInfo:
    id: str
    path: Path
    aliases: tuple[str, ...]
    loaded: bool


def _texts(texts: str | Sequence[str], what: str = "texts") -> list[str]:
    if isinstance(texts, str):
        return [texts]
    items = list(texts)
    bad = next((i for i, t in enumerate(items) if not isinstance(t, str)), None)
    if bad is not None:
        raise InvalidInput(f"{what}[{bad}] is a {type(items[bad]).__name__}, not a string")
    return items


class Engine:
    def __init__(self, settings: EngineSettings | None = None) -> None:
        self.settings = settings or EngineSettings()
        device = self.settings.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        threads = self.settings.num_threads or usable_cpus()
        if self.device.type == "cpu" and threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        self.runtime = Runtime(
            device=self.device,
            attention=select_attention(self.device, self.settings.attention),
            max_batch_tokens=self.settings.batch_tokens_for(self.device.type),
            max_batch_size=self.settings.max_batch_size,
        )
        self._specs: dict[str, ModelSpec] = {}
        self._aliases: dict[str, str] = {}
        self._loaded: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()
        if self.settings.register_defaults:
            self._register_default()

    # -- registry -------------------------------------------------------------------------

    def register(self, model_id: str, path: str | Path, **options: Any) -> ModelSpec:
        """Add a local model directory under `model_id`. Options are ModelSpec fields."""
        unknown = set(options) - _SPEC_OPTIONS
        if unknown:
            raise TypeError(f"unknown model option(s) {sorted(unknown)}; known: {sorted(_SPEC_OPTIONS)}")
        if not model_id or not isinstance(model_id, str):
            raise InvalidInput("a model id must be a non-empty string")
        directory = self._check_path(Path(path))
        for key in ("tasks", "pooling", "aliases"):
            if isinstance(options.get(key), str):
                options[key] = (options[key],)
            elif options.get(key) is not None:
                options[key] = tuple(options[key])
        spec = ModelSpec(id=model_id, path=directory, **options)
        with self._lock:
            self._specs[model_id] = spec
            for alias in spec.aliases:
                self._aliases[alias] = model_id
            self._loaded.pop(model_id, None)
        return spec

    def _check_path(self, path: Path) -> Path:
        resolved = path.expanduser().resolve()
        roots = [Path(r).expanduser().resolve() for r in self.settings.model_roots]
        if roots and not any(resolved.is_relative_to(root) for root in roots):
            raise PathNotAllowed(f"model path {path} lies outside the configured model roots")
        if not resolved.is_dir():
            raise ModelLoadError(f"model directory {path} does not exist")
        return resolved

    def _register_default(self) -> None:
        directory = default_model_dir()
        if directory is not None:
            self._specs[DEFAULT_MODEL_ID] = ModelSpec(DEFAULT_MODEL_ID, directory, aliases=DEFAULT_MODEL_ALIASES)
            for alias in DEFAULT_MODEL_ALIASES:
                self._aliases[alias] = DEFAULT_MODEL_ID

    def resolve_id(self, model_id: str) -> str:
        model_id = self._aliases.get(model_id, model_id)
        if model_id not in self._specs:
            hint = INSTALL_HINT if model_id in (DEFAULT_MODEL_ID, *DEFAULT_MODEL_ALIASES) else (
                f"registered models: {sorted(self._specs) or 'none'}"
            )
            raise ModelNotFound(f"model {model_id!r} is not registered. {hint}")
        return model_id

    def models(self) -> list[ModelInfo]:
        with self._lock:
            return [
                ModelInfo(s.id, s.path, s.aliases, s.id in self._loaded) for s in self._specs.values()
            ]

    # -- loading --------------------------------------------------------------------------

    def model(self, model_id: str) -> LoadedModel:
        """The loaded model, loading it on first use."""
        model_id = self.resolve_id(model_id)
        with self._lock:
            loaded = self._loaded.get(model_id)
            if loaded is None:
                loaded = load_model(self._specs[model_id], self.runtime)
                self._loaded[model_id] = loaded
            return loaded

    def unload(self, model_id: str) -> bool:
        model_id = self.resolve_id(model_id)
        with self._lock:
            return self._loaded.pop(model_id, None) is not None

    # -- primitives -----------------------------------------------------------------------

    def encode(
        self,
        model_id: str,
        texts: str | Sequence[str],
        *,
        is_query: bool = False,
        prompt: str | None = None,
        normalize: bool | None = None,
        truncate: bool = True,
    ) -> np.ndarray:
        """Texts -> [N, dim] float32 vectors. `normalize=None` follows the model's configuration;
        `truncate=False` rejects over-long texts with InputTooLong instead of cutting them."""
        items = _texts(texts)
        model = self.model(model_id)
        return model.encode(items, is_query=is_query, prompt=prompt, normalize_output=normalize, truncate=truncate)

    def score(
        self,
        model_id: str,
        query: str,
        documents: str | Sequence[str],
        *,
        truncate: bool = True,
        apply_activation: bool = True,
    ) -> np.ndarray:
        """Relevance of each document to the query with a cross-encoder: [N] float32."""
        if not isinstance(query, str):
            raise InvalidInput(f"query is a {type(query).__name__}, not a string")
        docs = _texts(documents, "documents")
        model = self.model(model_id)
        return model.score(query, docs, truncate=truncate, apply_activation=apply_activation)

    def score_pairs(
        self,
        model_id: str,
        pairs: Sequence[tuple[str, str]],
        *,
        truncate: bool = True,
        apply_activation: bool = True,
    ) -> np.ndarray:
        """Any sequence-pair classifier: [N, num_labels] float32 (activated as the model says)."""
        firsts, seconds = [], []
        for index, pair in enumerate(pairs):
            if not (isinstance(pair, tuple | list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
                raise InvalidInput(f"pairs[{index}] is not a pair of strings")
            firsts.append(pair[0])
            seconds.append(pair[1])
        model = self.model(model_id)
        return model.score_pairs(firsts, seconds, truncate=truncate, apply_activation=apply_activation)
