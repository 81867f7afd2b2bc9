"""Tiny seeded GTE ("new" architecture): Remora's packed forward vs transformers' GteModel, per
token, and its sequence-classification head.

Hub checkpoints (model_type "new", `NewModel`) are the same tensors under a `new.` prefix with
`rope_theta` / `rope_scaling` config keys; transformers has no fixed NTK scaling, so those are
checked against GteModel with its rotary frequencies replaced by the NTK ones, computed here from
the hub model's formula.
Tolerances: every real token's last hidden state within 1e-5 (fp32) for every CPU attention
backend; a sequence alone, batched or reordered within 1e-5; classifier logits within 1e-5; on
CUDA within 2e-2 (fp16) / 1e-1 (bf16) of fp32 transformers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.helpers import save_tiny
from tests.parity.packed_parity import (
    assert_batch_invariant,
    assert_per_sequence,
    loaded,
    pair_logits,
    pair_types,
    perturb,
    random_ids,
    reference_outputs,
    remora_forward,
)

ATOL = 1e-5
BACKENDS = ("eager", "cpu", "sdpa")
CUDA_ATOL = {"float16": 2e-2, "bfloat16": 1e-1}
LENGTHS = [1, 7, 40, 2, 64, 100, 15]
THETA = 500.0
QUERY = "how do sea otters open shellfish"
DOCS = [
    "Sea otters crack shellfish open with rocks they carry.",
    "",
    "The stock market closed higher. " * 40,
    "otter",
]


def tiny_config(**overrides: Any) -> Any:
    from transformers import GteConfig

    base: dict[str, Any] = dict(
        vocab_size=30522,  # MiniLM's WordPiece tokenizer
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=128,
        type_vocab_size=2,
        pad_token_id=0,
        hidden_dropout_prob=0.0,
        rope_parameters={"rope_type": "default", "rope_theta": THETA},
    )
    base.update(overrides)
    return GteConfig(**base)


def build(target: Path, cls_name: str = "GteModel", seed: int = 0, **overrides: Any) -> Any:
    import transformers

    torch.manual_seed(seed)
    model = getattr(transformers, cls_name)(tiny_config(**overrides)).eval()
    perturb(model, seed)
    save_tiny(model, target)
    return model


def to_hub_layout(path: Path, architecture: str, scaling: dict[str, Any] | None) -> None:
    """Rewrite a transformers-saved GTE as the hub's `new` model: config keys and `new.` prefix."""
    config = json.loads((path / "config.json").read_text())
    config.pop("rope_parameters")
    config.update(
        architectures=[architecture],
        model_type="new",
        rope_theta=THETA,
        position_embedding_type="rope",
        layer_norm_type="layer_norm",
        pack_qkv=True,
        logn_attention_scale=False,
    )
    if scaling is not None:
        config["rope_scaling"] = scaling
    (path / "config.json").write_text(json.dumps(config))
    state = load_file(str(path / "model.safetensors"))
    state = {name.replace("gte.", "new.", 1): tensor for name, tensor in state.items()}
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})


def ntk_inv_freq(dim: int, factor: float, mixed_b: float | None) -> torch.Tensor:
    """The hub NewModel's NTK-scaled rotary frequencies (https://kexue.fm/archives/9706)."""
    exponent = torch.arange(0, dim, 2).float() / dim
    if mixed_b is None:
        return (THETA * factor) ** -exponent / factor ** (2 / dim)
    a = math.log(factor) / (dim / 2) ** mixed_b
    return THETA**-exponent / torch.exp(a * torch.arange(1, dim // 2 + 1).float() ** mixed_b)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    path = tmp_path_factory.mktemp("gte") / "hf"
    return path, build(path)


@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_transformers_per_token(model: tuple[Path, Any], backend: str) -> None:
    path, reference = model
    ids, types = random_ids(LENGTHS, seed=1), pair_types(LENGTHS)
    assert_per_sequence(
        remora_forward(loaded(path, backend), ids, types), reference_outputs(reference, ids, types), ATOL
    )


@pytest.mark.parametrize("backend", ["cpu", "sdpa"])
def test_alone_batched_and_reordered_agree(model: tuple[Path, Any], backend: str) -> None:
    assert_batch_invariant(loaded(model[0], backend), random_ids(LENGTHS, seed=7), pair_types(LENGTHS), ATOL)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mixed_b", [None, 0.75])
def test_hub_ntk_scaling_matches_reference(tmp_path: Path, backend: str, mixed_b: float | None) -> None:
    """A hub `NewModel` with rope_scaling ntk, no token types (as gte-base-en-v1.5)."""
    path = tmp_path / "new"
    reference = build(path, seed=2, type_vocab_size=0)
    scaling = {"type": "ntk", "factor": 4.0} | ({"mixed_b": mixed_b} if mixed_b is not None else {})
    to_hub_layout(path, "NewModel", scaling)
    scaled = ntk_inv_freq(8, 4.0, mixed_b)
    assert not torch.allclose(scaled, reference.rotary_emb.inv_freq)
    reference.rotary_emb.inv_freq = scaled
    ids = random_ids(LENGTHS, seed=3)
    assert_per_sequence(
        remora_forward(loaded(path, backend), ids, None), reference_outputs(reference, ids, None), ATOL
    )


@pytest.mark.parametrize(
    ("architecture", "num_labels"), [("GteForSequenceClassification", 1), ("NewForSequenceClassification", 3)]
)
def test_sequence_classification_matches_transformers(
    tmp_path: Path, architecture: str, num_labels: int
) -> None:
    """transformers' layout (`gte.` prefix, two segment types) and the hub's (`new.`, one type)."""
    path = tmp_path / "ce"
    hub = architecture.startswith("New")
    model = build(
        path, "GteForSequenceClassification", seed=4, num_labels=num_labels, type_vocab_size=1 if hub else 2
    )
    if hub:
        to_hub_layout(path, architecture, None)
    pairs = [(QUERY, d) for d in DOCS] + [("a premise", "a hypothesis")]
    raw = loaded(path).score_pairs("m", pairs, apply_activation=False)
    assert raw.shape == (len(pairs), num_labels)
    np.testing.assert_allclose(raw, pair_logits(model, path, pairs, types=not hub), atol=ATOL, rtol=0)


@pytest.mark.parametrize("architecture", ["GteForTokenClassification", "NewForTokenClassification"])
def test_token_classification_logits_match_transformers(tmp_path: Path, architecture: str) -> None:
    path = tmp_path / "ner"
    model = build(path, "GteForTokenClassification", seed=6, num_labels=5)
    if architecture.startswith("New"):
        to_hub_layout(path, architecture, None)
    ids, types = random_ids(LENGTHS, seed=8), pair_types(LENGTHS)
    got = remora_forward(loaded(path), ids, types, head=True)
    assert_per_sequence(got, reference_outputs(model, ids, types, logits=True), ATOL)


def test_masked_lm_checkpoint_encodes(tmp_path: Path) -> None:
    """A GteForMaskedLM checkpoint encodes with its encoder; the MLM head is declared unused."""
    model = build(tmp_path / "mlm", "GteForMaskedLM", seed=2)
    ids, types = random_ids([5, 50, 9], seed=3), pair_types([5, 50, 9])
    got = remora_forward(loaded(tmp_path / "mlm"), ids, types)
    assert_per_sequence(got, reference_outputs(model.gte, ids, types), ATOL)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_cuda_matches_transformers(model: tuple[Path, Any], dtype: str) -> None:
    path, reference = model
    ids, types = random_ids(LENGTHS, seed=1), pair_types(LENGTHS)
    got = remora_forward(loaded(path, device="cuda", dtype=dtype), ids, types)
    assert_per_sequence(got, reference_outputs(reference, ids, types), CUDA_ATOL[dtype])
