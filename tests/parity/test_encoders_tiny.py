"""Tiny seeded BERT and XLM-R configs: Remora's packed forward vs transformers, per token.

Tolerance: every real token's last hidden state within atol 1e-5 (fp32), for every CPU
attention backend. transformers runs the same ids padded with an attention mask.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from remora.core import Engine, EngineSettings
from remora.core.batch import pack
from tests.helpers import (
    randomize_layernorms,
    save_tiny,
    tiny_bert_config,
    tiny_xlmr_config,
    write_bpe_tokenizer,
)

ATOL = 1e-5
BACKENDS = ("eager", "cpu", "sdpa")


def reference_hidden(model: torch.nn.Module, ids: list[list[int]], types: list[list[int]] | None, pad_id: int) -> list[torch.Tensor]:
    """Per-sequence [n, h] hidden states from transformers on a right-padded batch."""
    longest = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), longest), pad_id, dtype=torch.long)
    mask = torch.zeros(len(ids), longest, dtype=torch.long)
    token_types = torch.zeros(len(ids), longest, dtype=torch.long)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
        if types is not None:
            token_types[row, : len(seq)] = torch.tensor(types[row])
    kwargs = {"token_type_ids": token_types} if types is not None else {}
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=mask, **kwargs).last_hidden_state
    return [out[row, : len(seq)] for row, seq in enumerate(ids)]


def remora_hidden(model_dir: Path, backend: str, ids: list[list[int]], types: list[list[int]] | None) -> list[torch.Tensor]:
    engine = Engine(EngineSettings(attention=backend, register_defaults=False))
    engine.register("tiny", model_dir)
    loaded = engine.model("tiny")
    batch = pack(ids, types)
    with torch.inference_mode():
        hidden = loaded.module.encoder(batch)
    bounds = batch.cu_seqlens.tolist()
    return [hidden[s:e] for s, e in itertools.pairwise(bounds)]


def random_ids(gen: torch.Generator, lengths: list[int], vocab: int, low: int = 5) -> list[list[int]]:
    return [torch.randint(low, vocab, (n,), generator=gen).tolist() for n in lengths]


LENGTHS = [1, 7, 33, 2, 64, 128, 15]


def build_tiny_xlmr(target: Path, seed: int) -> tuple[torch.nn.Module, int]:
    """A seeded XLMRobertaModel saved with its own trained BPE tokenizer; returns (model, vocab)."""
    from transformers import XLMRobertaModel

    target.mkdir()
    vocab = write_bpe_tokenizer(target)
    torch.manual_seed(seed)
    model = XLMRobertaModel(tiny_xlmr_config(vocab), add_pooling_layer=False).eval()
    randomize_layernorms(model)
    save_tiny(model, target, tokenizer="none")
    return model, vocab


def assert_per_sequence(got: list[torch.Tensor], expected: list[torch.Tensor]) -> None:
    for index, (e, g) in enumerate(zip(expected, got, strict=True)):
        torch.testing.assert_close(g, e, atol=ATOL, rtol=0, msg=lambda m, i=index: f"sequence {i}: {m}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("act", ["gelu", "gelu_new", "relu"])
def test_bert_matches_transformers(tmp_path: Path, backend: str, act: str) -> None:
    from transformers import BertModel

    torch.manual_seed(0)
    model = BertModel(tiny_bert_config(hidden_act=act)).eval()
    randomize_layernorms(model)
    save_tiny(model, tmp_path / "bert")
    gen = torch.Generator().manual_seed(1)
    ids = random_ids(gen, LENGTHS, 30522)
    # Segment ids as a pair would have them: 0 for the first part, 1 for the rest.
    types = [[0] * (n // 2) + [1] * (n - n // 2) for n in LENGTHS]
    assert_per_sequence(remora_hidden(tmp_path / "bert", backend, ids, types), reference_hidden(model, ids, types, pad_id=0))


@pytest.mark.parametrize("backend", BACKENDS)
def test_xlm_roberta_matches_transformers(tmp_path: Path, backend: str) -> None:
    target = tmp_path / "xlmr"
    model, vocab = build_tiny_xlmr(target, seed=0)
    ids = random_ids(torch.Generator().manual_seed(2), LENGTHS, vocab)
    assert_per_sequence(remora_hidden(target, backend, ids, None), reference_hidden(model, ids, None, pad_id=1))


def test_xlm_roberta_text_level_matches_sentence_transformers(tmp_path: Path) -> None:
    """Whole path from text: the BPE tokenizer with RoBERTa's template, positions from pad + 1."""
    from sentence_transformers import SentenceTransformer

    target = tmp_path / "xlmr"
    build_tiny_xlmr(target, seed=3)
    texts = ["Remora packs tokens.", "", "The quick brown fox " * 30, "中文 🦈 ünïcödé"]
    reference = SentenceTransformer(str(target), device="cpu").encode(texts, convert_to_numpy=True)
    engine = Engine(EngineSettings(register_defaults=False))
    engine.register("xlmr", target)
    got = engine.encode("xlmr", texts)
    assert got.shape == reference.shape
    assert abs(got - reference).max() <= ATOL


def test_bert_pooler_and_mlm_tensors_are_dropped_explicitly(tmp_path: Path) -> None:
    """A BertForMaskedLM checkpoint encodes with its encoder; the MLM head is declared unused."""
    from transformers import BertForMaskedLM

    torch.manual_seed(0)
    model = BertForMaskedLM(tiny_bert_config()).eval()
    save_tiny(model, tmp_path / "mlm")
    gen = torch.Generator().manual_seed(4)
    ids = random_ids(gen, [5, 9], 30522)
    expected = reference_hidden(model.bert, ids, [[0] * 5, [0] * 9], pad_id=0)
    assert_per_sequence(remora_hidden(tmp_path / "mlm", "cpu", ids, None), expected)
