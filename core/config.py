"""Frozen configuration: what a model is (ModelSpec) and how the engine runs (EngineSettings)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

PoolingMode = Literal["cls", "mean", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"]
Task = Literal["encode", "score", "extract"]
DType = Literal["auto", "float32", "float16", "bfloat16"]
AttentionName = Literal["auto", "flash", "torch_varlen", "sdpa", "cpu", "eager"]


@dataclass(frozen=True)
class HubRef:
    """A Hugging Face repository as a model source: resolved through the local hub cache and,
    when downloads are enabled, fetched on first use (safetensors, configs and tokenizer only)."""

    repo_id: str
    revision: str = "main"

    def __str__(self) -> str:
        return f"hf://{self.repo_id}@{self.revision}"


@dataclass(frozen=True)
class HubSettings:
    """Where the hub cache lives and whether Remora may download into it."""

    cache_dir: Path | None = None  # None: huggingface_hub's default (~/.cache/huggingface/hub)
    download: bool = False
    endpoint: str | None = None  # None: https://huggingface.co
    token: str | None = None
    timeout_s: float = 60.0


@dataclass(frozen=True)
class ModelSpec:
    """A model as configuration. Fields left as None are read from the model directory."""

    id: str
    path: Path | HubRef  # a local directory, or a hub repository resolved at load time
    tasks: tuple[Task, ...] | None = None
    pooling: tuple[PoolingMode, ...] | None = None
    include_prompt: bool | None = None
    normalize: bool | None = None
    max_seq_len: int | None = None
    dtype: DType = "auto"
    query_prompt: str | None = None
    document_prompt: str | None = None
    aliases: tuple[str, ...] = ()
    # "yes_no": read a causal LM as a yes/no reranker (Qwen3-Reranker) instead of an embedder.
    head: Literal["yes_no"] | None = None
    # The reranker's instruction (Qwen3-Reranker's <Instruct>); None: the model's default.
    instruction: str | None = None


@dataclass(frozen=True)
class EngineSettings:
    """How the engine runs. Built by the caller (the sidecar reads env; the engine never does)."""

    device: str = "auto"
    attention: AttentionName = "auto"
    # Real (unpadded) tokens per forward pass. On a 2-core CPU about 2k tokens keeps the
    # activations in cache; larger budgets were measured slower there. GPUs want far more.
    max_batch_tokens: int | None = None
    max_batch_size: int = 256
    # torch intra-op threads; None sizes the pool to the CPUs this process may use (affinity and
    # cgroup quota), since an oversubscribed pool was measured 3x slower.
    num_threads: int | None = None
    # When set, every registered model path must resolve inside one of these directories.
    model_roots: tuple[Path, ...] = field(default_factory=tuple)
    register_defaults: bool = True
    # Bytes the model pool may fill with weights; None: `memory_fraction` of the device (GPU
    # memory, or RAM within the cgroup limit), default 0.85 on CUDA and 0.5 on CPU.
    memory_budget: int | None = None
    memory_fraction: float | None = None
    # How long a request waits for its model to load (and a load waits for room) before a
    # retryable error.
    load_timeout_s: float = 120.0
    hub: HubSettings = field(default_factory=HubSettings)
    # Scheduler: how long a batch may wait to fill (latency traded for throughput) and how many
    # sequences may wait per model before requests are refused with QUEUE_FULL.
    max_wait_ms: float = 0.0
    max_queue: int = 4096

    def batch_tokens_for(self, device_type: str) -> int:
        if self.max_batch_tokens is not None:
            return self.max_batch_tokens
        return 2048 if device_type == "cpu" else 32768
