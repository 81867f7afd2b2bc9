"""Relevance from a causal LM's next-token logits for "yes" and "no" (Qwen3-Reranker).

The reranker reads the last token of the templated pair (core/prompts.py) and scores
softmax([logit_no, logit_yes])[yes] = sigmoid(logit_yes - logit_no). The head returns that
log-odds as one label, so the default single-label activation (sigmoid) gives the probability
and raw scores are the log-odds, as sentence-transformers' `LogitScore` computes them.

Only the two LM-head rows are kept ([2, h] instead of [V, h]: 155M parameters less for the 0.6B
model); with tied embeddings they are rows of the token embedding table.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer
from torch import nn

from remora.core.batch import PackedBatch
from remora.core.heads.last_token import last_tokens
from remora.core.weights import Rows, Source

# The config keys the head reads its token ids from (the loader adds them, see `yes_no_token_ids`).
YES_KEY = "yes_token_id"
NO_KEY = "no_token_id"


def yes_no_token_ids(tokenizer_file: Path) -> dict[str, int]:
    """{YES_KEY: id, NO_KEY: id} of the tokens "yes" and "no", looked up as the reference code
    (`convert_tokens_to_ids`) does: whole vocabulary entries, not tokenized text."""
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    ids = {key: tokenizer.token_to_id(token) for key, token in ((YES_KEY, "yes"), (NO_KEY, "no"))}
    missing = [key for key, value in ids.items() if value is None]
    if missing:
        raise ValueError(f"{tokenizer_file} has no single token for {' and '.join(missing)}")
    return {key: int(value) for key, value in ids.items() if value is not None}


class YesNoHead(nn.Module):
    num_labels = 1

    def __init__(self, config: Mapping[str, Any], hidden_size: int) -> None:
        super().__init__()
        if config.get(YES_KEY) is None or config.get(NO_KEY) is None:
            raise ValueError(f"a yes/no reranker head needs {YES_KEY!r} and {NO_KEY!r} in its config")
        self.yes_id = int(config[YES_KEY])
        self.no_id = int(config[NO_KEY])
        # Tied (Qwen3-Reranker-0.6B, 4B): the LM head is the token embedding table.
        self.tied = bool(config.get("tie_word_embeddings", False))
        self.weight = nn.Parameter(torch.empty(2, hidden_size))  # rows: no, yes

    def forward(self, hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        # fp32 logits: their difference is small next to their size in bf16.
        logits = last_tokens(hidden, batch).float() @ self.weight.float().T  # [B, 2] (no, yes)
        return (logits[:, 1] - logits[:, 0]).unsqueeze(1)  # [B, 1] log-odds of "yes"

    def weight_table(self, prefix: str) -> dict[str, Source]:
        source = f"{prefix}embed_tokens.weight" if self.tied else "lm_head.weight"
        return {"weight": Rows(source, (self.no_id, self.yes_id))}
