"""Packed attention whose scores carry an additive bias: relative-position models (MPNet, DeBERTa).

The engine's backends take no bias, so these families call `biased_attention` instead of their
`Attention`; the backend's name still picks the strategy:
- ``eager``: one sequence at a time, scores and softmax in fp32 (the oracle);
- ``cpu``: one sequence at a time in the model dtype, nothing padded;
- anything else (``sdpa``, and the CUDA backends ``flash`` / ``torch_varlen``, which cannot add a
  bias): SDPA with the bias as a float ``attn_mask``, sequences padded inside this call only, in
  groups sized so one group's [G, H, L, L] bias stays under GROUP_BIAS_BYTES. Per-sequence SDPA
  calls would cost one kernel launch per sequence and layer on a GPU.

The model supplies the bias as a function of the (possibly padded) per-sequence queries and keys,
so a content-dependent bias (DeBERTa's c2p / p2c) and a fixed one (MPNet's table) share one path.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from remora.core.batch import PackedBatch

# (q [..., H, n, D], k [..., H, n, D]) -> bias broadcastable to [..., H, n, n], added to the
# already scaled q.k scores. Token i of a sequence is row i, whatever the padding.
BiasFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Cap on one padded group's bias tensor (the largest tensor this path materialises).
GROUP_BIAS_BYTES = 32 * 2**20


def biased_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    batch: PackedBatch,
    *,
    scale: float,
    bias: BiasFn,
    backend: str,
) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v per sequence. q, k, v [T, H, D] -> [T, H, D]."""
    if backend in ("eager", "cpu"):
        return _per_sequence(q, k, v, batch, scale=scale, bias=bias, fp32=backend == "eager")
    return _padded_sdpa(q, k, v, batch, scale=scale, bias=bias)


def _per_sequence(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    batch: PackedBatch,
    *,
    scale: float,
    bias: BiasFn,
    fp32: bool,
) -> torch.Tensor:
    out = torch.empty_like(q)
    for start, end in itertools.pairwise(batch.cu_seqlens.tolist()):
        # [n, H, D] -> [H, n, D]
        qs, ks, vs = (x[start:end].transpose(0, 1) for x in (q, k, v))
        if fp32:
            qs, ks, vs = qs.float(), ks.float(), vs.float()
        scores = torch.matmul(qs, ks.transpose(1, 2)).mul_(scale)  # [H, n, n]
        scores += bias(qs, ks)
        out[start:end] = torch.matmul(torch.softmax(scores, dim=-1), vs).transpose(0, 1).to(q.dtype)
    return out


def _groups(lengths: tuple[int, ...], heads: int, element: int) -> Iterator[tuple[int, int, int]]:
    """Consecutive runs of sequences (first, last + 1, padded length) under the bias budget."""
    first, longest = 0, 0
    for index, n in enumerate(lengths):
        wider = max(longest, n)
        if index > first and (index - first + 1) * heads * wider * wider * element > GROUP_BIAS_BYTES:
            yield first, index, longest
            first, wider = index, n
        longest = wider
    yield first, len(lengths), longest


def _padded_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    batch: PackedBatch,
    *,
    scale: float,
    bias: BiasFn,
) -> torch.Tensor:
    heads, dim = q.shape[1:]
    out = torch.empty_like(q)
    bounds = batch.cu_seqlens.tolist()
    seq_index = batch.seq_index()
    for first, stop, longest in _groups(batch.lengths, heads, q.element_size()):
        t0, t1 = bounds[first], bounds[stop]
        count = stop - first
        if count == 1:
            # One sequence: nothing to pad or mask. [n, H, D] -> [H, n, D]
            qs, ks, vs = (x[t0:t1].transpose(0, 1) for x in (q, k, v))
            attended = F.scaled_dot_product_attention(
                qs, ks, vs, attn_mask=bias(qs, ks).to(q.dtype), scale=scale
            )
            out[t0:t1] = attended.transpose(0, 1)
            continue
        # Row of each token in the group's [G * L] padded buffer.
        index = (seq_index[t0:t1] - first) * longest + batch.position_ids[t0:t1]

        def pad(
            x: torch.Tensor, index: torch.Tensor = index, count: int = count, longest: int = longest
        ) -> torch.Tensor:
            # [t, H, D] -> [G, H, L, D]
            padded = x.new_zeros(count * longest, heads, dim)
            padded.index_copy_(0, index, x)
            return padded.view(count, longest, heads, dim).transpose(1, 2)

        qp, kp, vp = pad(q[t0:t1]), pad(k[t0:t1]), pad(v[t0:t1])
        lengths = torch.tensor(batch.lengths[first:stop], device=q.device)
        padding = torch.arange(longest, device=q.device)[None, :] >= lengths[:, None]  # [G, L]
        # Padded keys get -inf; every query row keeps its own sequence's real keys.
        mask = torch.zeros(count, 1, 1, longest, dtype=q.dtype, device=q.device)
        mask.masked_fill_(padding[:, None, None, :], float("-inf"))
        attn_mask = bias(qp, kp).to(q.dtype) + mask  # [G, H, L, L]
        attended = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=attn_mask, scale=scale)
        # [G, H, L, D] -> [G * L, H, D] -> [t, H, D]
        out[t0:t1] = attended.transpose(1, 2).reshape(count * longest, heads, dim).index_select(0, index)
    return out
