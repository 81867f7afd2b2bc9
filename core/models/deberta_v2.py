"""DeBERTa-v2 / v3 encoder over a packed batch: disentangled attention with relative positions.

Reference: transformers' `DebertaV2Model`. Each layer's scores add, to content-to-content q.k,
content-to-position (q_i against the projected embedding of the bucketed distance i - j) and
position-to-content (k_j against the projected embedding of the distance j - i), all divided by
sqrt(D * (1 + number of those terms)). The relative embeddings (LayerNorm'd for v3) are shared by
all layers; with `share_att_key` (v3) the layer's own query / key projections embed them.
The engine's backends take no bias, so attention runs through `biased_attention`.

Supported: v3 (no absolute positions, no token types, 256 buckets), v2 (absolute positions,
optional token types, `embedding_size` projection, the first layer's convolution).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from remora.core.batch import PackedBatch
from remora.core.layers.activations import hidden_act
from remora.core.layers.attention import Attention
from remora.core.layers.biased_attention import biased_attention
from remora.core.layers.uninit import Embedding, LayerNorm, Linear
from remora.core.weights import Fuse, Source

# The disentangled terms transformers' DeBERTa-v2 computes; it ignores any other pos_att_type entry.
_POS_ATT_TYPES = ("c2p", "p2c")


@dataclass(frozen=True)
class DebertaV2Args:
    vocab_size: int
    hidden_size: int
    embedding_size: int
    num_layers: int
    num_heads: int
    head_dim: int
    intermediate_size: int
    hidden_act: str
    layer_norm_eps: float
    max_positions: int
    type_vocab_size: int
    position_biased_input: bool
    relative_attention: bool
    pos_att_type: tuple[str, ...]
    share_att_key: bool
    # Rows of the relative embedding table per direction (att_span in transformers).
    att_span: int
    position_buckets: int  # <= 0: raw distances, clamped to att_span
    max_relative_positions: int
    norm_rel_embeddings: bool
    conv_kernel_size: int
    conv_groups: int
    conv_act: str

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> DebertaV2Args:
        hidden = config["hidden_size"]
        heads = config["num_attention_heads"]
        if hidden % heads and "attention_head_size" not in config:
            raise ValueError(f"hidden_size {hidden} is not a multiple of num_attention_heads {heads}")
        pos_att = config.get("pos_att_type") or ()
        if isinstance(pos_att, str):
            pos_att = [x.strip() for x in pos_att.lower().split("|")]
        max_positions = config.get("max_position_embeddings", 512)
        max_relative = config.get("max_relative_positions", -1)
        if max_relative < 1:
            max_relative = max_positions
        buckets = config.get("position_buckets", -1)
        norm_rel = [x.strip() for x in str(config.get("norm_rel_ebd", "none")).lower().split("|")]
        kernel = config.get("conv_kernel_size", 0) or 0
        if kernel > 0 and kernel % 2 == 0:
            raise ValueError(f"conv_kernel_size {kernel} is even; only odd kernels keep the sequence length")
        return cls(
            vocab_size=config["vocab_size"],
            hidden_size=hidden,
            embedding_size=config.get("embedding_size") or hidden,
            num_layers=config["num_hidden_layers"],
            num_heads=heads,
            head_dim=config.get("attention_head_size") or hidden // heads,
            intermediate_size=config["intermediate_size"],
            hidden_act=config.get("hidden_act", "gelu"),
            layer_norm_eps=config.get("layer_norm_eps", 1e-7),
            max_positions=max_positions,
            type_vocab_size=config.get("type_vocab_size", 0),
            position_biased_input=config.get("position_biased_input", True),
            relative_attention=bool(config.get("relative_attention", False)),
            pos_att_type=tuple(pos_att),
            share_att_key=bool(config.get("share_att_key", False)),
            att_span=buckets if buckets > 0 else max_relative,
            position_buckets=buckets,
            max_relative_positions=max_relative,
            norm_rel_embeddings="layer_norm" in norm_rel,
            conv_kernel_size=kernel,
            conv_groups=config.get("conv_groups", 1),
            conv_act=config.get("conv_act", "tanh"),
        )


def log_bucket(distance: torch.Tensor, buckets: int, max_position: int) -> torch.Tensor:
    """transformers' `make_log_bucket_position`: distances beyond buckets / 2 on a log scale,
    with the same float ops so the rounding agrees exactly."""
    sign = torch.sign(distance)
    mid = buckets // 2
    near = (distance < mid) & (distance > -mid)
    magnitude = torch.where(near, torch.tensor(mid - 1).type_as(distance), distance.abs())
    log_pos = (
        torch.ceil(torch.log(magnitude / mid) / torch.log(torch.tensor((max_position - 1) / mid)) * (mid - 1))
        + mid
    )
    return torch.where(magnitude <= mid, distance.type_as(log_pos), log_pos * sign).to(torch.long)


class RelativeIndex:
    """Table rows that c2p and p2c read for query i, key j of a sequence, for lengths up to L."""

    def __init__(self, args: DebertaV2Args, length: int, device: torch.device) -> None:
        steps = torch.arange(length, device=device)
        distance = steps[:, None] - steps[None, :]  # [L, L]: i - j
        if args.position_buckets > 0:
            distance = log_bucket(distance, args.position_buckets, args.max_relative_positions)
        span = args.att_span
        self.c2p = (distance + span).clamp(0, 2 * span - 1)  # [L, L]
        # p2c reads row -bucket(j - i) for key j, query i, built transposed as transformers does.
        self.p2c = (span - distance).clamp(0, 2 * span - 1)  # [L(key), L(query)]
        # Buckets grow with distance, so n tokens read only rows first[n - 1]..last[n - 1] of the
        # 2 * span (512 for v3): projecting just those keeps short sequences cheap.
        self._first = self.c2p[0].tolist()
        self._last = self.c2p[:, 0].tolist()

    def rows(self, n: int) -> tuple[int, int]:
        """The table rows [first, last + 1) that c2p and p2c read for a sequence of n tokens."""
        return self._first[n - 1], self._last[n - 1] + 1


class DisentangledLayer(nn.Module):
    def __init__(self, args: DebertaV2Args, attention: Attention) -> None:
        super().__init__()
        h = args.hidden_size
        inner = args.num_heads * args.head_dim
        self.args = args
        self.attention = attention
        self.act = hidden_act(args.hidden_act)
        self.inner = inner
        self.qkv = Linear(h, 3 * inner)
        self.c2p = args.relative_attention and "c2p" in args.pos_att_type
        self.p2c = args.relative_attention and "p2c" in args.pos_att_type
        if not args.share_att_key:
            if self.c2p:
                self.pos_key = Linear(h, inner)
            if self.p2c:
                self.pos_query = Linear(h, inner)
        self.attn_out = Linear(inner, h)
        self.attn_norm = LayerNorm(h, eps=args.layer_norm_eps)
        self.up = Linear(h, args.intermediate_size)
        self.down = Linear(args.intermediate_size, h)
        self.ffn_norm = LayerNorm(h, eps=args.layer_norm_eps)
        # transformers counts c2p / p2c into the scale even when relative attention is off.
        terms = 1 + sum(t in args.pos_att_type for t in _POS_ATT_TYPES)
        self.scale = 1.0 / math.sqrt(args.head_dim * terms)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        # [R, inner] -> [H, R, D]
        return x.view(x.shape[0], self.args.num_heads, self.args.head_dim).transpose(0, 1)

    def position_projections(self, rel: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Relative embeddings [2 * span, h] -> position keys (c2p), queries (p2c), each [H, 2 * span, D]."""
        if self.args.share_att_key:
            # The layer's own query / key projections: the first 2 * inner rows of the fused QKV.
            pq, pk = F.linear(rel, self.qkv.weight[: 2 * self.inner], self.qkv.bias[: 2 * self.inner]).split(
                self.inner, -1
            )
            return (self._heads(pk) if self.c2p else None), (self._heads(pq) if self.p2c else None)
        pos_key = self._heads(self.pos_key(rel)) if self.c2p else None
        pos_query = self._heads(self.pos_query(rel)) if self.p2c else None
        return pos_key, pos_query

    def forward(
        self, x: torch.Tensor, batch: PackedBatch, rel: torch.Tensor | None, index: RelativeIndex | None
    ) -> torch.Tensor:
        tokens = x.shape[0]
        heads, dim = self.args.num_heads, self.args.head_dim
        # [T, 3 * inner] -> 3 x [T, H, D]
        q, k, v = self.qkv(x).view(tokens, 3, heads, dim).unbind(1)
        if rel is None or index is None or not (self.c2p or self.p2c):
            attended = self.attention(q, k, v, batch, scale=self.scale)
        else:
            pos_key, pos_query = self.position_projections(rel)
            scale = self.scale

            def bias(qs: torch.Tensor, ks: torch.Tensor) -> torch.Tensor:
                # qs, ks [..., H, n, D] -> [..., H, n, n]
                n = qs.shape[-2]
                shape = (*qs.shape[:-1], n)
                first, stop = index.rows(n)
                total = torch.zeros((), dtype=qs.dtype, device=qs.device)
                if pos_key is not None:
                    # score[i, j] = q_i . pos_key[row(i - j)]
                    table = pos_key[:, first:stop].to(qs.dtype)  # [H, R, D]
                    c2p = torch.matmul(qs, table.transpose(-1, -2))  # [..., H, n, R]
                    total = total + c2p.gather(-1, (index.c2p[:n, :n] - first).expand(shape))
                if pos_query is not None:
                    # score[i, j] = k_j . pos_query[row(-(j - i))]: gathered per key row, then transposed.
                    table = pos_query[:, first:stop].to(ks.dtype)  # [H, R, D]
                    p2c = torch.matmul(ks, table.transpose(-1, -2))  # [..., H, n, R]
                    total = total + p2c.gather(-1, (index.p2c[:n, :n] - first).expand(shape)).transpose(
                        -1, -2
                    )
                return total * scale

            attended = biased_attention(q, k, v, batch, scale=scale, bias=bias, backend=self.attention.name)
        x = self.attn_norm(self.attn_out(attended.reshape(tokens, self.inner)).add_(x))
        return self.ffn_norm(self.down(self.act(self.up(x))).add_(x))


class _Conv1d(nn.Conv1d):
    def reset_parameters(self) -> None:
        pass  # filled from the checkpoint, like core/layers/uninit.py's layers


class ConvLayer(nn.Module):
    """DeBERTa-v2's convolution beside the first layer, run per sequence (zero edges) on the packed layout."""

    def __init__(self, args: DebertaV2Args) -> None:
        super().__init__()
        h = args.hidden_size
        self.width = (args.conv_kernel_size - 1) // 2
        self.conv = _Conv1d(h, h, args.conv_kernel_size, groups=args.conv_groups)
        self.act = hidden_act(args.conv_act)
        self.norm = LayerNorm(h, eps=args.layer_norm_eps)

    def forward(self, embedded: torch.Tensor, residual: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        width = self.width
        # Separate sequences by `width` zero rows so no window crosses a boundary:
        # token t of sequence b sits at row t + (b + 1) * width of a [T + (B + 1) * width, h] buffer.
        rows = torch.arange(embedded.shape[0], device=embedded.device) + (batch.seq_index() + 1) * width
        buffer = embedded.new_zeros(embedded.shape[0] + (batch.num_seqs + 1) * width, embedded.shape[1])
        buffer.index_copy_(0, rows, embedded)
        # [1, h, rows] -> [rows - 2 * width, h]: output row r is centred on buffer row r + width.
        convolved = self.conv(buffer.t().unsqueeze(0)).squeeze(0).t()
        out = self.act(convolved.index_select(0, rows - width))
        return self.norm(out.add_(residual))


class DebertaV2Encoder(nn.Module):
    """Embeddings -> N post-norm layers with disentangled attention. Returns hidden states [T, h]."""

    prefixes: tuple[str, ...] = ("", "deberta.")
    embed_key = "embeddings.word_embeddings.weight"

    def __init__(self, args: DebertaV2Args, attention: Attention) -> None:
        super().__init__()
        self.args = args
        self.hidden_size = args.hidden_size
        self.num_layers = args.num_layers
        self.num_heads = args.num_heads
        self.intermediate_size = args.intermediate_size
        e = args.embedding_size
        self.word = Embedding(args.vocab_size, e)
        self.position = Embedding(args.max_positions, e) if args.position_biased_input else None
        self.token_type = Embedding(args.type_vocab_size, e) if args.type_vocab_size > 0 else None
        self.embed_proj = Linear(e, args.hidden_size, bias=False) if e != args.hidden_size else None
        self.embed_norm = LayerNorm(args.hidden_size, eps=args.layer_norm_eps)
        self.layers = nn.ModuleList(DisentangledLayer(args, attention) for _ in range(args.num_layers))
        if args.relative_attention:
            self.rel_embeddings = Embedding(2 * args.att_span, args.hidden_size)
            if args.norm_rel_embeddings:
                self.rel_norm = LayerNorm(args.hidden_size, eps=args.layer_norm_eps)
        self.conv = ConvLayer(args) if args.conv_kernel_size > 0 else None
        unused = ["embeddings.position_ids"]
        if not args.position_biased_input:
            # transformers ignores a saved absolute position table the config does not use.
            unused.append("embeddings.position_embeddings.weight")
        self.unused: tuple[str, ...] = tuple(unused)

    @property
    def max_tokens(self) -> int:
        """The trained context. Relative-only models (v3) would run longer, but never saw it."""
        return self.args.max_positions

    def embed(self, batch: PackedBatch) -> torch.Tensor:
        x = self.word(batch.input_ids)  # [T, e]
        if self.position is not None:
            x = x + self.position(batch.position_ids)
        if self.token_type is not None:
            x = x + self.token_type(batch.token_type_ids)
        if self.embed_proj is not None:
            x = self.embed_proj(x)  # [T, h]
        return self.embed_norm(x)

    def relative_embeddings(self) -> torch.Tensor | None:
        if not self.args.relative_attention:
            return None
        rel = self.rel_embeddings.weight  # [2 * span, h]
        return self.rel_norm(rel) if self.args.norm_rel_embeddings else rel

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        x = self.embed(batch)
        rel = self.relative_embeddings()
        # Distances depend only on lengths: one index for the longest sequence serves all.
        index = RelativeIndex(self.args, batch.max_len, x.device) if rel is not None else None
        embedded = x
        for number, layer in enumerate(self.layers):
            x = layer(x, batch, rel, index)
            if number == 0 and self.conv is not None:
                x = self.conv(embedded, x, batch)
        return x

    def weight_table(self) -> dict[str, Source]:
        layer = "encoder.layer.{i}."
        attn = layer + "attention."
        table: dict[str, Source] = {
            "word.weight": "embeddings.word_embeddings.weight",
            "embed_norm.weight": "embeddings.LayerNorm.weight",
            "embed_norm.bias": "embeddings.LayerNorm.bias",
        }
        if self.position is not None:
            table["position.weight"] = "embeddings.position_embeddings.weight"
        if self.token_type is not None:
            table["token_type.weight"] = "embeddings.token_type_embeddings.weight"
        if self.embed_proj is not None:
            table["embed_proj.weight"] = "embeddings.embed_proj.weight"
        if self.args.relative_attention:
            table["rel_embeddings.weight"] = "encoder.rel_embeddings.weight"
            if self.args.norm_rel_embeddings:
                table["rel_norm.weight"] = "encoder.LayerNorm.weight"
                table["rel_norm.bias"] = "encoder.LayerNorm.bias"
        if self.conv is not None:
            for p in ("weight", "bias"):
                table[f"conv.conv.{p}"] = f"encoder.conv.conv.{p}"
                table[f"conv.norm.{p}"] = f"encoder.conv.LayerNorm.{p}"
        first = self.layers[0] if self.layers else None
        for p in ("weight", "bias"):
            table[f"layers.{{i}}.qkv.{p}"] = Fuse(
                tuple(f"{attn}self.{name}_proj.{p}" for name in ("query", "key", "value"))
            )
            if first is not None and hasattr(first, "pos_key"):
                table[f"layers.{{i}}.pos_key.{p}"] = f"{attn}self.pos_key_proj.{p}"
            if first is not None and hasattr(first, "pos_query"):
                table[f"layers.{{i}}.pos_query.{p}"] = f"{attn}self.pos_query_proj.{p}"
            table[f"layers.{{i}}.attn_out.{p}"] = f"{attn}output.dense.{p}"
            table[f"layers.{{i}}.attn_norm.{p}"] = f"{attn}output.LayerNorm.{p}"
            table[f"layers.{{i}}.up.{p}"] = f"{layer}intermediate.dense.{p}"
            table[f"layers.{{i}}.down.{p}"] = f"{layer}output.dense.{p}"
            table[f"layers.{{i}}.ffn_norm.{p}"] = f"{layer}output.LayerNorm.{p}"
        return table


def build(config: Mapping[str, Any], attention: Attention) -> DebertaV2Encoder:
    return DebertaV2Encoder(DebertaV2Args.from_config(config), attention)
