"""Scheduler: results equal in-process encoding whatever the batch mix, token-budget batches,
round-robin fairness across models, bounded queues, cancellation and deadlines before compute,
out-of-memory recovery (evict, retry, split) and draining on close.

Runs over a pool holding the real MiniLM and a tiny random BERT that pools without its prompt
(include_prompt=False), so per-sequence prompt lengths meet in one batch. The compute thread is
held at a gate (a wrapper around `LoadedModel.forward` that also records every forward pass) when
a test needs requests to queue up before anything runs.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError, Future
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from remora.core.batch import PackedBatch
from remora.core.config import ModelSpec
from remora.core.errors import DeadlineExceeded, QueueFull, ResourceExhausted, ShuttingDown
from remora.core.layers.attention import select_attention
from remora.core.model import Kind, LoadedModel, Output, Prepared, Rows, Runtime
from remora.core.pool import Lease, ModelPool, PoolEvent
from remora.core.scheduler import BatchEvent, Scheduler
from tests.helpers import minilm_dir
from tests.texts import texts

CPU = torch.device("cpu")
TOL = 1e-6
LONG_PROMPT = "Represent this passage for retrieval by a long instruction prompt: "


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_pool(budget: int = 1 << 31) -> ModelPool:
    runtime = Runtime(device=CPU, attention=select_attention(CPU), max_batch_tokens=2048, max_batch_size=256)
    return ModelPool(runtime, budget_bytes=budget, load_timeout_s=30.0)


@pytest.fixture(scope="module")
def pool(tiny_src: Path) -> Iterator[ModelPool]:
    pool = make_pool()
    pool.register(ModelSpec("minilm", minilm_dir()))
    pool.register(ModelSpec("tiny", tiny_src, include_prompt=False, query_prompt="query: "))
    yield pool
    pool.close()


@pytest.fixture(scope="module")
def leases(pool: ModelPool) -> Iterator[dict[str, Lease]]:
    held = {name: pool.acquire(name) for name in ("minilm", "tiny")}
    yield held
    for lease in held.values():
        lease.release()


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return texts(60, max_words=120)  # edge cases and prose up to ~160 tokens


class Spy:
    """Wraps a model's `forward`: records each pass, and holds the compute thread at a gate."""

    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        self.calls: list[tuple[list[tuple[int, ...]], list[int]]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()  # the compute thread reached a forward pass
        self._forward = model.forward

    def __enter__(self) -> Spy:
        self.model.forward = self._wrapped
        return self

    def __exit__(self, *exc: object) -> None:
        self.gate.set()
        del self.model.forward

    def hold(self) -> None:
        self.gate.clear()
        self.entered.clear()

    def _wrapped(
        self,
        kind: Kind,
        ids: Sequence[list[int]],
        type_ids: Sequence[list[int]],
        prompt_lens: Sequence[int],
        outputs: Sequence[Output] = ("dense",),
    ) -> Rows:
        self.entered.set()
        assert self.gate.wait(30), "the test never opened the gate"
        self.calls.append(([tuple(x) for x in ids], list(prompt_lens)))
        return self._forward(kind, ids, type_ids, prompt_lens, outputs)

    def sequences(self) -> set[tuple[int, ...]]:
        return {seq for ids, _ in self.calls for seq in ids}


@pytest.fixture
def schedulers(pool: ModelPool) -> Iterator[Callable[..., Scheduler]]:
    made: list[Scheduler] = []

    def make(target: ModelPool = pool, **options: Any) -> Scheduler:
        settings: dict[str, Any] = {"max_batch_tokens": 2048, "max_batch_size": 256} | options
        scheduler = Scheduler(target, **settings)
        made.append(scheduler)
        return scheduler

    yield make
    for scheduler in made:
        scheduler.close(timeout=30)


class Batches:
    def __init__(self, scheduler: Scheduler) -> None:
        self.events: list[BatchEvent] = []
        scheduler.listeners.append(self.events.append)


def submit_encode(
    scheduler: Scheduler, lease: Lease, items: Sequence[str], *, is_query: bool = False,
    prompt: str | None = None, deadline: float | None = None,
) -> tuple[Prepared, Future[np.ndarray]]:
    prepared = lease.model.prepare_encode(items, is_query=is_query, prompt=prompt)
    return prepared, scheduler.submit(lease, prepared, deadline=deadline)


def block(scheduler: Scheduler, spy: Spy, lease: Lease) -> Future[np.ndarray]:
    """Hold the compute thread inside a forward pass of a one-sequence request."""
    spy.hold()
    _, future = submit_encode(scheduler, lease, ["blocker"])
    assert spy.entered.wait(30)
    return future


# -- results --------------------------------------------------------------------------------------


def test_results_equal_in_process_encoding(
    schedulers: Callable[..., Scheduler], leases: dict[str, Lease], corpus: list[str]
) -> None:
    scheduler = schedulers(max_batch_tokens=512, max_batch_size=64)
    batches = Batches(scheduler)
    options = [(False, None), (True, None), (False, "query: "), (True, LONG_PROMPT), (False, "")]
    requests = []
    for index in range(48):
        name = "tiny" if index % 2 else "minilm"
        start = (index * 7) % len(corpus)
        items = (corpus + corpus)[start : start + 1 + index % 5]
        requests.append((name, items, *options[index % len(options)]))
    expected = [
        leases[name].model.encode(items, is_query=is_query, prompt=prompt)
        for name, items, is_query, prompt in requests
    ]

    spies = {name: Spy(lease.model) for name, lease in leases.items()}
    futures: list[Future[np.ndarray] | None] = [None] * len(requests)
    with spies["minilm"], spies["tiny"]:
        blocker = block(scheduler, spies["minilm"], leases["minilm"])

        def client(offset: int) -> None:  # four threads submit interleaved requests
            for index in range(offset, len(requests), 4):
                name, items, is_query, prompt = requests[index]
                futures[index] = submit_encode(scheduler, leases[name], items, is_query=is_query, prompt=prompt)[1]

        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        spies["minilm"].gate.set()
        blocker.result(timeout=60)
        for index, (name, _, is_query, _) in enumerate(requests):
            future = futures[index]
            assert future is not None
            rows = future.result(timeout=60)
            got = leases[name].model.finish("encode", rows)
            diff = np.abs(got - expected[index]).max()
            assert diff <= TOL, f"request {index} ({name}, is_query={is_query}) differs by {diff}"

    # The requests really were batched together, with different prompt lengths side by side.
    assert max(e.seqs for e in batches.events if e.model_id == "tiny") > 5
    assert any(len(set(lens)) >= 3 for _, lens in spies["tiny"].calls), "no batch mixed prompt lengths"
    assert all(not any(lens) for _, lens in spies["minilm"].calls)  # MiniLM pools its prompt: nothing skipped


def test_empty_request_completes_without_compute(schedulers: Callable[..., Scheduler], leases: dict[str, Lease]) -> None:
    scheduler = schedulers()
    batches = Batches(scheduler)
    _, future = submit_encode(scheduler, leases["minilm"], [])
    assert future.result(timeout=5)["dense"].shape == (0, 384)
    assert batches.events == []


# -- batch formation and fairness -----------------------------------------------------------------


def test_batches_respect_the_token_budget(
    schedulers: Callable[..., Scheduler], leases: dict[str, Lease], corpus: list[str]
) -> None:
    scheduler = schedulers(max_batch_tokens=300, max_batch_size=16)
    batches = Batches(scheduler)
    lease = leases["minilm"]
    spy = Spy(lease.model)
    submitted = 0
    with spy:
        block(scheduler, spy, lease)
        futures = []
        for start in range(0, 40, 5):
            prepared, future = submit_encode(scheduler, lease, corpus[start : start + 5])
            submitted += sum(prepared.tokens.lengths)
            futures.append(future)
        short = [f"tiny text {i}" for i in range(40)]  # 40 sequences of 5 tokens: more than max_batch_size
        prepared, future = submit_encode(scheduler, lease, short)
        submitted += sum(prepared.tokens.lengths)
        futures.append(future)
        spy.gate.set()
        for future in futures:
            future.result(timeout=60)
    events = batches.events[1:]  # after the blocker
    assert sum(e.tokens for e in events) == submitted
    for event in events:
        assert event.seqs <= 16
        assert event.tokens <= 300 or event.seqs == 1, event
    assert max(e.tokens for e in events) > 150, "batches should fill toward the budget"
    assert max(e.seqs for e in events) == 16


def test_a_sequence_longer_than_the_budget_runs_alone(
    schedulers: Callable[..., Scheduler], leases: dict[str, Lease]
) -> None:
    scheduler = schedulers(max_batch_tokens=64)
    batches = Batches(scheduler)
    lease = leases["minilm"]
    prepared, future = submit_encode(scheduler, lease, ["short one", "word " * 100, "short two"])
    rows = future.result(timeout=60)
    expected = lease.model.encode(["short one", "word " * 100, "short two"])
    assert np.abs(lease.model.finish("encode", rows) - expected).max() <= TOL
    assert sorted((e.seqs, e.tokens) for e in batches.events) == sorted(
        [(1, 102), (2, sum(prepared.tokens.lengths) - 102)]
    )


def test_batches_alternate_between_models(
    schedulers: Callable[..., Scheduler], leases: dict[str, Lease], corpus: list[str]
) -> None:
    scheduler = schedulers(max_batch_tokens=64)
    batches = Batches(scheduler)
    spy = Spy(leases["minilm"].model)
    items = [f"sentence number {i} about fairness between two models" for i in range(12)]  # ~11 tokens each
    with spy:
        block(scheduler, spy, leases["minilm"])
        # All of minilm's work arrives before any of tiny's: first-come-first-served would run it all first.
        first = [submit_encode(scheduler, leases["minilm"], items)[1] for _ in range(2)]
        second = [submit_encode(scheduler, leases["tiny"], items)[1] for _ in range(2)]
        spy.gate.set()
        for future in first + second:
            future.result(timeout=60)
    order = [e.model_id for e in batches.events[1:]]
    assert order.count("minilm") >= 4 and order.count("tiny") >= 4
    both = 2 * min(order.count("minilm"), order.count("tiny"))
    assert all(a != b for a, b in itertools.pairwise(order[:both])), order


# -- admission, cancellation, deadlines -----------------------------------------------------------


def test_queue_full_refuses_the_whole_request(
    schedulers: Callable[..., Scheduler], leases: dict[str, Lease]
) -> None:
    scheduler = schedulers(max_queue=8)
    batches = Batches(scheduler)
    lease = leases["minilm"]
    spy = Spy(lease.model)
    with spy:
        blocker = block(scheduler, spy, lease)
        accepted = [submit_encode(scheduler, lease, [f"a{i}" for i in range(5)])]
        with pytest.raises(QueueFull) as info:
            submit_encode(scheduler, lease, [f"refused {i}" for i in range(5)])
        assert info.value.retry_after > 0
        assert "5 sequences waiting (limit 8)" in info.value.message
        assert scheduler.queue_depths() == {"minilm": 5}  # nothing of the refused request went in
        accepted.append(submit_encode(scheduler, lease, [f"b{i}" for i in range(3)]))
        assert scheduler.queue_depths() == {"minilm": 8}
        with pytest.raises(QueueFull):
            submit_encode(scheduler, lease, ["one too many"])
        # Each model has its own bound.
        accepted.append(submit_encode(scheduler, leases["tiny"], [f"c{i}" for i in range(8)]))
        spy.gate.set()
        blocker.result(timeout=60)
        for _, future in accepted:
            future.result(timeout=60)
    assert sum(e.seqs for e in batches.events) == 1 + 5 + 3 + 8
    refused = lease.model.prepare_encode([f"refused {i}" for i in range(5)] + ["one too many"])
    assert not {tuple(x) for x in refused.tokens.ids} & spy.sequences()


def test_cancelled_and_expired_requests_are_dropped_before_compute(
    schedulers: Callable[..., Scheduler], leases: dict[str, Lease]
) -> None:
    scheduler = schedulers()
    batches = Batches(scheduler)
    lease = leases["minilm"]
    spy = Spy(lease.model)
    with spy:
        blocker = block(scheduler, spy, lease)
        gone, gone_future = submit_encode(scheduler, lease, ["the caller went away", "before this ran"])
        late, late_future = submit_encode(
            scheduler, lease, ["this one had a deadline", "that passed"], deadline=time.monotonic() + 0.05
        )
        kept, kept_future = submit_encode(scheduler, lease, ["this one is wanted"])
        assert gone_future.cancel()
        time.sleep(0.1)
        spy.gate.set()
        blocker.result(timeout=60)
        rows = kept_future.result(timeout=60)
        with pytest.raises(DeadlineExceeded):
            late_future.result(timeout=60)
    with pytest.raises(CancelledError):
        gone_future.result()
    ran = spy.sequences()
    for dropped in (gone, late):
        assert not {tuple(x) for x in dropped.tokens.ids} & ran
    assert {tuple(x) for x in kept.tokens.ids} <= ran
    blocker_tokens = batches.events[0].tokens
    assert sum(e.tokens for e in batches.events) == blocker_tokens + sum(kept.tokens.lengths)
    expected = lease.model.encode(["this one is wanted"])
    assert np.abs(lease.model.finish("encode", rows) - expected).max() <= TOL


# -- out of memory ---------------------------------------------------------------------------------


def inject_oom(model: LoadedModel, limit: int, error: Callable[[], BaseException]) -> list[int]:
    """Make the encoder fail like an allocator would on any batch of more than `limit` tokens;
    returns the token counts of the passes that ran."""
    encoder = model.module.encoder
    forward = encoder.forward
    ran: list[int] = []

    def failing(batch: PackedBatch) -> torch.Tensor:
        if batch.num_tokens > limit:
            raise error()
        ran.append(batch.num_tokens)
        return forward(batch)

    encoder.forward = failing
    return ran


OOM_ERRORS = {
    "torch": lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)"),
    "runtime": lambda: RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough memory: "
                                    "you tried to allocate 1 bytes. Buy new RAM! out of memory (injected)"),
}


@pytest.fixture
def oom_pool(tiny_src: Path) -> Iterator[tuple[ModelPool, list[PoolEvent]]]:
    """A private pool (its MiniLM gets a failing encoder): minilm, an idle and a pinned tiny model."""
    pool = make_pool()
    events: list[PoolEvent] = []
    pool.listeners.append(events.append)
    pool.register(ModelSpec("minilm", minilm_dir()))
    pool.register(ModelSpec("idle", tiny_src))
    pool.register(ModelSpec("pinned", tiny_src), pinned=True)
    for name in ("minilm", "idle", "pinned"):
        pool.load(name).result(timeout=60)
    yield pool, events
    pool.close()


@pytest.mark.parametrize("kind", sorted(OOM_ERRORS))
def test_out_of_memory_evicts_idle_models_and_splits_the_batch(
    schedulers: Callable[..., Scheduler], oom_pool: tuple[ModelPool, list[PoolEvent]], corpus: list[str], kind: str
) -> None:
    pool, events = oom_pool
    scheduler = schedulers(pool)
    batches = Batches(scheduler)
    items = [t for t in corpus if 10 <= len(t.split()) <= 60][:12]
    with pool.acquire("minilm") as model:
        expected = model.encode(items)
        ran = inject_oom(model, 150, OOM_ERRORS[kind])
        lease = pool.acquire("minilm")
        prepared, future = submit_encode(scheduler, lease, items)
        rows = future.result(timeout=60)
        lease.release()
        assert sum(prepared.tokens.lengths) > 150 and max(prepared.tokens.lengths) <= 150
        assert np.abs(model.finish("encode", rows) - expected).max() <= TOL
    assert ran and max(ran) <= 150  # only the split halves ran
    assert sum(ran) == sum(prepared.tokens.lengths)
    assert [(e.model_id, e.reason) for e in events if e.kind == "evict"] == [("idle", "oom")]
    assert {s.id for s in pool.status() if s.nbytes} == {"minilm", "pinned"}
    assert [e.tokens for e in batches.events] == [sum(prepared.tokens.lengths)]


def test_a_sequence_that_never_fits_fails_only_its_request(
    schedulers: Callable[..., Scheduler], oom_pool: tuple[ModelPool, list[PoolEvent]]
) -> None:
    pool, _ = oom_pool
    scheduler = schedulers(pool)
    lease = pool.acquire("minilm")
    model = lease.model
    fine = ["a short text", "another short text that fits"]
    expected = model.encode(fine)
    spy = Spy(model)
    inject_oom(model, 40, OOM_ERRORS["torch"])
    huge = "word " * 60  # 62 tokens: over the limit even alone
    with spy:
        block(scheduler, spy, lease)
        _, alone = submit_encode(scheduler, lease, [huge])
        _, ok = submit_encode(scheduler, lease, fine)
        _, mixed = submit_encode(scheduler, lease, ["fits", huge])
        spy.gate.set()
        with pytest.raises(ResourceExhausted, match="out of memory running one sequence"):
            alone.result(timeout=60)
        with pytest.raises(ResourceExhausted):
            mixed.result(timeout=60)
        rows = ok.result(timeout=60)
    assert np.abs(model.finish("encode", rows) - expected).max() <= TOL
    # The scheduler goes on serving afterwards.
    _, after = submit_encode(scheduler, lease, fine)
    assert np.abs(model.finish("encode", after.result(timeout=60)) - expected).max() <= TOL
    lease.release()


# -- shutdown and references ----------------------------------------------------------------------


def test_close_drains_queued_work_then_refuses(
    schedulers: Callable[..., Scheduler], leases: dict[str, Lease], corpus: list[str]
) -> None:
    # Batches would wait a minute to fill: close() must run the queued work at once.
    scheduler = schedulers(max_wait_ms=60_000, max_batch_tokens=4096)
    lease = leases["minilm"]
    spy = Spy(lease.model)
    with spy:
        spy.hold()
        queued = [(corpus[i : i + 3], submit_encode(scheduler, lease, corpus[i : i + 3])[1]) for i in range(0, 30, 3)]
        time.sleep(0.2)
        assert not spy.entered.is_set(), "nothing should run before the batch is due"
        closer = threading.Thread(target=scheduler.close)
        closer.start()
        assert spy.entered.wait(10), "close() did not make the queued work due"
        with pytest.raises(ShuttingDown):  # while draining
            submit_encode(scheduler, lease, ["too late"])
        spy.gate.set()
        closer.join(30)
        assert not closer.is_alive()
    for items, future in queued:
        rows = future.result(timeout=1)
        assert np.abs(lease.model.finish("encode", rows) - lease.model.encode(items)).max() <= TOL
    too_late = lease.model.prepare_encode(["too late"]).tokens.ids[0]
    assert tuple(too_late) not in spy.sequences()
    with pytest.raises(ShuttingDown):  # and after
        submit_encode(scheduler, lease, ["still too late"])


def test_an_idle_scheduler_keeps_no_model_alive(schedulers: Callable[..., Scheduler], tiny_src: Path) -> None:
    pool = make_pool()
    pool.register(ModelSpec("m", tiny_src))
    scheduler = schedulers(pool)
    lease = pool.acquire("m")
    ref = weakref.ref(lease.model)
    _, future = submit_encode(scheduler, lease, ["one", "two"])
    future.result(timeout=60)
    lease.release()
    del lease
    assert pool.unload("m")
    time.sleep(0.2)  # the compute thread is back waiting for work
    gc.collect()
    assert ref() is None, "the compute thread still references the unloaded model"
    pool.close()


def test_service_keeps_the_lease_until_the_batch_is_done(tiny_src: Path) -> None:
    """A request that gives up (deadline) while its batch runs must not hand its model back to the
    pool before the compute thread is done with it: the pool could evict a model in use."""
    from remora.core.engine import Engine, EngineSettings
    from remora.sidecar.service import Service
    from remora.sidecar.settings import ServerSettings

    engine = Engine(EngineSettings(device="cpu", register_defaults=False, num_threads=1))
    engine.register("m", tiny_src)
    service = Service(engine, ServerSettings(request_timeout_s=0.2, tokenizer_threads=1))
    lease = engine.pool.acquire("m")
    spy = Spy(lease.model)
    lease.release()
    try:
        with spy:
            spy.hold()

            async def request() -> None:
                await service.run(None, "m", lambda m: m.prepare_encode(["held in the forward pass"]))

            with pytest.raises(DeadlineExceeded):
                asyncio.run(request())
            assert spy.entered.is_set()
            assert engine.pool.status_of("m").in_use == 1, "the lease went back while the batch still runs"
            spy.gate.set()
            deadline = time.monotonic() + 10
            while engine.pool.status_of("m").in_use and time.monotonic() < deadline:
                time.sleep(0.01)
            assert engine.pool.status_of("m").in_use == 0
    finally:
        engine.close()
        service.close()
