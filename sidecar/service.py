"""The asyncio side of the engine: lease a model (awaiting its load), tokenize in a thread
pool, queue on the scheduler, await the result while watching for the client to leave.

Every route family (native, OpenAI, TEI, rerank) goes through here, so waiting, deadlines,
cancellation and limits behave the same whatever wire format a client speaks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.requests import Request

from remora.core.engine import Engine
from remora.core.errors import DeadlineExceeded, InvalidInput, ModelLoading, ShuttingDown
from remora.core.extract import Aggregation, Entity, check_aggregation, finish_extract, prepare_extract
from remora.core.model import LoadedModel, Output, Prepared, Rows
from remora.core.pool import Lease
from remora.sidecar.codec import WireError
from remora.sidecar.settings import ServerSettings

TIMEOUT_HEADER = "remora-timeout-ms"
NO_WAIT_HEADER = "remora-no-wait"


@dataclass(frozen=True)
class Result:
    model_id: str
    # Finished results: encode [N, dim] vectors, score [N] scores; `run` gives the model's Rows.
    rows: Any
    tokens: int
    model: LoadedModel


class Service:
    def __init__(self, engine: Engine, settings: ServerSettings) -> None:
        self.engine = engine
        self.settings = settings
        self.tokenizers = ThreadPoolExecutor(settings.tokenizer_threads, thread_name_prefix="remora-tok")

    def close(self) -> None:
        self.tokenizers.shutdown(wait=False, cancel_futures=True)

    # -- checks shared by the routes -------------------------------------------------------

    def check_texts(self, texts: Sequence[str], what: str = "inputs") -> None:
        if not texts:
            raise WireError("EMPTY_INPUT", f"{what} is empty; send at least one text")
        if len(texts) > self.settings.max_inputs:
            raise WireError(
                "TOO_MANY_INPUTS", f"{what} has {len(texts)} texts; at most {self.settings.max_inputs} per request"
            )

    # -- the request path ------------------------------------------------------------------

    async def lease(self, request: Request | None, name: str, *, wait: bool | None = None) -> Lease:
        """A lease on the model, waiting for its load unless the request says not to
        (`Remora-No-Wait: 1`), in which case a cold model answers MODEL_LOADING at once."""
        model_id = self.engine.resolve_id(name)
        if request is not None:
            request.state.model = model_id
        if wait is None:
            wait = not (request is not None and request.headers.get(NO_WAIT_HEADER, "") in ("1", "true"))
        deadline = time.monotonic() + self.engine.pool.wait_timeout_s
        while True:
            got = self.engine.pool.checkout(model_id)
            if isinstance(got, Lease):
                return got
            if not wait:
                raise ModelLoading(f"model {model_id!r} is loading; retry shortly", retry_after=1.0)
            remaining = deadline - time.monotonic()
            try:
                # shield: one waiter timing out must not cancel the load the others wait for.
                await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(got)), timeout=max(remaining, 0.001))
            except TimeoutError:
                raise ModelLoading(f"model {model_id!r} is still loading", retry_after=2.0) from None
            except asyncio.CancelledError:
                raise _cut_off(request) from None

    def _deadline(self, request: Request | None) -> float:
        timeout = self.settings.request_timeout_s
        raw = request.headers.get(TIMEOUT_HEADER) if request is not None else None
        if raw:
            try:
                timeout = float(raw) / 1000
            except ValueError:
                timeout = math.nan
            if not (math.isfinite(timeout) and timeout > 0):  # "nan", "inf", "-5" parse as floats too
                raise InvalidInput(
                    f"{TIMEOUT_HEADER} must be a positive number of milliseconds, got {raw[:50]!r}"
                ) from None
        return time.monotonic() + timeout

    async def run(
        self, request: Request | None, name: str, prepare: Callable[[LoadedModel], Prepared]
    ) -> Result:
        """Lease, tokenize (thread pool), queue, await. Returns rows before `finish`."""
        deadline = self._deadline(request)
        lease = await self.lease(request, name)
        queued = False
        try:
            loop = asyncio.get_running_loop()
            try:
                prepared = await loop.run_in_executor(self.tokenizers, prepare, lease.model)
            except asyncio.CancelledError:
                raise _cut_off(request) from None
            future = self.engine.scheduler.submit(lease, prepared, deadline=deadline)
            # The lease goes back when the scheduler is done with the request, not when this
            # coroutine gives up (deadline, client gone) while its batch may still be running.
            future.add_done_callback(lambda _: lease.release())
            queued = True
            rows = await self._await(request, asyncio.wrap_future(future), deadline)
            return Result(lease.model_id, rows, sum(prepared.tokens.lengths), lease.model)
        finally:
            if not queued:
                lease.release()

    async def _await(self, request: Request | None, result: asyncio.Future[Rows], deadline: float) -> Rows:
        """The result, or cancellation when the client disconnects or the deadline passes
        (a cancelled request still waiting in the queue is dropped before compute)."""
        watcher = asyncio.ensure_future(_disconnected(request)) if request is not None else None
        waiting: set[asyncio.Future[Any]] = {result}
        if watcher is not None:
            waiting.add(watcher)
        try:
            try:
                done, _ = await asyncio.wait(waiting, timeout=max(deadline - time.monotonic(), 0.001),
                                             return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                result.cancel()  # still queued: dropped before compute
                raise _cut_off(request) from None
            if result in done:
                return result.result()
            result.cancel()
            if watcher is not None and watcher in done:
                # Nobody reads the answer; 499 (nginx's "client closed request") shows in logs and metrics.
                raise WireError("CLIENT_CLOSED", "the client closed the connection before the result")
            raise DeadlineExceeded("the request ran past its deadline")
        finally:
            if watcher is not None:
                watcher.cancel()

    # -- primitives ------------------------------------------------------------------------

    async def encode(
        self,
        request: Request | None,
        name: str,
        texts: list[str],
        *,
        is_query: bool = False,
        prompt: str | None = None,
        normalize: bool | None = None,
        truncate: bool = True,
        dimensions: int | None = None,
    ) -> Result:
        """Dense vectors [N, dim]."""
        result = await self.encode_outputs(request, name, texts, outputs=("dense",), is_query=is_query,
                                           prompt=prompt, normalize=normalize, truncate=truncate,
                                           dimensions=dimensions)
        return Result(result.model_id, result.rows.dense, result.tokens, result.model)

    async def encode_outputs(
        self,
        request: Request | None,
        name: str,
        texts: list[str],
        *,
        outputs: Sequence[Output] | None = None,
        is_query: bool = False,
        prompt: str | None = None,
        normalize: bool | None = None,
        truncate: bool = True,
        dimensions: int | None = None,
    ) -> Result:
        """Any of the model's outputs from one pass (rows: an `Encoded`); `outputs=None` asks
        for the model's first (dense, or sparse for a SPLADE model)."""
        self.check_texts(texts)

        def prepare(model: LoadedModel) -> Prepared:
            wanted = tuple(outputs) if outputs else model.outputs[:1]
            return model.prepare_encode(texts, is_query=is_query, prompt=prompt, truncate=truncate, outputs=wanted)

        result = await self.run(request, name, prepare)
        encoded = result.model.finish_encoded(result.rows, normalize_output=normalize)
        if dimensions is not None and encoded.dense is not None:
            dense = truncate_dimensions(encoded.dense, dimensions, renormalize=normalize is not False)
            encoded = dataclasses.replace(encoded, dense=dense)
        return Result(result.model_id, encoded, result.tokens, result.model)

    async def score(
        self,
        request: Request | None,
        name: str,
        query: str,
        documents: list[str],
        *,
        truncate: bool = True,
        raw: bool = False,
    ) -> Result:
        """Relevance of each document to the query: rows [N] in input order. A cross-encoder
        scores pairs (one label); an embedder answers MaxSim (ColBERT) or cosine."""
        self.check_texts(documents, "documents")
        lease = await self.lease(request, name)
        try:
            relevance = lease.model.relevance
            lease.model.check_single_label()
        finally:
            lease.release()
        if relevance != "cross_encoder":
            return await self._similarity(request, name, query, documents, truncate=truncate)

        def prepare(model: LoadedModel) -> Prepared:
            model.check_single_label()
            return model.prepare_pairs([query] * len(documents), documents, truncate=truncate)

        result = await self.run(request, name, prepare)
        scores = result.model.finish("score", result.rows, apply_activation=not raw)[:, 0]
        return Result(result.model_id, scores, result.tokens, result.model)

    async def extract(
        self,
        request: Request | None,
        name: str,
        texts: list[str],
        *,
        labels: list[str] | None = None,
        threshold: float | None = None,
        aggregation: Aggregation = "simple",
        flat_ner: bool = True,
        multi_label: bool = False,
        truncate: bool = True,
    ) -> Result:
        """Entities per text (rows: list of lists of Entity)."""
        self.check_texts(texts)
        check_aggregation(aggregation)  # before any forward pass
        prepared: list[Prepared] = []

        def prepare(model: LoadedModel) -> Prepared:
            prepared.append(prepare_extract(model, texts, labels=labels, truncate=truncate))
            return prepared[0]

        result = await self.run(request, name, prepare)

        def finish() -> list[list[Entity]]:
            return finish_extract(result.model, prepared[0], result.rows, threshold=threshold,
                                  aggregation=aggregation, flat_ner=flat_ner, multi_label=multi_label)

        # GLiNER's span layers run in the finishing step: off the event loop.
        entities = await asyncio.get_running_loop().run_in_executor(self.tokenizers, finish)
        return Result(result.model_id, entities, result.tokens, result.model)

    async def _similarity(
        self, request: Request | None, name: str, query: str, documents: list[str], *, truncate: bool
    ) -> Result:
        """Query and documents encoded concurrently (they may share forward passes), then compared."""

        def encoder(texts: list[str], is_query: bool) -> Callable[[LoadedModel], Prepared]:
            def prepare(model: LoadedModel) -> Prepared:
                return model.prepare_encode(texts, is_query=is_query, truncate=truncate,
                                            outputs=model.similarity_outputs())
            return prepare

        try:
            q, docs = await asyncio.gather(
                self.run(request, name, encoder([query], True)), self.run(request, name, encoder(documents, False))
            )
        except asyncio.CancelledError:  # a cancelled gather raises that, whatever its parts answered
            raise _cut_off(request) from None
        model = docs.model
        scores = model.relevance_scores(model.finish_encoded(q.rows), model.finish_encoded(docs.rows))
        return Result(docs.model_id, scores, q.tokens + docs.tokens, model)


def truncate_dimensions(vectors: np.ndarray, dimensions: int, *, renormalize: bool) -> np.ndarray:
    """Matryoshka-style: keep the first `dimensions` components, renormalised."""
    width = vectors.shape[1]
    if not 0 < dimensions <= width:
        raise InvalidInput(f"dimensions must be between 1 and the model's {width}, got {dimensions}")
    cut = np.ascontiguousarray(vectors[:, :dimensions])
    if renormalize:
        norms = np.linalg.norm(cut, axis=1, keepdims=True)
        cut = cut / np.maximum(norms, 1e-12)
    return cut.astype(np.float32, copy=False)


def _cut_off(request: Request | None) -> BaseException:
    """What a cancelled request raises. Only uvicorn's shutdown cancels a request's task, once
    REMORA_SHUTDOWN_GRACE has run out (a client that leaves is seen by `_disconnected`): the
    request then answers 503 SHUTTING_DOWN, retryable elsewhere, instead of uvicorn's bare 500.
    Any other cancellation goes on as one."""
    state = getattr(request.app.state, "remora", None) if request is not None else None
    if getattr(state, "draining", False):
        return ShuttingDown("the server shut down before this request finished (REMORA_SHUTDOWN_GRACE ran out)",
                            retry_after=1.0)
    return asyncio.CancelledError()


async def _disconnected(request: Request | None) -> None:
    """Returns when the client goes away. The body is already read, so the next ASGI message
    is the disconnect (or nothing, until the response is sent)."""
    if request is None:
        await asyncio.Event().wait()
        return
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
