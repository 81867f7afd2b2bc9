"""Tiny seeded models of the model zoo, built from configs and saved as hub directories: SPLADE,
PyLate ColBERT, BGE-M3, a BERT NER tagger, Qwen decoders (the yes/no reranker among them) and a
synthetic GLiNER directory. Shared by the parity tests (tests/parity) and the sidecar's
over-HTTP tests (tests/sidecar/test_zoo_http.py)."""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from remora.core.prompts import reranker_text
from tests.helpers import (
    BPE_TRAINING_TEXT,
    copy_wordpiece_tokenizer,
    minilm_dir,
    randomize_layernorms,
    save_tiny,
    tiny_bert_config,
    tiny_xlmr_config,
    write_bpe_tokenizer,
    write_json,
)

# -- SPLADE (sentence-transformers SparseEncoder) ------------------------------------------------


def perturb_mlm_bias(model: torch.nn.Module, seed: int) -> None:
    """The decoder bias starts at zero; give it values so parity sees it."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("predictions.bias", "lm_head.bias")):
                param.add_(torch.randn(param.shape, generator=gen) * 0.5)


def build_splade(target: Path, *, family: str = "bert", pooling: str = "max", activation: str = "relu",
                 max_active_dims: int | None = None, seed: int = 0) -> Path:
    """A seeded *ForMaskedLM saved by SparseEncoder itself (Transformer fill-mask + SpladePooling)."""
    from sentence_transformers import SparseEncoder
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sparse_encoder.modules import SpladePooling
    from transformers import BertForMaskedLM, XLMRobertaForMaskedLM

    mlm = target.parent / f"{target.name}-mlm"
    mlm.mkdir(parents=True)
    torch.manual_seed(seed)
    if family == "bert":
        model: Any = BertForMaskedLM(tiny_bert_config()).eval()
        randomize_layernorms(model, seed)
        perturb_mlm_bias(model, seed)
        save_tiny(model, mlm)
    else:
        vocab = write_bpe_tokenizer(mlm)
        model = XLMRobertaForMaskedLM(tiny_xlmr_config(vocab)).eval()
        randomize_layernorms(model, seed)
        perturb_mlm_bias(model, seed)
        save_tiny(model, mlm, tokenizer="none")
    encoder = SparseEncoder(
        modules=[Transformer(str(mlm), transformer_task="fill-mask"), SpladePooling(pooling, activation)],
        device="cpu",
        max_active_dims=max_active_dims,
    )
    encoder.save(str(target))
    return target


# -- ColBERT (PyLate) and BGE-M3 ----------------------------------------------------------------

COLBERT_DIM = 24
COLBERT_QUERY_LENGTH = 16
COLBERT_DOCUMENT_LENGTH = 40


def bert_with_tokens(target: Path, extra_tokens: list[str], seed: int) -> Any:
    from transformers import AutoTokenizer, BertModel

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir()))
    tokenizer.add_tokens(extra_tokens)
    tokenizer.save_pretrained(str(target))
    torch.manual_seed(seed)
    model = BertModel(tiny_bert_config(vocab_size=len(tokenizer)), add_pooling_layer=False).eval()
    randomize_layernorms(model, seed)
    model.save_pretrained(str(target))
    return model


def build_pylate(target: Path, *, seed: int = 0, **settings: Any) -> Path:
    """What PyLate 1.6 saves: Transformer + its Dense (no bias), the ColBERT settings at the top
    level of config_sentence_transformers.json, [Q] / [D] added to the vocabulary."""
    target.mkdir(parents=True)
    bert_with_tokens(target, ["[Q] ", "[D] "], seed)
    write_json(target / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Dense", "type": "pylate.models.Dense.Dense"},
    ])
    write_json(target / "sentence_bert_config.json", {"max_seq_length": COLBERT_DOCUMENT_LENGTH - 1, "do_lower_case": False})
    write_json(target / "1_Dense" / "config.json", {
        "in_features": 64, "out_features": COLBERT_DIM, "bias": False,
        "activation_function": "torch.nn.modules.linear.Identity", "use_residual": False,
    })
    gen = torch.Generator().manual_seed(seed + 1)
    save_file({"linear.weight": torch.randn(COLBERT_DIM, 64, generator=gen) * 0.2}, str(target / "1_Dense" / "model.safetensors"))
    write_json(target / "config_sentence_transformers.json", {
        "model_type": "ColBERT", "prompts": {}, "default_prompt_name": None, "similarity_fn_name": "MaxSim",
        "query_prefix": "[Q] ", "document_prefix": "[D] ", "query_length": COLBERT_QUERY_LENGTH,
        "document_length": COLBERT_DOCUMENT_LENGTH, "skiplist_words": list(string.punctuation), **settings,
    })
    return target



def build_bge_m3(target: Path, seed: int = 0) -> tuple[Path, dict[str, torch.Tensor]]:
    """A tiny XLM-R with BGE-M3's layout: ST CLS pooling + Normalize, and its two extra heads as
    safetensors beside the model (as converted from colbert_linear.pt / sparse_linear.pt)."""
    from transformers import XLMRobertaModel

    target.mkdir(parents=True)
    vocab = write_bpe_tokenizer(target)
    torch.manual_seed(seed)
    model = XLMRobertaModel(tiny_xlmr_config(vocab), add_pooling_layer=False).eval()
    randomize_layernorms(model, seed)
    model.save_pretrained(str(target))
    legacy = "sentence_transformers.models."
    write_json(target / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": legacy + "Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": legacy + "Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": legacy + "Normalize"},
    ])
    write_json(target / "1_Pooling" / "config.json", {"word_embedding_dimension": 64, "pooling_mode_cls_token": True})
    write_json(target / "sentence_bert_config.json", {"max_seq_length": 128, "do_lower_case": False})
    gen = torch.Generator().manual_seed(seed + 1)
    heads = {
        "sparse.weight": torch.randn(1, 64, generator=gen) * 0.3, "sparse.bias": torch.tensor([0.1]),
        "colbert.weight": torch.randn(64, 64, generator=gen) * 0.2, "colbert.bias": torch.randn(64, generator=gen) * 0.1,
    }
    for stem, key in (("sparse_linear", "sparse"), ("colbert_linear", "colbert")):
        save_file({"weight": heads[f"{key}.weight"], "bias": heads[f"{key}.bias"]}, str(target / f"{stem}.safetensors"))
    return target, heads



# -- token-classification NER -------------------------------------------------------------------

NER_TAGS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]


def seeded_tagger(model: torch.nn.Module) -> torch.nn.Module:
    randomize_layernorms(model)
    with torch.no_grad():
        # Confident, varied tags: no two labels of a token within rounding of each other.
        model.classifier.weight.mul_(8.0)  # type: ignore[union-attr, operator]
    return model.eval()


def tag_config() -> dict[str, Any]:
    return {"id2label": dict(enumerate(NER_TAGS)), "label2id": {t: i for i, t in enumerate(NER_TAGS)}}


def build_bert_ner(target: Path, seed: int = 0) -> Path:
    """A seeded BertForTokenClassification with B-/I- tags for PER, ORG and LOC."""
    from transformers import BertForTokenClassification

    torch.manual_seed(seed)
    model = seeded_tagger(BertForTokenClassification(tiny_bert_config(**tag_config())))
    return save_tiny(model, target)


# -- Qwen decoders (embedders, classifiers, the yes/no reranker) ---------------------------------

RERANK_QUERY = "how do sea otters open shellfish"
RERANK_DOCS = [
    "Sea otters crack shellfish open with rocks they carry.",
    "",
    "The stock market closed higher on Tuesday.",
    "yes",
    "中文 🦈 ünïcödé",
]
QWEN_TRAINING_TEXT = [
    *BPE_TRAINING_TEXT,
    reranker_text(RERANK_QUERY, RERANK_DOCS[0], None),
    "yes",
    "no",
    "Sea otters crack shellfish open with rocks; the stock market closed higher.",
]


def write_qwen_tokenizer(target: Path, *, eos_suffix: bool = False) -> int:
    """A tiny byte-level BPE with Qwen's chat tokens (pad = <|endoftext|>, id 0) and whole-word
    "yes" / "no" tokens; `eos_suffix` appends <|endoftext|> as Qwen3-Embedding's tokenizer does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(QWEN_TRAINING_TEXT * 8, trainer=trainer)
    tok.add_tokens(["<think>", "</think>"])  # plain added tokens, as in Qwen3's tokenizer
    if eos_suffix:
        tok.post_processor = processors.TemplateProcessing(
            single="$A <|endoftext|>", pair="$A $B <|endoftext|>", special_tokens=[("<|endoftext|>", 0)]
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>", model_max_length=256
    )
    fast.save_pretrained(str(target))
    return int(tok.get_vocab_size())


def qwen_config(family: str, vocab: int, **overrides: Any) -> Any:
    from transformers import Qwen2Config, Qwen3Config

    base: dict[str, Any] = dict(
        vocab_size=vocab,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention, as every released Qwen
        intermediate_size=96,
        max_position_embeddings=256,
        rope_theta=1_000_000.0,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    if family == "qwen3":
        base["head_dim"] = 32  # not hidden / heads, as Qwen3 decouples them
    base.update(overrides)
    return (Qwen3Config if family == "qwen3" else Qwen2Config)(**base)


def randomize_qwen(model: torch.nn.Module, seed: int) -> None:
    """Fresh RMSNorm weights are 1 and biases 0; perturb them so the comparison sees them."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                param.add_(torch.randn(param.shape, generator=gen) * 0.1)


def build_qwen(
    target: Path, cls_name: str, seed: int = 0, *, eos_suffix: bool = False, **overrides: Any
) -> Any:
    """Save a seeded transformers Qwen model (class `cls_name`) with its tokenizer; return it."""
    import transformers

    target.mkdir(parents=True)
    vocab = write_qwen_tokenizer(target, eos_suffix=eos_suffix)
    family = "qwen3" if cls_name.startswith("Qwen3") else "qwen2"
    torch.manual_seed(seed)
    model = getattr(transformers, cls_name)(qwen_config(family, vocab, **overrides)).eval()
    randomize_qwen(model, seed)
    model.save_pretrained(str(target), safe_serialization=True)
    return model


# -- GLiNER (a synthetic directory, no gliner package needed) ------------------------------------

GLINER_SPECIALS = ["[FLERT]", "<<ENT>>", "<<SEP>>"]  # gliner's added tokens, in its order


def write_synthetic_gliner(target: Path, **overrides: Any) -> Path:
    """A GLiNER directory as gliner saves one: gliner_config.json (with the backbone's config),
    model.safetensors under gliner's names, and a tokenizer that has gliner's added tokens."""
    from safetensors.torch import save_file
    from tokenizers import AddedToken, Tokenizer
    from transformers import BertModel

    from remora.core.heads.gliner import GlinerHead

    target.mkdir(parents=True)
    copy_wordpiece_tokenizer(target)
    tokenizer = Tokenizer.from_file(str(target / "tokenizer.json"))
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in GLINER_SPECIALS])
    tokenizer.save(str(target / "tokenizer.json"))
    vocab = tokenizer.get_vocab_size()
    torch.manual_seed(0)
    backbone = BertModel(tiny_bert_config(vocab_size=vocab)).eval()
    randomize_layernorms(backbone)
    config = {
        "encoder_config": backbone.config.to_dict(),
        "hidden_size": 32,
        "max_width": 4,
        "max_len": 384,
        "num_rnn_layers": 1,
        "span_mode": "markerV0",
        "class_token_index": tokenizer.token_to_id("<<ENT>>"),
        "vocab_size": vocab,
        "ent_token": "<<ENT>>",
        "sep_token": "<<SEP>>",
        **overrides,
    }
    (target / "gliner_config.json").write_text(json.dumps(config))
    tensors = {f"token_rep_layer.bert_layer.model.{k}": v.contiguous() for k, v in backbone.state_dict().items()}
    head = GlinerHead(config, backbone.config.hidden_size)
    shapes = {k: v.shape for k, v in head.state_dict().items()}
    gen = torch.Generator().manual_seed(1)
    for name, source in head.weight_table().items():
        assert isinstance(source, str)
        fan_in = shapes[name][-1] if len(shapes[name]) == 2 else 10.0
        tensors[source] = torch.randn(shapes[name], generator=gen) * (2.0 / fan_in) ** 0.5
    save_file(tensors, str(target / "model.safetensors"))
    return target

