"""Tiny seeded DeBERTa-v2 / v3: Remora's packed forward vs transformers, per token, and its heads.

Tolerances: every real token's last hidden state within 1e-5 (fp32) for every CPU attention
backend; a sequence alone, batched or reordered within 1e-5; sequence- and token-classification
logits and CrossEncoder scores within 1e-5; on CUDA within 2e-2 (fp16) / 1e-1 (bf16) of fp32
transformers (measured on CPU in those dtypes: 6e-3 / 4.5e-2).
Small bucket settings (16 log buckets over 64 positions, or 24 clamped raw distances) with
sequences up to 200 tokens exercise the bucketing and the clamping.
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
from tests.helpers import randomize_layernorms, save_tiny

ATOL = 1e-5
BACKENDS = ("eager", "cpu", "sdpa")
CUDA_ATOL = {"float16": 2e-2, "bfloat16": 1e-1}
LENGTHS = [1, 7, 33, 2, 64, 200, 150, 15]
QUERY = "how do sea otters open shellfish"
DOCS = [
    "Sea otters crack shellfish open with rocks they carry.",
    "",
    "The stock market closed higher. " * 40,
    "otter",
]

VARIANTS: dict[str, dict[str, Any]] = {
    # DeBERTa-v3 shape: relative positions only, shared keys, LayerNorm'd 2 x 16 log buckets.
    "v3": dict(
        relative_attention=True,
        pos_att_type="p2c|c2p",
        position_biased_input=False,
        share_att_key=True,
        norm_rel_ebd="layer_norm",
        position_buckets=16,
        max_relative_positions=64,
        type_vocab_size=0,
    ),
    # DeBERTa-v2 (xlarge-like): own position projections, absolute positions and token types,
    # an embedding projection, the first layer's convolution, raw distances clamped at 24.
    "v2": dict(
        relative_attention=True,
        pos_att_type="p2c|c2p",
        position_biased_input=True,
        share_att_key=False,
        max_relative_positions=24,
        type_vocab_size=2,
        embedding_size=48,
        conv_kernel_size=3,
        conv_act="gelu",
    ),
    # Content-to-position only, without the table's LayerNorm.
    "c2p": dict(
        relative_attention=True,
        pos_att_type=["c2p"],
        position_biased_input=False,
        share_att_key=False,
        position_buckets=8,
        max_relative_positions=32,
    ),
    # No relative attention: the engine's own backends, with the scale still counting c2p / p2c.
    "absolute": dict(relative_attention=False, pos_att_type="p2c|c2p", type_vocab_size=2),
}


def tiny_config(variant: str = "v3", **overrides: Any) -> Any:
    from transformers import DebertaV2Config

    base: dict[str, Any] = dict(
        vocab_size=30522,  # MiniLM's WordPiece tokenizer
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=256,
        pad_token_id=0,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        **VARIANTS[variant],
    )
    base.update(overrides)
    return DebertaV2Config(**base)


def build(
    target: Path, cls_name: str = "DebertaV2Model", variant: str = "v3", seed: int = 0, **overrides: Any
) -> Any:
    import transformers

    torch.manual_seed(seed)
    model = getattr(transformers, cls_name)(tiny_config(variant, **overrides)).eval()
    randomize_layernorms(model, seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        # Fresh biases are zero and tables ~N(0, 0.02): perturb them so parity sees them.
        for name, param in model.named_parameters():
            if name.endswith(".bias") or "rel_embeddings" in name:
                param.add_(torch.randn(param.shape, generator=gen) * 0.5)
    save_tiny(model, target)
    return model


def random_ids(lengths: list[int], seed: int = 1) -> tuple[list[list[int]], list[list[int]]]:
    gen = torch.Generator().manual_seed(seed)
    ids = [torch.randint(1000, 30000, (n,), generator=gen).tolist() for n in lengths]
    types = [[0] * (n // 2) + [1] * (n - n // 2) for n in lengths]
    return ids, types


def padded(ids: list[list[int]], types: list[list[int]]) -> dict[str, torch.Tensor]:
    longest = max(map(len, ids))
    features = {
        name: torch.zeros(len(ids), longest, dtype=torch.long)
        for name in ("input_ids", "attention_mask", "token_type_ids")
    }
    for row, (seq, seg) in enumerate(zip(ids, types, strict=True)):
        features["input_ids"][row, : len(seq)] = torch.tensor(seq)
        features["attention_mask"][row, : len(seq)] = 1
        features["token_type_ids"][row, : len(seq)] = torch.tensor(seg)
    return features


def reference_hidden(model: Any, ids: list[list[int]], types: list[list[int]]) -> list[torch.Tensor]:
    """transformers on a right-padded batch, cut back to each sequence's tokens."""
    with torch.no_grad():
        out = model(**padded(ids, types)).last_hidden_state
    return [out[row, : len(seq)] for row, seq in enumerate(ids)]


def engine_for(path: Path, backend: str = "auto") -> Engine:
    engine = Engine(EngineSettings(attention=backend, register_defaults=False, num_threads=1))  # type: ignore[arg-type]
    engine.register("m", path)
    return engine


def remora_forward(
    engine: Engine, ids: list[list[int]], types: list[list[int]], *, head: bool = False
) -> list[torch.Tensor]:
    """Per-sequence hidden states (or token-head logits) [n, width] from one packed batch."""
    module = engine.model("m").module
    batch = pack(ids, types)
    with torch.inference_mode():
        out = module.encoder(batch)
        if head:
            out = module.head(out, batch)
    return [out[s:e] for s, e in itertools.pairwise(batch.cu_seqlens.tolist())]


def assert_per_sequence(got: list[torch.Tensor], expected: list[torch.Tensor], atol: float = ATOL) -> None:
    for index, (g, e) in enumerate(zip(got, expected, strict=True)):
        torch.testing.assert_close(
            g.float(), e.float(), atol=atol, rtol=0, msg=lambda m, i=index: f"sequence {i}: {m}"
        )


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Any]]:
    root = tmp_path_factory.mktemp("deberta")
    return {variant: (root / variant, build(root / variant, variant=variant)) for variant in VARIANTS}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_matches_transformers_per_token(
    models: dict[str, tuple[Path, Any]], variant: str, backend: str
) -> None:
    path, model = models[variant]
    ids, types = random_ids(LENGTHS)
    assert_per_sequence(
        remora_forward(engine_for(path, backend), ids, types), reference_hidden(model, ids, types)
    )


@pytest.mark.parametrize("backend", ["cpu", "sdpa"])
def test_alone_batched_and_reordered_agree(models: dict[str, tuple[Path, Any]], backend: str) -> None:
    engine = engine_for(models["v3"][0], backend)
    ids, types = random_ids(LENGTHS, seed=7)
    batched = remora_forward(engine, ids, types)
    alone = [remora_forward(engine, [seq], [seg])[0] for seq, seg in zip(ids, types, strict=True)]
    order = [5, 0, 7, 2, 6, 1, 4, 3]
    reordered = remora_forward(engine, [ids[i] for i in order], [types[i] for i in order])
    assert_per_sequence(alone, batched)
    assert_per_sequence(reordered, [batched[i] for i in order])


def test_padded_groups_match_transformers(
    models: dict[str, tuple[Path, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The padded path split into many groups (one sequence alone, several padded together)."""
    from remora.core.layers import biased_attention

    # Room for about two 64-token sequences' fp32 bias of 4 heads per group.
    monkeypatch.setattr(biased_attention, "GROUP_BIAS_BYTES", 2 * 4 * 64 * 64 * 4)
    path, model = models["v3"]
    ids, types = random_ids(LENGTHS, seed=9)
    assert_per_sequence(
        remora_forward(engine_for(path, "sdpa"), ids, types), reference_hidden(model, ids, types)
    )


def test_masked_lm_checkpoint_encodes(tmp_path: Path) -> None:
    """A DebertaV2ForMaskedLM checkpoint encodes with its encoder; the MLM head is declared unused."""
    model = build(tmp_path / "mlm", "DebertaV2ForMaskedLM", seed=2)
    ids, types = random_ids([5, 130, 9], seed=3)
    assert_per_sequence(
        remora_forward(engine_for(tmp_path / "mlm"), ids, types), reference_hidden(model.deberta, ids, types)
    )


def transformers_logits(path: Path, pairs: list[tuple[str, str]]) -> np.ndarray:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
    features = tokenizer(
        [q for q, _ in pairs],
        [d for _, d in pairs],
        padding=True,
        truncation=True,
        max_length=256,
        return_tensors="pt",
    )
    with torch.no_grad():
        return model(**features).logits.numpy()


@pytest.mark.parametrize(("num_labels", "pooler_act"), [(1, "gelu"), (3, "tanh")])
def test_sequence_classification_matches_transformers_and_cross_encoder(
    tmp_path: Path, num_labels: int, pooler_act: str
) -> None:
    from sentence_transformers import CrossEncoder

    path = tmp_path / "ce"
    build(
        path,
        "DebertaV2ForSequenceClassification",
        seed=4,
        num_labels=num_labels,
        pooler_hidden_act=pooler_act,
    )
    pairs = [(QUERY, d) for d in DOCS] + [("a premise", "a hypothesis")]
    engine = engine_for(path)
    raw = engine.score_pairs("m", pairs, apply_activation=False)
    np.testing.assert_allclose(raw, transformers_logits(path, pairs), atol=ATOL, rtol=0)
    reference = CrossEncoder(str(path), device="cpu", max_length=256).predict(pairs)
    got = engine.score_pairs("m", pairs)
    np.testing.assert_allclose(got[:, 0] if num_labels == 1 else got, reference, atol=ATOL, rtol=0)


@pytest.mark.parametrize("variant", ["v3", "v2"])
def test_token_classification_logits_match_transformers(tmp_path: Path, variant: str) -> None:
    model = build(tmp_path / "ner", "DebertaV2ForTokenClassification", variant=variant, seed=6, num_labels=5)
    ids, types = random_ids(LENGTHS, seed=8)
    with torch.no_grad():
        logits = model(**padded(ids, types)).logits
    expected = [logits[row, : len(seq)] for row, seq in enumerate(ids)]
    got = remora_forward(engine_for(tmp_path / "ner"), ids, types, head=True)
    assert all(g.shape[-1] == 5 for g in got)
    assert_per_sequence(got, expected)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("variant", ["v3", "v2"])
def test_cuda_matches_transformers(models: dict[str, tuple[Path, Any]], variant: str, dtype: str) -> None:
    path, model = models[variant]
    engine = Engine(EngineSettings(device="cuda", register_defaults=False))
    engine.register("m", path, dtype=dtype)
    ids, types = random_ids(LENGTHS)
    batch = pack(ids, types).to("cuda")
    with torch.inference_mode():
        hidden = engine.model("m").module.encoder(batch).float().cpu()
    got = [hidden[s:e] for s, e in itertools.pairwise(batch.cu_seqlens.tolist())]
    assert_per_sequence(got, reference_hidden(model, ids, types), atol=CUDA_ATOL[dtype])
