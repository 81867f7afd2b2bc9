"""The long load test: 64 concurrent clients (64 connections) for 120 s, after a 20 s warm-up,
against a real `remora serve` over loopback, mixing /v1/encode and /v1/score over five models in a memory budget
that holds two of them (so the pool loads and evicts all the time).

Five models of 64-87 MB: all-MiniLM-L6-v2 and four seeded BERTs (embedders of 480, 512 and 544
dimensions, one with a query prompt, and a cross-encoder); the budget lies halfway between the
largest two and the smallest three. Every reply is checked against a reference computed in this
process by `remora.core.Engine` (|d| <= 1e-4 + 1e-4*|ref|). The queue is bounded
(REMORA_MAX_QUEUE=64 sequences) so the clients overload it: refused requests (429 QUEUE_FULL with
Retry-After) wait that long and are sent again until answered.

Prints requests, throughput (req/s, texts/s), p50 / p99 latency, retryable refusals, model loads
and evictions (/metrics), the server's RSS (idle, with every model unloaded, after warm-up and
after the measured phase; and sampled under load), and exits 1 if a promise is broken: a wrong or
lost reply, a 5xx, an undocumented refusal, the pool over budget, idle RSS growth of 10 % or more
after warm-up, an unclean exit. Stops by itself: clients stop sending at --warmup and --duration,
and everything ends by --hard-limit.

The driver lives with the tests (tests/reliability/loadgen.py), so that the CI version
(tests/reliability/test_load.py) runs the same code:

    .venv/bin/python benchmarks/load.py [--clients 64] [--duration 120] [--warmup 20]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

# The shared driver is a test module: put the repository root on the path (this script's own
# folder is there already, as for every script in benchmarks/).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.reliability.loadgen import Plan, run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=120.0, help="seconds clients send new requests")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds of load before the RSS baseline")
    parser.add_argument("--hard-limit", type=float, default=300.0,
                        help="seconds both phases, drains and checkpoints may take at most")
    parser.add_argument("--max-queue", type=int, default=64, help="REMORA_MAX_QUEUE of the server")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, default=None, help="build models and logs here (kept)")
    args = parser.parse_args()

    plan = Plan(clients=args.clients, duration_s=args.duration, warmup_s=args.warmup,
                hard_limit_s=args.hard_limit, seed=args.seed, max_queue=args.max_queue)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="remora-load-") as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        report = run(plan, workdir)
        log = (workdir / "server.log").read_text(errors="replace")
    print(f"machine: {os.cpu_count()} CPUs visible; server REMORA_THREADS=1; client in this process (asyncio, httpx)")
    for line in report.lines():
        print(line)
    broken = report.broken()
    print(f"wall: {time.perf_counter() - started:.0f} s")
    if broken:
        print("BROKEN PROMISES:")
        for item in broken:
            print(f"  - {item}")
        print("server log tail:\n" + log[-3000:])
        return 1
    print("all promises kept")
    return 0


if __name__ == "__main__":
    sys.exit(main())
