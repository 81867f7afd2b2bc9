"""GLiNER's layers on top of its encoder (the uni-encoder span model, span_mode "markerV0").

Reference: the `gliner` package (0.2.x): `UniEncoderSpanModel`, `SpanMarkerV0`,
`LstmSeq2SeqEncoder`, `create_projection_layer`. The head has two parts:
- `forward`: the per-token step of the packed forward pass (gliner's optional projection from
  the encoder's width to its own `hidden_size`), so the scheduler batches GLiNER requests like
  any token classifier and hands back per-token rows;
- `scorer`: the word-level part, run per request by the finishing step once word and label
  embeddings are picked out of those rows: an optional BiLSTM over each text's words, span
  representations (start / end projections, concatenated, projected) for spans of up to
  `max_width` words, label representations, and span x label logits. It always runs in float32:
  it is small, and LSTMs are not supported in every half precision.
Dropout layers are inference no-ops and are left out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pack_sequence, pad_packed_sequence

from remora.core.batch import PackedBatch
from remora.core.layers.uninit import Linear
from remora.core.weights import Source

POOLINGS = ("first", "last", "mean", "max")
# Span rows projected at once: bounds the [rows, 8 * hidden] intermediate of the span MLP.
SPAN_CHUNK = 32768


@dataclass(frozen=True)
class GlinerSettings:
    """The parts of gliner_config.json that inference depends on."""

    hidden_size: int
    max_width: int
    max_len: int  # words per text; gliner cuts longer texts
    num_rnn_layers: int
    subtoken_pooling: str
    embed_ent_token: bool  # label embedding from the <<ENT>> token (else the token after it)
    ent_token: str
    sep_token: str

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> GlinerSettings:
        """Settings of a uni-encoder span model; other GLiNER variants are refused by name."""
        refused = {
            "labels_encoder": "bi-encoder models",
            "labels_decoder": "label-generating decoder models",
            "relations_layer": "relation extraction models",
            "span_encoder_config": "span context encoders",
        }
        for key, what in refused.items():
            if config.get(key):
                raise ValueError(f"{what} ({key}) are not supported")
        model_type = config.get("model_type")
        if model_type not in (None, "gliner", "gliner_uni_encoder_span"):
            raise ValueError(f"GLiNER model_type {model_type!r} is not supported (only uni-encoder span models)")
        span_mode = config.get("span_mode", "markerV0")
        if span_mode != "markerV0":
            raise ValueError(f"span_mode {span_mode!r} is not supported (only 'markerV0')")
        for key in ("post_fusion_schema", "fuse_layers", "precomputed_prompts_mode"):
            if config.get(key):
                raise ValueError(f"{key} is not supported")
        splitter = config.get("words_splitter_type", "whitespace")
        if splitter != "whitespace":
            raise ValueError(f"words_splitter_type {splitter!r} is not supported (only 'whitespace')")
        pooling = config.get("subtoken_pooling", "first")
        if pooling not in POOLINGS:
            raise ValueError(f"subtoken_pooling {pooling!r} is not one of {', '.join(POOLINGS)}")
        return cls(
            hidden_size=int(config.get("hidden_size", 512)),
            max_width=int(config.get("max_width", 12)),
            max_len=int(config.get("max_len", 384)),
            num_rnn_layers=int(config.get("num_rnn_layers", 1)),
            subtoken_pooling=str(pooling),
            embed_ent_token=bool(config.get("embed_ent_token", True)),
            ent_token=str(config.get("ent_token", "<<ENT>>")),
            sep_token=str(config.get("sep_token", "<<SEP>>")),
        )


class Mlp(nn.Module):
    """gliner's projection layer: Linear(in, 4 * out) -> ReLU -> Linear(4 * out, out)."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.up = Linear(d_in, 4 * d_out)
        self.down = Linear(4 * d_out, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(x)))

    @staticmethod
    def table(target: str, source: str) -> dict[str, Source]:
        # Checkpoint indices 0 and 3: the Sequential also holds the ReLU (1) and a Dropout (2).
        return {
            f"{target}.up.weight": f"{source}.0.weight",
            f"{target}.up.bias": f"{source}.0.bias",
            f"{target}.down.weight": f"{source}.3.weight",
            f"{target}.down.bias": f"{source}.3.bias",
        }


class SpanScorer(nn.Module):
    def __init__(self, settings: GlinerSettings) -> None:
        super().__init__()
        width = settings.hidden_size
        self.max_width = settings.max_width
        self.rnn: nn.LSTM | None = None
        if settings.num_rnn_layers > 0:
            self.rnn = nn.LSTM(
                width, width // 2, num_layers=settings.num_rnn_layers, bidirectional=True, batch_first=True
            )
        self.start = Mlp(width, width)
        self.end = Mlp(width, width)
        self.out = Mlp(2 * width, width)
        self.prompt = Mlp(width, width)

    def contextualize(self, words: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The BiLSTM over each text's words ([W_b, D] each, W_b may be 0), packed, not padded."""
        if self.rnn is None:
            return list(words)
        present = [i for i, w in enumerate(words) if len(w)]
        out = list(words)
        if not present:
            return out
        packed, _ = self.rnn(pack_sequence([words[i] for i in present], enforce_sorted=False))
        padded, lengths = pad_packed_sequence(packed, batch_first=True)  # [B', W_max, D]
        for row, i in enumerate(present):
            out[i] = padded[row, : int(lengths[row])]
        return out

    def span_logits(self, words: Sequence[torch.Tensor], prompts: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Per text: words [W_b, D] and its label embeddings [C, D] -> logits [W_b, K, C] for the
        span starting at word w with w + k as its last word. Spans running past the text (w + k
        >= W_b) hold a clamped end and are for the decoder to drop, as gliner's."""
        counts = [len(w) for w in words]
        flat = torch.cat(list(words))  # [sum W, D]: every text's words, packed
        starts, ends = self.start(flat), self.end(flat)
        # Packed index of each span's last word, clamped inside its own text: [sum W, K].
        widths = torch.arange(self.max_width)
        parts, base = [], 0
        for n in counts:
            parts.append(base + (torch.arange(n)[:, None] + widths).clamp(max=max(n - 1, 0)))
            base += n
        end_index = torch.cat(parts).to(flat.device)
        step = max(1, SPAN_CHUNK // self.max_width)
        spans = []
        for begin in range(0, len(flat), step):
            stop = begin + step
            part = starts[begin:stop, None, :].expand(-1, self.max_width, -1)  # [w, K, D]
            pair = torch.cat([part, ends[end_index[begin:stop]]], dim=-1).relu()  # [w, K, 2D]
            spans.append(self.out(pair))  # [w, K, D]
        span_rep = torch.cat(spans) if spans else flat.new_zeros(0, self.max_width, flat.shape[-1])
        label_rep = self.prompt(torch.cat(list(prompts))).split([len(p) for p in prompts])  # [C_b, D] each
        # [W_b, K, D] x [D, C_b] -> [W_b, K, C_b]
        return [rep @ labels.T for rep, labels in zip(span_rep.split(counts), label_rep, strict=True)]


class GlinerHead(nn.Module):
    def __init__(self, config: Mapping[str, Any], hidden_size: int) -> None:
        super().__init__()
        self.settings = GlinerSettings.from_config(config)
        width = self.settings.hidden_size
        # The width of the per-token rows the forward pass hands back.
        self.num_labels = width
        self.projection = Linear(hidden_size, width) if hidden_size != width else None
        self.scorer = SpanScorer(self.settings)

    def forward(self, hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        # [T, encoder width] -> [T, GLiNER width]
        return hidden if self.projection is None else self.projection(hidden)

    def weight_table(self, prefix: str = "") -> dict[str, Source]:
        """Names in a gliner model.safetensors (top level: `prefix` is not used)."""
        table: dict[str, Source] = {}
        if self.projection is not None:
            table["projection.weight"] = "token_rep_layer.projection.weight"
            table["projection.bias"] = "token_rep_layer.projection.bias"
        if self.scorer.rnn is not None:
            for name in self.scorer.rnn.state_dict():
                table[f"scorer.rnn.{name}"] = f"rnn.lstm.{name}"
        marker = "span_rep_layer.span_rep_layer"
        table.update(Mlp.table("scorer.start", f"{marker}.project_start"))
        table.update(Mlp.table("scorer.end", f"{marker}.project_end"))
        table.update(Mlp.table("scorer.out", f"{marker}.out_project"))
        table.update(Mlp.table("scorer.prompt", "prompt_rep_layer"))
        return table
