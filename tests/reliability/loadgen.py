"""The load driver shared by `tests/reliability/test_load.py` (short, in CI) and
`benchmarks/load.py` (long): many concurrent clients against a real `remora serve` child process
over loopback, mixing /v1/encode and /v1/score over five models in a memory budget that holds two.

Five models of 64-87 MB in fp32, so that any two fit the budget and no three do: the real
all-MiniLM-L6-v2 (384-d, normalised) and four seeded BERTs built from configs — embedders of 480,
512 and 544 dimensions (one with a query prompt) and a one-label cross-encoder. Their sizes are
read from the safetensors headers (what the pool estimates before a load) and from the loaded
models (what it accounts after), and the budget is placed halfway between the largest pair and
the smallest triple.

Every answer is checked against a reference computed once, before the load, by
`remora.core.Engine` in this process on the same model directories with the same options:
per text for /v1/encode (model, input_type) and per (query, document) for /v1/score (a text's
result does not depend on what else is in its request or its batch). Tolerance: |got - ref| <=
ATOL + RTOL * |ref| per component, for fp32 noise from different batch packings (measured: below
2e-6); two texts that tokenize differently, or two models, differ by far more, so a reply swapped
between requests or models fails (test_load.py checks that the comparison can fail).

The run: one request to each model in turn (each loads and answers once), a warm-up phase of
mixed load, then the measured phase, by the same clients (one connection each). Before, between and after them a checkpoint waits for the clients to finish,
unloads every model (POST /v1/models/{id}/unload) and reads the server's RSS from /proc: memory
growth is the idle RSS after the measured phase over the idle RSS after warm-up. Under load RSS
swings by a model or more (which two are loaded, a load in flight), so it is sampled there for the
figures; with nothing loaded, memory that the run failed to give back (a leaked model is 64-87 MB,
about a fifth of the idle process) shows.

Promises checked (`Report.broken`): no 5xx (server side too, from remora_requests_total), no lost
replies (transport errors, timeouts, requests still open at the hard limit), no wrong replies,
retryable refusals only as documented (429 QUEUE_FULL, 503 MEMORY_BUSY / MODEL_LOADING /
RESOURCE_EXHAUSTED, each with Retry-After; clients wait that long and send the same request
again until it is answered), the pool never over its budget nor holding more than two models,
idle RSS growth after warm-up under 10 %, and a clean exit on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np
import orjson
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import minilm_dir, randomize_layernorms, save_tiny, tiny_bert_config, write_json
from tests.sidecar.server import ServerProcess
from tests.texts import EDGE_CASES, SENTENCES

ATOL = 1e-4
RTOL = 1e-4
RSS_GROWTH_LIMIT = 0.10
QUERY_PROMPT = "query: "
# Documented retryable refusals: status -> codes. Anything else that is not a 200 breaks a promise.
RETRYABLE = {429: {"QUEUE_FULL"}, 503: {"MEMORY_BUSY", "MODEL_LOADING", "RESOURCE_EXHAUSTED"}}
MAX_TEXTS = 8  # texts per request: 1..MAX_TEXTS

QUERIES = (
    "which fish rides on sharks",
    "how are embeddings stored",
    "what does a reranker return",
    "café crème ünïcödé 🦈",
)

Kind = Literal["embedder", "reranker"]


@dataclass(frozen=True)
class ModelDef:
    id: str
    path: Path
    kind: Kind
    options: dict[str, Any] = field(default_factory=dict)


# id -> (hidden size, layers, heads, cross-encoder, seed); one layer each keeps compute small
# while word-embedding tables as wide as MiniLM's or wider keep the weights at 64-74 MB.
TINY = {
    "enc-480": (480, 1, 8, False, 1),
    "enc-512": (512, 1, 8, False, 2),
    "enc-544": (544, 1, 8, False, 3),
    "rerank": (512, 1, 8, True, 4),
}


def corpus() -> tuple[list[str], list[str]]:
    """(texts for /v1/encode, documents for /v1/score): short prose and the edge cases."""
    rng = random.Random(11)
    prose = [" ".join(rng.sample(SENTENCES, k)) for k in (2, 3, 4)]
    texts = list(dict.fromkeys([*SENTENCES[:12], *EDGE_CASES[:12], *prose]))
    documents = [*SENTENCES[:6], "", "🦈 remora", "supercalifragilisticexpialidocious", prose[-1]]
    return texts, documents


def build_models(root: Path) -> list[ModelDef]:
    """The five models: MiniLM (the installed package's directory) and four seeded BERTs."""
    import torch
    from transformers import BertForSequenceClassification, BertModel

    models = [ModelDef("minilm", minilm_dir(), "embedder")]
    for model_id, (hidden, layers, heads, cross, seed) in TINY.items():
        target = root / model_id
        options = {"query_prompt": QUERY_PROMPT} if model_id == "enc-512" else {}
        models.append(ModelDef(model_id, target, "reranker" if cross else "embedder", options))
        if (target / "model.safetensors").exists():
            continue
        config = tiny_bert_config(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                                  intermediate_size=2 * hidden, max_position_embeddings=512,
                                  **({"num_labels": 1} if cross else {}))
        torch.manual_seed(seed)
        module = (BertForSequenceClassification(config) if cross
                  else BertModel(config, add_pooling_layer=False)).eval()
        randomize_layernorms(module, seed)
        if cross:
            with torch.no_grad():  # a fresh head scores everything ~0.5: spread its logits
                module.classifier.weight.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(seed))
        save_tiny(module, target)
    return models


def write_registry(path: Path, models: list[ModelDef]) -> Path:
    write_json(path, {
        "default_reranker": "rerank",
        "models": [{"id": m.id, "path": str(m.path), **m.options} for m in models],
    })
    return path


# -- references -------------------------------------------------------------------------------


@dataclass
class References:
    """Per-model results for single inputs, and the models' sizes (estimated and loaded)."""

    encode: dict[tuple[str, str, bool], np.ndarray]  # (model, text, is_query) -> [dim]
    score: dict[tuple[str, str, str], float]  # (model, query, document) -> score
    estimated_bytes: dict[str, int]
    loaded_bytes: dict[str, int]
    texts: list[str]
    documents: list[str]
    seconds: float

    def sizes(self) -> dict[str, tuple[int, int]]:
        return {m: (self.estimated_bytes[m], self.loaded_bytes[m]) for m in self.estimated_bytes}


def budget_for(sizes: dict[str, tuple[int, int]]) -> int:
    """Halfway between the largest pair of models and the smallest triple (model -> (estimated,
    loaded) bytes; the larger size for the pair, the smaller for the triple): two fit, never three."""
    high = sorted((max(s) for s in sizes.values()), reverse=True)
    low = sorted(min(s) for s in sizes.values())
    pair, triple = high[0] + high[1], low[0] + low[1] + low[2]
    if pair >= triple:
        raise ValueError(f"the models' sizes do not separate two from three: {pair} >= {triple}")
    return (pair + triple) // 2


def fits_two_only(sizes: dict[str, tuple[int, int]], budget: int) -> bool:
    high = sorted((max(s) for s in sizes.values()), reverse=True)
    low = sorted(min(s) for s in sizes.values())
    return high[0] + high[1] <= budget < low[0] + low[1] + low[2]


def compute_references(models: list[ModelDef]) -> References:
    import torch

    from remora.core import Engine, EngineSettings
    from remora.core.memory import estimate_model_bytes

    started = time.perf_counter()
    texts, documents = corpus()
    engine = Engine(EngineSettings(device="cpu", num_threads=1, register_defaults=False, memory_budget=2**32))
    encode: dict[tuple[str, str, bool], np.ndarray] = {}
    score: dict[tuple[str, str, str], float] = {}
    estimated, loaded = {}, {}
    try:
        for m in models:
            engine.register(m.id, m.path, **m.options)
            estimated[m.id] = estimate_model_bytes(m.path, torch.float32)
            loaded[m.id] = engine.model(m.id).nbytes
            if m.kind == "embedder":
                for is_query in (False, True):
                    vectors = engine.encode(m.id, texts, is_query=is_query)
                    for text, vector in zip(texts, vectors, strict=True):
                        encode[(m.id, text, is_query)] = vector
            for query in QUERIES:
                for document, value in zip(documents, engine.score(m.id, query, documents), strict=True):
                    score[(m.id, query, document)] = float(value)
            engine.unload(m.id)
    finally:
        engine.close()
    return References(encode, score, estimated, loaded, texts, documents, time.perf_counter() - started)


def deviation(expected: np.ndarray, got: Any) -> float:
    """The largest |got - expected| over the components; inf for a wrong shape or a non-finite value."""
    array = np.asarray(got, dtype=np.float64)
    if array.shape != expected.shape or not np.isfinite(array).all():
        return float("inf")
    return float(np.abs(array - expected).max()) if array.size else 0.0


def within_tolerance(expected: np.ndarray, got: Any) -> bool:
    array = np.asarray(got, dtype=np.float64)
    if array.shape != expected.shape or not np.isfinite(array).all():
        return False
    return bool((np.abs(array - expected) <= ATOL + RTOL * np.abs(expected)).all())


# -- requests ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    route: str
    model: str
    body: dict[str, Any]
    expected: np.ndarray  # [n, dim] for encode, [n] for score
    texts: int  # inputs, or documents (the query not counted)


def next_call(rng: random.Random, refs: References, models: list[ModelDef]) -> Call:
    """60 % encode on an embedder, 40 % score (half of them on the cross-encoder, the rest cosine
    on an embedder); 1..MAX_TEXTS texts drawn with repeats allowed."""
    embedders = [m.id for m in models if m.kind == "embedder"]
    n = rng.randint(1, MAX_TEXTS)
    if rng.random() < 0.6:
        model = rng.choice(embedders)
        is_query = rng.random() < 0.5
        texts = rng.choices(refs.texts, k=n)
        body = {"model": model, "inputs": texts, "input_type": "query" if is_query else "document"}
        expected = np.stack([refs.encode[(model, t, is_query)] for t in texts]).astype(np.float64)
        return Call("/v1/encode", model, body, expected, n)
    rerankers = [m.id for m in models if m.kind == "reranker"]
    model = rng.choice(rerankers) if rng.random() < 0.5 else rng.choice(embedders)
    query = rng.choice(QUERIES)
    docs = rng.choices(refs.documents, k=n)
    expected = np.array([refs.score[(model, query, d)] for d in docs], dtype=np.float64)
    return Call("/v1/score", model, {"model": model, "query": query, "documents": docs}, expected, n)


def check_reply(call: Call, body: dict[str, Any]) -> str | None:
    """Why a 200 reply is wrong for this call, or None."""
    if body.get("model") != call.model:
        return f"{call.route} for {call.model!r} answered by model {body.get('model')!r}"
    if call.route == "/v1/encode" and body.get("dim") != call.expected.shape[1]:
        return f"{call.route} {call.model}: dim {body.get('dim')} != {call.expected.shape[1]}"
    got = body.get("embeddings") if call.route == "/v1/encode" else body.get("scores")
    if not within_tolerance(call.expected, got):
        return f"{call.route} {call.model}: off the reference by {deviation(call.expected, got):.3g}"
    return None


# -- the run ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    clients: int
    duration_s: float  # the measured phase: how long clients send new requests
    warmup_s: float  # one request per model, then the same load this long, then the baseline
    hard_limit_s: float  # everything after the server is up; requests still open then are lost
    seed: int = 0
    max_queue: int = 64  # REMORA_MAX_QUEUE: small enough that the clients overflow it
    request_timeout_s: float = 90.0
    sample_every_s: float = 0.5


@dataclass
class Phase:
    """What the clients saw in one phase."""

    seconds: float = 0.0  # from its first request to its last reply
    completed: int = 0  # requests answered with a 200 (right or wrong)
    attempts: int = 0
    texts: int = 0
    latencies: list[float] = field(default_factory=list)  # first send -> final 200, retries included
    retryable: Counter[str] = field(default_factory=Counter)  # "429 QUEUE_FULL" -> count
    per_model: Counter[str] = field(default_factory=Counter)

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]

    def line(self) -> str:
        rate = 1 / max(self.seconds, 1e-9)
        return (f"{self.completed} requests ({self.attempts} attempts), {self.texts} texts in {self.seconds:.1f} s: "
                f"{self.completed * rate:.1f} req/s, {self.texts * rate:.1f} texts/s; latency p50 "
                f"{self.percentile(0.5) * 1000:.0f} ms, p99 {self.percentile(0.99) * 1000:.0f} ms, "
                f"max {max(self.latencies, default=0) * 1000:.0f} ms")


@dataclass
class Report:
    plan: Plan
    budget: int
    sizes: dict[str, tuple[int, int]]  # model -> (estimated, loaded) bytes
    reference_s: float = 0.0
    refs: References | None = None
    warmup: Phase = field(default_factory=Phase)
    main: Phase = field(default_factory=Phase)
    wrong: list[str] = field(default_factory=list)
    server_errors: list[str] = field(default_factory=list)  # 5xx not documented as retryable
    undocumented: list[str] = field(default_factory=list)  # other non-200s, a missing Retry-After
    lost: list[str] = field(default_factory=list)  # transport errors, timeouts, open at the hard limit
    max_deviation: float = 0.0  # the largest |got - ref| among right replies
    # Resident memory of the server: sampled all along (seconds since the warm-up began, bytes),
    # and at the checkpoints, where no request runs and every model is unloaded.
    rss: list[tuple[float, int]] = field(default_factory=list)
    idle_rss: dict[str, int] = field(default_factory=dict)  # "start", "warm", "end"
    main_window: tuple[float, float] = (0.0, 0.0)
    max_connections: int = 0
    max_loaded: int = 0
    max_used_bytes: int = 0
    first_served: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # scraped at the end
    server_5xx: int = 0
    exit_code: int | None = None
    log_tail: str = ""  # the server's log, for a failure's message
    setup_s: dict[str, float] = field(default_factory=dict)

    def rss_growth(self) -> float:
        """Idle RSS after the measured phase over idle RSS after the warm-up, minus one."""
        if "warm" not in self.idle_rss or "end" not in self.idle_rss:
            return float("nan")
        return self.idle_rss["end"] / self.idle_rss["warm"] - 1

    def broken(self) -> list[str]:
        out = []
        if self.main.completed == 0:
            out.append("no request was answered in the measured phase")
        if self.wrong:
            out.append(f"{len(self.wrong)} wrong replies, e.g. {self.wrong[0]}")
        if self.server_errors:
            out.append(f"{len(self.server_errors)} 5xx replies, e.g. {self.server_errors[0]}")
        if self.server_5xx:
            out.append(f"the server counted {self.server_5xx} 5xx replies (remora_requests_total)")
        if self.undocumented:
            out.append(f"{len(self.undocumented)} undocumented refusals, e.g. {self.undocumented[0]}")
        if self.lost:
            out.append(f"{len(self.lost)} lost requests, e.g. {self.lost[0]}")
        growth = self.rss_growth()
        if not growth < RSS_GROWTH_LIMIT:  # NaN (no checkpoint) fails too
            out.append(f"resident memory grew {growth:.1%} after warm-up ({self.idle_rss})")
        if self.max_loaded > 2:
            out.append(f"{self.max_loaded} models loaded at once in a budget for two")
        if self.max_used_bytes > self.budget:
            out.append(f"the pool held {self.max_used_bytes} bytes, over its budget of {self.budget}")
        if self.exit_code not in (None, 0):
            out.append(f"the server exited {self.exit_code} on SIGTERM")
        missing = [m for m in self.sizes if m not in self.first_served]
        if missing:
            out.append(f"models never served: {missing}")
        return out

    def lines(self) -> list[str]:
        mib = 2**20
        loads = self.metrics.get("remora_model_loads_total", {})
        evictions = self.metrics.get("remora_model_evictions_total", {})
        sizes = ", ".join(f"{m} {e / mib:.1f}/{b / mib:.1f}" for m, (e, b) in self.sizes.items())
        retry = ", ".join(f"{k} x{v}" for k, v in sorted((self.warmup.retryable + self.main.retryable).items()))
        served = ", ".join(f"{m} {t:.1f}s" for m, t in sorted(self.first_served.items(), key=lambda x: x[1]))
        start, stop = self.main_window
        under_load = [b for t, b in self.rss if start <= t <= stop]
        idle = ", ".join(f"{k} {v / mib:.1f} MiB" for k, v in self.idle_rss.items())
        return [
            f"plan: {self.plan.clients} clients (one connection each), warm-up {self.plan.warmup_s:.0f} s, "
            f"measured {self.plan.duration_s:.0f} s, hard limit {self.plan.hard_limit_s:.0f} s, "
            f"REMORA_MAX_QUEUE={self.plan.max_queue}, seed {self.plan.seed}",
            f"models (MiB estimated/loaded): {sizes}; budget {self.budget / mib:.1f} MiB (two fit, three never)",
            "setup: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.setup_s.items())
            + f"; references: {len(self.sizes)} models in-process in {self.reference_s:.1f} s (while the server starts); "
            f"tolerance |d| <= {ATOL:g} + {RTOL:g}*|ref|; largest deviation of a right reply {self.max_deviation:.2g}",
            f"warm-up: {self.warmup.line()}",
            f"measured: {self.main.line()}",
            "measured, per model: " + ", ".join(f"{m} {n}" for m, n in sorted(self.main.per_model.items())),
            f"retryable refusals (Retry-After honoured, then answered): {retry or 'none'}",
            f"wrong {len(self.wrong)}, 5xx {len(self.server_errors)} (server-side count {self.server_5xx}), "
            f"undocumented {len(self.undocumented)}, lost {len(self.lost)}",
            f"model loads {sum(loads.values()):.0f} ({_labels(loads)}), evictions {sum(evictions.values()):.0f} "
            f"({_labels(evictions)}); at most {self.max_loaded} loaded, pool peak {self.max_used_bytes / mib:.1f} MiB",
            f"first served (s after start): {served}; at most {self.max_connections} connections established",
            f"server RSS idle (no model, no request): {idle}; growth after warm-up {self.rss_growth():+.1%} "
            f"(limit {RSS_GROWTH_LIMIT:.0%})",
            f"server RSS under load (measured phase): median {statistics.median(under_load or [0]) / mib:.1f} MiB, "
            f"peak {max(under_load, default=0) / mib:.1f} MiB; over time: {self.rss_trend()}",
            f"server exit on SIGTERM: {self.exit_code}",
        ]

    def rss_trend(self) -> str:
        step = max(5.0, round((self.plan.warmup_s + self.plan.duration_s) / 10 / 5) * 5)
        windows: dict[int, list[int]] = {}
        for t, b in self.rss:
            windows.setdefault(int(t // step), []).append(b)
        return ", ".join(f"{k * step:.0f}s {statistics.median(v) / 2**20:.0f}" for k, v in sorted(windows.items()))


def _labels(values: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.0f}" for k, v in sorted(values.items())) or "none"


def rss_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def established(port: int) -> int:
    """Established TCP connections whose local end is `port` (the server's accepted sockets)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
            count += 1
    return count


def parse_metrics(text: str) -> dict[str, dict[str, float]]:
    """name -> {"label=value,...": value}, for the few families the report needs."""
    wanted = {"remora_model_loads_total", "remora_model_evictions_total", "remora_requests_total",
              "remora_model_loaded", "remora_memory_used_bytes"}
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted:
                key = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items())
                               if k in ("result", "reason", "status", "model"))
                if sample.name in ("remora_model_loads_total", "remora_model_evictions_total"):
                    key = ",".join(part for part in key.split(",") if not part.startswith("model="))
                bucket = out.setdefault(sample.name, {})
                bucket[key] = bucket.get(key, 0.0) + sample.value
    return out


async def drive(url: str, pid: int, port: int, refs: References, models: list[ModelDef], plan: Plan,
                report: Report) -> None:
    """Idle checkpoint, warm-up phase, checkpoint, measured phase, checkpoint; the sampler runs
    throughout. Fills `report`."""
    started = time.monotonic()
    hard_at = started + plan.hard_limit_s
    # One client, one connection: 64 clients are 64 sockets, with httpx's own keep-alive expiry
    # (5 s). The server keeps idle connections longer (75 s): when both used 5 s, a request sent
    # as the server closed its connection was lost ("Server disconnected"), 2 in 288 after ~5 s idle.
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    https = [httpx.AsyncClient(base_url=url, limits=limits, timeout=plan.request_timeout_s)
             for _ in range(plan.clients)]
    rngs = [random.Random(plan.seed * 100_003 + index) for index in range(plan.clients)]
    open_calls: dict[int, tuple[Call, float]] = {}
    last_reply = [time.monotonic()] * plan.clients  # per connection, for the idle gap before a lost request

    async def client(index: int, stats: Phase, until: float) -> None:
        http, rng = https[index], rngs[index]
        while time.monotonic() < until:
            call = next_call(rng, refs, models)
            first = time.monotonic()
            open_calls[index] = (call, first)
            payload = orjson.dumps(call.body)
            while True:
                stats.attempts += 1
                try:
                    response = await http.post(call.route, content=payload,
                                               headers={"Content-Type": "application/json"})
                except httpx.HTTPError as exc:
                    report.lost.append(
                        f"{call.route} {call.model}: {type(exc).__name__}: {exc} (cause {exc.__cause__ or exc.__context__!r}) "
                        f"at {time.monotonic() - started:.1f} s, "
                        f"{time.monotonic() - first:.1f} s after sending, the connection idle "
                        f"{first - last_reply[index]:.1f} s before")
                    break
                last_reply[index] = time.monotonic()
                status = response.status_code
                if status == 200:
                    stats.latencies.append(time.monotonic() - first)
                    stats.completed += 1
                    stats.texts += call.texts
                    stats.per_model[call.model] += 1
                    report.first_served.setdefault(call.model, time.monotonic() - started)
                    body = orjson.loads(response.content)
                    why = check_reply(call, body)
                    if why is not None:
                        report.wrong.append(why)
                    else:
                        got = body["embeddings"] if call.route == "/v1/encode" else body["scores"]
                        report.max_deviation = max(report.max_deviation, deviation(call.expected, got))
                    break
                code = _error_code(response)
                where = f"{call.route} {call.model}: {status} {code}"
                if code in RETRYABLE.get(status, ()):
                    retry_after = response.headers.get("Retry-After", "")
                    if not retry_after.isdigit() or int(retry_after) < 1:
                        report.undocumented.append(f"{where} with Retry-After {retry_after!r}")
                        break
                    stats.retryable[f"{status} {code}"] += 1
                    # Honour it (a little jitter so refused clients do not return in step).
                    await asyncio.sleep(int(retry_after) + rng.random() * 0.25)
                    continue
                (report.server_errors if status >= 500 else report.undocumented).append(
                    f"{where}: {response.text[:200]}")
                break
            del open_calls[index]

    async def phase(stats: Phase, seconds: float) -> None:
        begun = time.monotonic()
        tasks = [asyncio.ensure_future(client(i, stats, begun + seconds)) for i in range(plan.clients)]
        _, pending = await asyncio.wait(tasks, timeout=max(hard_at - time.monotonic(), 0.0))
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        stats.seconds = time.monotonic() - begun
        for call, first in open_calls.values():
            report.lost.append(f"{call.route} {call.model}: open at the hard limit after {time.monotonic() - first:.0f} s")
        open_calls.clear()
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                report.lost.append(f"a client crashed: {task.exception()!r}")

    async def sampler(http: httpx.AsyncClient) -> None:
        while True:
            with contextlib.suppress(OSError, RuntimeError):
                report.rss.append((time.monotonic() - started, rss_of(pid)))
                report.max_connections = max(report.max_connections, established(port))
            with contextlib.suppress(httpx.HTTPError):
                values = parse_metrics((await http.get("/metrics")).text)
                report.max_loaded = max(report.max_loaded, int(sum(values.get("remora_model_loaded", {}).values())))
                report.max_used_bytes = max(report.max_used_bytes,
                                            int(sum(values.get("remora_memory_used_bytes", {}).values())))
            await asyncio.sleep(plan.sample_every_s)

    async def first_touch(http: httpx.AsyncClient) -> None:
        """One request per model, one after another: every model loads and answers once before
        the warm-up's mixed load (which would otherwise leave a model waiting for room at length)."""
        for model in models:
            query, docs = QUERIES[0], refs.documents[:2]
            call = (Call("/v1/score", model.id, {"model": model.id, "query": query, "documents": docs},
                         np.array([refs.score[(model.id, query, d)] for d in docs]), 3)
                    if model.kind == "reranker" else
                    Call("/v1/encode", model.id, {"model": model.id, "inputs": refs.texts[:2]},
                         np.stack([refs.encode[(model.id, t, False)] for t in refs.texts[:2]]).astype(np.float64), 2))
            response = await http.post(call.route, json=call.body)
            why = f"{response.status_code}: {response.text[:200]}" if response.status_code != 200 else None
            why = why or check_reply(call, response.json())
            if why is not None:
                report.wrong.append(f"first request to {model.id}: {why}")
            report.first_served.setdefault(model.id, time.monotonic() - started)

    admin_limits = httpx.Limits()
    async with httpx.AsyncClient(base_url=url, timeout=plan.request_timeout_s, limits=admin_limits) as admin:
        report.idle_rss["start"] = await idle_rss(admin, pid, [])
        sampling = asyncio.ensure_future(sampler(admin))
        try:
            await first_touch(admin)
            await phase(report.warmup, plan.warmup_s)
            report.idle_rss["warm"] = await idle_rss(admin, pid, [m.id for m in models])
            begun = time.monotonic() - started
            await phase(report.main, plan.duration_s)
            report.main_window = (begun, time.monotonic() - started)
            report.idle_rss["end"] = await idle_rss(admin, pid, [m.id for m in models])
        finally:
            sampling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampling
            for http in https:
                await http.aclose()


async def idle_rss(admin: httpx.AsyncClient, pid: int, model_ids: list[str]) -> int:
    """The server's RSS with no request running and every model unloaded (median of 5 samples)."""
    for model_id in model_ids:
        response = await admin.post(f"/v1/models/{model_id}/unload")
        response.raise_for_status()
    for _ in range(100):
        values = parse_metrics((await admin.get("/metrics")).text)
        if not sum(values.get("remora_memory_used_bytes", {}).values()):
            break
        await asyncio.sleep(0.1)
    else:
        raise RuntimeError(f"models still held after unloading them all: {values}")
    await asyncio.sleep(0.5)  # the unload route trims the heap before it answers; let the rest settle
    samples = []
    for _ in range(5):
        samples.append(rss_of(pid))
        await asyncio.sleep(0.1)
    return int(statistics.median(samples))


def _error_code(response: httpx.Response) -> str:
    try:
        error = response.json().get("error")
    except ValueError:
        return "(no JSON body)"
    return str(error.get("code")) if isinstance(error, dict) else "(no code)"


def run(plan: Plan, workdir: Path, *, log: Path | None = None) -> Report:
    """Build the models, start `remora serve` with the registry and a budget for two (from the
    safetensors headers), compute the references while it starts (and check the budget against
    the loaded sizes), drive the load, scrape /metrics, stop the server."""
    import torch

    from remora.core.memory import estimate_model_bytes

    begun = time.perf_counter()
    models = build_models(workdir / "models")
    built = time.perf_counter() - begun
    registry = write_registry(workdir / "models.yaml", models)
    estimates = {m.id: estimate_model_bytes(m.path, torch.float32) for m in models}
    budget = budget_for({m: (e, e) for m, e in estimates.items()})
    env = {"REMORA_DEVICE": "cpu", "REMORA_MEMORY_BUDGET": str(budget), "REMORA_MAX_QUEUE": str(plan.max_queue)}
    server = ServerProcess(config=registry, env=env, log=log or workdir / "server.log")
    try:
        refs = compute_references(models)
        if not fits_two_only(refs.sizes(), budget):
            raise RuntimeError(f"a budget of {budget} bytes does not hold two of {refs.sizes()} and never three")
        report = Report(plan, budget, refs.sizes(), reference_s=refs.seconds, refs=refs)
        server.wait_healthy()
        report.setup_s = {"models built": built, "server up": time.perf_counter() - begun - built}
        asyncio.run(drive(server.url, server.proc.pid, server.port, refs, models, plan, report))
        final = parse_metrics(httpx.get(f"{server.url}/metrics", timeout=10).text)
        report.metrics = final
        report.server_5xx = int(sum(v for k, v in final.get("remora_requests_total", {}).items()
                                    if "status=5" in k))
    finally:
        code = server.stop()
    report.exit_code = code
    report.log_tail = server.logs()
    return report
