"""ModernBERT encoder over a packed batch: rotary positions, local/global attention, GeGLU, pre-norm.

Reference: transformers' `ModernBertModel`. Layers alternate between sliding-window attention
(each token sees `local_attention // 2` tokens either side, rotary base `local_rope_theta`) and
global attention (rotary base `global_rope_theta`). Both config layouts are read: the hub's
(`global_attn_every_n_layers`, `global_rope_theta`, `local_rope_theta`) and the one transformers 5
saves (`layer_types`, `rope_parameters`).
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
from remora.core.layers.rotary import Rotary
from remora.core.layers.uninit import Embedding, LayerNorm, Linear
from remora.core.weights import Source

GLOBAL_THETA = 160_000.0
LOCAL_THETA = 10_000.0


def _is_global(config: Mapping[str, Any], num_layers: int) -> tuple[bool, ...]:
    types = config.get("layer_types")
    if types:
        unknown = set(types) - {"full_attention", "sliding_attention"}
        if unknown or len(types) != num_layers:
            raise ValueError(f"layer_types {types!r} must name {num_layers} full/sliding_attention layers")
        return tuple(t == "full_attention" for t in types)
    every = int(config.get("global_attn_every_n_layers", 3))
    return tuple(i % every == 0 for i in range(num_layers))


def _rope_thetas(config: Mapping[str, Any]) -> tuple[float, float]:
    """(global, local) rotary bases."""
    params = config.get("rope_parameters") or {}
    for kind in ("full_attention", "sliding_attention"):
        rope_type = (params.get(kind) or {}).get("rope_type", "default")
        if rope_type != "default":
            raise ValueError(f"rope_type {rope_type!r} for {kind} layers is not supported (only 'default')")
    global_theta = (params.get("full_attention") or {}).get("rope_theta") or config.get("global_rope_theta")
    global_theta = float(global_theta or GLOBAL_THETA)
    local_theta = (params.get("sliding_attention") or {}).get("rope_theta")
    if local_theta is None:
        # Older transformers: a missing key means the 10k default, an explicit null the global base.
        local_theta = config.get("local_rope_theta", LOCAL_THETA)
    return global_theta, float(global_theta if local_theta is None else local_theta)


@dataclass(frozen=True)
class ModernBertArgs:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    hidden_act: str
    norm_eps: float
    norm_bias: bool
    attention_bias: bool
    mlp_bias: bool
    max_positions: int
    local_attention: int
    is_global: tuple[bool, ...]
    global_theta: float
    local_theta: float

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModernBertArgs:
        num_layers = config["num_hidden_layers"]
        global_theta, local_theta = _rope_thetas(config)
        return cls(
            vocab_size=config["vocab_size"],
            hidden_size=config["hidden_size"],
            num_layers=num_layers,
            num_heads=config["num_attention_heads"],
            intermediate_size=config["intermediate_size"],
            hidden_act=config.get("hidden_activation", "gelu"),
            norm_eps=config.get("norm_eps", 1e-5),
            norm_bias=bool(config.get("norm_bias", False)),
            attention_bias=bool(config.get("attention_bias", False)),
            mlp_bias=bool(config.get("mlp_bias", False)),
            max_positions=config.get("max_position_embeddings", 8192),
            local_attention=config.get("local_attention", 128),
            is_global=_is_global(config, num_layers),
            global_theta=global_theta,
            local_theta=local_theta,
        )


class ModernBertLayer(nn.Module):
    def __init__(self, args: ModernBertArgs, attention: Attention, index: int) -> None:
        super().__init__()
        h = args.hidden_size
        self.num_heads = args.num_heads
        self.head_dim = h // args.num_heads
        self.attention = attention
        half = args.local_attention // 2
        self.window = None if args.is_global[index] else (half, half)
        self.act = hidden_act(args.hidden_act)
        # The embedding norm already normalises layer 0's input, so its pre-attention norm is absent.
        self.attn_norm: nn.Module = (
            nn.Identity() if index == 0 else LayerNorm(h, eps=args.norm_eps, bias=args.norm_bias)
        )
        self.qkv = Linear(h, 3 * h, bias=args.attention_bias)
        self.attn_out = Linear(h, h, bias=args.attention_bias)
        self.mlp_norm = LayerNorm(h, eps=args.norm_eps, bias=args.norm_bias)
        self.up_gate = Linear(h, 2 * args.intermediate_size, bias=args.mlp_bias)
        self.down = Linear(args.intermediate_size, h, bias=args.mlp_bias)

    def forward(self, x: torch.Tensor, batch: PackedBatch, rotary: Rotary) -> torch.Tensor:
        tokens, hidden = x.shape
        qkv = self.qkv(self.attn_norm(x)).view(tokens, 3, self.num_heads, self.head_dim)
        # Q and K rotated in one call: [T, 2, H, D] -> [T, 2H, D] -> 2 x [T, H, D]
        q, k = rotary(
            qkv[:, :2].reshape(tokens, 2 * self.num_heads, self.head_dim), batch.position_ids
        ).chunk(2, dim=1)
        attended = self.attention(q, k, qkv[:, 2], batch, scale=self.head_dim**-0.5, window=self.window)
        x = self.attn_out(attended.reshape(tokens, hidden)).add_(x)
        # GeGLU: the activated half is the first one (`input, gate = Wi(x).chunk(2)`).
        up, gate = self.up_gate(self.mlp_norm(x)).chunk(2, dim=-1)
        return self.down(self.act(up) * gate).add_(x)


class ModernBertEncoder(nn.Module):
    """Token embeddings + norm -> N pre-norm layers -> final norm. Returns hidden states [T, h]."""

    prefixes: tuple[str, ...] = ("", "model.")
    embed_key = "embeddings.tok_embeddings.weight"

    def __init__(self, args: ModernBertArgs, attention: Attention) -> None:
        super().__init__()
        self.args = args
        self.hidden_size = args.hidden_size
        self.num_layers = args.num_layers
        self.num_heads = args.num_heads
        self.intermediate_size = args.intermediate_size
        head_dim = args.hidden_size // args.num_heads
        self.word = Embedding(args.vocab_size, args.hidden_size)
        self.embed_norm = LayerNorm(args.hidden_size, eps=args.norm_eps, bias=args.norm_bias)
        self.layers = nn.ModuleList(ModernBertLayer(args, attention, i) for i in range(args.num_layers))
        self.final_norm = LayerNorm(args.hidden_size, eps=args.norm_eps, bias=args.norm_bias)
        self.rotary_global = Rotary(head_dim, args.global_theta)
        self.rotary_local = Rotary(head_dim, args.local_theta)

    @property
    def max_tokens(self) -> int:
        return self.args.max_positions

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        x = self.embed_norm(self.word(batch.input_ids))  # [T, h]
        for layer, is_global in zip(self.layers, self.args.is_global, strict=True):
            x = layer(x, batch, self.rotary_global if is_global else self.rotary_local)
        return self.final_norm(x)

    @classmethod
    def weight_table(cls) -> dict[str, Source]:
        # Bias entries only bind when the config gives the module a bias (norm_bias, ...).
        layer = "layers.{i}."
        table: dict[str, Source] = {"word.weight": "embeddings.tok_embeddings.weight"}
        for p in ("weight", "bias"):
            table[f"embed_norm.{p}"] = f"embeddings.norm.{p}"
            table[f"final_norm.{p}"] = f"final_norm.{p}"
            table[f"layers.{{i}}.attn_norm.{p}"] = f"{layer}attn_norm.{p}"
            table[f"layers.{{i}}.qkv.{p}"] = f"{layer}attn.Wqkv.{p}"
            table[f"layers.{{i}}.attn_out.{p}"] = f"{layer}attn.Wo.{p}"
            table[f"layers.{{i}}.mlp_norm.{p}"] = f"{layer}mlp_norm.{p}"
            table[f"layers.{{i}}.up_gate.{p}"] = f"{layer}mlp.Wi.{p}"
            table[f"layers.{{i}}.down.{p}"] = f"{layer}mlp.Wo.{p}"
        return table

    unused: tuple[str, ...] = ()


def build(config: Mapping[str, Any], attention: Attention) -> ModernBertEncoder:
    return ModernBertEncoder(ModernBertArgs.from_config(config), attention)
