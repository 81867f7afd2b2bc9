"""NomicBERT encoder over a packed batch: rotary positions, fused QKV, SwiGLU, post-norm layers.

Reference: transformers' `NomicBertModel` (whose saved checkpoints keep the hub layout of
nomic-ai/nomic-embed-text-v1.5: `attn.Wqkv`, `mlp.fc11` / `fc12` / `fc2`, `norm1` / `norm2`,
`emb_ln`). Both config layouts are read: the hub's (`n_embd`, `n_layer`, `activation_function`,
`rotary_emb_base`, `rotary_emb_fraction`, bias flags) and the one transformers 5 saves.
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
from remora.core.weights import Fuse, Source

# The hub config names the whole gated MLP; the gate's activation is what we need.
GATED_ACTIVATIONS = {"swiglu": "silu", "geglu": "gelu", "glu": "sigmoid"}


def _first(config: Mapping[str, Any], *keys: str, default: Any = None) -> Any:
    """The first of `keys` the config sets (transformers' name first, then the hub's)."""
    for key in keys:
        if config.get(key) is not None:
            return config[key]
    if default is None:
        raise KeyError(keys[0])
    return default


def _check_hub_options(config: Mapping[str, Any]) -> None:
    if config.get("prenorm"):
        raise ValueError("prenorm NomicBERT is not supported (only post-norm text encoders)")
    if config.get("rotary_emb_interleaved"):
        raise ValueError("interleaved rotary (rotary_emb_interleaved) is not supported")
    if config.get("rotary_emb_scale_base") is not None:
        raise ValueError("xPos rotary (rotary_emb_scale_base) is not supported")
    rope_type = (config.get("rope_parameters") or {}).get("rope_type", "default")
    if rope_type != "default":
        raise ValueError(f"rope_type {rope_type!r} is not supported (only 'default')")


@dataclass(frozen=True)
class NomicBertArgs:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    gate_act: str
    layer_norm_eps: float
    type_vocab_size: int
    rotary_dim: int
    rope_theta: float
    max_positions: int
    qkv_bias: bool
    fc1_bias: bool
    fc2_bias: bool

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> NomicBertArgs:
        _check_hub_options(config)
        hidden = int(_first(config, "hidden_size", "n_embd"))
        heads = int(_first(config, "num_attention_heads", "n_head"))
        head_dim = int(_first(config, "head_dim", default=hidden // heads))
        if head_dim * heads != hidden:
            raise ValueError(f"head_dim {head_dim} x {heads} heads != hidden size {hidden}")
        if "activation_function" in config:
            name = config["activation_function"]
            if name not in GATED_ACTIVATIONS:
                raise ValueError(
                    f"activation_function {name!r} is not supported; supported: {sorted(GATED_ACTIVATIONS)}"
                )
            gate_act = GATED_ACTIVATIONS[name]
        else:
            gate_act = config.get("hidden_act", "silu")
        params = config.get("rope_parameters") or {}
        fraction = float(
            _first(config, "rotary_emb_fraction", default=params.get("partial_rotary_factor", 1.0))
        )
        if fraction <= 0:
            raise ValueError(
                "NomicBERT without rotary (rotary_emb_fraction 0: absolute positions) is not supported"
            )
        max_positions = int(_first(config, "max_position_embeddings", "n_positions", default=2048))
        if config.get("rotary_scaling_factor"):
            # Dynamic NTK scaling only changes sequences past the trained length; stop there.
            max_positions = min(max_positions, int(config.get("max_trained_positions", 2048)))
        return cls(
            vocab_size=config["vocab_size"],
            hidden_size=hidden,
            num_layers=int(_first(config, "num_hidden_layers", "n_layer")),
            num_heads=heads,
            intermediate_size=int(_first(config, "intermediate_size", "n_inner", default=4 * hidden)),
            gate_act=gate_act,
            layer_norm_eps=float(_first(config, "layer_norm_eps", "layer_norm_epsilon", default=1e-12)),
            type_vocab_size=int(config.get("type_vocab_size", 2)),
            rotary_dim=int(head_dim * fraction),
            rope_theta=float(_first(config, "rotary_emb_base", default=params.get("rope_theta", 1000.0))),
            max_positions=max_positions,
            # transformers' NomicBertModel has no biases; the hub config may switch them on.
            qkv_bias=bool(config.get("qkv_proj_bias", False)),
            fc1_bias=bool(config.get("mlp_fc1_bias", False)),
            fc2_bias=bool(config.get("mlp_fc2_bias", False)),
        )


class NomicBertLayer(nn.Module):
    def __init__(self, args: NomicBertArgs, attention: Attention) -> None:
        super().__init__()
        h = args.hidden_size
        self.num_heads = args.num_heads
        self.head_dim = h // args.num_heads
        self.attention = attention
        self.act = hidden_act(args.gate_act)
        self.qkv = Linear(h, 3 * h, bias=args.qkv_bias)
        # The hub model gives the output projection the QKV projection's bias flag.
        self.attn_out = Linear(h, h, bias=args.qkv_bias)
        self.attn_norm = LayerNorm(h, eps=args.layer_norm_eps)
        self.up_gate = Linear(h, 2 * args.intermediate_size, bias=args.fc1_bias)  # fc11 (up) ++ fc12 (gate)
        self.down = Linear(args.intermediate_size, h, bias=args.fc2_bias)
        self.ffn_norm = LayerNorm(h, eps=args.layer_norm_eps)

    def forward(self, x: torch.Tensor, batch: PackedBatch, rotary: Rotary) -> torch.Tensor:
        tokens, hidden = x.shape
        qkv = self.qkv(x).view(tokens, 3, self.num_heads, self.head_dim)
        # Q and K rotated in one call: [T, 2, H, D] -> [T, 2H, D] -> 2 x [T, H, D]
        q, k = rotary(
            qkv[:, :2].reshape(tokens, 2 * self.num_heads, self.head_dim), batch.position_ids
        ).chunk(2, dim=1)
        attended = self.attention(q, k, qkv[:, 2], batch, scale=self.head_dim**-0.5)
        x = self.attn_norm(self.attn_out(attended.reshape(tokens, hidden)).add_(x))
        up, gate = self.up_gate(x).chunk(2, dim=-1)
        return self.ffn_norm(self.down(self.act(gate) * up).add_(x))


class NomicBertEncoder(nn.Module):
    """Token (+ type) embeddings + norm -> N post-norm layers. Returns hidden states [T, h]."""

    prefixes: tuple[str, ...] = ("", "nomic_bert.")
    embed_key = "embeddings.word_embeddings.weight"

    def __init__(self, args: NomicBertArgs, attention: Attention) -> None:
        super().__init__()
        self.args = args
        self.hidden_size = args.hidden_size
        self.num_layers = args.num_layers
        self.num_heads = args.num_heads
        self.intermediate_size = args.intermediate_size
        self.word = Embedding(args.vocab_size, args.hidden_size)
        self.token_type = Embedding(args.type_vocab_size, args.hidden_size) if args.type_vocab_size else None
        self.embed_norm = LayerNorm(args.hidden_size, eps=args.layer_norm_eps)
        self.layers = nn.ModuleList(NomicBertLayer(args, attention) for _ in range(args.num_layers))
        self.rotary = Rotary(args.rotary_dim, args.rope_theta)

    @property
    def max_tokens(self) -> int:
        return self.args.max_positions

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        x = self.word(batch.input_ids)  # [T, h]
        if self.token_type is not None:
            if self.args.type_vocab_size > 1:
                x = x + self.token_type(batch.token_type_ids)
            else:
                x = x + self.token_type.weight[0]
        x = self.embed_norm(x)
        for layer in self.layers:
            x = layer(x, batch, self.rotary)
        return x

    @classmethod
    def weight_table(cls) -> dict[str, Source]:
        layer = "encoder.layers.{i}."
        table: dict[str, Source] = {
            "word.weight": "embeddings.word_embeddings.weight",
            "token_type.weight": "embeddings.token_type_embeddings.weight",
        }
        for p in ("weight", "bias"):
            table[f"embed_norm.{p}"] = f"emb_ln.{p}"
            table[f"layers.{{i}}.qkv.{p}"] = f"{layer}attn.Wqkv.{p}"
            table[f"layers.{{i}}.attn_out.{p}"] = f"{layer}attn.out_proj.{p}"
            table[f"layers.{{i}}.attn_norm.{p}"] = f"{layer}norm1.{p}"
            table[f"layers.{{i}}.up_gate.{p}"] = Fuse((f"{layer}mlp.fc11.{p}", f"{layer}mlp.fc12.{p}"))
            table[f"layers.{{i}}.down.{p}"] = f"{layer}mlp.fc2.{p}"
            table[f"layers.{{i}}.ffn_norm.{p}"] = f"{layer}norm2.{p}"
        return table

    unused = ("pooler.dense.weight", "pooler.dense.bias")


def build(config: Mapping[str, Any], attention: Attention) -> NomicBertEncoder:
    return NomicBertEncoder(NomicBertArgs.from_config(config), attention)
