"""Golden GLiNER outputs, made by the `gliner` package itself (run in a side virtualenv).

`gliner` pins transformers below what Remora's tests use, so this script runs in its own venv
(see tests/gliner_reference/venv.py) and never imports Remora. It builds tiny seeded GLiNER span
models on locally saved backbones (no hub), saves them with safetensors, reloads them the way
users do (`GLiNER.from_pretrained(dir)`), and writes what `predict_entities` answers, plus the
token ids and word masks gliner fed its encoder, to OUT/golden.json.

usage: python generate.py OUT_DIR WORDPIECE_TOKENIZER_DIR
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")

TEXTS = [
    "Barack Obama visited Paris with Angela Merkel on 3 March 2015.",
    "Apple Inc. and Microsoft compete in Cupertino, California.",
    "Ünïcödé names like Zoë Ångström and 中文 文本 appear here 🦈!",
    "The U.S. Food-and-Drug Administration approved aspirin_v2 yesterday; shares rose 5%.",
    "no capitals at all, just lowercase words about london and new york",
    "",
    "   ",
    "Dr. Jean-Luc Picard (captain) met Q at 10:30 p.m. -- then left.",
    "Real Madrid beat FC Barcelona 3-1 at the Santiago Bernabéu in El Clásico.",
    "a",
    "Tim Cook leads Apple; Satya Nadella leads Microsoft; Sundar Pichai leads Google. " * 3,
    "Ibuprofen, paracetamol and aspirin are sold in pharmacies across Germany and France.",
]

LABEL_SETS: list[list[str]] = [
    ["person", "organization", "location"],
    ["date", "sports team", "drug"],
    ["person", "person", "city"],  # duplicates collapse as gliner does
]

# (threshold, flat_ner, multi_label) per label set; the first is gliner's default.
DECODING = [(0.5, True, False), (0.3, True, False), (0.5, False, True)]


def tiny_backbone(kind: str) -> Any:
    from transformers import BertConfig, BertModel, DebertaV2Config, DebertaV2Model

    common: dict[str, Any] = dict(
        vocab_size=30522,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    if kind == "bert":
        return BertModel(BertConfig(hidden_size=48, type_vocab_size=2, **common))
    return DebertaV2Model(
        DebertaV2Config(
            hidden_size=32,
            relative_attention=True,
            pos_att_type="p2c|c2p",
            position_biased_input=False,
            share_att_key=True,
            norm_rel_ebd="layer_norm",
            position_buckets=16,
            max_relative_positions=64,
            type_vocab_size=0,
            **common,
        )
    )


# name -> (backbone, GLiNER config overrides)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    # A projection (48 -> 32), the BiLSTM, first-subtoken pooling: the common GLiNER shape.
    "bert": ("bert", dict(hidden_size=32, num_rnn_layers=1)),
    # No projection (32 = 32), two LSTM layers.
    "deberta": ("deberta", dict(hidden_size=32, num_rnn_layers=2)),
    # Mean pooling over subtokens, label embeddings from the token after <<ENT>>, no LSTM.
    "bert_mean": ("bert", dict(hidden_size=32, num_rnn_layers=0, subtoken_pooling="mean", embed_ent_token=False)),
}


def spread_scores(model: torch.nn.Module, scale: float) -> None:
    """Default init leaves every span score near one value (0.54), so decoding would hinge on
    1e-4 gaps. He-initialised MLPs with small random biases, and a final label projection that
    sets the logits' scale, spread the scores over (0, 1) so the threshold and the greedy
    overlap removal pick clear winners."""
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith(("token_rep_layer.", "rnn.")):
                continue
            if param.ndim == 2:
                param.copy_(torch.randn(param.shape, generator=gen) * (2.0 / param.shape[1]) ** 0.5)
            else:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.1)
        model.prompt_rep_layer[3].weight.mul_(scale)


def perturb(module: torch.nn.Module, seed: int) -> None:
    """Fresh LayerNorms are 1 / 0; nudge every norm so the parity test sees them."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if "LayerNorm" in name or "norm" in name.lower():
                param.add_(torch.randn(param.shape, generator=gen) * 0.1)


def build(name: str, out: Path, tokenizer_dir: Path) -> Path:
    from gliner import GLiNER

    kind, overrides = VARIANTS[name]
    torch.manual_seed(0)
    backbone_dir = out / f"{name}-backbone"
    backbone = tiny_backbone(kind)
    perturb(backbone, 1)
    backbone.save_pretrained(str(backbone_dir), safe_serialization=True)
    for file in TOKENIZER_FILES:
        shutil.copy(tokenizer_dir / file, backbone_dir / file)
    config = dict(model_name=str(backbone_dir), max_width=4, dropout=0.0, max_len=384, span_mode="markerV0")
    config.update(overrides)
    torch.manual_seed(1)
    model = GLiNER.from_config(config, backbone_from_pretrained=True, local_files_only=True)
    spread_scores(model.model, 1.5)
    target = out / name
    model.save_pretrained(str(target), safe_serialization=True)
    return target


def golden(model_dir: Path) -> list[dict[str, Any]]:
    from gliner import GLiNER

    model = GLiNER.from_pretrained(str(model_dir), local_files_only=True, load_tokenizer=True)
    model.eval()
    cases = []
    for labels, (threshold, flat_ner, multi_label) in zip(LABEL_SETS, DECODING, strict=True):
        for text in TEXTS:
            entities = model.predict_entities(
                text, labels, threshold=threshold, flat_ner=flat_ner, multi_label=multi_label
            )
            words = [w for w, _, _ in model.data_processor.words_splitter(text)]
            inputs = model.data_processor.tokenize_inputs([words], [list(dict.fromkeys(labels))]) if words else None
            cases.append(
                {
                    "text": text,
                    "labels": labels,
                    "threshold": threshold,
                    "flat_ner": flat_ner,
                    "multi_label": multi_label,
                    "entities": [
                        {k: e[k] for k in ("text", "label", "score", "start", "end")} for e in entities
                    ],
                    "input_ids": inputs["input_ids"][0].tolist() if inputs else None,
                    "words_mask": inputs["words_mask"][0].tolist() if inputs else None,
                }
            )
    return cases


def main() -> None:
    out, tokenizer_dir = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    result = {}
    for name in VARIANTS:
        model_dir = build(name, out, tokenizer_dir)
        result[name] = {"dir": str(model_dir), "cases": golden(model_dir)}
    (out / "golden.json").write_text(json.dumps(result, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
