"""Attention over a packed batch: one entry point, backends chosen once at engine start.

Every backend takes q, k, v as [T, H, D] (T = real tokens of the whole batch) and returns
[T, H, D]. Models call the `Attention` they were built with and never branch on device.

Backends:
- ``flash``: flash-attn's ``flash_attn_varlen_func`` (CUDA, when installed).
- ``torch_varlen``: PyTorch's own ``torch.nn.attention.varlen.varlen_attn`` (CUDA only).
- ``sdpa``: ``scaled_dot_product_attention``; the batch is padded *inside this call only*, so
  projections, FFN and norms outside it still run on real tokens. The CUDA fallback.
- ``cpu``: one sequence at a time, so no FLOP goes to padding even inside attention. Measured on a
  2-core CPU (MiniLM shapes, 12 heads of 32, ~2k-token batches), a plain matmul-softmax-matmul per
  sequence ran 1.1-2.3x faster than one padded, masked SDPA call; past LONG_SEQUENCE tokens the
  [H, n, n] score matrix gets large, so those sequences go through SDPA's memory-efficient kernel.
- ``eager``: a per-sequence fp32 softmax(QK^T)V, kept as the oracle the others are tested against.
"""

from __future__ import annotations

import importlib.util
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from remora.core.batch import PackedBatch


class AttentionFn(Protocol):
    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        batch: PackedBatch,
        *,
        scale: float,
        causal: bool = False,
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class Attention:
    """The attention backend an engine runs with: a name (for metrics and logs) and a function."""

    name: str
    fn: AttentionFn

    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        batch: PackedBatch,
        *,
        scale: float,
        causal: bool = False,
    ) -> torch.Tensor:
        return self.fn(q, k, v, batch, scale=scale, causal=causal)


def eager_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    batch: PackedBatch,
    *,
    scale: float,
    causal: bool = False,
) -> torch.Tensor:
    out = torch.empty_like(q)
    bounds = batch.cu_seqlens.tolist()
    for start, end in itertools.pairwise(bounds):
        # [n, H, D] -> [H, n, D]; scores in fp32 whatever the model dtype.
        qs, ks, vs = (x[start:end].transpose(0, 1).float() for x in (q, k, v))
        scores = torch.matmul(qs, ks.transpose(1, 2)) * scale  # [H, n, n]
        if causal:
            n = end - start
            future = torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out[start:end] = torch.matmul(probs, vs).transpose(0, 1).to(q.dtype)
    return out


# Above this many tokens a sequence's [H, n, n] scores stop fitting in cache (and for 8k-token
# models would take gigabytes), so the cpu backend hands it to SDPA's blockwise kernel instead.
LONG_SEQUENCE = 1024


def cpu_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    batch: PackedBatch,
    *,
    scale: float,
    causal: bool = False,
) -> torch.Tensor:
    out = torch.empty_like(q)
    bounds = batch.cu_seqlens.tolist()
    for start, end in itertools.pairwise(bounds):
        n = end - start
        # [n, H, D] -> [H, n, D]
        qs, ks, vs = (x[start:end].transpose(0, 1) for x in (q, k, v))
        if n > LONG_SEQUENCE:
            seq_out = F.scaled_dot_product_attention(qs, ks, vs, is_causal=causal, scale=scale)
        else:
            scores = torch.matmul(qs, ks.transpose(1, 2)).mul_(scale)  # [H, n, n]
            if causal:
                future = torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1)
                scores.masked_fill_(future, float("-inf"))
            seq_out = torch.matmul(torch.softmax(scores, dim=-1), vs)
        out[start:end] = seq_out.transpose(0, 1)
    return out


def _padding_plan(batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Row of each packed token in a [B * L] padded buffer, and the key mask [B, 1, 1, L].

    The mask is None when every sequence has the same length (no padding at all).
    """
    plan = batch.attn_cache.get("sdpa_plan")
    if plan is None:
        max_len = batch.max_len
        seq = batch.seq_index()
        index = seq * max_len + batch.position_ids
        mask = None
        if min(batch.lengths) != max_len:
            lengths = torch.tensor(batch.lengths, device=batch.device)
            mask = (torch.arange(max_len, device=batch.device)[None, :] < lengths[:, None])[:, None, None, :]
        plan = (index, mask)
        batch.attn_cache["sdpa_plan"] = plan
    return plan


def sdpa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    batch: PackedBatch,
    *,
    scale: float,
    causal: bool = False,
) -> torch.Tensor:
    heads, dim = q.shape[1:]
    num_seqs, max_len = batch.num_seqs, batch.max_len
    if num_seqs == 1:
        # One sequence: nothing to pad. [T, H, D] -> [1, H, T, D]
        q4, k4, v4 = (x.transpose(0, 1).unsqueeze(0) for x in (q, k, v))
        out = F.scaled_dot_product_attention(q4, k4, v4, is_causal=causal, scale=scale)
        return out.squeeze(0).transpose(0, 1)
    index, mask = _padding_plan(batch)

    def pad(x: torch.Tensor) -> torch.Tensor:
        # [T, H, D] -> [B, H, L, D]
        padded = x.new_zeros(num_seqs * max_len, x.shape[1], dim)
        padded.index_copy_(0, index, x)
        return padded.view(num_seqs, max_len, x.shape[1], dim).transpose(1, 2)

    attn_mask = mask
    if causal:
        future_ok = torch.ones(max_len, max_len, dtype=torch.bool, device=q.device).tril()
        attn_mask = future_ok if mask is None else (mask & future_ok)
    out = F.scaled_dot_product_attention(pad(q), pad(k), pad(v), attn_mask=attn_mask, scale=scale)
    # [B, H, L, D] -> [B * L, H, D] -> [T, H, D]
    return out.transpose(1, 2).reshape(num_seqs * max_len, heads, dim).index_select(0, index)


def torch_varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    batch: PackedBatch,
    *,
    scale: float,
    causal: bool = False,
) -> torch.Tensor:
    from torch.nn.attention.varlen import varlen_attn

    max_len = batch.max_len
    out = varlen_attn(
        q,
        k,
        v,
        cu_seq_q=batch.cu_seqlens,
        cu_seq_k=batch.cu_seqlens,
        max_q=max_len,
        max_k=max_len,
        scale=scale,
        window_size=(-1, 0) if causal else (-1, -1),
    )
    assert isinstance(out, torch.Tensor)
    return out


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    batch: PackedBatch,
    *,
    scale: float,
    causal: bool = False,
) -> torch.Tensor:
    from flash_attn import flash_attn_varlen_func

    max_len = batch.max_len
    out: torch.Tensor = flash_attn_varlen_func(
        q=q,
        k=k,
        v=v,
        cu_seqlens_q=batch.cu_seqlens,
        cu_seqlens_k=batch.cu_seqlens,
        max_seqlen_q=max_len,
        max_seqlen_k=max_len,
        softmax_scale=scale,
        causal=causal,
    )
    return out


BACKENDS: dict[str, AttentionFn] = {
    "flash": flash_attention,
    "torch_varlen": torch_varlen_attention,
    "sdpa": sdpa_attention,
    "cpu": cpu_attention,
    "eager": eager_attention,
}


def _flash_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def _torch_varlen_available() -> bool:
    return importlib.util.find_spec("torch.nn.attention.varlen") is not None


def select_attention(
    device: torch.device,
    preference: str = "auto",
    *,
    probe: Callable[[str], bool] | None = None,
) -> Attention:
    """Pick the backend once, at engine start. An explicit preference that cannot run is an error."""
    available = probe or _backend_runs_on(device)
    if preference != "auto":
        if preference not in BACKENDS:
            raise ValueError(f"unknown attention backend {preference!r}; choose from {sorted(BACKENDS)}")
        if not available(preference):
            raise ValueError(f"attention backend {preference!r} cannot run on {device}")
        return Attention(preference, BACKENDS[preference])
    order = ("flash", "torch_varlen", "sdpa") if device.type == "cuda" else ("cpu",)
    for name in order:
        if available(name):
            return Attention(name, BACKENDS[name])
    return Attention("eager", eager_attention)


def _backend_runs_on(device: torch.device) -> Callable[[str], bool]:
    def runs(name: str) -> bool:
        if name in ("sdpa", "cpu", "eager"):
            return True
        if device.type != "cuda":
            return False
        if name == "flash":
            return _flash_available()
        return name == "torch_varlen" and _torch_varlen_available()

    return runs
