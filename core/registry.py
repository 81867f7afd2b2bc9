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
    "qwen": "remora.core.models.qwen",
    "mpnet": "remora.core.models.mpnet",
    "deberta_v2": "remora.core.models.deberta_v2",
    "modernbert": "remora.core.models.modernbert",
    "nomic_bert": "remora.core.models.nomic_bert",
    "gte": "remora.core.models.gte",
}

# Heads by name: "module:Class". A head is built as Class(config, hidden_size) and maps its
# parameters to checkpoint names with Class.weight_table(prefix).
HEADS: dict[str, str] = {
    "bert": "remora.core.heads.cross_encoder:BertClassificationHead",
    "roberta": "remora.core.heads.cross_encoder:RobertaClassificationHead",
    "last_token": "remora.core.heads.last_token:LastTokenHead",
    "yes_no": "remora.core.heads.yes_no:YesNoHead",
    "deberta": "remora.core.heads.deberta:ContextPoolerHead",
    "token": "remora.core.heads.token:TokenClassificationHead",
    "modernbert": "remora.core.heads.modernbert:ModernBertSequenceHead",
    "modernbert_token": "remora.core.heads.modernbert:ModernBertTokenHead",
}


@dataclass(frozen=True)
class Architecture:
    family: str
    task: Task
    head: str | None = None  # a HEADS name: sequence head for "score", token head for "extract"
    # Checkpoint tensors this architecture carries that its task does not use (an MLM head).
    unused: tuple[str, ...] = ()
    # Pooling when the directory has no sentence-transformers Pooling module (decoders embed
    # with their last token).
    pooling: tuple[str, ...] = ("mean",)


ARCHITECTURES: dict[str, Architecture] = {
    "BertModel": Architecture("bert", "encode"),
    "BertForMaskedLM": Architecture("bert", "encode", unused=("cls.*",)),
    # Stanford ColBERT (PyLate-compatible): BERT + `linear.weight`, the token projection (core/outputs.py).
    "HF_ColBERT": Architecture("bert", "encode", unused=("linear.weight",)),
    "BertForSequenceClassification": Architecture("bert", "score", head="bert"),
    "XLMRobertaModel": Architecture("xlm_roberta", "encode"),
    "XLMRobertaForMaskedLM": Architecture("xlm_roberta", "encode", unused=("lm_head.*",)),
    "XLMRobertaForSequenceClassification": Architecture("xlm_roberta", "score", head="roberta"),
    "RobertaModel": Architecture("xlm_roberta", "encode"),
    "RobertaForMaskedLM": Architecture("xlm_roberta", "encode", unused=("lm_head.*",)),
    "RobertaForSequenceClassification": Architecture("xlm_roberta", "score", head="roberta"),
    "Qwen2Model": Architecture("qwen", "encode", pooling=("lasttoken",)),
    "Qwen3Model": Architecture("qwen", "encode", pooling=("lasttoken",)),
    "Qwen2ForCausalLM": Architecture("qwen", "encode", unused=("lm_head.weight",), pooling=("lasttoken",)),
    "Qwen3ForCausalLM": Architecture("qwen", "encode", unused=("lm_head.weight",), pooling=("lasttoken",)),
    "Qwen2ForSequenceClassification": Architecture("qwen", "score", head="last_token"),
    "Qwen3ForSequenceClassification": Architecture("qwen", "score", head="last_token"),
    "MPNetModel": Architecture("mpnet", "encode"),
    "MPNetForMaskedLM": Architecture("mpnet", "encode", unused=("lm_head.*",)),
    "MPNetForSequenceClassification": Architecture("mpnet", "score", head="roberta"),
    "DebertaV2Model": Architecture("deberta_v2", "encode"),
    "DebertaV2ForMaskedLM": Architecture("deberta_v2", "encode", unused=("cls.*", "lm_predictions.*", "mask_predictions.*")),
    "DebertaV2ForSequenceClassification": Architecture("deberta_v2", "score", head="deberta"),
    "DebertaV2ForTokenClassification": Architecture("deberta_v2", "extract", head="token"),
    "BertForTokenClassification": Architecture("bert", "extract", head="token"),
    "XLMRobertaForTokenClassification": Architecture("xlm_roberta", "extract", head="token"),
    "RobertaForTokenClassification": Architecture("xlm_roberta", "extract", head="token"),
    "ModernBertModel": Architecture("modernbert", "encode"),
    "ModernBertForMaskedLM": Architecture("modernbert", "encode", unused=("head.*", "decoder.*")),
    "ModernBertForSequenceClassification": Architecture("modernbert", "score", head="modernbert"),
    "ModernBertForTokenClassification": Architecture("modernbert", "extract", head="modernbert_token"),
    "NomicBertModel": Architecture("nomic_bert", "encode"),
    "NomicBertForMaskedLM": Architecture("nomic_bert", "encode", unused=("cls.*",)),
    "NomicBertForSequenceClassification": Architecture("nomic_bert", "score", head="bert"),
    "NomicBertForTokenClassification": Architecture("nomic_bert", "extract", head="token"),
    "GteModel": Architecture("gte", "encode"),
    "NewModel": Architecture("gte", "encode"),
    "GteForSequenceClassification": Architecture("gte", "score", head="bert"),
    "NewForSequenceClassification": Architecture("gte", "score", head="bert"),
    "GteForMaskedLM": Architecture("gte", "encode", unused=("lm_head.*",)),
    "NewForMaskedLM": Architecture("gte", "encode", unused=("lm_head.*",)),
    "GteForTokenClassification": Architecture("gte", "extract", head="token"),
    "NewForTokenClassification": Architecture("gte", "extract", head="token"),
}

# For configs without an `architectures` list.
MODEL_TYPES: dict[str, str] = {
    "bert": "BertModel",
    "xlm-roberta": "XLMRobertaModel",
    "roberta": "RobertaModel",
    "qwen2": "Qwen2Model",
    "qwen3": "Qwen3Model",
    "mpnet": "MPNetModel",
    "deberta-v2": "DebertaV2Model",
    "modernbert": "ModernBertModel",
    "nomic_bert": "NomicBertModel",
    "gte": "GteModel",
    "new": "NewModel",
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


def head_class(name: str) -> Any:
    """The head class registered under `name` (imported on first use)."""
    module_name, _, attr = HEADS[name].partition(":")
    return getattr(importlib.import_module(module_name), attr)
