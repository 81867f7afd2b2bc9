"""ModernBERT's classification heads on the packed layout.

Both run transformers' `ModernBertPredictionHead` (dense -> activation -> norm) and a linear
classifier: on one pooled vector per sequence (`ModernBertForSequenceClassification`, pooled as
config `classifier_pooling` says: the first token or the mean of all tokens) or on every token
(`ModernBertForTokenClassification`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from remora.core.batch import PackedBatch
from remora.core.heads.cross_encoder import count_labels, first_tokens
from remora.core.layers.activations import hidden_act
from remora.core.layers.uninit import LayerNorm, Linear
from remora.core.weights import Source


def sequence_means(hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
    """[T, h] -> [B, h]: the mean over each sequence's tokens (summed in fp32)."""
    h32 = hidden.float()
    sums = h32.new_zeros(batch.num_seqs, h32.shape[1]).index_add_(0, batch.seq_index(), h32)
    lengths = torch.tensor(batch.lengths, device=hidden.device, dtype=torch.float32)
    return (sums / lengths[:, None]).to(hidden.dtype)


class _PredictionHead(nn.Module):
    def __init__(self, config: Mapping[str, Any], hidden_size: int) -> None:
        super().__init__()
        self.num_labels = count_labels(config)
        self.dense = Linear(hidden_size, hidden_size, bias=bool(config.get("classifier_bias", False)))
        self.act = hidden_act(config.get("classifier_activation", "gelu"))
        norm_bias = bool(config.get("norm_bias", False))
        self.norm = LayerNorm(hidden_size, eps=config.get("norm_eps", 1e-5), bias=norm_bias)
        self.classifier = Linear(hidden_size, self.num_labels)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """[N, h] -> [N, num_labels]."""
        return self.classifier(self.norm(self.act(self.dense(x))))

    @staticmethod
    def weight_table(prefix: str) -> dict[str, Source]:
        # The head sits beside the encoder (`head.*`, `classifier.*`), not under its prefix.
        table: dict[str, Source] = {}
        for p in ("weight", "bias"):
            table[f"dense.{p}"] = f"head.dense.{p}"
            table[f"norm.{p}"] = f"head.norm.{p}"
            table[f"classifier.{p}"] = f"classifier.{p}"
        return table


class ModernBertSequenceHead(_PredictionHead):
    def __init__(self, config: Mapping[str, Any], hidden_size: int) -> None:
        super().__init__(config, hidden_size)
        self.pooling = config.get("classifier_pooling", "cls")
        if self.pooling not in ("cls", "mean"):
            raise ValueError(f"classifier_pooling {self.pooling!r} is not supported (only 'cls' or 'mean')")

    def forward(self, hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        pooled = first_tokens(hidden, batch) if self.pooling == "cls" else sequence_means(hidden, batch)
        return self.classify(pooled)  # [B, labels]


class ModernBertTokenHead(_PredictionHead):
    def forward(self, hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        return self.classify(hidden)  # [T, labels]
