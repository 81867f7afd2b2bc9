"""The scheduler: one queue per (model, kind), batches formed by a token budget, one compute
thread.

Requests arrive tokenized (`Prepared`) with a lease on their model. Their sequences wait in the
model's queue; the compute thread takes the next due queue round-robin (fair across models)
and fills a batch with up to `max_batch_tokens` real tokens in arrival order (execution is
unpadded, so only real tokens count). A queue is due when it holds a full batch or its oldest
sequence has waited `max_wait_ms`. Queues are bounded: a request that would overflow one is
refused with QueueFull before anything is queued. A request whose caller went away (its future
cancelled) or whose deadline passed is dropped before compute.

Out of memory in a forward pass: evict idle models, retry, then split the batch in halves; a
single sequence that still does not fit fails its request with ResourceExhausted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from remora.core.errors import DeadlineExceeded, QueueFull, ResourceExhausted, ShuttingDown
from remora.core.model import Kind, LoadedModel, Output, Prepared, Rows
from remora.core.pool import Lease, ModelPool

log = logging.getLogger("remora.scheduler")


@dataclass(frozen=True)
class BatchEvent:
    """One forward pass, for metrics."""

    model_id: str
    kind: Kind
    tokens: int
    seqs: int
    seconds: float
    queue_waits: tuple[float, ...]  # seconds each request that started in this batch waited


@dataclass(eq=False)
class _Job:
    model_id: str
    prepared: Prepared
    future: Future[Rows]
    items: list[dict[str, Any]]  # one result per sequence (by output name), filled batch by batch
    remaining: int
    deadline: float | None  # monotonic
    enqueued: float = field(default_factory=time.monotonic)
    started: bool = False
    waited: float = -1.0  # seconds queued before its first batch; -1 until then
    done: bool = False

    def fail(self, error: BaseException) -> None:
        if not self.done:
            self.done = True
            if not self.future.done():
                self.future.set_exception(error)


@dataclass(eq=False)
class _Queue:
    model: LoadedModel
    model_id: str
    kind: Kind
    outputs: tuple[Output, ...]
    items: deque[tuple[_Job, int]] = field(default_factory=deque)  # (job, sequence index)
    tokens: int = 0  # real tokens waiting

    def due_at(self, max_tokens: int, max_seqs: int, max_wait: float) -> float:
        if self.tokens >= max_tokens or len(self.items) >= max_seqs or max_wait <= 0:
            return 0.0
        return self.items[0][0].enqueued + max_wait


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


class Scheduler:
    def __init__(
        self,
        pool: ModelPool,
        *,
        max_batch_tokens: int,
        max_batch_size: int,
        max_wait_ms: float = 0.0,
        max_queue: int = 4096,
    ) -> None:
        self.pool = pool
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.max_queue = max_queue
        self.listeners: list[Callable[[BatchEvent], None]] = []
        self._queues: dict[tuple[int, Any], _Queue] = {}  # keyed by model object: a re-registered
        # model gets a new queue while the old copy finishes its own
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- callers --------------------------------------------------------------------------

    def submit(self, lease: Lease, prepared: Prepared, *, deadline: float | None = None) -> Future[Rows]:
        """Queue a request's sequences; the future gets its Rows (before `finish`).
        Cancel the future to drop the request. The lease must stay held until it completes."""
        model = lease.model
        future: Future[Rows] = Future()
        job = _Job(lease.model_id, prepared, future, [{} for _ in range(prepared.size)], prepared.size, deadline)
        if prepared.size == 0:
            future.set_result(model.collect(prepared, []))
            return future
        lengths = prepared.tokens.lengths
        with self._cond:
            if self._stopping:
                raise ShuttingDown("the server is shutting down", retry_after=1.0)
            key = (id(model), prepared.group)
            queue = self._queues.get(key)
            waiting = len(queue.items) if queue else 0
            if waiting and waiting + prepared.size > self.max_queue:
                raise QueueFull(
                    f"model {lease.model_id!r} has {waiting} sequences waiting (limit {self.max_queue}); retry shortly",
                    retry_after=1.0,
                )
            if queue is None:
                queue = self._queues[key] = _Queue(model, lease.model_id, prepared.kind, prepared.outputs)
            # Longest first within a request, so its batches hold similar lengths.
            for index in sorted(range(prepared.size), key=lambda i: -lengths[i]):
                queue.items.append((job, index))
            queue.tokens += sum(lengths)
            self._cond.notify()
        self._ensure_started()
        return future

    def queue_depths(self) -> dict[str, int]:
        """Sequences waiting per model id."""
        depths: dict[str, int] = {}
        with self._cond:
            for queue in self._queues.values():
                depths[queue.model_id] = depths.get(queue.model_id, 0) + len(queue.items)
        return depths

    def close(self, *, timeout: float = 30.0) -> None:
        """Stop taking requests, finish the queued ones within `timeout`, fail the rest."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._cond:
            leftovers = [job for q in self._queues.values() for job, _ in q.items]
            self._queues.clear()
        for job in leftovers:
            job.fail(ShuttingDown("the server shut down before this request ran"))
        if self._thread is not None:
            # The queues are empty: the thread ends after the batch it may be running. Wait for
            # it, since a thread still inside torch when the interpreter exits aborts the process.
            self._thread.join()

    # -- the compute thread ---------------------------------------------------------------

    def _ensure_started(self) -> None:
        if self._thread is None:
            with self._cond:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._loop, name="remora-compute", daemon=True)
                    self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._cond:
                queue = self._next_queue()
                if queue is None:
                    return
                batch = self._take(queue)
            if batch:
                self._execute(queue, batch)
            # While it waits for work, the compute thread must not keep an evicted model alive.
            del queue, batch

    def _next_queue(self) -> _Queue | None:
        """Lock held. The first due queue in round-robin order, waiting until one is due."""
        while True:
            for key in [k for k, q in self._queues.items() if not q.items]:
                del self._queues[key]
            if not self._queues:
                if self._stopping:
                    return None
                self._cond.wait()
                continue
            now = time.monotonic()
            wait = 0.0 if self._stopping else self.max_wait
            due = {k: q.due_at(self.max_batch_tokens, self.max_batch_size, wait) for k, q in self._queues.items()}
            ready = [k for k, at in due.items() if at <= now]
            if ready:
                key = ready[0]
                # Round robin: the served queue goes to the back.
                queue = self._queues.pop(key)
                self._queues[key] = queue
                return queue
            self._cond.wait(timeout=min(due.values()) - now)

    def _take(self, queue: _Queue) -> list[tuple[_Job, int]]:
        """Lock held. Pop up to a batch of live sequences, FIFO."""
        batch: list[tuple[_Job, int]] = []
        tokens = 0
        now = time.monotonic()
        while queue.items and len(batch) < self.max_batch_size:
            job, index = queue.items[0]
            n = len(job.prepared.tokens.ids[index])
            if batch and tokens + n > self.max_batch_tokens:
                break
            queue.items.popleft()
            queue.tokens -= n
            if job.done:
                continue
            if not job.started:
                if job.deadline is not None and now > job.deadline:
                    job.fail(DeadlineExceeded("the request's deadline passed while it waited in the queue"))
                    continue
                # False when the caller cancelled (went away) before compute: drop it.
                if not job.future.set_running_or_notify_cancel():
                    job.done = True
                    continue
                job.started = True
                job.waited = now - job.enqueued
            batch.append((job, index))
            tokens += n
        return batch

    def _execute(self, queue: _Queue, batch: list[tuple[_Job, int]]) -> None:
        model = queue.model
        started = time.perf_counter()
        lengths = [len(job.prepared.tokens.ids[i]) for job, i in batch]
        # Requests whose first sequence runs in this batch report their queue wait.
        waits = tuple(job.waited for job in {job: None for job, _ in batch} if job.remaining == job.prepared.size)
        # On CPU the budget is the out-of-memory line: make room for the activations first.
        self.pool.make_room(model.workspace_bytes(sum(lengths), max(lengths)), keep=model)
        try:
            results = self._forward(model, queue, batch)
        except Exception as exc:  # the requests get it; the compute thread goes on
            for job, _ in batch:
                job.fail(exc)
            return
        for (job, index), result in zip(batch, results, strict=True):
            if job.done or result is None:
                continue
            job.items[index] = result
            job.remaining -= 1
            if job.remaining == 0:
                job.done = True
                try:
                    job.future.set_result(model.collect(job.prepared, job.items))
                except Exception as exc:  # a bug in collecting fails this request only
                    job.future.set_exception(exc)
        event = BatchEvent(queue.model_id, queue.kind, sum(lengths), len(batch), time.perf_counter() - started, waits)
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:  # a metrics bug must not stop the compute thread
                log.exception("scheduler listener failed on %s", event)

    def _forward(self, model: LoadedModel, queue: _Queue, batch: list[tuple[_Job, int]]) -> list[dict[str, Any] | None]:
        def run(items: list[tuple[_Job, int]]) -> list[dict[str, Any] | None]:
            rows = model.forward(
                queue.kind,
                [job.prepared.tokens.ids[i] for job, i in items],
                [job.prepared.tokens.type_ids[i] for job, i in items],
                [job.prepared.prompt_len for job, _ in items],
                queue.outputs,
            )
            return [{name: value[b] for name, value in rows.items()} for b in range(len(items))]

        try:
            return run(batch)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
        self.pool.evict_idle(keep=model)
        return self._split(run, batch)

    def _split(
        self, run: Callable[[list[tuple[_Job, int]]], list[dict[str, Any] | None]], items: list[tuple[_Job, int]]
    ) -> list[dict[str, Any] | None]:
        if all(job.done for job, _ in items):  # failed already: no results, skipped by _execute
            return [None] * len(items)
        try:
            return run(items)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            if len(items) == 1:
                # Only this sequence's request fails; the rest of the batch goes on.
                error = ResourceExhausted(
                    "out of memory running one sequence, even after evicting idle models", retry_after=5.0
                )
                error.__cause__ = exc
                items[0][0].fail(error)
                return [None]
        half = len(items) // 2
        return self._split(run, items[:half]) + self._split(run, items[half:])
