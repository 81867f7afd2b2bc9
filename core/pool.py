"""The model pool: the one owner of loaded models and of the memory they take.

Models are registered as configuration and loaded on first use. Loaded models are accounted
in bytes against a budget; a load that does not fit evicts least-recently-used idle models
first. A model with leases out (a request is running on it) and a pinned model are never
evicted. Concurrent requests for a cold model share one load. A load that fails marks only
that model failed, with the reason, until it is loaded again or re-registered.

Callers hold a `Lease` while they use a model; `checkout` never blocks, so asyncio code can
await the load future it returns, and `acquire` is the blocking form for threads.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from remora.core.config import HubRef, HubSettings, ModelSpec
from remora.core.errors import (
    InvalidInput,
    MemoryBusy,
    ModelLoadError,
    ModelLoading,
    ModelNotFound,
    ModelTooLarge,
    RemoraError,
    ShuttingDown,
)
from remora.core.loader import load_model, resolve_dtype
from remora.core.memory import estimate_model_bytes, release_memory
from remora.core.model import LoadedModel, Runtime
from remora.core.paths import confine

log = logging.getLogger("remora.pool")


class State(StrEnum):
    AVAILABLE = "available"  # registered, not in memory
    LOADING = "loading"
    LOADED = "loaded"
    FAILED = "failed"


@dataclass(frozen=True)
class PoolEvent:
    """What the pool reports to listeners (metrics): loads, failed loads and evictions."""

    kind: str  # "load" | "load_failed" | "evict"
    model_id: str
    seconds: float = 0.0
    reason: str = ""  # evict: "budget" | "oom" | "unload" | "replaced"; load_failed: the error code


@dataclass(frozen=True)
class ModelStatus:
    id: str
    source: str
    state: State
    aliases: tuple[str, ...]
    pinned: bool
    preload: bool
    nbytes: int
    in_use: int
    last_used: float | None  # wall-clock seconds, None when never used
    error: str | None
    error_code: str | None


class _Entry:
    """One registered model. Replaced (not mutated) when the model is registered again, so a
    lease keeps pointing at the model it was given."""

    def __init__(self, spec: ModelSpec, *, pinned: bool, preload: bool) -> None:
        self.spec = spec
        self.pinned = pinned
        self.preload = preload
        self.state = State.AVAILABLE
        self.model: LoadedModel | None = None
        self.error: RemoraError | None = None
        self.refs = 0
        self.nbytes = 0  # accounted bytes: the estimate while loading, the real size once loaded
        self.last_used = 0.0  # monotonic, for LRU
        self.last_used_wall: float | None = None
        self.future: Future[None] | None = None
        self.retired = False  # replaced or unregistered: drop once the last lease is back


class Lease:
    """A model checked out of the pool; the pool will not evict it until released."""

    def __init__(self, pool: ModelPool, entry: _Entry, model: LoadedModel) -> None:
        self._pool = pool
        self._entry = entry
        self.model = model
        self.model_id = entry.spec.id
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._pool._release(self._entry)

    def __enter__(self) -> LoadedModel:
        return self.model

    def __exit__(self, *exc: object) -> None:
        self.release()


Listener = Callable[[PoolEvent], None]


def _fresh(error: RemoraError) -> RemoraError:
    """A copy of a failed model's stored error, to raise: raising the stored one itself would
    grow its traceback by every request's frames, and keep them alive, while the model stays failed."""
    fresh = copy.copy(error)
    fresh.__cause__ = error.__cause__
    return fresh


class ModelPool:
    def __init__(
        self,
        runtime: Runtime,
        *,
        budget_bytes: int,
        load_timeout_s: float = 120.0,
        hub: HubSettings | None = None,
        roots: tuple[Path, ...] = (),
        load_workers: int = 2,
        drain_after_s: float = 5.0,
    ) -> None:
        self.runtime = runtime
        self.budget_bytes = int(budget_bytes)
        self.load_timeout_s = load_timeout_s
        # Under steady traffic the loaded models are seldom idle all at once: a load that has
        # waited this long for room takes it from the least recently used busy models instead.
        self.drain_after_s = drain_after_s
        # Waiters outlast a load's own wait for room a little, so they see its MemoryBusy
        # (the precise error) rather than timing out first with ModelLoading.
        self.wait_timeout_s = load_timeout_s + 2.0
        self.hub = hub or HubSettings()
        # Resolved model roots: when set, every file a load opens must resolve inside them (a hub
        # snapshot: inside them or the hub cache).
        self.roots = roots
        self._entries: dict[str, _Entry] = {}
        self._aliases: dict[str, str] = {}
        self._retired: list[_Entry] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # a lease came back or memory was freed
        self._loader = ThreadPoolExecutor(max_workers=load_workers, thread_name_prefix="remora-load")
        self._closed = False
        self.listeners: list[Listener] = []

    # -- registry -------------------------------------------------------------------------

    def register(self, spec: ModelSpec, *, pinned: bool = False, preload: bool = False) -> None:
        """Add or replace a model. A replaced model that is running finishes its leases first."""
        events = []
        with self._lock:
            # An alias must never shadow another model's id (aliases resolve first), nor an id
            # another model's alias.
            taken = [a for a in (spec.id, *spec.aliases)
                     if (a in self._entries and a != spec.id) or self._aliases.get(a, spec.id) != spec.id]
            if taken:
                raise InvalidInput(
                    f"cannot register {spec.id!r}: {', '.join(map(repr, taken))} already names another model"
                )
            old = self._entries.get(spec.id)
            if old is not None:
                events += self._retire(old, "replaced")
            self._entries[spec.id] = _Entry(spec, pinned=pinned, preload=preload)
            self._aliases = {a: i for a, i in self._aliases.items() if i != spec.id}
            for alias in spec.aliases:
                self._aliases[alias] = spec.id
        self._emit(events)

    def unregister(self, model_id: str) -> None:
        with self._lock:
            model_id = self._resolve(model_id)
            events = self._retire(self._entries.pop(model_id), "unload")
            self._aliases = {a: i for a, i in self._aliases.items() if i != model_id}
        self._emit(events)

    def resolve_id(self, name: str) -> str:
        with self._lock:
            return self._resolve(name)

    def _resolve(self, name: str) -> str:
        model_id = self._aliases.get(name, name)
        if model_id not in self._entries:
            raise ModelNotFound(f"model {name!r} is not registered; registered models: {sorted(self._entries) or 'none'}")
        return model_id

    def spec(self, model_id: str) -> ModelSpec:
        with self._lock:
            return self._entries[self._resolve(model_id)].spec

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    def preloads(self) -> list[str]:
        with self._lock:
            return [i for i, e in self._entries.items() if e.preload or e.pinned]

    # -- leases ---------------------------------------------------------------------------

    def checkout(self, name: str) -> Lease | Future[None]:
        """A lease on the loaded model, or the future of its load (started if needed): await
        it and check out again. Never blocks; raises the load error of a failed model."""
        with self._lock:
            entry = self._entries[self._resolve(name)]
            if entry.state is State.LOADED:
                assert entry.model is not None
                entry.refs += 1
                self._touch(entry)
                return Lease(self, entry, entry.model)
            if entry.state is State.FAILED:
                assert entry.error is not None
                raise _fresh(entry.error)
            return self._start_load(entry)

    def acquire(self, name: str, *, timeout: float | None = None) -> Lease:
        """Block until the model is loaded and leased (at most `timeout`, default the load timeout)."""
        deadline = time.monotonic() + (self.wait_timeout_s if timeout is None else timeout)
        while True:
            got = self.checkout(name)
            if isinstance(got, Lease):
                return got
            remaining = deadline - time.monotonic()
            try:
                got.result(timeout=max(remaining, 0.0))
            except TimeoutError:
                raise ModelLoading(f"model {name!r} is still loading", retry_after=1.0) from None

    def load(self, name: str) -> Future[None]:
        """Start loading (again, if it failed); the future completes when it is loaded."""
        with self._lock:
            entry = self._entries[self._resolve(name)]
            if entry.state is State.FAILED:
                entry.state, entry.error = State.AVAILABLE, None
            if entry.state is State.LOADED:
                done: Future[None] = Future()
                done.set_result(None)
                return done
            return self._start_load(entry)

    def _release(self, entry: _Entry) -> None:
        events = []
        with self._lock:
            entry.refs -= 1
            self._touch(entry)
            if entry.refs == 0 and entry.retired:
                events += self._drop(entry, "")
            self._changed.notify_all()
        self._emit(events)
        if events:
            release_memory(self.runtime.device)

    def _touch(self, entry: _Entry) -> None:
        entry.last_used = time.monotonic()
        entry.last_used_wall = time.time()

    # -- pinning and unloading -------------------------------------------------------------

    def set_pinned(self, name: str, pinned: bool) -> None:
        with self._lock:
            self._entries[self._resolve(name)].pinned = pinned

    def unload(self, name: str) -> bool:
        """Free a model's memory now, or as soon as its running requests finish. Pinning is
        lifted (an explicit unload wins). True when it was loaded."""
        with self._lock:
            entry = self._entries[self._resolve(name)]
            entry.pinned = False
            if entry.state is not State.LOADED:
                return False
            if entry.refs:
                events = self._retire_running(entry, "unload")
            else:
                events = self._drop(entry, "unload")
                entry.state, entry.nbytes = State.AVAILABLE, 0
        self._emit(events)
        release_memory(self.runtime.device)
        return True

    # -- memory ---------------------------------------------------------------------------

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return self._used()

    def _used(self) -> int:
        return sum(e.nbytes for e in self._entries.values()) + sum(e.nbytes for e in self._retired)

    def _evictable(self, keep: object = None) -> list[_Entry]:
        idle = [
            e for e in self._entries.values()
            if e.state is State.LOADED and e.refs == 0 and not e.pinned and e.model is not keep
        ]
        return sorted(idle, key=lambda e: e.last_used)

    def _evict_for(self, need: int, keep: object = None) -> tuple[bool, list[PoolEvent]]:
        """Evict LRU idle models until `need` more bytes fit. Lock held."""
        events: list[PoolEvent] = []
        victims = self._evictable(keep)
        while self._used() + need > self.budget_bytes and victims:
            victim = victims.pop(0)
            events += self._drop(victim, "budget")
            victim.state, victim.nbytes = State.AVAILABLE, 0
        return self._used() + need <= self.budget_bytes, events

    def _drain_for(self, need: int) -> list[PoolEvent]:
        """Lock held. Retire least recently used busy models until `need` more bytes will fit once
        their running requests finish: those finish on the copy they hold, new requests load the
        model again. Nothing is retired when that cannot make room (pinned models hold it)."""
        busy = sorted(
            (e for e in self._entries.values() if e.state is State.LOADED and e.refs and not e.pinned),
            key=lambda e: e.last_used,
        )
        # Retired copies leave memory as their leases come back: count them as already gone, or
        # every pass of the waiting loop would retire one more model.
        pending = sum(e.nbytes for e in self._retired)
        shortfall = self._used() - pending + need - self.budget_bytes
        if shortfall > sum(e.nbytes for e in busy):
            return []
        events: list[PoolEvent] = []
        for victim in busy:
            if shortfall <= 0:
                break
            shortfall -= victim.nbytes
            events += self._retire_running(victim, "budget")
        return events

    def make_room(self, nbytes: int, *, keep: LoadedModel | None = None) -> bool:
        """Evict idle models until `nbytes` of working memory fit; False if they cannot."""
        with self._lock:
            fits, events = self._evict_for(nbytes, keep)
        self._emit(events)
        if events:
            release_memory(self.runtime.device)
        return fits

    def evict_idle(self, *, keep: LoadedModel | None = None, reason: str = "oom") -> int:
        """Evict every idle, unpinned model (after an out-of-memory error). Returns how many."""
        events: list[PoolEvent] = []
        with self._lock:
            for victim in self._evictable(keep):
                events += self._drop(victim, reason)
                victim.state, victim.nbytes = State.AVAILABLE, 0
        self._emit(events)
        release_memory(self.runtime.device)
        return len(events)

    # -- loading --------------------------------------------------------------------------

    def _start_load(self, entry: _Entry) -> Future[None]:
        """Lock held. One load per entry however many requests ask."""
        if entry.state is State.LOADING and entry.future is not None:
            return entry.future
        if self._closed:
            raise ShuttingDown("the server is shutting down; no model loads now", retry_after=1.0)
        entry.state = State.LOADING
        future: Future[None] = Future()
        entry.future = future
        self._loader.submit(self._load, entry, future)
        return future

    def _load(self, entry: _Entry, future: Future[None]) -> None:
        started = time.perf_counter()
        events: list[PoolEvent] = []
        try:
            if self._closed:
                raise ShuttingDown("the server shut down before this model loaded", retry_after=1.0)
            spec = self._resolved_spec(entry.spec)
            assert isinstance(spec.path, Path)
            estimate = estimate_model_bytes(spec.path, resolve_dtype(spec.dtype, self.runtime.device))
            self._reserve(entry, estimate)
            try:
                model = load_model(spec, self.runtime)
            except BaseException:
                with self._lock:
                    entry.nbytes = 0
                    self._changed.notify_all()
                raise
            with self._lock:
                if entry.retired:
                    # Replaced while loading: nobody can lease this copy.
                    entry.nbytes = 0
                else:
                    entry.model, entry.state, entry.nbytes = model, State.LOADED, model.nbytes
                    self._touch(entry)
                    # The estimate can be a little off: settle the real size against the budget.
                    _, events = self._evict_for(0, keep=model)
            events.insert(0, PoolEvent("load", entry.spec.id, time.perf_counter() - started))
            self._emit(events)
            future.set_result(None)
        except (MemoryBusy, ShuttingDown) as exc:
            # Transient: the model stays available; the waiting requests get the retryable error.
            with self._lock:
                entry.state, entry.future = State.AVAILABLE, None
            self._emit([PoolEvent("load_failed", entry.spec.id, time.perf_counter() - started, exc.code)])
            future.set_exception(exc)
        except Exception as exc:
            error = exc if isinstance(exc, RemoraError) else ModelLoadError(
                f"loading model {entry.spec.id!r} failed: {type(exc).__name__}: {exc}"
            )
            with self._lock:
                entry.state, entry.error, entry.future = State.FAILED, error, None
            self._emit([PoolEvent("load_failed", entry.spec.id, time.perf_counter() - started, error.code)])
            future.set_exception(_fresh(error))

    def _resolved_spec(self, spec: ModelSpec) -> ModelSpec:
        """The spec with a local directory, checked against the model roots at every load (the
        directory's files may have changed since it was registered)."""
        if isinstance(spec.path, HubRef):
            from remora.core.sources import hub_cache_dir, resolve_hub

            path = resolve_hub(spec.path, self.hub)
            confine(path, (*self.roots, hub_cache_dir(self.hub)) if self.roots else ())
            return dataclasses.replace(spec, path=path)
        confine(spec.path, self.roots)
        return spec

    def _reserve(self, entry: _Entry, estimate: int) -> None:
        """Account `estimate` bytes for the load, evicting idle models; wait (bounded) while
        every other model is busy or pinned."""
        if estimate > self.budget_bytes:
            raise ModelTooLarge(
                f"model {entry.spec.id!r} needs about {estimate / 2**20:.0f} MiB, more than the whole memory "
                f"budget of {self.budget_bytes / 2**20:.0f} MiB; raise REMORA_MEMORY_BUDGET or use a smaller dtype"
            )
        started = time.monotonic()
        deadline = started + self.load_timeout_s
        events: list[PoolEvent] = []
        with self._lock:
            while True:
                fits, evicted = self._evict_for(estimate)
                events += evicted
                if fits:
                    entry.nbytes = estimate
                    break
                if time.monotonic() - started >= self.drain_after_s:
                    drained = self._drain_for(estimate)
                    if drained:  # told now, not when the load ends: metrics show the drain as it happens
                        self._lock.release()
                        try:
                            self._emit(drained)
                        finally:
                            self._lock.acquire()
                if self._closed:
                    raise ShuttingDown("the server shut down while this model waited for memory", retry_after=1.0)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise MemoryBusy(
                        f"no room to load {entry.spec.id!r}: the memory budget is held by models that are "
                        "running or pinned",
                        retry_after=5.0,
                    )
                until_drain = started + self.drain_after_s - time.monotonic()
                self._changed.wait(timeout=min(remaining, 1.0, until_drain if until_drain > 0 else 1.0))
        self._emit(events)
        if events:
            release_memory(self.runtime.device)

    # -- dropping -------------------------------------------------------------------------

    def _retire_running(self, entry: _Entry, reason: str) -> list[PoolEvent]:
        """Lock held. A loaded model with requests running: its copy goes to the retired list (they
        finish on it; its memory goes with the last lease) and the id is available again, unpinned."""
        self._entries[entry.spec.id] = fresh = _Entry(entry.spec, pinned=False, preload=entry.preload)
        fresh.last_used_wall = entry.last_used_wall
        return self._retire(entry, reason)

    def _retire(self, entry: _Entry, reason: str) -> list[PoolEvent]:
        """Lock held. Take an entry out of service; its memory goes when its leases are back."""
        entry.retired = True
        if entry.refs == 0:
            return self._drop(entry, reason)
        self._retired.append(entry)
        return [PoolEvent("evict", entry.spec.id, reason=reason)] if entry.state is State.LOADED else []

    def _drop(self, entry: _Entry, reason: str) -> list[PoolEvent]:
        """Lock held. Forget the loaded model (the caller releases memory outside the lock)."""
        was_loaded = entry.model is not None
        entry.model = None
        entry.nbytes = 0
        if entry in self._retired:
            self._retired.remove(entry)
        self._changed.notify_all()
        return [PoolEvent("evict", entry.spec.id, reason=reason)] if was_loaded and reason else []

    def _emit(self, events: list[PoolEvent]) -> None:
        for event in events:
            for listener in self.listeners:
                try:
                    listener(event)
                except Exception:  # a metrics bug must not fail a load or an eviction
                    log.exception("pool listener failed on %s", event)

    # -- status ---------------------------------------------------------------------------

    def status(self) -> list[ModelStatus]:
        with self._lock:
            return [self._status(e) for e in self._entries.values()]

    def status_of(self, name: str) -> ModelStatus:
        with self._lock:
            return self._status(self._entries[self._resolve(name)])

    def _status(self, e: _Entry) -> ModelStatus:
        return ModelStatus(
            id=e.spec.id,
            source=str(e.spec.path),
            state=e.state,
            aliases=e.spec.aliases,
            pinned=e.pinned,
            preload=e.preload,
            nbytes=e.nbytes if e.state is State.LOADED else 0,
            in_use=e.refs,
            last_used=e.last_used_wall,
            error=e.error.message if e.error else None,
            error_code=e.error.code if e.error else None,
        )

    def loaded(self) -> Iterator[tuple[str, LoadedModel]]:
        with self._lock:
            items = [(i, e.model) for i, e in self._entries.items() if e.model is not None]
        yield from items

    def close(self) -> None:
        """No more loads. A load waiting for memory gives up at once with ShuttingDown (its thread
        would otherwise keep the process from exiting for up to the load timeout); queued loads
        fail the same way; a load already reading weights finishes first."""
        with self._lock:
            self._closed = True
            self._changed.notify_all()
        self._loader.shutdown(wait=False)

