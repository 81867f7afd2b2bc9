"""DeBERTa's sequence-classification head: transformers' `ContextPooler` then a linear classifier.

The pooler is a dense layer plus the config's `pooler_hidden_act` (GELU by default, not BERT's
tanh) on the first token ([CLS]); its weights sit beside the encoder (`pooler.dense`), not under
the `deberta.` prefix. Dropout is an inference no-op.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from remora.core.batch import PackedBatch
from remora.core.heads.cross_encoder import count_labels, first_tokens
from remora.core.layers.activations import hidden_act
from remora.core.layers.uninit import Linear
from remora.core.weights import Source


class ContextPoolerHead(nn.Module):
    def __init__(self, config: Mapping[str, Any], hidden_size: int) -> None:
        super().__init__()
        self.num_labels = count_labels(config)
        pooled = int(config.get("pooler_hidden_size") or hidden_size)
        self.pooler = Linear(hidden_size, pooled)
        self.act = hidden_act(config.get("pooler_hidden_act", "gelu"))
        self.classifier = Linear(pooled, self.num_labels)

    def forward(self, hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        # [T, h] -> [B, h] -> [B, labels]
        return self.classifier(self.act(self.pooler(first_tokens(hidden, batch))))

    @staticmethod
    def weight_table(prefix: str) -> dict[str, Source]:
        return {
            "pooler.weight": "pooler.dense.weight",
            "pooler.bias": "pooler.dense.bias",
            "classifier.weight": "classifier.weight",
            "classifier.bias": "classifier.bias",
        }
