"""GTE ("new") encoder over a packed batch: rotary positions, fused QKV, GLU MLP, post-norm layers.

Reference: transformers' `GteModel` (whose saved checkpoints keep the hub layout of
Alibaba-NLP/gte-multilingual-base's `NewModel`: `attention.qkv_proj`, `mlp.up_gate_proj`,
`attn_ln` / `mlp_ln`). Both config layouts are read: transformers 5's (`rope_parameters`) and the
hub's (`rope_theta`, `rope_scaling` {"type": "ntk", "factor": f[, "mixed_b": b]}).
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
from remora.core.layers.rotary import Rotary
from remora.core.layers.uninit import Embedding, LayerNorm, Linear
from remora.core.weights import Source


class NtkRotary(Rotary):
    """NewModel's fixed ("ntk") rotary scaling: the base grows by `factor` and every frequency
    shrinks by factor^(2 / dim) -- or, with `mixed_b`, frequency m by exp(a * m^b) with
    a = ln(factor) / (dim / 2)^b. The hub model builds its cache past max_position_embeddings at
    load, so the scaled frequencies apply to every length. NeoX layout, computed in fp32."""

    def __init__(self, dim: int, base: float, factor: float, mixed_b: float | None = None) -> None:
        super().__init__(dim, base)
        self.factor = factor
        self.mixed_b = mixed_b

    def inv_freq(self, device: torch.device) -> torch.Tensor:
        dim = self.rotary_dim
        exponent = torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim
        if self.mixed_b is None:
            return 1.0 / ((self.base * self.factor) ** exponent) / self.factor ** (2 / dim)
        a = math.log(self.factor) / (dim / 2) ** self.mixed_b
        steps = torch.arange(1, dim // 2 + 1, device=device).float()
        return 1.0 / (self.base**exponent) / (a * steps**self.mixed_b).exp()


def _rotary(config: Mapping[str, Any], head_dim: int) -> nn.Module:
    params = config.get("rope_parameters") or {}
    rope_type = params.get("rope_type", "default")
    if rope_type != "default":
        raise ValueError(
            f"rope_type {rope_type!r} is not supported (only 'default', or the hub's 'ntk' rope_scaling)"
        )
    theta = float(params.get("rope_theta") or config.get("rope_theta") or 10_000.0)
    scaling = config.get("rope_scaling")
    if not scaling:
        return Rotary(head_dim, theta)
    kind = scaling.get("type") or scaling.get("rope_type")
    if kind != "ntk":
        raise ValueError(f"rope_scaling type {kind!r} is not supported (only 'ntk')")
    return NtkRotary(head_dim, theta, float(scaling["factor"]), scaling.get("mixed_b"))


def _check_hub_options(config: Mapping[str, Any]) -> None:
    if config.get("position_embedding_type", "rope") != "rope":
        raise ValueError(
            f"position_embedding_type {config['position_embedding_type']!r} is not supported (only 'rope')"
        )
    if config.get("layer_norm_type", "layer_norm") != "layer_norm":
        raise ValueError(
            f"layer_norm_type {config['layer_norm_type']!r} is not supported (only 'layer_norm')"
        )
    if config.get("pack_qkv") is False:
        raise ValueError("unpacked QKV (pack_qkv false) is not supported")
    # logn_attention_scale only acts on sequences past 8192 tokens, longer than max_tokens.


@dataclass(frozen=True)
class GteArgs:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    hidden_act: str
    layer_norm_eps: float
    type_vocab_size: int
    max_positions: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> GteArgs:
        _check_hub_options(config)
        return cls(
            vocab_size=config["vocab_size"],
            hidden_size=config["hidden_size"],
            num_layers=config["num_hidden_layers"],
            num_heads=config["num_attention_heads"],
            intermediate_size=config["intermediate_size"],
            hidden_act=config.get("hidden_act", "gelu"),
            layer_norm_eps=config.get("layer_norm_eps", 1e-12),
            type_vocab_size=int(config.get("type_vocab_size") or 0),
            max_positions=config.get("max_position_embeddings", 8192),
        )


class GteLayer(nn.Module):
    def __init__(self, args: GteArgs, attention: Attention) -> None:
        super().__init__()
        h = args.hidden_size
        self.num_heads = args.num_heads
        self.head_dim = h // args.num_heads
        self.attention = attention
        self.act = hidden_act(args.hidden_act)
        self.qkv = Linear(h, 3 * h)
        self.attn_out = Linear(h, h)
        self.attn_norm = LayerNorm(h, eps=args.layer_norm_eps)
        self.up_gate = Linear(h, 2 * args.intermediate_size, bias=False)
        self.down = Linear(args.intermediate_size, h)
        self.ffn_norm = LayerNorm(h, eps=args.layer_norm_eps)

    def forward(self, x: torch.Tensor, batch: PackedBatch, rotary: nn.Module) -> torch.Tensor:
        tokens, hidden = x.shape
        qkv = self.qkv(x).view(tokens, 3, self.num_heads, self.head_dim)
        # Q and K rotated in one call: [T, 2, H, D] -> [T, 2H, D] -> 2 x [T, H, D]
        q, k = rotary(
            qkv[:, :2].reshape(tokens, 2 * self.num_heads, self.head_dim), batch.position_ids
        ).chunk(2, dim=1)
        attended = self.attention(q, k, qkv[:, 2], batch, scale=self.head_dim**-0.5)
        x = self.attn_norm(self.attn_out(attended.reshape(tokens, hidden)).add_(x))
        # GLU: the first half is the up projection, the second the activated gate.
        up, gate = self.up_gate(x).chunk(2, dim=-1)
        return self.ffn_norm(self.down(self.act(gate) * up).add_(x))


class GteEncoder(nn.Module):
    """Token (+ type) embeddings + norm -> N post-norm layers. Returns hidden states [T, h]."""

    # Bare model, hub task models (`new.`), transformers' task models (`gte.`).
    prefixes: tuple[str, ...] = ("", "new.", "gte.")
    embed_key = "embeddings.word_embeddings.weight"

    def __init__(self, args: GteArgs, rotary: nn.Module, attention: Attention) -> None:
        super().__init__()
        self.args = args
        self.hidden_size = args.hidden_size
        self.num_layers = args.num_layers
        self.num_heads = args.num_heads
        self.intermediate_size = args.intermediate_size
        self.word = Embedding(args.vocab_size, args.hidden_size)
        self.token_type = Embedding(args.type_vocab_size, args.hidden_size) if args.type_vocab_size else None
        self.embed_norm = LayerNorm(args.hidden_size, eps=args.layer_norm_eps)
        self.layers = nn.ModuleList(GteLayer(args, attention) for _ in range(args.num_layers))
        self.rotary = rotary

    @property
    def max_tokens(self) -> int:
        return self.args.max_positions

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        x = self.word(batch.input_ids)  # [T, h]
        if self.token_type is not None:
            if self.args.type_vocab_size > 1:
                x = x + self.token_type(batch.token_type_ids)
            else:
                # One segment type (XLM-R tokenizers emit no type ids): row 0 is added.
                x = x + self.token_type.weight[0]
        x = self.embed_norm(x)
        for layer in self.layers:
            x = layer(x, batch, self.rotary)
        return x

    @classmethod
    def weight_table(cls) -> dict[str, Source]:
        layer = "encoder.layer.{i}."
        table: dict[str, Source] = {
            "word.weight": "embeddings.word_embeddings.weight",
            "token_type.weight": "embeddings.token_type_embeddings.weight",
            "layers.{i}.up_gate.weight": f"{layer}mlp.up_gate_proj.weight",
        }
        for p in ("weight", "bias"):
            table[f"embed_norm.{p}"] = f"embeddings.LayerNorm.{p}"
            table[f"layers.{{i}}.qkv.{p}"] = f"{layer}attention.qkv_proj.{p}"
            table[f"layers.{{i}}.attn_out.{p}"] = f"{layer}attention.o_proj.{p}"
            table[f"layers.{{i}}.attn_norm.{p}"] = f"{layer}attn_ln.{p}"
            table[f"layers.{{i}}.down.{p}"] = f"{layer}mlp.down_proj.{p}"
            table[f"layers.{{i}}.ffn_norm.{p}"] = f"{layer}mlp_ln.{p}"
        return table

    # A computed buffer the hub model may have saved, and the pooler only classifiers use.
    unused = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")


def build(config: Mapping[str, Any], attention: Attention) -> GteEncoder:
    args = GteArgs.from_config(config)
    return GteEncoder(args, _rotary(config, args.hidden_size // args.num_heads), attention)
