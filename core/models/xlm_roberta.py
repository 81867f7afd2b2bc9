"""XLM-RoBERTa / RoBERTa: BERT's encoder with positions offset by padding_idx + 1.

Reference: transformers' `XLMRobertaModel` (`create_position_ids_from_input_ids` numbers real
tokens from padding_idx + 1, reserving rows 0..padding_idx of the position table).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from remora.core.layers.attention import Attention
from remora.core.models.bert import BertArgs, BertEncoder


class XLMRobertaEncoder(BertEncoder):
    prefixes = ("", "roberta.")


def build(config: Mapping[str, Any], attention: Attention) -> XLMRobertaEncoder:
    pad = config.get("pad_token_id")
    pad = 1 if pad is None else pad
    return XLMRobertaEncoder(BertArgs.from_config(config, position_offset=pad + 1), attention)
