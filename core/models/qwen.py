"""Qwen2 / Qwen3 decoders run as encoders over a packed batch: causal attention, last token reads all.

Reference: transformers' `Qwen2Model` and `Qwen3Model`. Pre-norm layers with RMSNorm, NeoX rotary
on q and k, grouped-query attention (k/v keep their fewer heads; the attention backends share
them), SwiGLU MLP with gate and up fused into one matmul, a final RMSNorm. The two families
differ only in their attention projections: Qwen2 has q/k/v biases (no o bias); Qwen3 has
`attention_bias` on all four (off in released checkpoints) and a per-head RMSNorm on q and k
before rotary. Used by embedders (gte-Qwen2, Qwen3-Embedding: last-token pooling), sequence
classifiers (score head on the last token) and the Qwen3-Reranker (yes/no logits, last token).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from remora.core.batch import PackedBatch
from remora.core.layers.activations import hidden_act
from remora.core.layers.attention import Attention
from remora.core.layers.rotary import Rotary
from remora.core.layers.uninit import Embedding, Linear
from remora.core.weights import Fuse, Source


def _rope(config: Mapping[str, Any]) -> tuple[float, float]:
    """(base, linear scaling factor) from either config layout: transformers 5 saves
    `rope_parameters`, older checkpoints a top-level `rope_theta` beside `rope_scaling`."""
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    base = float(params.get("rope_theta") or config.get("rope_theta") or 10000.0)
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return base, 1.0
    if kind == "linear":
        return base, float(params["factor"])
    # YaRN / dynamic NTK change the frequencies themselves; Rotary only divides positions.
    raise ValueError(f"rope type {kind!r} is not supported (only 'default' and 'linear')")


def _is_qwen3(config: Mapping[str, Any]) -> bool:
    model_type = config.get("model_type")
    if model_type in ("qwen2", "qwen3"):
        return bool(model_type == "qwen3")
    names = [str(n) for n in config.get("architectures") or []]
    if any(n.startswith("Qwen3") for n in names):
        return True
    if any(n.startswith("Qwen2") for n in names):
        return False
    raise ValueError(f"cannot tell Qwen2 from Qwen3: model_type {model_type!r}, architectures {names}")


@dataclass(frozen=True)
class QwenArgs:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    hidden_act: str
    rms_norm_eps: float
    rope_base: float
    rope_scaling: float
    max_positions: int
    qkv_bias: bool  # biases on q, k, v projections
    o_bias: bool  # bias on the output projection
    qk_norm: bool  # Qwen3: RMSNorm over each head's q and k before rotary

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> QwenArgs:
        # Sliding-window layers would need window=(w - 1, 0) on only the layers from
        # max_window_layers on; no released Qwen2/Qwen3 embedder or reranker enables it.
        layer_types = config.get("layer_types") or []
        if config.get("use_sliding_window") or "sliding_attention" in layer_types:
            raise ValueError("Qwen sliding-window attention (use_sliding_window=true) is not supported")
        qwen3 = _is_qwen3(config)
        hidden = config["hidden_size"]
        heads = config["num_attention_heads"]
        base, scaling = _rope(config)
        attention_bias = bool(config.get("attention_bias", False))
        return cls(
            vocab_size=config["vocab_size"],
            hidden_size=hidden,
            num_layers=config["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or hidden // heads,
            intermediate_size=config["intermediate_size"],
            hidden_act=config.get("hidden_act", "silu"),
            rms_norm_eps=config.get("rms_norm_eps", 1e-6),
            rope_base=base,
            rope_scaling=scaling,
            max_positions=config["max_position_embeddings"],
            qkv_bias=attention_bias if qwen3 else True,
            o_bias=attention_bias if qwen3 else False,
            qk_norm=qwen3,
        )


class RMSNorm(nn.Module):
    """x / rms(x) * weight, as transformers' Qwen2RMSNorm: statistics in fp32, the result cast
    back to the input dtype before the weight multiplies it."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        # Uninitialised, like core/layers/uninit: loading fills it.
        self.weight = nn.Parameter(torch.empty(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return normed.to(x.dtype).mul_(self.weight)


class QwenLayer(nn.Module):
    def __init__(self, args: QwenArgs, attention: Attention) -> None:
        super().__init__()
        h, d = args.hidden_size, args.head_dim
        self.num_heads = args.num_heads
        self.num_kv_heads = args.num_kv_heads
        self.head_dim = d
        self.attention = attention
        self.act = hidden_act(args.hidden_act)
        self.attn_norm = RMSNorm(h, args.rms_norm_eps)
        # q apart from k/v: with grouped-query attention their widths differ, and Fuse
        # concatenates equal parts only.
        self.q = Linear(h, args.num_heads * d, bias=args.qkv_bias)
        self.kv = Linear(h, 2 * args.num_kv_heads * d, bias=args.qkv_bias)
        self.q_norm = RMSNorm(d, args.rms_norm_eps) if args.qk_norm else None
        self.k_norm = RMSNorm(d, args.rms_norm_eps) if args.qk_norm else None
        self.o = Linear(args.num_heads * d, h, bias=args.o_bias)
        self.ffn_norm = RMSNorm(h, args.rms_norm_eps)
        self.gate_up = Linear(h, 2 * args.intermediate_size, bias=False)
        self.down = Linear(args.intermediate_size, h, bias=False)

    def forward(self, x: torch.Tensor, batch: PackedBatch, rotary: Rotary) -> torch.Tensor:
        tokens = x.shape[0]
        normed = self.attn_norm(x)
        q = self.q(normed).view(tokens, self.num_heads, self.head_dim)  # [T, H, D]
        k, v = self.kv(normed).view(tokens, 2, self.num_kv_heads, self.head_dim).unbind(1)  # [T, Hkv, D]
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = rotary(q, batch.position_ids), rotary(k, batch.position_ids)
        attended = self.attention(q, k, v, batch, scale=self.head_dim**-0.5, causal=True)  # [T, H, D]
        x = self.o(attended.reshape(tokens, -1)).add_(x)
        gate, up = self.gate_up(self.ffn_norm(x)).chunk(2, dim=-1)  # 2 x [T, I]
        return self.down(self.act(gate).mul_(up)).add_(x)


class QwenEncoder(nn.Module):
    """Token embeddings -> N pre-norm causal layers -> final RMSNorm. Returns hidden states [T, h]."""

    # Bare `Qwen2Model` / `Qwen3Model` (and Qwen3-Embedding, saved without a prefix), or inside
    # a task model (`...ForCausalLM`, `...ForSequenceClassification`).
    prefixes: tuple[str, ...] = ("", "model.")
    embed_key = "embed_tokens.weight"
    # Older Qwen2 checkpoints saved each layer's rotary frequencies; Remora computes its own.
    unused: tuple[str, ...] = ("layers.*.self_attn.rotary_emb.inv_freq",)

    def __init__(self, args: QwenArgs, attention: Attention) -> None:
        super().__init__()
        self.args = args
        self.hidden_size = args.hidden_size
        self.num_layers = args.num_layers
        self.num_heads = args.num_heads
        self.intermediate_size = args.intermediate_size
        self.embed = Embedding(args.vocab_size, args.hidden_size)
        # One rotary for all layers: its cos/sin table is computed once and shared.
        self.rotary = Rotary(args.head_dim, args.rope_base, scaling_factor=args.rope_scaling)
        self.layers = nn.ModuleList(QwenLayer(args, attention) for _ in range(args.num_layers))
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps)

    @property
    def max_tokens(self) -> int:
        return self.args.max_positions

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        x = self.embed(batch.input_ids)  # [T, h]
        for layer in self.layers:
            x = layer(x, batch, self.rotary)
        return self.norm(x)

    def weight_table(self) -> dict[str, Source]:
        attn = "layers.{i}.self_attn."
        mlp = "layers.{i}.mlp."
        table: dict[str, Source] = {
            "embed.weight": self.embed_key,
            "norm.weight": "norm.weight",
            "layers.{i}.attn_norm.weight": "layers.{i}.input_layernorm.weight",
            "layers.{i}.ffn_norm.weight": "layers.{i}.post_attention_layernorm.weight",
            "layers.{i}.q.weight": f"{attn}q_proj.weight",
            "layers.{i}.kv.weight": Fuse((f"{attn}k_proj.weight", f"{attn}v_proj.weight")),
            "layers.{i}.o.weight": f"{attn}o_proj.weight",
            "layers.{i}.gate_up.weight": Fuse((f"{mlp}gate_proj.weight", f"{mlp}up_proj.weight")),
            "layers.{i}.down.weight": f"{mlp}down_proj.weight",
        }
        if self.args.qkv_bias:
            table["layers.{i}.q.bias"] = f"{attn}q_proj.bias"
            table["layers.{i}.kv.bias"] = Fuse((f"{attn}k_proj.bias", f"{attn}v_proj.bias"))
        if self.args.o_bias:
            table["layers.{i}.o.bias"] = f"{attn}o_proj.bias"
        if self.args.qk_norm:
            table["layers.{i}.q_norm.weight"] = f"{attn}q_norm.weight"
            table["layers.{i}.k_norm.weight"] = f"{attn}k_norm.weight"
        return table


def build(config: Mapping[str, Any], attention: Attention) -> QwenEncoder:
    return QwenEncoder(QwenArgs.from_config(config), attention)
