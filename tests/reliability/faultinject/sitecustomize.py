"""Fault injection for tests/reliability/test_faults.py, loaded by the `remora serve` child process
only (this directory goes on that process's PYTHONPATH; Python imports `sitecustomize` at start).

A CPU machine with gigabytes free cannot run out of memory in a tiny model's forward pass, so the
out-of-memory test makes one: with REMORA_FAULT_OOM="<model id>:<tokens>", a forward pass of that
model over more than <tokens> real tokens raises torch.OutOfMemoryError before computing anything,
as CUDA's allocator would. Every other model, and smaller batches of that one, run untouched.
Each injected error is written to stderr (the server log) with the batch it refused.
"""

from __future__ import annotations

import os
import sys
from typing import Any


def _inject_oom(setting: str) -> None:
    import torch

    from remora.core.model import LoadedModel

    model_id, _, limit = setting.rpartition(":")
    max_tokens = int(limit)
    forward = LoadedModel.forward

    def forward_or_oom(self: LoadedModel, kind: Any, ids: Any, *args: Any, **kwargs: Any) -> Any:
        tokens = sum(len(seq) for seq in ids)
        if self.spec.id == model_id and tokens > max_tokens:
            print(f"faultinject: out of memory in {model_id}: {len(ids)} sequences, {tokens} tokens",
                  file=sys.stderr, flush=True)
            raise torch.OutOfMemoryError(f"injected: {tokens} tokens do not fit (limit {max_tokens})")
        return forward(self, kind, ids, *args, **kwargs)

    LoadedModel.forward = forward_or_oom


if os.environ.get("REMORA_FAULT_OOM"):
    _inject_oom(os.environ["REMORA_FAULT_OOM"])
