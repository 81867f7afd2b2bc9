"""The one place Remora reads environment variables.

Engine
REMORA_DEVICE            cpu | cuda | cuda:N | auto (default auto)
REMORA_ATTENTION         auto | flash | torch_varlen | sdpa | cpu | eager (default auto)
REMORA_THREADS           torch intra-op threads (default: the CPUs this process may use: affinity, cgroup quota)
REMORA_MAX_BATCH_TOKENS  real tokens per forward pass (default 2048 on CPU, 32768 on CUDA)
REMORA_MAX_WAIT_MS       how long a batch may wait to fill (default 0: batches form while the previous one runs)
REMORA_MAX_QUEUE         sequences that may wait per model before QUEUE_FULL (default 4096)
REMORA_MEMORY_BUDGET     model memory budget: bytes, 4GiB, 512MB, or a share like 60% (default 85% of GPU
                         memory on CUDA, 50% of RAM on CPU)
REMORA_LOAD_TIMEOUT      seconds a request waits for its model to load (default 120)
REMORA_MODEL_ROOTS       colon-separated directories model paths must lie in (API registration needs one)

Hugging Face sources
REMORA_HF_DOWNLOAD       1 to let Remora download hub models on first use (default 0: local cache only)
HF_HUB_CACHE, HF_HOME    where the hub cache lives (as huggingface_hub reads them)
HF_ENDPOINT, HF_TOKEN    hub address and token for downloads

Server
REMORA_CONFIG            model registry file (YAML) when --config is not given
REMORA_API_KEY           require `Authorization: Bearer <key>` (or `X-API-Key`) on every route but health/metrics
REMORA_API_KEY_FILE      read the key from this file instead (a mounted secret)
REMORA_AUTH_HEALTH       1 to require the key on health and metrics routes too
REMORA_MAX_REQUEST_BYTES request body limit (default 4MiB)
REMORA_MAX_INPUTS        texts per request (default 1024)
REMORA_REQUEST_TIMEOUT   seconds a request may wait and run before DEADLINE_EXCEEDED (default 60)
REMORA_SHUTDOWN_GRACE    seconds SIGTERM waits for queued and running requests (default 30)
REMORA_TOKENIZER_THREADS tokenization threads (default 2)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from remora.core.config import EngineSettings, HubSettings
from remora.core.memory import parse_size

AUTH_EXEMPT = ("/healthz", "/readyz", "/metrics", "/health", "/.well-known/ready", "/.well-known/live")


def _int(environ: Mapping[str, str], name: str) -> int | None:
    raw = environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not an integer") from None
    if value <= 0:
        raise SystemExit(f"{name} must be positive, got {value}")
    return value


def _float(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not a number") from None
    if value < 0:
        raise SystemExit(f"{name} must not be negative, got {value}")
    return value


def _size(environ: Mapping[str, str], name: str) -> int | float | None:
    raw = environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return parse_size(raw)
    except ValueError as exc:
        raise SystemExit(f"{name}: {exc}") from None


def _flag(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _hub_cache(env: Mapping[str, str]) -> Path | None:
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"])
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]) / "hub"
    return None


def engine_settings(environ: Mapping[str, str] | None = None) -> EngineSettings:
    env = os.environ if environ is None else environ
    roots = tuple(Path(p) for p in env.get("REMORA_MODEL_ROOTS", "").split(os.pathsep) if p)
    budget = _size(env, "REMORA_MEMORY_BUDGET")
    return EngineSettings(
        device=env.get("REMORA_DEVICE", "auto") or "auto",
        attention=env.get("REMORA_ATTENTION", "auto") or "auto",
        num_threads=_int(env, "REMORA_THREADS"),
        max_batch_tokens=_int(env, "REMORA_MAX_BATCH_TOKENS"),
        model_roots=roots,
        memory_budget=budget if isinstance(budget, int) else None,
        memory_fraction=budget if isinstance(budget, float) else None,
        load_timeout_s=_float(env, "REMORA_LOAD_TIMEOUT", 120.0),
        max_wait_ms=_float(env, "REMORA_MAX_WAIT_MS", 0.0),
        max_queue=_int(env, "REMORA_MAX_QUEUE") or 4096,
        hub=HubSettings(
            cache_dir=_hub_cache(env),
            download=_flag(env, "REMORA_HF_DOWNLOAD"),
            endpoint=env.get("HF_ENDPOINT") or None,
            token=env.get("HF_TOKEN") or None,
        ),
    )


@dataclass(frozen=True)
class ServerSettings:
    config: Path | None = None
    api_key: str | None = None
    auth_exempt: tuple[str, ...] = AUTH_EXEMPT
    # Weaviate's module clients send no headers at all, so with an API key they can reach only
    # what this opens: the /weaviate/<model>/ routes, without the key.
    weaviate_open: bool = False
    max_request_bytes: int = 4 * 2**20
    max_inputs: int = 1024
    request_timeout_s: float = 60.0
    shutdown_grace_s: float = 30.0
    tokenizer_threads: int = 2
    engine: EngineSettings = field(default_factory=EngineSettings)


def server_settings(environ: Mapping[str, str] | None = None, *, config: Path | None = None) -> ServerSettings:
    env = os.environ if environ is None else environ
    key = env.get("REMORA_API_KEY") or None
    if env.get("REMORA_API_KEY_FILE"):
        try:
            key = Path(env["REMORA_API_KEY_FILE"]).read_text().strip() or None
        except OSError as exc:
            raise SystemExit(f"REMORA_API_KEY_FILE: {exc}") from None
    limit = _size(env, "REMORA_MAX_REQUEST_BYTES")
    if isinstance(limit, float):
        raise SystemExit("REMORA_MAX_REQUEST_BYTES must be a size, not a share")
    config_path = config or (Path(env["REMORA_CONFIG"]) if env.get("REMORA_CONFIG") else None)
    return ServerSettings(
        config=config_path,
        api_key=key,
        auth_exempt=() if _flag(env, "REMORA_AUTH_HEALTH") else AUTH_EXEMPT,
        weaviate_open=_flag(env, "REMORA_WEAVIATE_OPEN"),
        max_request_bytes=limit or 4 * 2**20,
        max_inputs=_int(env, "REMORA_MAX_INPUTS") or 1024,
        request_timeout_s=_float(env, "REMORA_REQUEST_TIMEOUT", 60.0),
        shutdown_grace_s=_float(env, "REMORA_SHUTDOWN_GRACE", 30.0),
        tokenizer_threads=_int(env, "REMORA_TOKENIZER_THREADS") or 2,
        engine=engine_settings(env),
    )
