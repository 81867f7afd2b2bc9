"""Which of our modules runs a checkpoint: HF architecture name -> encoder family, task and head.

Families are imported lazily, on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from remora.core.config import Task
from remora.core.errors import UnsupportedArchitecture
from remora.core.layers.attention import Attention

FAMILIES: dict[str, str] = {
    "bert": "remora.core.models.bert",
    "xlm_roberta": "remora.core.models.xlm_roberta",
}


@dataclass(frozen=True)
class Architecture:
    family: str
    task: Task
    head: str | None = None  # classification head for "score": "bert" or "roberta"
    # Checkpoint tensors this architecture carries that its task does not use (an MLM head).
    unused: tuple[str, ...] = ()


ARCHITECTURES: dict[str, Architecture] = {
    "BertModel": Architecture("bert", "encode"),
    "BertForMaskedLM": Architecture("bert", "encode", unused=("cls.*",)),
    "BertForSequenceClassification": Architecture("bert", "score", head="bert"),
    "XLMRobertaModel": Architecture("xlm_roberta", "encode"),
    "XLMRobertaForMaskedLM": Architecture("xlm_roberta", "encode", unused=("lm_head.*",)),
    "XLMRobertaForSequenceClassification": Architecture("xlm_roberta", "score", head="roberta"),
    "RobertaModel": Architecture("xlm_roberta", "encode"),
    "RobertaForMaskedLM": Architecture("xlm_roberta", "encode", unused=("lm_head.*",)),
    "RobertaForSequenceClassification": Architecture("xlm_roberta", "score", head="roberta"),
}

# For configs without an `architectures` list.
MODEL_TYPES: dict[str, str] = {
    "bert": "BertModel",
    "xlm-roberta": "XLMRobertaModel",
    "roberta": "RobertaModel",
}


def resolve(config: Mapping[str, Any]) -> tuple[str, Architecture]:
    names = config.get("architectures") or []
    if not names and config.get("model_type") in MODEL_TYPES:
        names = [MODEL_TYPES[config["model_type"]]]
    for name in names:
        if name in ARCHITECTURES:
            return name, ARCHITECTURES[name]
    named = ", ".join(map(str, names)) or f"model_type {config.get('model_type')!r}"
    raise UnsupportedArchitecture(
        f"unsupported architecture {named}; supported: {', '.join(sorted(ARCHITECTURES))}"
    )


def build_encoder(family: str, config: Mapping[str, Any], attention: Attention) -> nn.Module:
    module = importlib.import_module(FAMILIES[family])
    encoder: nn.Module = module.build(config, attention)
    return encoder
