"""Sparse (lexical) outputs: one `SparseVector` of vocabulary weights per sequence.

- `SpladeHead`: a masked-LM head (transform + decoder tied to the word embeddings) whose logits go
  through sentence-transformers' SpladePooling: log1p(relu(logits)) (twice log1p for
  "log1p_relu"), max- or sum-pooled over the sequence's tokens. The [tokens, vocab] logits are
  made a block of tokens at a time, never for the whole packed batch.
- `TokenWeightHead`: BGE-M3's `sparse_linear`: relu(w . h + b) per token, the largest weight of
  each token id kept, special tokens (cls, eos, pad, unk) left out.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from remora.core.batch import PackedBatch
from remora.core.layers.activations import Activation, hidden_act
from remora.core.layers.uninit import LayerNorm, Linear
from remora.core.weights import Source

# Elements of the [tokens, vocab] fp32 logits block made at once (64 MiB): ~2k tokens of a 30k
# BERT vocabulary, ~270 of a 250k XLM-R one.
BLOCK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class SparseVector:
    """Non-zero weights over the vocabulary: `indices` int32 ascending and unique, `values` float32."""

    indices: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)

    @classmethod
    def from_dense(cls, row: np.ndarray) -> SparseVector:
        """A [V] row of non-negative weights -> its non-zero entries."""
        indices = np.flatnonzero(row)
        return cls(indices.astype(np.int32), row[indices].astype(np.float32))


@dataclass(frozen=True)
class MlmLayout:
    """Where a family's masked-LM head lives in its checkpoint, and how it is configured."""

    dense: str
    norm: str
    bias: tuple[str, ...]  # decoder bias, by the names it has been saved under (first found wins)
    decoder: str  # untied decoder weight (only read when the config unties it)
    act_key: str | None  # config key of the transform's activation; None: exact GELU
    eps_key: str
    dense_bias_key: str | None = None  # config flags for optional biases (ModernBERT)
    norm_bias_key: str | None = None
    decoder_bias_key: str | None = None


MLM_LAYOUTS: dict[str, MlmLayout] = {
    "bert": MlmLayout(
        "cls.predictions.transform.dense",
        "cls.predictions.transform.LayerNorm",
        ("cls.predictions.bias", "cls.predictions.decoder.bias"),
        "cls.predictions.decoder.weight",
        act_key="hidden_act",
        eps_key="layer_norm_eps",
    ),
    "roberta": MlmLayout(
        "lm_head.dense",
        "lm_head.layer_norm",
        ("lm_head.bias", "lm_head.decoder.bias"),
        "lm_head.decoder.weight",
        act_key=None,
        eps_key="layer_norm_eps",
    ),
    "modernbert": MlmLayout(
        "head.dense",
        "head.norm",
        ("decoder.bias",),
        "decoder.weight",
        act_key="classifier_activation",
        eps_key="norm_eps",
        dense_bias_key="classifier_bias",
        norm_bias_key="norm_bias",
        decoder_bias_key="decoder_bias",
    ),
}

# The masked-LM checkpoints a SPLADE directory may hold -> their head layout.
MLM_ARCHITECTURES = {
    "BertForMaskedLM": "bert",
    "RobertaForMaskedLM": "roberta",
    "XLMRobertaForMaskedLM": "roberta",
    "ModernBertForMaskedLM": "modernbert",
}


class SpladeHead(nn.Module):
    """MLM head + SpladePooling: hidden [T, h] -> one SparseVector per sequence."""

    def __init__(
        self,
        config: Mapping[str, Any],
        layout: MlmLayout,
        hidden_size: int,
        *,
        names: set[str],
        tied: nn.Parameter | None,
        pooling: str = "max",
        activation: str = "relu",
        max_active_dims: int | None = None,
    ) -> None:
        """`names`: the checkpoint's tensor names (which bias spelling it uses); `tied`: the
        encoder's word-embedding matrix when the decoder shares it (not copied, not registered)."""
        super().__init__()
        self.layout = layout
        self.vocab_size = int(config["vocab_size"])
        flag = lambda key: key is None or bool(config.get(key, True))  # noqa: E731
        self.dense = Linear(hidden_size, hidden_size, bias=flag(layout.dense_bias_key))
        self.norm = LayerNorm(hidden_size, eps=float(config.get(layout.eps_key, 1e-12)), bias=flag(layout.norm_bias_key))
        self.act: Activation = hidden_act(str(config[layout.act_key])) if layout.act_key else hidden_act("gelu")
        self.bias_name = next((n for n in layout.bias if n in names), None) if flag(layout.decoder_bias_key) else None
        self.bias = nn.Parameter(torch.empty(self.vocab_size)) if self.bias_name else None
        self.decoder = None if tied is not None else Linear(hidden_size, self.vocab_size, bias=False)
        self._tied = (tied,) if tied is not None else ()  # a tuple: not a registered parameter
        self.pooling = pooling
        self.activation = activation
        self.max_active_dims = max_active_dims

    def weight_table(self, prefix: str = "") -> dict[str, Source]:
        """Own names -> checkpoint names (the MLM head sits outside the encoder's prefix)."""
        table: dict[str, Source] = {"dense.weight": f"{self.layout.dense}.weight", "norm.weight": f"{self.layout.norm}.weight"}
        if self.dense.bias is not None:
            table["dense.bias"] = f"{self.layout.dense}.bias"
        if self.norm.bias is not None:
            table["norm.bias"] = f"{self.layout.norm}.bias"
        if self.bias_name is not None:
            table["bias"] = self.bias_name
        if self.decoder is not None:
            table["decoder.weight"] = self.layout.decoder
        return {k: f"{prefix}{v}" for k, v in table.items()}

    def _decoder_weight(self) -> torch.Tensor:
        return self._tied[0] if self._tied else self.decoder.weight  # type: ignore[union-attr]

    def forward(self, hidden: torch.Tensor, batch: PackedBatch) -> list[SparseVector]:
        transformed = self.norm(self.act(self.dense(hidden)))  # [T, h]
        weight = self._decoder_weight()  # [V, h]
        bounds = batch.cu_seqlens.tolist()
        num_seqs = batch.num_seqs
        # log1p(relu(.)) >= 0, so zeros are the identity of both max and sum pooling.
        pooled = torch.zeros(num_seqs, self.vocab_size, dtype=torch.float32, device=hidden.device)  # [B, V]
        block = max(1, BLOCK_ELEMENTS // self.vocab_size)
        for start in range(0, hidden.shape[0], block):
            stop = min(start + block, hidden.shape[0])
            logits = torch.nn.functional.linear(transformed[start:stop], weight, self.bias).float()  # [n, V]
            weights = torch.log1p_(torch.relu_(logits))
            if self.activation == "log1p_relu":
                weights = torch.log1p_(weights)
            # Every sequence overlapping this block of tokens takes its part.
            seq = bisect.bisect_right(bounds, start) - 1
            while seq < num_seqs and bounds[seq] < stop:
                lo, hi = max(bounds[seq], start) - start, min(bounds[seq + 1], stop) - start
                if self.pooling == "max":
                    pooled[seq] = torch.maximum(pooled[seq], weights[lo:hi].amax(dim=0))
                else:
                    pooled[seq] += weights[lo:hi].sum(dim=0)
                seq += 1
        if self.max_active_dims is not None and self.max_active_dims < self.vocab_size:
            # SparseEncoder's max_active_dims: only the k largest weights of each vector survive.
            top = pooled.topk(self.max_active_dims, dim=1)
            pooled = torch.zeros_like(pooled).scatter_(1, top.indices, top.values)
        rows = pooled.cpu().numpy()
        return [SparseVector.from_dense(row) for row in rows]


class TokenWeightHead(nn.Module):
    """BGE-M3's lexical weights: relu(sparse_linear(h)) per token, max per token id."""

    def __init__(self, hidden_size: int, skip_ids: frozenset[int]) -> None:
        super().__init__()
        self.linear = Linear(hidden_size, 1)
        self.skip_ids = np.asarray(sorted(skip_ids), dtype=np.int64)

    @staticmethod
    def weight_table() -> dict[str, Source]:
        return {"linear.weight": "weight", "linear.bias": "bias"}

    def forward(self, hidden: torch.Tensor, batch: PackedBatch) -> list[SparseVector]:
        weights = torch.relu(self.linear(hidden)).squeeze(-1).float().cpu().numpy()  # [T]
        ids = batch.input_ids.cpu().numpy()  # [T]
        keep = (weights > 0) & ~np.isin(ids, self.skip_ids)
        bounds = batch.cu_seqlens.tolist()
        out: list[SparseVector] = []
        for start, stop in itertools.pairwise(bounds):
            mask = keep[start:stop]
            seq_ids, seq_weights = ids[start:stop][mask], weights[start:stop][mask]
            unique, where = np.unique(seq_ids, return_inverse=True)  # ascending ids
            best = np.zeros(len(unique), dtype=np.float32)
            np.maximum.at(best, where, seq_weights)
            out.append(SparseVector(unique.astype(np.int32), best))
        return out
