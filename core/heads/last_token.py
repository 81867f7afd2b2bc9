"""Sequence classification on the last token, as transformers' decoder `...ForSequenceClassification`
(Qwen2, Qwen3): a bias-free linear `score` over the final hidden state of each sequence's last token.

A causal model's last token is the only one that has read the whole sequence. transformers finds
it as the rightmost token that is not `pad_token_id`; the packed layout knows it exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from remora.core.batch import PackedBatch
from remora.core.heads.cross_encoder import count_labels
from remora.core.layers.uninit import Linear
from remora.core.weights import Source


def last_tokens(hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
    """[T, h] -> [B, h]: the last token of every sequence."""
    return hidden[batch.cu_seqlens[1:].long() - 1]


class LastTokenHead(nn.Module):
    def __init__(self, config: Mapping[str, Any], hidden_size: int) -> None:
        super().__init__()
        self.num_labels = count_labels(config)
        self.score = Linear(hidden_size, self.num_labels, bias=False)

    def forward(self, hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        return self.score(last_tokens(hidden, batch))  # [B, labels]

    @staticmethod
    def weight_table(prefix: str) -> dict[str, Source]:
        # The head sits beside the base model (`model.`), not under it.
        return {"score.weight": "score.weight"}
