"""PackedBatch: the one internal layout. Sequences are concatenated, never padded.

A batch of B sequences with lengths n_0..n_{B-1} is T = sum(n_b) tokens; `cu_seqlens` holds the
B + 1 prefix sums, so sequence b is rows cu_seqlens[b]:cu_seqlens[b + 1] of every [T, ...] tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # [T] int64
    position_ids: torch.Tensor  # [T] int64, 0-based within each sequence
    token_type_ids: torch.Tensor  # [T] int64 (segment ids; zeros for single texts)
    cu_seqlens: torch.Tensor  # [B + 1] int32
    lengths: tuple[int, ...]  # host copy of the B lengths
    # Per-batch scratch for attention backends (padding indices, masks): built once by the
    # first layer that needs it and reused by every other layer of the same forward pass.
    attn_cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def num_seqs(self) -> int:
        return len(self.lengths)

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def max_len(self) -> int:
        return max(self.lengths) if self.lengths else 0

    @property
    def device(self) -> torch.device:
        return self.input_ids.device

    def seq_index(self) -> torch.Tensor:
        """[T] int64: the sequence each token belongs to."""
        cached = self.attn_cache.get("seq_index")
        if cached is None:
            lengths = torch.tensor(self.lengths, dtype=torch.int64)
            cached = torch.repeat_interleave(torch.arange(self.num_seqs), lengths).to(self.device)
            self.attn_cache["seq_index"] = cached
        return cached

    def to(self, device: torch.device | str) -> PackedBatch:
        device = torch.device(device)
        if device == self.device:
            return self
        return PackedBatch(
            input_ids=self.input_ids.to(device, non_blocking=True),
            position_ids=self.position_ids.to(device, non_blocking=True),
            token_type_ids=self.token_type_ids.to(device, non_blocking=True),
            cu_seqlens=self.cu_seqlens.to(device, non_blocking=True),
            lengths=self.lengths,
        )


def pack(
    ids: Sequence[Sequence[int]],
    type_ids: Sequence[Sequence[int]] | None = None,
) -> PackedBatch:
    """Concatenate token id lists into a PackedBatch on the CPU."""
    if len(ids) == 0:
        raise ValueError("cannot pack an empty batch")
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    if (lengths == 0).any():
        raise ValueError("cannot pack a sequence of zero tokens")
    total = int(lengths.sum())
    cu = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum(lengths, out=cu[1:])
    flat = np.fromiter((t for seq in ids for t in seq), dtype=np.int64, count=total)
    # Position of each token inside its sequence: global index minus its sequence's start.
    positions = np.arange(total, dtype=np.int64) - np.repeat(cu[:-1], lengths)
    if type_ids is None:
        types = np.zeros(total, dtype=np.int64)
    else:
        types = np.fromiter((t for seq in type_ids for t in seq), dtype=np.int64, count=total)
    return PackedBatch(
        input_ids=torch.from_numpy(flat),
        position_ids=torch.from_numpy(positions),
        token_type_ids=torch.from_numpy(types),
        cu_seqlens=torch.from_numpy(cu.astype(np.int32)),
        lengths=tuple(int(n) for n in lengths),
    )
