"""The engine facade: register local models, then `encode` and `score` with them.

Models load lazily on first use into a pool with a memory budget (least-recently-used idle
models make room). Usable without any server:

    engine = Engine()
    vectors = engine.encode("all-MiniLM-L6-v2", ["a text", "another"])
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from remora.core.config import EngineSettings, HubRef, ModelSpec

if TYPE_CHECKING:
    from remora.core.extract import Aggregation, Entity
from remora.core.cpus import usable_cpus
from remora.core.defaults import DEFAULT_MODEL_ALIASES, DEFAULT_MODEL_ID, INSTALL_HINT, default_model_dir
from remora.core.errors import InvalidInput, InvalidModelId, ModelNotFound, PathNotAllowed
from remora.core.layers.attention import select_attention
from remora.core.memory import default_budget
from remora.core.model import Encoded, LoadedModel, Output, Runtime
from remora.core.paths import confine, inside, resolve_roots
from remora.core.pool import ModelPool, ModelStatus
from remora.core.scheduler import Scheduler

# Model options a caller may set: every ModelSpec field but its identity and source.
SPEC_OPTIONS = frozenset(f.name for f in dataclasses.fields(ModelSpec)) - {"id", "path"}


MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*")


def check_model_id(model_id: object) -> str:
    """Model ids name registry entries, never files: refuse anything path-like."""
    if not isinstance(model_id, str) or not model_id:
        raise InvalidModelId("a model id must be a non-empty string")
    if len(model_id) > 200 or not MODEL_ID.fullmatch(model_id) or ".." in model_id.split("/"):
        raise InvalidModelId(
            f"invalid model id {model_id[:80]!r}: use letters, digits, '.', '_', '-' and '/' between names "
            "(no '..', no leading '/')"
        )
    return model_id


def _texts(texts: str | Sequence[str], what: str = "texts") -> list[str]:
    if isinstance(texts, str):
        return [texts]
    items = list(texts)
    bad = next((i for i, t in enumerate(items) if not isinstance(t, str)), None)
    if bad is not None:
        raise InvalidInput(f"{what}[{bad}] is a {type(items[bad]).__name__}, not a string")
    return items


class Engine:
    """Registry, model pool and scheduler behind one object. In-process calls (`encode`,
    `score`) run on the caller's thread; the sidecar queues requests through `scheduler`."""

    def __init__(self, settings: EngineSettings | None = None) -> None:
        self.settings = settings = settings or EngineSettings()
        device = settings.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        threads = settings.num_threads or usable_cpus()
        if self.device.type == "cpu" and threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        self.runtime = Runtime(
            device=self.device,
            attention=select_attention(self.device, settings.attention),
            max_batch_tokens=settings.batch_tokens_for(self.device.type),
            max_batch_size=settings.max_batch_size,
        )
        budget = settings.memory_budget or default_budget(self.device, settings.memory_fraction)
        roots = resolve_roots(settings.model_roots)
        default_dir = default_model_dir()
        if roots and default_dir is not None:
            # The embedded default model ships inside an installed package: trusted, and it must
            # keep serving when the roots confine everything users register (the images set them).
            roots = (*roots, default_dir.resolve())
        self.pool = ModelPool(
            self.runtime, budget_bytes=budget, load_timeout_s=settings.load_timeout_s, hub=settings.hub,
            roots=roots,
        )
        self.scheduler = Scheduler(
            self.pool,
            max_batch_tokens=self.runtime.max_batch_tokens,
            max_batch_size=self.runtime.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            max_queue=settings.max_queue,
        )
        if settings.register_defaults:
            self._register_default()

    # -- registry -------------------------------------------------------------------------

    def register(
        self,
        model_id: str,
        path: str | Path | HubRef,
        *,
        pinned: bool = False,
        preload: bool = False,
        **options: Any,
    ) -> ModelSpec:
        """Add (or replace) a model: a local directory, or a HubRef. Options are ModelSpec
        fields. Nothing loads until the model is first used (or `preload`ed by the server)."""
        unknown = set(options) - SPEC_OPTIONS
        if unknown:
            raise TypeError(f"unknown model option(s) {sorted(unknown)}; known: {sorted(SPEC_OPTIONS)}")
        check_model_id(model_id)
        source = path if isinstance(path, HubRef) else self.check_path(Path(path))
        for key in ("tasks", "pooling", "aliases"):
            if isinstance(options.get(key), str):
                options[key] = (options[key],)
            elif options.get(key) is not None:
                options[key] = tuple(options[key])
        for alias in options.get("aliases") or ():
            check_model_id(alias)
        spec = ModelSpec(id=model_id, path=source, **options)
        self.pool.register(spec, pinned=pinned, preload=preload)
        return spec

    def unregister(self, model_id: str) -> None:
        self.pool.unregister(self.resolve_id(model_id))

    def check_path(self, path: Path) -> Path:
        """The resolved directory, refused unless it, and every file under it, lies inside a
        configured model root (the pool checks again at each load: files change)."""
        try:
            resolved = path.expanduser().resolve()
            roots = resolve_roots(self.settings.model_roots)
            if roots and not inside(resolved, roots):
                raise PathNotAllowed(f"model path {path} lies outside the configured model roots")
            is_dir = resolved.is_dir()
        except (OSError, ValueError) as exc:  # a NUL byte, a name too long for the file system
            raise InvalidInput(f"invalid model path {str(path)[:200]!r}: {exc}") from None
        if not is_dir:
            # A configuration mistake, not a broken model: refused as input.
            raise InvalidInput(f"model directory {path} does not exist")
        confine(resolved, roots)
        return resolved

    def _register_default(self) -> None:
        directory = default_model_dir()
        if directory is not None:
            self.pool.register(ModelSpec(DEFAULT_MODEL_ID, directory, aliases=DEFAULT_MODEL_ALIASES))

    def resolve_id(self, model_id: str) -> str:
        check_model_id(model_id)
        try:
            return self.pool.resolve_id(model_id)
        except ModelNotFound as exc:
            if model_id in (DEFAULT_MODEL_ID, *DEFAULT_MODEL_ALIASES):
                raise ModelNotFound(f"model {model_id!r} is not registered. {INSTALL_HINT}") from None
            raise exc from None

    def models(self) -> list[ModelStatus]:
        return self.pool.status()

    # -- loading --------------------------------------------------------------------------

    def model(self, model_id: str) -> LoadedModel:
        """The loaded model, loading it on first use (not leased: the pool may evict it later)."""
        with self.pool.acquire(self.resolve_id(model_id)) as model:
            return model

    def unload(self, model_id: str) -> bool:
        return self.pool.unload(self.resolve_id(model_id))

    def close(self, *, timeout: float = 30.0) -> None:
        """Finish queued requests (within `timeout`) and stop the worker threads."""
        self.scheduler.close(timeout=timeout)
        self.pool.close()

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
        with self.pool.acquire(self.resolve_id(model_id)) as model:
            return model.encode(items, is_query=is_query, prompt=prompt, normalize_output=normalize, truncate=truncate)

    def encode_outputs(
        self,
        model_id: str,
        texts: str | Sequence[str],
        *,
        outputs: Sequence[Output] | None = None,
        is_query: bool = False,
        prompt: str | None = None,
        normalize: bool | None = None,
        truncate: bool = True,
    ) -> Encoded:
        """Dense, sparse and/or multi-vector outputs from one forward pass; `outputs=None` gives
        the model's first output (dense, or sparse for SPLADE)."""
        items = _texts(texts)
        with self.pool.acquire(self.resolve_id(model_id)) as model:
            wanted = tuple(outputs) if outputs else model.outputs[:1]
            return model.encode_outputs(
                items, outputs=wanted, is_query=is_query, prompt=prompt, normalize_output=normalize, truncate=truncate
            )

    def score(
        self,
        model_id: str,
        query: str,
        documents: str | Sequence[str],
        *,
        truncate: bool = True,
        apply_activation: bool = True,
    ) -> np.ndarray:
        """Relevance of each document to the query: [N] float32 from a cross-encoder, or MaxSim
        (ColBERT) / cosine (other embedders) of the query's and documents' encodings."""
        if not isinstance(query, str):
            raise InvalidInput(f"query is a {type(query).__name__}, not a string")
        docs = _texts(documents, "documents")
        with self.pool.acquire(self.resolve_id(model_id)) as model:
            return model.score(query, docs, truncate=truncate, apply_activation=apply_activation)

    def extract(
        self,
        model_id: str,
        texts: str | Sequence[str],
        *,
        labels: Sequence[str] | None = None,
        threshold: float | None = None,
        aggregation: Aggregation = "simple",
        flat_ner: bool = True,
        multi_label: bool = False,
        truncate: bool = True,
    ) -> list[list[Entity]]:
        """Entities per text, as character spans: a token classifier's (BIO tags, grouped as
        transformers' token-classification pipeline does) or a GLiNER model's for `labels`."""
        from remora.core.extract import extract as extract_entities

        items = _texts(texts)
        with self.pool.acquire(self.resolve_id(model_id)) as model:
            return extract_entities(
                model, items, labels=labels, threshold=threshold, aggregation=aggregation,
                flat_ner=flat_ner, multi_label=multi_label, truncate=truncate,
            )

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
        with self.pool.acquire(self.resolve_id(model_id)) as model:
            return model.score_pairs(firsts, seconds, truncate=truncate, apply_activation=apply_activation)
