"""The one place Remora reads environment variables.

REMORA_DEVICE            cpu | cuda | cuda:N | auto (default auto)
REMORA_ATTENTION         auto | flash | torch_varlen | sdpa | cpu | eager (default auto)
REMORA_THREADS           torch intra-op threads (default: the CPUs this process may use: affinity, cgroup quota)
REMORA_MAX_BATCH_TOKENS  real tokens per forward pass (default 2048 on CPU, 32768 on CUDA)
REMORA_MODEL_ROOTS       colon-separated directories registered model paths must lie in
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from remora.core.config import EngineSettings


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


def engine_settings(environ: Mapping[str, str] | None = None) -> EngineSettings:
    env = os.environ if environ is None else environ
    roots = tuple(Path(p) for p in env.get("REMORA_MODEL_ROOTS", "").split(os.pathsep) if p)
    return EngineSettings(
        device=env.get("REMORA_DEVICE", "auto") or "auto",
        attention=env.get("REMORA_ATTENTION", "auto") or "auto",
        num_threads=_int(env, "REMORA_THREADS"),
        max_batch_tokens=_int(env, "REMORA_MAX_BATCH_TOKENS"),
        model_roots=roots,
    )
