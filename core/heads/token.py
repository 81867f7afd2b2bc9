"""Token classification: transformers' `...ForTokenClassification` head, a Linear on every token.

Returns logits [T, num_labels] on the packed layout (row t is token t of the batch), for NER-style
extraction. Dropout is an inference no-op.
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


class TokenClassificationHead(nn.Module):
    def __init__(self, config: Mapping[str, Any], hidden_size: int) -> None:
        super().__init__()
        self.num_labels = count_labels(config)
        self.classifier = Linear(hidden_size, self.num_labels)

    def forward(self, hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        return self.classifier(hidden)  # [T, h] -> [T, labels]

    @staticmethod
    def weight_table(prefix: str) -> dict[str, Source]:
        return {"classifier.weight": "classifier.weight", "classifier.bias": "classifier.bias"}
