"""Tiny seeded ModernBERT: Remora's packed forward vs transformers, per token, and its heads.

Tolerances: every real token's last hidden state within 1e-5 (fp32) for every CPU attention
backend; a sequence alone, batched or reordered within 1e-5; sequence- and token-classification
logits within 1e-5; on CUDA within 2e-2 (fp16) / 1e-1 (bf16) of fp32 transformers.
local_attention 16 (each token sees 8 either side) with sequences up to 64 tokens exercises the
sliding window; layers alternate global / local / global with different rotary bases.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.helpers import save_tiny
from tests.parity.packed_parity import (
    assert_batch_invariant,
    assert_per_sequence,
    loaded,
    pair_logits,
    perturb,
    random_ids,
    reference_outputs,
    remora_forward,
)

ATOL = 1e-5
BACKENDS = ("eager", "cpu", "sdpa")
CUDA_ATOL = {"float16": 2e-2, "bfloat16": 1e-1}
LENGTHS = [1, 7, 40, 2, 64, 17, 33, 9]
QUERY = "how do sea otters open shellfish"
DOCS = [
    "Sea otters crack shellfish open with rocks they carry.",
    "",
    "The stock market closed higher. " * 40,  # truncated at 128 tokens: far past the window
    "otter",
]

VARIANTS: dict[str, dict[str, Any]] = {
    # Released shape: no biases anywhere, exact GELU.
    "plain": dict(),
    # Every bias flag on, tanh GELU; saved with the hub's config keys instead of transformers 5's.
    "biased": dict(norm_bias=True, attention_bias=True, mlp_bias=True, hidden_activation="gelu_pytorch_tanh"),
}


def tiny_config(**overrides: Any) -> Any:
    from transformers import ModernBertConfig

    base: dict[str, Any] = dict(
        vocab_size=30522,  # MiniLM's WordPiece tokenizer
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=128,
        global_attn_every_n_layers=2,
        local_attention=16,
        global_rope_theta=1000.0,
        local_rope_theta=50.0,
        pad_token_id=0,
        bos_token_id=101,
        eos_token_id=102,
        cls_token_id=101,
        sep_token_id=102,
    )
    base.update(overrides)
    return ModernBertConfig(**base)


def to_hub_config(path: Path) -> None:
    """Rewrite config.json as older hub checkpoints have it (no layer_types / rope_parameters)."""
    config = json.loads((path / "config.json").read_text())
    params = config.pop("rope_parameters")
    config.pop("layer_types")
    config["global_rope_theta"] = params["full_attention"]["rope_theta"]
    config["local_rope_theta"] = params["sliding_attention"]["rope_theta"]
    (path / "config.json").write_text(json.dumps(config))


def build(
    target: Path, cls_name: str = "ModernBertModel", variant: str = "plain", seed: int = 0, **overrides: Any
) -> Any:
    import transformers

    torch.manual_seed(seed)
    model = getattr(transformers, cls_name)(tiny_config(**VARIANTS[variant], **overrides)).eval()
    perturb(model, seed)
    save_tiny(model, target)
    if variant == "biased":
        to_hub_config(target)
    return model


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Any]]:
    root = tmp_path_factory.mktemp("modernbert")
    return {variant: (root / variant, build(root / variant, variant=variant)) for variant in VARIANTS}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_matches_transformers_per_token(
    models: dict[str, tuple[Path, Any]], variant: str, backend: str
) -> None:
    path, model = models[variant]
    ids = random_ids(LENGTHS, seed=1)
    assert_per_sequence(
        remora_forward(loaded(path, backend), ids, None), reference_outputs(model, ids, None), ATOL
    )


def test_window_matters(models: dict[str, tuple[Path, Any]]) -> None:
    """The reference differs from full attention on long sequences, so parity above tests the window."""
    from transformers import ModernBertModel

    model = models["plain"][1]
    full = ModernBertModel(tiny_config(local_attention=1024)).eval()
    full.load_state_dict(model.state_dict())
    ids = random_ids([40], seed=1)
    windowed, unwindowed = reference_outputs(model, ids, None)[0], reference_outputs(full, ids, None)[0]
    assert (windowed - unwindowed).abs().max() > 1e-3


@pytest.mark.parametrize("backend", ["cpu", "sdpa"])
def test_alone_batched_and_reordered_agree(models: dict[str, tuple[Path, Any]], backend: str) -> None:
    assert_batch_invariant(loaded(models["plain"][0], backend), random_ids(LENGTHS, seed=7), None, ATOL)


def test_masked_lm_checkpoint_encodes(tmp_path: Path) -> None:
    """A ModernBertForMaskedLM checkpoint encodes with its encoder; head and decoder are unused."""
    model = build(tmp_path / "mlm", "ModernBertForMaskedLM", seed=2)
    ids = random_ids([5, 50, 9], seed=3)
    assert_per_sequence(
        remora_forward(loaded(tmp_path / "mlm"), ids, None), reference_outputs(model.model, ids, None), ATOL
    )


@pytest.mark.parametrize(
    ("num_labels", "pooling", "variant"), [(1, "cls", "plain"), (3, "mean", "biased"), (2, "mean", "plain")]
)
def test_sequence_classification_matches_transformers(
    tmp_path: Path, num_labels: int, pooling: str, variant: str
) -> None:
    path = tmp_path / "ce"
    model = build(
        path,
        "ModernBertForSequenceClassification",
        variant=variant,
        seed=4,
        num_labels=num_labels,
        classifier_pooling=pooling,
        classifier_bias=variant == "biased",
    )
    pairs = [(QUERY, d) for d in DOCS] + [("a premise", "a hypothesis")]
    raw = loaded(path).score_pairs("m", pairs, apply_activation=False)
    assert raw.shape == (len(pairs), num_labels)
    np.testing.assert_allclose(raw, pair_logits(model, path, pairs, types=False), atol=ATOL, rtol=0)


def test_token_classification_logits_match_transformers(tmp_path: Path) -> None:
    model = build(tmp_path / "ner", "ModernBertForTokenClassification", seed=6, num_labels=5)
    ids = random_ids(LENGTHS, seed=8)
    got = remora_forward(loaded(tmp_path / "ner"), ids, None, head=True)
    assert all(g.shape[-1] == 5 for g in got)
    assert_per_sequence(got, reference_outputs(model, ids, None, logits=True), ATOL)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_cuda_matches_transformers(models: dict[str, tuple[Path, Any]], dtype: str) -> None:
    path, model = models["plain"]
    ids = random_ids(LENGTHS, seed=1)
    got = remora_forward(loaded(path, device="cuda", dtype=dtype), ids, None)
    assert_per_sequence(got, reference_outputs(model, ids, None), CUDA_ATOL[dtype])
