"""BERT encoder over a packed batch: absolute positions, token types, post-norm layers, fused QKV.

Reference: transformers' `BertModel`. Only real tokens flow through embeddings, projections,
FFN and norms; attention is whatever backend the engine chose.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from remora.core.batch import PackedBatch
from remora.core.layers.activations import hidden_act
from remora.core.layers.attention import Attention
from remora.core.layers.uninit import Embedding, LayerNorm, Linear
from remora.core.weights import Fuse, Source


@dataclass(frozen=True)
class BertArgs:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    hidden_act: str
    layer_norm_eps: float
    max_positions: int
    type_vocab_size: int
    pad_token_id: int
    # RoBERTa-style models number positions from padding_idx + 1; BERT from 0.
    position_offset: int = 0

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, position_offset: int = 0) -> BertArgs:
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(
                f"position_embedding_type {config['position_embedding_type']!r} is not supported "
                "(only 'absolute')"
            )
        return cls(
            vocab_size=config["vocab_size"],
            hidden_size=config["hidden_size"],
            num_layers=config["num_hidden_layers"],
            num_heads=config["num_attention_heads"],
            intermediate_size=config["intermediate_size"],
            hidden_act=config.get("hidden_act", "gelu"),
            layer_norm_eps=config.get("layer_norm_eps", 1e-12),
            max_positions=config["max_position_embeddings"],
            type_vocab_size=config.get("type_vocab_size", 2),
            pad_token_id=config.get("pad_token_id") or 0,
            position_offset=position_offset,
        )


class BertLayer(nn.Module):
    def __init__(self, args: BertArgs, attention: Attention) -> None:
        super().__init__()
        h = args.hidden_size
        self.num_heads = args.num_heads
        self.head_dim = h // args.num_heads
        self.attention = attention
        self.act = hidden_act(args.hidden_act)
        self.qkv = Linear(h, 3 * h)
        self.attn_out = Linear(h, h)
        self.attn_norm = LayerNorm(h, eps=args.layer_norm_eps)
        self.up = Linear(h, args.intermediate_size)
        self.down = Linear(args.intermediate_size, h)
        self.ffn_norm = LayerNorm(h, eps=args.layer_norm_eps)

    def forward(self, x: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        tokens, hidden = x.shape
        # [T, 3h] -> 3 x [T, H, D]
        q, k, v = self.qkv(x).view(tokens, 3, self.num_heads, self.head_dim).unbind(1)
        attended = self.attention(q, k, v, batch, scale=self.head_dim**-0.5)  # [T, H, D]
        # Residuals are added in place into the fresh projection outputs: one [T, h] buffer less
        # per add, on a path that is memory-bound outside the matmuls.
        x = self.attn_norm(self.attn_out(attended.reshape(tokens, hidden)).add_(x))
        return self.ffn_norm(self.down(self.act(self.up(x))).add_(x))


class BertEncoder(nn.Module):
    """Token embeddings -> N post-norm transformer layers. Returns hidden states [T, h]."""

    # Checkpoint name prefixes this family is saved under (bare `BertModel`, or inside a task model).
    prefixes: tuple[str, ...] = ("", "bert.")
    embed_key = "embeddings.word_embeddings.weight"

    def __init__(self, args: BertArgs, attention: Attention) -> None:
        super().__init__()
        self.args = args
        self.hidden_size = args.hidden_size
        self.num_layers = args.num_layers
        self.num_heads = args.num_heads
        self.intermediate_size = args.intermediate_size
        self.word = Embedding(args.vocab_size, args.hidden_size)
        self.position = Embedding(args.max_positions, args.hidden_size)
        self.token_type = Embedding(args.type_vocab_size, args.hidden_size)
        self.embed_norm = LayerNorm(args.hidden_size, eps=args.layer_norm_eps)
        self.layers = nn.ModuleList(BertLayer(args, attention) for _ in range(args.num_layers))

    @property
    def max_tokens(self) -> int:
        """Longest sequence the position table can hold."""
        return self.args.max_positions - self.args.position_offset

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        positions = batch.position_ids + self.args.position_offset
        x = self.word(batch.input_ids) + self.position(positions)  # [T, h]
        if self.args.type_vocab_size > 1:
            x = x + self.token_type(batch.token_type_ids)
        else:
            # One segment type (RoBERTa family): its tokenizers emit no type ids; row 0 is added.
            x = x + self.token_type.weight[0]
        x = self.embed_norm(x)
        for layer in self.layers:
            x = layer(x, batch)
        return x

    @classmethod
    def weight_table(cls) -> dict[str, Source]:
        layer = "encoder.layer.{i}."
        attn = layer + "attention."
        table: dict[str, Source] = {
            "word.weight": "embeddings.word_embeddings.weight",
            "position.weight": "embeddings.position_embeddings.weight",
            "token_type.weight": "embeddings.token_type_embeddings.weight",
            "embed_norm.weight": "embeddings.LayerNorm.weight",
            "embed_norm.bias": "embeddings.LayerNorm.bias",
        }
        for p in ("weight", "bias"):
            table[f"layers.{{i}}.qkv.{p}"] = Fuse(
                tuple(f"{attn}self.{name}.{p}" for name in ("query", "key", "value"))
            )
            table[f"layers.{{i}}.attn_out.{p}"] = f"{attn}output.dense.{p}"
            table[f"layers.{{i}}.attn_norm.{p}"] = f"{attn}output.LayerNorm.{p}"
            table[f"layers.{{i}}.up.{p}"] = f"{layer}intermediate.dense.{p}"
            table[f"layers.{{i}}.down.{p}"] = f"{layer}output.dense.{p}"
            table[f"layers.{{i}}.ffn_norm.{p}"] = f"{layer}output.LayerNorm.{p}"
        return table

    # Tensors some checkpoints carry that an encoder never needs (a non-persistent buffer
    # older transformers saved, the pooler used only by classification heads).
    unused = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")


def build(config: Mapping[str, Any], attention: Attention) -> BertEncoder:
    return BertEncoder(BertArgs.from_config(config), attention)
