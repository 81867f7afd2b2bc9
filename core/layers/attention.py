"""Attention over a packed batch: one entry point, backends chosen once at engine start.

Every backend takes q as [T, H, D] and k, v as [T, Hkv, D] (T = real tokens of the whole batch;
H a multiple of Hkv: grouped-query attention, query head h reads key/value head h // (H / Hkv))
and returns [T, H, D]. `causal` hides later tokens; `window=(left, right)` lets token i see only
tokens i - left .. i + right of its own sequence (sliding-window layers). Models call the
`Attention` they were built with and never branch on device.

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

Window = tuple[int, int]  # (left, right): how far back and ahead a token may attend


def _expand_kv(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[n, Hkv, D] -> [n, H, D]: each key/value head serves H / Hkv consecutive query heads."""
    groups = heads // x.shape[1]
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def _allowed(n: int, device: torch.device, causal: bool, window: Window | None) -> torch.Tensor | None:
    """[n, n] bool: which key j query i may attend to; None when all of them."""
    if not causal and window is None:
        return None
    pos = torch.arange(n, device=device)
    offset = pos[None, :] - pos[:, None]  # j - i
    ok = torch.ones(n, n, dtype=torch.bool, device=device)
    if causal:
        ok &= offset <= 0
    if window is not None:
        ok &= (offset >= -window[0]) & (offset <= window[1])
    return ok


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
        window: Window | None = None,
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
        window: Window | None = None,
    ) -> torch.Tensor:
        return self.fn(q, k, v, batch, scale=scale, causal=causal, window=window)


def eager_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    batch: PackedBatch,
    *,
    scale: float,
    causal: bool = False,
    window: Window | None = None,
) -> torch.Tensor:
    out = torch.empty_like(q)
    heads = q.shape[1]
    bounds = batch.cu_seqlens.tolist()
    for start, end in itertools.pairwise(bounds):
        # [n, H, D] -> [H, n, D]; scores in fp32 whatever the model dtype.
        qs = q[start:end].transpose(0, 1).float()
        ks, vs = (_expand_kv(x[start:end], heads).transpose(0, 1).float() for x in (k, v))
        scores = torch.matmul(qs, ks.transpose(1, 2)) * scale  # [H, n, n]
        allowed = _allowed(end - start, q.device, causal, window)
        if allowed is not None:
            scores = scores.masked_fill(~allowed, float("-inf"))
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
    window: Window | None = None,
) -> torch.Tensor:
    out = torch.empty_like(q)
    heads = q.shape[1]
    bounds = batch.cu_seqlens.tolist()
    for start, end in itertools.pairwise(bounds):
        n = end - start
        # [n, H, D] -> [H, n, D]
        qs = q[start:end].transpose(0, 1)
        ks, vs = (_expand_kv(x[start:end], heads).transpose(0, 1) for x in (k, v))
        if n > LONG_SEQUENCE:
            if window is None:
                seq_out = F.scaled_dot_product_attention(qs, ks, vs, is_causal=causal, scale=scale)
            else:
                mask = _allowed(n, q.device, causal, window)
                seq_out = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, scale=scale)
        else:
            scores = torch.matmul(qs, ks.transpose(1, 2)).mul_(scale)  # [H, n, n]
            allowed = _allowed(n, q.device, causal, window)
            if allowed is not None:
                scores.masked_fill_(~allowed, float("-inf"))
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
    window: Window | None = None,
) -> torch.Tensor:
    heads, dim = q.shape[1:]
    num_seqs, max_len = batch.num_seqs, batch.max_len
    gqa = k.shape[1] != heads
    if num_seqs == 1:
        # One sequence: nothing to pad. [T, H, D] -> [1, H, T, D]
        q4, k4, v4 = (x.transpose(0, 1).unsqueeze(0) for x in (q, k, v))
        allowed = _allowed(max_len, q.device, causal, window)
        if allowed is None:
            out = F.scaled_dot_product_attention(q4, k4, v4, scale=scale, enable_gqa=gqa)
        else:
            out = F.scaled_dot_product_attention(q4, k4, v4, attn_mask=allowed, scale=scale, enable_gqa=gqa)
        return out.squeeze(0).transpose(0, 1)
    index, mask = _padding_plan(batch)

    def pad(x: torch.Tensor) -> torch.Tensor:
        # [T, Hx, D] -> [B, Hx, L, D]
        padded = x.new_zeros(num_seqs * max_len, x.shape[1], dim)
        padded.index_copy_(0, index, x)
        return padded.view(num_seqs, max_len, x.shape[1], dim).transpose(1, 2)

    attn_mask = mask
    allowed = _allowed(max_len, q.device, causal, window)
    if allowed is not None:
        attn_mask = allowed if mask is None else (mask & allowed)
    out = F.scaled_dot_product_attention(pad(q), pad(k), pad(v), attn_mask=attn_mask, scale=scale, enable_gqa=gqa)
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
    window: Window | None = None,
) -> torch.Tensor:
    from torch.nn.attention.varlen import varlen_attn

    max_len = batch.max_len
    heads = q.shape[1]
    left, right = window if window is not None else (-1, -1)
    out = varlen_attn(
        q,
        _expand_kv(k, heads),
        _expand_kv(v, heads),
        cu_seq_q=batch.cu_seqlens,
        cu_seq_k=batch.cu_seqlens,
        max_q=max_len,
        max_k=max_len,
        scale=scale,
        window_size=(left, 0 if causal else right),
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
    window: Window | None = None,
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
        window_size=window if window is not None else (-1, -1),
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
