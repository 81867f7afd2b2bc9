"""Sentence pooling on the packed layout, as sentence-transformers' `Pooling` module does it.

Hidden states arrive as [T, h] with the batch's cu_seqlens; every mode returns [B, h] in fp32
(sums accumulate in fp32 whatever the model dtype). Several modes concatenate in the given order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from remora.core.batch import PackedBatch

POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")


class Pooler:
    def __init__(self, modes: Sequence[str], *, include_prompt: bool = True) -> None:
        unknown = [m for m in modes if m not in POOLING_MODES]
        if unknown or not modes:
            raise ValueError(f"unsupported pooling mode(s) {unknown or list(modes)}; supported: {POOLING_MODES}")
        self.modes = tuple(modes)
        self.include_prompt = include_prompt

    def output_dim(self, hidden_size: int) -> int:
        return hidden_size * len(self.modes)

    def __call__(
        self, hidden: torch.Tensor, batch: PackedBatch, *, prompt_len: int | torch.Tensor = 0
    ) -> torch.Tensor:
        """hidden [T, h] -> [B, h * len(modes)] float32. `prompt_len` is one count for the batch
        or one per sequence ([B] long, on the batch's device): requests with different prompts
        share a batch."""
        starts = batch.cu_seqlens[:-1].long()
        ends = batch.cu_seqlens[1:].long()
        seq = batch.seq_index()
        skip: int | torch.Tensor = 0 if self.include_prompt else prompt_len
        # [T] fp32: 1 for pooled tokens, 0 for prompt tokens excluded from pooling.
        token_skip = skip[seq] if isinstance(skip, torch.Tensor) else skip
        weights = (batch.position_ids >= token_skip).float()
        h32 = hidden.float()
        outputs = []
        for mode in self.modes:
            if mode == "cls":
                # The first pooled token: the sequence start, or the first token after the prompt.
                first = torch.minimum(starts + skip, ends - 1)
                outputs.append(h32[first])
            elif mode == "lasttoken":
                outputs.append(h32[ends - 1])
            elif mode == "max":
                masked = h32.masked_fill(weights[:, None] == 0, float("-inf"))
                out = torch.full((batch.num_seqs, h32.shape[1]), float("-inf"), device=h32.device)
                out.scatter_reduce_(0, seq[:, None].expand_as(masked), masked, reduce="amax")
                outputs.append(out)
            else:
                # Token j (1-based) of a sequence weighs j in weightedmean, as in sentence-transformers;
                # a copy, so modes listed after it keep their own weights.
                w = weights * (batch.position_ids.float() + 1) if mode == "weightedmean" else weights
                sums = torch.zeros(batch.num_seqs, h32.shape[1], device=h32.device)
                sums.index_add_(0, seq, h32 * w[:, None])
                counts = torch.zeros(batch.num_seqs, device=h32.device).index_add_(0, seq, w)
                # The same 1e-9 floor sentence-transformers puts under the token count.
                counts = counts.clamp(min=1e-9)
                denom = counts.sqrt() if mode == "mean_sqrt_len_tokens" else counts
                outputs.append(sums / denom[:, None])
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise rows; the 1e-12 floor matches torch.nn.functional.normalize (and ST)."""
    return torch.nn.functional.normalize(x, p=2.0, dim=-1, eps=1e-12)
