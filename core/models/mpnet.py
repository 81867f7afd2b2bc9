"""MPNet encoder over a packed batch: BERT-style post-norm layers plus a relative position bias.

Reference: transformers' `MPNetModel`. Absolute positions are numbered from padding_idx + 1
(padding_idx is fixed at 1, as in transformers), and every layer adds the same bias to its
attention scores: a learned per-head value for the bucket of each (key - query) distance. The
engine's attention backends take no bias, so attention runs through `biased_attention`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from remora.core.batch import PackedBatch
from remora.core.layers.activations import hidden_act
from remora.core.layers.attention import Attention
from remora.core.layers.biased_attention import biased_attention
from remora.core.layers.uninit import Embedding, LayerNorm, Linear
from remora.core.weights import Fuse, Source

# transformers' MPNet numbers positions from padding_idx + 1 with padding_idx hard-coded to 1.
POSITION_OFFSET = 2
# transformers buckets with its defaults, whatever the config says: 32 buckets (16 per
# direction, 8 of them exact) and a log scale that saturates at distance 128. The config's
# relative_attention_num_buckets only sizes the table.
NUM_BUCKETS = 32
MAX_DISTANCE = 128


@dataclass(frozen=True)
class MPNetArgs:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    hidden_act: str
    layer_norm_eps: float
    max_positions: int
    table_buckets: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> MPNetArgs:
        args = cls(
            vocab_size=config["vocab_size"],
            hidden_size=config["hidden_size"],
            num_layers=config["num_hidden_layers"],
            num_heads=config["num_attention_heads"],
            intermediate_size=config["intermediate_size"],
            hidden_act=config.get("hidden_act", "gelu"),
            layer_norm_eps=config.get("layer_norm_eps", 1e-12),
            max_positions=config["max_position_embeddings"],
            table_buckets=config.get("relative_attention_num_buckets", NUM_BUCKETS),
        )
        if args.hidden_size % args.num_heads:
            raise ValueError(
                f"hidden_size {args.hidden_size} is not a multiple of num_attention_heads {args.num_heads}"
            )
        if args.table_buckets < NUM_BUCKETS:
            raise ValueError(
                f"relative_attention_num_buckets {args.table_buckets} is below the {NUM_BUCKETS} buckets "
                "MPNet's position bias indexes"
            )
        return args


def relative_position_bucket(distance: torch.Tensor) -> torch.Tensor:
    """Bucket of each (key - query) distance, as transformers' MPNet computes it (same float ops,
    so the truncations agree exactly)."""
    half = NUM_BUCKETS // 2
    exact = half // 2
    n = -distance
    bucket = (n < 0).to(torch.long) * half
    n = n.abs()
    log_scale = torch.log(n.float() / exact) / math.log(MAX_DISTANCE / exact) * (half - exact)
    large = (exact + log_scale.to(torch.long)).clamp_max(half - 1)
    return bucket + torch.where(n < exact, n, large)


class MPNetLayer(nn.Module):
    def __init__(self, args: MPNetArgs, attention: Attention) -> None:
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

    def forward(self, x: torch.Tensor, batch: PackedBatch, position_bias: torch.Tensor) -> torch.Tensor:
        tokens, hidden = x.shape
        # [T, 3h] -> 3 x [T, H, D]
        q, k, v = self.qkv(x).view(tokens, 3, self.num_heads, self.head_dim).unbind(1)

        def bias(qs: torch.Tensor, ks: torch.Tensor) -> torch.Tensor:
            n = qs.shape[-2]
            return position_bias[:, :n, :n]  # [H, n, n]: depends on distances only

        attended = biased_attention(
            q, k, v, batch, scale=self.head_dim**-0.5, bias=bias, backend=self.attention.name
        )  # [T, H, D]
        x = self.attn_norm(self.attn_out(attended.reshape(tokens, hidden)).add_(x))
        return self.ffn_norm(self.down(self.act(self.up(x))).add_(x))


class MPNetEncoder(nn.Module):
    """Token + position embeddings -> N post-norm layers sharing one relative position bias."""

    prefixes: tuple[str, ...] = ("", "mpnet.")
    embed_key = "embeddings.word_embeddings.weight"
    # A non-persistent buffer older transformers saved, and the pooler (unused by every head).
    unused: tuple[str, ...] = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")

    def __init__(self, args: MPNetArgs, attention: Attention) -> None:
        super().__init__()
        self.args = args
        self.hidden_size = args.hidden_size
        self.num_layers = args.num_layers
        self.num_heads = args.num_heads
        self.intermediate_size = args.intermediate_size
        self.word = Embedding(args.vocab_size, args.hidden_size)
        self.position = Embedding(args.max_positions, args.hidden_size)
        self.embed_norm = LayerNorm(args.hidden_size, eps=args.layer_norm_eps)
        self.relative_bias = Embedding(args.table_buckets, args.num_heads)
        self.layers = nn.ModuleList(MPNetLayer(args, attention) for _ in range(args.num_layers))

    @property
    def max_tokens(self) -> int:
        """Longest sequence the position table can hold."""
        return self.args.max_positions - POSITION_OFFSET

    def position_bias(self, length: int, device: torch.device) -> torch.Tensor:
        """[H, L, L] bias for query i and key j of any sequence up to `length` tokens."""
        steps = torch.arange(length, device=device)
        buckets = relative_position_bucket(steps[None, :] - steps[:, None])  # [L, L]
        return self.relative_bias(buckets).permute(2, 0, 1)

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        x = self.word(batch.input_ids) + self.position(batch.position_ids + POSITION_OFFSET)  # [T, h]
        x = self.embed_norm(x)
        # Distances within a sequence depend only on its length: one table for the longest
        # serves every sequence (top-left corner) and every layer.
        bias = self.position_bias(batch.max_len, x.device)
        for layer in self.layers:
            x = layer(x, batch, bias)
        return x

    @classmethod
    def weight_table(cls) -> dict[str, Source]:
        layer = "encoder.layer.{i}."
        attn = layer + "attention."
        table: dict[str, Source] = {
            "word.weight": "embeddings.word_embeddings.weight",
            "position.weight": "embeddings.position_embeddings.weight",
            "embed_norm.weight": "embeddings.LayerNorm.weight",
            "embed_norm.bias": "embeddings.LayerNorm.bias",
            "relative_bias.weight": "encoder.relative_attention_bias.weight",
        }
        for p in ("weight", "bias"):
            table[f"layers.{{i}}.qkv.{p}"] = Fuse(tuple(f"{attn}attn.{name}.{p}" for name in ("q", "k", "v")))
            table[f"layers.{{i}}.attn_out.{p}"] = f"{attn}attn.o.{p}"
            table[f"layers.{{i}}.attn_norm.{p}"] = f"{attn}LayerNorm.{p}"
            table[f"layers.{{i}}.up.{p}"] = f"{layer}intermediate.dense.{p}"
            table[f"layers.{{i}}.down.{p}"] = f"{layer}output.dense.{p}"
            table[f"layers.{{i}}.ffn_norm.{p}"] = f"{layer}output.LayerNorm.{p}"
        return table


def build(config: Mapping[str, Any], attention: Attention) -> MPNetEncoder:
    return MPNetEncoder(MPNetArgs.from_config(config), attention)
