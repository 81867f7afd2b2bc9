"""ModelPool: a memory budget filled by least-recently-used idle models, leases and pins that
protect models from eviction, one load however many ask, failed loads isolated to their model,
replacement while in use, memory handed back on unload, and hub-cache sources.

Most tests use tiny random BERT copies (~8 MB each) under different ids, with a budget that holds
exactly two of them; only the RSS test needs the real MiniLM weights.
"""

from __future__ import annotations

import gc
import hashlib
import os
import random
import shutil
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from remora.core import Engine, EngineSettings
from remora.core.config import HubRef, HubSettings, ModelSpec
from remora.core.errors import InvalidInput, MemoryBusy, ModelLoadError, ModelTooLarge, WeightsError
from remora.core.layers.attention import select_attention
from remora.core.memory import estimate_model_bytes, rss_bytes
from remora.core.model import LoadedModel, Runtime
from remora.core.pool import Lease, ModelPool, PoolEvent, State
from tests.helpers import link_model_copy, minilm_dir, randomize_layernorms, save_tiny, tiny_bert_config

TEXTS = ["hello world", "a second, somewhat longer sentence about remoras and sharks"]
CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_other(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second tiny BERT with other weights (same shapes), so its vectors differ from tiny_src's."""
    from transformers import BertModel

    torch.manual_seed(1)
    model = BertModel(tiny_bert_config())
    randomize_layernorms(model, seed=1)
    return save_tiny(model.eval(), tmp_path_factory.mktemp("tiny-other") / "model")


@pytest.fixture(scope="module")
def tiny_bytes(tiny_src: Path) -> int:
    return estimate_model_bytes(tiny_src, torch.float32)


@pytest.fixture(scope="module")
def reference(tiny_src: Path) -> np.ndarray:
    """TEXTS encoded by the tiny model loaded outside any pool."""
    pool = make_pool(1 << 30)
    pool.register(ModelSpec("ref", tiny_src))
    with pool.acquire("ref") as model:
        vectors = model.encode(TEXTS)
    pool.close()
    return vectors


def make_pool(budget: int, *, load_timeout_s: float = 30.0, hub: HubSettings | None = None) -> ModelPool:
    runtime = Runtime(device=CPU, attention=select_attention(CPU), max_batch_tokens=2048, max_batch_size=256)
    return ModelPool(runtime, budget_bytes=budget, load_timeout_s=load_timeout_s, hub=hub)


class Recorder:
    """Collects pool events, and checks the budget at every one of them."""

    def __init__(self, pool: ModelPool) -> None:
        self.pool = pool
        self.events: list[PoolEvent] = []
        self.over_budget: list[int] = []
        pool.listeners.append(self)

    def __call__(self, event: PoolEvent) -> None:
        self.events.append(event)
        used = self.pool.used_bytes
        if used > self.pool.budget_bytes:
            self.over_budget.append(used)

    def of(self, kind: str) -> list[PoolEvent]:
        return [e for e in self.events if e.kind == kind]

    def evicted(self) -> list[tuple[str, str]]:
        return [(e.model_id, e.reason) for e in self.of("evict")]


@pytest.fixture
def three(tiny_src: Path, tmp_path: Path, tiny_bytes: int) -> Iterator[tuple[ModelPool, Recorder]]:
    """Models a, b, c (tiny copies) in a pool whose budget holds exactly two of them."""
    pool = make_pool(2 * tiny_bytes, load_timeout_s=1.0)
    for name in "abc":
        pool.register(ModelSpec(name, link_model_copy(tiny_src, tmp_path / name)))
    recorder = Recorder(pool)
    yield pool, recorder
    pool.close()


def loaded(pool: ModelPool) -> set[str]:
    return {s.id for s in pool.status() if s.state is State.LOADED}


def use(pool: ModelPool, name: str, reference: np.ndarray) -> None:
    with pool.acquire(name) as model:
        vectors = model.encode(TEXTS)
    assert np.abs(vectors - reference).max() <= 1e-6


# -- budget and LRU eviction --------------------------------------------------------------


def test_budget_holds_exactly_two(three: tuple[ModelPool, Recorder], tiny_bytes: int) -> None:
    # The premise of every test below: two copies fit, a third does not.
    pool, _ = three
    real = pool.acquire("a")
    assert real.model.nbytes <= tiny_bytes  # the estimate never undercounts
    assert 2 * tiny_bytes <= pool.budget_bytes < 3 * real.model.nbytes
    real.release()


def test_interleaved_use_evicts_least_recently_used(
    three: tuple[ModelPool, Recorder], reference: np.ndarray
) -> None:
    pool, recorder = three
    rng = random.Random(5)
    order = ["a", "b", "c", "a", "c", "b", *(rng.choice("abc") for _ in range(20))]
    lru: list[str] = []  # what an LRU of capacity two holds, least recent first
    expected: list[tuple[str, str]] = []
    for name in order:
        if name in lru:
            lru.remove(name)
        elif len(lru) == 2:
            expected.append((lru.pop(0), "budget"))
        lru.append(name)
        use(pool, name, reference)
        assert pool.used_bytes <= pool.budget_bytes
        assert loaded(pool) == set(lru)
    assert expected[:3] == [("a", "budget"), ("b", "budget"), ("a", "budget")]
    assert recorder.evicted() == expected
    assert len(recorder.of("load")) == len(expected) + 2
    assert not recorder.of("load_failed")
    assert recorder.over_budget == []


def test_concurrent_interleaved_use_all_succeeds(
    three: tuple[ModelPool, Recorder], reference: np.ndarray
) -> None:
    pool, recorder = three
    # Loads wait for a lease to come back while the other threads keep using the loaded models.
    pool.load_timeout_s = 30.0
    pool.wait_timeout_s = 32.0  # a waiter's limit follows the load's (set from it at construction)
    errors: list[BaseException] = []

    def client(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(8):
                use(pool, rng.choice("abc"), reference)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert recorder.evicted(), "three models in a budget of two must evict"
    assert {reason for _, reason in recorder.evicted()} == {"budget"}
    assert recorder.over_budget == []
    assert pool.used_bytes <= pool.budget_bytes


# -- what is never evicted ------------------------------------------------------------------


def test_leased_models_are_never_evicted(three: tuple[ModelPool, Recorder], reference: np.ndarray) -> None:
    pool, recorder = three
    lease_a, lease_b = pool.acquire("a"), pool.acquire("b")
    started = time.monotonic()
    with pytest.raises(MemoryBusy, match="running or pinned"):
        pool.load("c").result(timeout=30)
    assert time.monotonic() - started >= 0.9  # waited out load_timeout_s (1 s) for a lease to come back
    # The waiting load is transient: c stays loadable, not failed; a and b kept serving.
    assert pool.status_of("c").state is State.AVAILABLE
    assert recorder.evicted() == []
    for lease in (lease_a, lease_b):
        assert np.abs(lease.model.encode(TEXTS) - reference).max() <= 1e-6
    with pytest.raises(MemoryBusy):
        pool.acquire("c", timeout=30)

    # A lease coming back while c waits lets c load.
    threading.Timer(0.3, lease_a.release).start()
    started = time.monotonic()
    lease_c = pool.acquire("c", timeout=30)
    assert time.monotonic() - started >= 0.25
    assert recorder.evicted() == [("a", "budget")]
    assert loaded(pool) == {"b", "c"}
    assert np.abs(lease_b.model.encode(TEXTS) - reference).max() <= 1e-6
    lease_b.release()
    lease_c.release()


def test_pinned_models_are_never_evicted(three: tuple[ModelPool, Recorder], reference: np.ndarray) -> None:
    pool, recorder = three
    pool.set_pinned("a", True)
    pool.set_pinned("b", True)
    pool.load("a").result(timeout=30)
    pool.load("b").result(timeout=30)
    with pytest.raises(MemoryBusy):
        pool.acquire("c", timeout=30)
    assert loaded(pool) == {"a", "b"}
    assert recorder.evicted() == []
    assert pool.status_of("a").pinned

    pool.set_pinned("b", False)  # a is the least recently used, but pinned: b goes
    use(pool, "c", reference)
    assert recorder.evicted() == [("b", "budget")]
    assert loaded(pool) == {"a", "c"}
    use(pool, "b", reference)
    assert recorder.evicted() == [("b", "budget"), ("c", "budget")]
    assert loaded(pool) == {"a", "b"}


# -- one load however many ask ----------------------------------------------------------------


def test_concurrent_cold_requests_share_one_load(
    three: tuple[ModelPool, Recorder], reference: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    import remora.core.pool as pool_module

    pool, recorder = three
    calls: list[str] = []
    real_load = pool_module.load_model

    def counting_load(spec: ModelSpec, runtime: Runtime) -> LoadedModel:
        calls.append(spec.id)
        time.sleep(0.2)  # keep the load in flight while the other threads arrive
        return real_load(spec, runtime)

    monkeypatch.setattr(pool_module, "load_model", counting_load)
    barrier = threading.Barrier(16)
    models: list[LoadedModel] = []
    errors: list[BaseException] = []

    def request() -> None:
        try:
            barrier.wait(10)
            with pool.acquire("a") as model:
                assert np.abs(model.encode(TEXTS) - reference).max() <= 1e-6
                models.append(model)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=request) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert calls == ["a"]
    assert len(recorder.of("load")) == 1
    assert len(models) == 16 and all(m is models[0] for m in models)
    assert pool.status_of("a").in_use == 0


# -- failed loads -------------------------------------------------------------------------------


def test_corrupt_model_fails_alone_and_can_be_retried(
    three: tuple[ModelPool, Recorder], reference: np.ndarray, tiny_src: Path, tmp_path: Path
) -> None:
    pool, recorder = three
    broken = tmp_path / "broken"
    shutil.copytree(tiny_src, broken)  # a real copy: truncating a hard link would break the source
    weights = broken / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    pool.register(ModelSpec("broken", broken))

    use(pool, "a", reference)
    with pytest.raises(WeightsError, match="corrupt safetensors") as info:
        pool.acquire("broken")
    status = pool.status_of("broken")
    assert status.state is State.FAILED
    assert status.error_code == "WEIGHTS_INVALID"
    assert status.error is not None and "corrupt safetensors" in status.error
    assert [(e.model_id, e.reason) for e in recorder.of("load_failed")] == [("broken", "WEIGHTS_INVALID")]

    # Later requests get the same error without another load attempt; the others keep serving.
    class Request:
        pass

    def failing_request() -> weakref.ref[Request]:
        request = Request()  # stands for what a caller's frame holds (an HTTP request, its body)
        with pytest.raises(WeightsError) as again:
            pool.checkout("broken")
        assert (again.value.code, again.value.message) == (info.value.code, info.value.message)
        return weakref.ref(request)

    gone = [failing_request() for _ in range(3)]
    gc.collect()
    assert all(ref() is None for ref in gone), "the stored error keeps failed requests' frames alive"
    assert len(recorder.of("load_failed")) == 1
    for name in "abc":
        use(pool, name, reference)
    assert pool.used_bytes <= pool.budget_bytes

    # An explicit load retries: still broken fails again, repaired loads.
    with pytest.raises(WeightsError):
        pool.load("broken").result(timeout=30)
    assert len(recorder.of("load_failed")) == 2
    weights.write_bytes(data)
    pool.load("broken").result(timeout=30)
    status = pool.status_of("broken")
    assert (status.state, status.error, status.error_code) == (State.LOADED, None, None)
    use(pool, "broken", reference)


def test_model_larger_than_the_budget(three: tuple[ModelPool, Recorder], reference: np.ndarray) -> None:
    pool, recorder = three
    use(pool, "a", reference)
    use(pool, "b", reference)
    pool.register(ModelSpec("huge", minilm_dir()))  # ~87 MiB against a budget of two ~8 MB models
    with pytest.raises(ModelTooLarge) as info:
        pool.acquire("huge")
    message = str(info.value)
    assert "'huge' needs about 87 MiB, more than the whole memory budget of" in message
    assert "REMORA_MEMORY_BUDGET" in message
    status = pool.status_of("huge")
    assert (status.state, status.error_code) == (State.FAILED, "MODEL_TOO_LARGE")
    # Refused before anything was evicted for it.
    assert recorder.evicted() == []
    assert loaded(pool) == {"a", "b"}


# -- replacement and unloading ------------------------------------------------------------------


def test_reregister_while_leased(tiny_src: Path, tiny_other: Path, reference: np.ndarray, tiny_bytes: int) -> None:
    pool = make_pool(4 * tiny_bytes)
    recorder = Recorder(pool)
    pool.register(ModelSpec("m", tiny_src))
    old_lease = pool.acquire("m")
    old_ref = weakref.ref(old_lease.model)
    one = pool.used_bytes

    pool.register(ModelSpec("m", tiny_other))
    assert recorder.evicted() == [("m", "replaced")]
    # The running request keeps its model...
    assert np.abs(old_lease.model.encode(TEXTS) - reference).max() <= 1e-6
    # ...new requests get the new one.
    with pool.acquire("m") as new:
        other = new.encode(TEXTS)
        assert new is not old_lease.model
    assert np.abs(other - reference).max() > 1e-3
    assert pool.status_of("m").in_use == 0
    assert pool.used_bytes == 2 * one  # the old copy is still accounted while leased

    old_lease.release()
    del old_lease
    gc.collect()
    assert pool.used_bytes == one
    assert old_ref() is None, "the replaced model must be freed once its last lease is back"
    pool.close()


def test_unload_of_a_leased_model_waits_for_the_lease(tiny_src: Path, reference: np.ndarray, tiny_bytes: int) -> None:
    pool = make_pool(4 * tiny_bytes)
    recorder = Recorder(pool)
    pool.register(ModelSpec("m", tiny_src), pinned=True)
    lease = pool.acquire("m")
    ref = weakref.ref(lease.model)
    assert pool.unload("m")
    assert recorder.evicted() == [("m", "unload")]
    assert not pool.status_of("m").pinned
    assert pool.status_of("m").state is State.AVAILABLE
    assert np.abs(lease.model.encode(TEXTS) - reference).max() <= 1e-6
    assert pool.used_bytes > 0
    lease.release()
    del lease
    gc.collect()
    assert pool.used_bytes == 0
    assert ref() is None
    pool.close()


def measure_unload_cycles(model_dir: Path) -> dict[str, object]:
    """RSS around load/encode/unload cycles of one model; run in a fresh process (see below)."""
    torch.set_num_threads(1)
    pool = make_pool(1 << 30)
    pool.register(ModelSpec("m", model_dir))
    texts = [" ".join(["memory"] * n) for n in (3, 40, 200)]

    def cycle() -> int:
        with pool.acquire("m") as model:
            model.encode(texts)
            held = rss_bytes()
        del model  # the pool can only give back what nobody else references
        assert pool.unload("m")
        return held

    cycle()
    gc.collect()
    baseline = rss_bytes()
    peaks = [cycle() - baseline for _ in range(5)]
    gc.collect()
    result = {"peaks": peaks, "grown": rss_bytes() - baseline, "used_bytes": pool.used_bytes}
    pool.close()
    return result


def test_unloading_gives_memory_back(tmp_path: Path) -> None:
    """RSS after load/unload cycles of a MiniLM copy returns near where it started.

    One MiniLM is ~87 MiB of weights. One warm-up cycle first (allocator arenas, tokenizer and
    torch kernels' one-time state), then five cycles may grow RSS by less than 30 MiB: a leak of
    even one model per cycle would be ~435 MiB. A loaded model must show up in RSS (> 60 MiB), so
    the measurement can see a model at all. The cycles run in a fresh interpreter: in the test
    process, memory that earlier tests freed (but glibc could not hand back) is reused by the
    load, and hides part of the model from RSS.
    """
    import json
    import subprocess
    import sys

    model_dir = link_model_copy(minilm_dir(), tmp_path / "minilm-copy")
    script = (
        "import json, sys; from pathlib import Path; from tests.unit.test_pool import measure_unload_cycles; "
        "print(json.dumps(measure_unload_cycles(Path(sys.argv[1]))))"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", script, str(model_dir)], cwd=root, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    peaks, grown = result["peaks"], result["grown"]
    assert min(peaks) > 60 * 2**20, f"a loaded MiniLM should be visible in RSS: {peaks}"
    assert grown < 30 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB over 5 load/unload cycles"
    assert result["used_bytes"] == 0


# -- hub sources ----------------------------------------------------------------------------------


def hub_snapshot(cache: Path, repo_id: str, commit: str, model_dir: Path) -> None:
    """A model directory laid out as huggingface_hub caches it: blobs, snapshot symlinks, a ref."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    for file in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        relative = file.relative_to(model_dir)
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, blob)
        link = repo / "snapshots" / commit / relative
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)


def test_hub_ref_loads_from_the_cache(tiny_src: Path, tmp_path: Path, reference: np.ndarray, tiny_bytes: int) -> None:
    cache = tmp_path / "hub"
    hub_snapshot(cache, "org/tiny", "c" * 40, tiny_src)
    pool = make_pool(4 * tiny_bytes, hub=HubSettings(cache_dir=cache, download=False))
    pool.register(ModelSpec("hub", HubRef("org/tiny")))
    pool.register(ModelSpec("missing", HubRef("org/not-cached")))
    assert pool.status_of("hub").source == "hf://org/tiny@main"
    with pool.acquire("hub") as model:
        assert model.spec.path == cache / "models--org--tiny" / "snapshots" / ("c" * 40)
        assert np.abs(model.encode(TEXTS) - reference).max() <= 1e-6
    assert pool.status_of("hub").nbytes > 0
    with pytest.raises(ModelLoadError, match="not in the Hugging Face cache"):
        pool.acquire("missing")
    assert pool.status_of("missing").state is State.FAILED
    pool.close()


def test_lease_is_a_context_manager_and_releases_once(three: tuple[ModelPool, Recorder]) -> None:
    pool, _ = three
    lease = pool.acquire("a")
    assert isinstance(lease, Lease)
    assert pool.status_of("a").in_use == 1
    lease.release()
    lease.release()  # idempotent: a second release must not free someone else's reference
    assert pool.status_of("a").in_use == 0
    other = pool.acquire("a")
    lease.release()
    assert pool.status_of("a").in_use == 1
    other.release()


def test_an_alias_never_shadows_another_model(tmp_path: Path) -> None:
    engine = Engine(EngineSettings(device="cpu", register_defaults=False))
    engine.register("a", minilm_dir())
    with pytest.raises(InvalidInput, match="'a' already names another model"):
        engine.register("b", minilm_dir(), aliases=["a"])
    engine.register("b", minilm_dir(), aliases=["b-alias"])
    with pytest.raises(InvalidInput, match="'b-alias' already names another model"):
        engine.register("b-alias", minilm_dir())
    assert engine.resolve_id("a") == "a" and engine.resolve_id("b-alias") == "b"
    engine.register("b", minilm_dir(), aliases=["b-alias", "b2"])  # re-registering keeps its own names
    assert engine.resolve_id("b2") == "b"


def test_a_long_wait_for_room_drains_the_least_recently_used_busy_model(
    three: tuple[ModelPool, Recorder], reference: np.ndarray
) -> None:
    """Under steady traffic no model is ever idle: a load that has waited `drain_after_s` retires
    the least recently used busy model. Its running request finishes on the copy it holds; the
    load proceeds the moment that lease comes back; only one model is drained for one load."""
    pool, recorder = three
    pool.drain_after_s, pool.load_timeout_s, pool.wait_timeout_s = 0.3, 30.0, 32.0
    lease_a = pool.acquire("a")
    lease_b = pool.acquire("b")  # b is the more recently used
    loading = pool.load("c")
    time.sleep(1.0)
    assert not loading.done()  # a is drained but still leased: its memory is not free yet
    assert recorder.evicted() == [("a", "budget")]
    assert pool.status_of("a").state is State.AVAILABLE and pool.status_of("b").state is State.LOADED
    assert np.abs(lease_a.model.encode(TEXTS) - reference).max() <= 1e-6  # the held copy still runs
    lease_a.release()
    loading.result(timeout=30)
    assert loaded(pool) == {"b", "c"} and recorder.evicted() == [("a", "budget")]
    assert pool.used_bytes <= pool.budget_bytes
    lease_b.release()
    use(pool, "a", reference)  # a loads again, evicting the now idle least recently used model
    assert pool.used_bytes <= pool.budget_bytes


def test_pinned_models_are_never_drained(three: tuple[ModelPool, Recorder]) -> None:
    pool, recorder = three
    pool.drain_after_s = 0.1
    pool.set_pinned("a", True)
    pool.set_pinned("b", True)
    leases = [pool.acquire("a"), pool.acquire("b")]
    with pytest.raises(MemoryBusy):
        pool.acquire("c", timeout=30)
    assert recorder.evicted() == [] and loaded(pool) == {"a", "b"}
    for lease in leases:
        lease.release()
