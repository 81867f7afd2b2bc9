"""Tiny seeded MPNet: Remora's packed forward vs transformers, per token, and its cross-encoder.

Tolerances: every real token's last hidden state within 1e-5 (fp32) for every CPU attention
backend; a sequence alone, batched or reordered within 1e-5; classification logits and
sentence-transformers outputs within 1e-5; on CUDA within 2e-2 (fp16) / 1e-1 (bf16) of fp32
transformers (measured on CPU in those dtypes: 6e-3 / 4.5e-2).
Lengths run to 200 tokens, past the 128-token distance where MPNet's log buckets saturate.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from remora.core import Engine, EngineSettings
from remora.core.batch import pack
from tests.helpers import randomize_layernorms, save_tiny, write_bpe_tokenizer

ATOL = 1e-5
BACKENDS = ("eager", "cpu", "sdpa")
CUDA_ATOL = {"float16": 2e-2, "bfloat16": 1e-1}
LENGTHS = [1, 7, 33, 2, 64, 200, 150, 15]
QUERY = "how do sea otters open shellfish"
DOCS = [
    "Sea otters crack shellfish open with rocks they carry.",
    "",
    "The quick brown fox " * 40,
    "中文 🦈 ünïcödé",
]


def tiny_config(vocab: int, **overrides: Any) -> Any:
    from transformers import MPNetConfig

    base: dict[str, Any] = dict(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=258,  # 256 tokens + padding_idx + 1
        relative_attention_num_buckets=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    base.update(overrides)
    return MPNetConfig(**base)


def build(target: Path, cls_name: str = "MPNetModel", seed: int = 0, **overrides: Any) -> torch.nn.Module:
    """A seeded MPNet saved with a byte-level BPE tokenizer (MPNet's <s> A </s></s> B </s>)."""
    import transformers

    target.mkdir(parents=True)
    vocab = write_bpe_tokenizer(target)
    torch.manual_seed(seed)
    model = getattr(transformers, cls_name)(tiny_config(vocab, **overrides)).eval()
    randomize_layernorms(model, seed)
    with torch.no_grad():
        # Fresh tables are ~N(0, 0.02): too small for the bias to matter to a 1e-5 comparison.
        for name, param in model.named_parameters():
            if "relative_attention_bias" in name:
                param.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(seed))
    save_tiny(model, target, tokenizer="none")
    return model


def random_ids(lengths: list[int], seed: int = 1) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(5, 300, (n,), generator=gen).tolist() for n in lengths]


def reference_hidden(model: torch.nn.Module, ids: list[list[int]]) -> list[torch.Tensor]:
    """transformers on a right-padded batch (pad id 1), cut back to each sequence's tokens."""
    longest = max(map(len, ids))
    input_ids = torch.ones(len(ids), longest, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=mask).last_hidden_state
    return [out[row, : len(seq)] for row, seq in enumerate(ids)]


def engine_for(path: Path, backend: str = "auto") -> Engine:
    engine = Engine(EngineSettings(attention=backend, register_defaults=False, num_threads=1))  # type: ignore[arg-type]
    engine.register("m", path)
    return engine


def remora_hidden(engine: Engine, ids: list[list[int]]) -> list[torch.Tensor]:
    batch = pack(ids)
    with torch.inference_mode():
        hidden = engine.model("m").module.encoder(batch)
    return [hidden[s:e] for s, e in itertools.pairwise(batch.cu_seqlens.tolist())]


def assert_per_sequence(got: list[torch.Tensor], expected: list[torch.Tensor], atol: float = ATOL) -> None:
    for index, (g, e) in enumerate(zip(got, expected, strict=True)):
        torch.testing.assert_close(
            g.float(), e.float(), atol=atol, rtol=0, msg=lambda m, i=index: f"sequence {i}: {m}"
        )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    target = tmp_path_factory.mktemp("mpnet") / "model"
    return target, build(target)


@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_transformers_per_token(tiny: tuple[Path, torch.nn.Module], backend: str) -> None:
    path, model = tiny
    ids = random_ids(LENGTHS)
    assert_per_sequence(remora_hidden(engine_for(path, backend), ids), reference_hidden(model, ids))


@pytest.mark.parametrize("backend", ["cpu", "sdpa"])
def test_alone_batched_and_reordered_agree(tiny: tuple[Path, torch.nn.Module], backend: str) -> None:
    engine = engine_for(tiny[0], backend)
    ids = random_ids(LENGTHS, seed=7)
    batched = remora_hidden(engine, ids)
    alone = [remora_hidden(engine, [seq])[0] for seq in ids]
    order = [5, 0, 7, 2, 6, 1, 4, 3]
    reordered = remora_hidden(engine, [ids[i] for i in order])
    assert_per_sequence(alone, batched)
    assert_per_sequence(reordered, [batched[i] for i in order])


def test_text_level_matches_sentence_transformers(tiny: tuple[Path, torch.nn.Module]) -> None:
    """Whole path from text: BPE tokenizer, mean pooling, positions from padding_idx + 1."""
    from sentence_transformers import SentenceTransformer

    path = tiny[0]
    texts = ["Remora packs tokens.", "", "The quick brown fox " * 30, "中文 🦈 ünïcödé"]
    reference = SentenceTransformer(str(path), device="cpu").encode(texts, convert_to_numpy=True)
    got = engine_for(path).encode("m", texts)
    assert got.shape == reference.shape
    np.testing.assert_allclose(got, reference, atol=ATOL, rtol=0)


def test_masked_lm_checkpoint_encodes(tmp_path: Path) -> None:
    """An MPNetForMaskedLM checkpoint encodes with its encoder; the LM head is declared unused."""
    model = build(tmp_path / "mlm", "MPNetForMaskedLM", seed=2)
    ids = random_ids([5, 130, 9], seed=3)
    assert_per_sequence(remora_hidden(engine_for(tmp_path / "mlm"), ids), reference_hidden(model.mpnet, ids))


def transformers_logits(path: Path, pairs: list[tuple[str, str]]) -> np.ndarray:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
    features = tokenizer(
        [q for q, _ in pairs], [d for _, d in pairs], padding=True, truncation=True, return_tensors="pt"
    )
    with torch.no_grad():
        return model(**features).logits.numpy()


@pytest.mark.parametrize("num_labels", [1, 3])
def test_sequence_classification_matches_transformers_and_cross_encoder(
    tmp_path: Path, num_labels: int
) -> None:
    from sentence_transformers import CrossEncoder

    path = tmp_path / "ce"
    build(path, "MPNetForSequenceClassification", seed=4, num_labels=num_labels)
    pairs = [(QUERY, d) for d in DOCS] + [("a premise", "a hypothesis")]
    engine = engine_for(path)
    raw = engine.score_pairs("m", pairs, apply_activation=False)
    np.testing.assert_allclose(raw, transformers_logits(path, pairs), atol=ATOL, rtol=0)
    reference = CrossEncoder(str(path), device="cpu").predict(pairs)
    got = engine.score_pairs("m", pairs)
    np.testing.assert_allclose(got[:, 0] if num_labels == 1 else got, reference, atol=ATOL, rtol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_cuda_matches_transformers(tiny: tuple[Path, torch.nn.Module], dtype: str) -> None:
    path, model = tiny
    engine = Engine(EngineSettings(device="cuda", register_defaults=False))
    engine.register("m", path, dtype=dtype)
    ids = random_ids(LENGTHS)
    batch = pack(ids).to("cuda")
    with torch.inference_mode():
        hidden = engine.model("m").module.encoder(batch).float().cpu()
    got = [hidden[s:e] for s, e in itertools.pairwise(batch.cu_seqlens.tolist())]
    assert_per_sequence(got, reference_hidden(model, ids), atol=CUDA_ATOL[dtype])
