"""The load test, short enough for CI: 16 concurrent clients (16 connections), a 4 s warm-up and
10 s measured, against a real `remora serve` over loopback, mixing /v1/encode and /v1/score over
five models in a memory budget that holds two, so models are loaded and evicted all the time. The driver is
tests/reliability/loadgen.py, the same one `benchmarks/load.py` runs for 64 clients and 120 s.

Every reply is compared with a reference computed in this process by `remora.core.Engine` on the
same model directories. Hard promises: no wrong reply, no 5xx (client and server counts), no lost
request, refusals only 429 QUEUE_FULL / documented 503s with Retry-After (the queue is bounded at
16 sequences so overload happens; clients wait Retry-After and resend until answered), the pool
never above its budget, resident memory growth under 10 % after warm-up (idle RSS, every model
unloaded, after the measured phase against after warm-up), a clean exit on SIGTERM.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.reliability.loadgen import RETRYABLE, RSS_GROWTH_LIMIT, Call, Plan, Report, check_reply, run

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# A queue of 16 sequences per model: 16 clients sending up to 8 texts each overflow it, so the
# refuse / wait Retry-After / resend path runs in every run.
CI_PLAN = Plan(clients=16, duration_s=10.0, warmup_s=4.0, hard_limit_s=40.0, seed=1, max_queue=16)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Report:
    workdir = Path(tmp_path_factory.mktemp("load"))
    result = run(CI_PLAN, workdir)
    print("\n" + "\n".join(result.lines()))
    return result


def test_every_reply_is_right_and_nothing_is_lost(report: Report) -> None:
    assert report.main.completed >= 30, report.lines()
    assert report.wrong == [], report.wrong[:5]
    assert report.server_errors == [], (report.server_errors[:5], report.log_tail)
    assert report.lost == [], (report.lost[:5], report.log_tail)
    assert report.server_5xx == 0, report.metrics.get("remora_requests_total")
    assert report.undocumented == [], report.undocumented[:5]
    # The queue overflowed, and every refusal that was retried carried a documented code.
    refusals = report.warmup.retryable + report.main.retryable
    assert refusals["429 QUEUE_FULL"] > 0, refusals
    for refusal in refusals:
        status, code = refusal.split()
        assert code in RETRYABLE[int(status)], refusal
    assert set(report.first_served) == set(report.sizes), "every model answered"
    assert report.max_connections >= CI_PLAN.clients, "each client is a connection of its own"


def test_the_pool_stays_in_its_budget_and_memory_does_not_grow(report: Report) -> None:
    evictions = report.metrics.get("remora_model_evictions_total", {}).get("reason=budget", 0)
    loads = sum(report.metrics.get("remora_model_loads_total", {}).values())
    assert loads > 2 * len(report.sizes) and evictions > 0, "five models in a budget for two reload and evict"
    assert report.metrics.get("remora_model_loads_total", {}).keys() == {"result=ok"}, report.metrics
    assert report.max_loaded <= 2
    assert 0 < report.max_used_bytes <= report.budget
    # Idle (every model unloaded, no request) after the measured phase against after warm-up.
    assert report.rss_growth() < RSS_GROWTH_LIMIT, report.idle_rss
    assert report.exit_code == 0
    assert report.broken() == []


def test_the_check_would_catch_a_mixup(report: Report) -> None:
    """The comparison can fail: replies swapped between texts, or taken from another model, are
    flagged; the right reply passes."""
    refs = report.refs
    assert refs is not None
    embedders = sorted({model for model, _, _ in refs.encode})
    text_a, text_b = refs.texts[0], "a"
    for model in embedders:
        expected = np.stack([refs.encode[(model, text_a, False)], refs.encode[(model, text_b, False)]])
        call = Call("/v1/encode", model, {}, expected.astype(np.float64), 2)
        dim = expected.shape[1]
        assert check_reply(call, {"model": model, "dim": dim, "embeddings": expected.tolist()}) is None
        swapped = expected[::-1].tolist()
        assert check_reply(call, {"model": model, "dim": dim, "embeddings": swapped}) is not None
        for other in embedders:
            if other != model:
                theirs = np.stack([refs.encode[(other, text_a, False)], refs.encode[(other, text_b, False)]])
                reply = {"model": model, "dim": theirs.shape[1], "embeddings": theirs.tolist()}
                assert check_reply(call, reply) is not None
    query = "which fish rides on sharks"
    docs = [d for d in refs.documents if d]
    scorers = sorted({model for model, _, _ in refs.score})
    for model in scorers:
        scores = np.array([refs.score[(model, query, d)] for d in docs])
        call = Call("/v1/score", model, {}, scores, len(docs))
        assert check_reply(call, {"model": model, "scores": scores.tolist()}) is None
        assert check_reply(call, {"model": model, "scores": scores[::-1].tolist()}) is not None
        for other in scorers:
            if other != model:
                other_scores = [refs.score[(other, query, d)] for d in docs]
                assert check_reply(call, {"model": model, "scores": other_scores}) is not None
