"""Sequence-classification heads for cross-encoders, on the packed layout.

Each takes the encoder's hidden states [T, h] and returns logits [B, num_labels] from the
first token of each sequence ([CLS] / <s>), as transformers' `...ForSequenceClassification`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from remora.core.batch import PackedBatch
from remora.core.layers.uninit import Linear
from remora.core.weights import Source


def count_labels(config: Mapping[str, Any]) -> int:
    """Labels of a classification checkpoint: id2label when saved, else num_labels (default 2)."""
    id2label = config.get("id2label")
    if isinstance(id2label, dict) and id2label:
        return len(id2label)
    return int(config.get("num_labels", 2))


def first_tokens(hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
    """[T, h] -> [B, h]: the first token of every sequence."""
    return hidden[batch.cu_seqlens[:-1].long()]


class BertClassificationHead(nn.Module):
    """BERT's pooler (dense + tanh on [CLS]) followed by a linear classifier."""

    def __init__(self, config: Mapping[str, Any], hidden_size: int) -> None:
        super().__init__()
        self.num_labels = num_labels = count_labels(config)
        self.pooler = Linear(hidden_size, hidden_size)
        self.classifier = Linear(hidden_size, num_labels)

    def forward(self, hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        return self.classifier(torch.tanh(self.pooler(first_tokens(hidden, batch))))

    @staticmethod
    def weight_table(prefix: str) -> dict[str, Source]:
        return {
            "pooler.weight": f"{prefix}pooler.dense.weight",
            "pooler.bias": f"{prefix}pooler.dense.bias",
            "classifier.weight": "classifier.weight",
            "classifier.bias": "classifier.bias",
        }


class RobertaClassificationHead(nn.Module):
    """RoBERTa's head: dense + tanh on <s>, then an output projection."""

    def __init__(self, config: Mapping[str, Any], hidden_size: int) -> None:
        super().__init__()
        self.num_labels = num_labels = count_labels(config)
        self.dense = Linear(hidden_size, hidden_size)
        self.out_proj = Linear(hidden_size, num_labels)

    def forward(self, hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        return self.out_proj(torch.tanh(self.dense(first_tokens(hidden, batch))))

    @staticmethod
    def weight_table(prefix: str) -> dict[str, Source]:
        return {f"{name}.{p}": f"classifier.{name}.{p}" for name in ("dense", "out_proj") for p in ("weight", "bias")}
