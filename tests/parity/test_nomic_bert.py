"""Tiny seeded NomicBERT: Remora's packed forward vs transformers' NomicBertModel, per token.

transformers' NomicBertModel has no biases and full rotary only, so hub-layout checkpoints with
partial rotary (rotary_emb_fraction), biases and other gated activations are checked against
`reference_forward` below, written from the hub config's semantics and itself checked against
transformers where both apply.
Tolerances: every real token's last hidden state within 1e-5 (fp32) for every CPU attention
backend; a sequence alone, batched or reordered within 1e-5; on CUDA within 2e-2 (fp16) /
1e-1 (bf16) of fp32 transformers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from tests.helpers import copy_wordpiece_tokenizer, save_tiny
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
QUERY = "how do sea otters open shellfish"
DOCS = ["Sea otters crack shellfish open with rocks they carry.", "", "The stock market closed higher. " * 40]
GATES = {"swiglu": F.silu, "geglu": F.gelu, "glu": torch.sigmoid}


def build_transformers(
    target: Path, cls_name: str = "NomicBertModel", seed: int = 0, **overrides: Any
) -> Any:
    import transformers
    from transformers import NomicBertConfig

    config = NomicBertConfig(
        vocab_size=30522,  # MiniLM's WordPiece tokenizer
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=128,
        type_vocab_size=2,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
        **overrides,
    )
    torch.manual_seed(seed)
    model = getattr(transformers, cls_name)(config).eval()
    perturb(model, seed)
    save_tiny(model, target)
    return model


def hub_config(**overrides: Any) -> dict[str, Any]:
    """config.json as nomic-ai/nomic-embed-text-v1.5 writes it (its own key names)."""
    config: dict[str, Any] = dict(
        architectures=["NomicBertModel"],
        model_type="nomic_bert",
        vocab_size=30522,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_inner=48,
        n_positions=128,
        max_trained_positions=128,
        type_vocab_size=2,
        activation_function="swiglu",
        layer_norm_epsilon=1e-12,
        rotary_emb_base=1000,
        rotary_emb_fraction=1.0,
        rotary_emb_interleaved=False,
        rotary_emb_scale_base=None,
        rotary_scaling_factor=None,
        prenorm=False,
        qkv_proj_bias=False,
        mlp_fc1_bias=False,
        mlp_fc2_bias=False,
    )
    config.update(overrides)
    return config


def build_hub(target: Path, config: dict[str, Any], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the hub's tensor names, biases present where the config says."""
    gen = torch.Generator().manual_seed(seed)
    h, inner = config["n_embd"], config["n_inner"]

    def rand(*shape: int, scale: float = 0.1) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * scale

    state = {
        "embeddings.word_embeddings.weight": rand(config["vocab_size"], h, scale=1.0),
        "embeddings.token_type_embeddings.weight": rand(config["type_vocab_size"], h, scale=1.0),
        "emb_ln.weight": 1 + rand(h),
        "emb_ln.bias": rand(h),
    }
    shapes = {
        "attn.Wqkv": (3 * h, h),
        "attn.out_proj": (h, h),
        "mlp.fc11": (inner, h),
        "mlp.fc12": (inner, h),
        "mlp.fc2": (h, inner),
    }
    bias = {
        "attn.Wqkv": "qkv_proj_bias",
        "attn.out_proj": "qkv_proj_bias",
        "mlp.fc11": "mlp_fc1_bias",
        "mlp.fc12": "mlp_fc1_bias",
        "mlp.fc2": "mlp_fc2_bias",
    }
    for i in range(config["n_layer"]):
        for name, shape in shapes.items():
            state[f"encoder.layers.{i}.{name}.weight"] = rand(*shape, scale=shape[1] ** -0.5)
            if config[bias[name]]:
                state[f"encoder.layers.{i}.{name}.bias"] = rand(shape[0])
        for norm in ("norm1", "norm2"):
            state[f"encoder.layers.{i}.{norm}.weight"] = 1 + rand(h)
            state[f"encoder.layers.{i}.{norm}.bias"] = rand(h)
    target.mkdir(parents=True)
    save_file(state, str(target / "model.safetensors"))
    (target / "config.json").write_text(json.dumps(config))
    copy_wordpiece_tokenizer(target)
    return state


def rope(t: torch.Tensor, rot: int, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """NeoX rotary on the first `rot` channels of t [n, H, D]; cos / sin [n, 1, rot]."""
    r = t[..., :rot]
    turned = torch.cat([-r[..., rot // 2 :], r[..., : rot // 2]], -1)
    return torch.cat([r * cos + turned * sin, t[..., rot:]], -1)


def reference_forward(
    state: dict[str, torch.Tensor], config: dict[str, Any], ids: list[list[int]], types: list[list[int]]
) -> list[torch.Tensor]:
    """NomicBERT's post-norm encoder from the hub config's semantics, one sequence at a time."""
    h, heads = config["n_embd"], config["n_head"]
    dim = h // heads
    rot = int(dim * config["rotary_emb_fraction"])
    gate_act = GATES[config["activation_function"]]
    eps = config["layer_norm_epsilon"]

    def linear(x: torch.Tensor, name: str) -> torch.Tensor:
        return F.linear(x, state[f"{name}.weight"], state.get(f"{name}.bias"))

    def norm(x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(x, (h,), state[f"{name}.weight"], state[f"{name}.bias"], eps)

    out = []
    for seq, seg in zip(ids, types, strict=True):
        n = len(seq)
        x = (
            state["embeddings.word_embeddings.weight"][seq]
            + state["embeddings.token_type_embeddings.weight"][seg]
        )
        x = norm(x, "emb_ln")
        inv_freq = 1.0 / config["rotary_emb_base"] ** (torch.arange(0, rot, 2).float() / rot)
        angles = torch.arange(n).float()[:, None] * inv_freq
        cos, sin = (f(torch.cat([angles, angles], -1))[:, None, :] for f in (torch.cos, torch.sin))

        for i in range(config["n_layer"]):
            layer = f"encoder.layers.{i}."
            q, k, v = linear(x, layer + "attn.Wqkv").view(n, 3, heads, dim).unbind(1)
            q, k = (rope(t, rot, cos, sin) for t in (q, k))
            scores = torch.einsum("qhd,khd->hqk", q, k) / dim**0.5
            attended = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(n, h)
            x = norm(x + linear(attended, layer + "attn.out_proj"), layer + "norm1")
            gated = gate_act(linear(x, layer + "mlp.fc12")) * linear(x, layer + "mlp.fc11")
            x = norm(x + linear(gated, layer + "mlp.fc2"), layer + "norm2")
        out.append(x)
    return out


HUB_VARIANTS: dict[str, dict[str, Any]] = {
    # Half the head rotated, every bias on.
    "partial_biased": dict(rotary_emb_fraction=0.5, qkv_proj_bias=True, mlp_fc1_bias=True, mlp_fc2_bias=True),
    # GELU-gated MLP, biases on the MLP output only.
    "geglu": dict(activation_function="geglu", mlp_fc2_bias=True),
}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    path = tmp_path_factory.mktemp("nomic") / "hf"
    return path, build_transformers(path)


@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_transformers_per_token(model: tuple[Path, Any], backend: str) -> None:
    path, reference = model
    ids = random_ids(LENGTHS, seed=1)
    types = pair_types(LENGTHS)
    assert_per_sequence(
        remora_forward(loaded(path, backend), ids, types), reference_outputs(reference, ids, types), ATOL
    )


def test_reference_matches_transformers(model: tuple[Path, Any]) -> None:
    """The hand-written reference agrees with transformers where both apply."""
    path, reference = model
    config = hub_config(rotary_emb_base=reference.config.rope_parameters["rope_theta"])
    state = load_file(str(path / "model.safetensors"))
    ids, types = random_ids([3, 40], seed=2), pair_types([3, 40])
    assert_per_sequence(
        reference_forward(state, config, ids, types), reference_outputs(reference, ids, types), ATOL
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", sorted(HUB_VARIANTS))
def test_hub_layout_matches_reference(tmp_path: Path, variant: str, backend: str) -> None:
    config = hub_config(**HUB_VARIANTS[variant])
    state = build_hub(tmp_path / variant, config, seed=3)
    ids, types = random_ids(LENGTHS, seed=4), pair_types(LENGTHS)
    got = remora_forward(loaded(tmp_path / variant, backend), ids, types)
    assert_per_sequence(got, reference_forward(state, config, ids, types), ATOL)


@pytest.mark.parametrize("backend", ["cpu", "sdpa"])
def test_alone_batched_and_reordered_agree(model: tuple[Path, Any], backend: str) -> None:
    assert_batch_invariant(loaded(model[0], backend), random_ids(LENGTHS, seed=7), pair_types(LENGTHS), ATOL)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (dict(prenorm=True), "prenorm"),
        (dict(rotary_emb_interleaved=True), "interleaved"),
        (dict(rotary_emb_fraction=0.0), "absolute"),
        (dict(activation_function="gelu"), "activation_function"),
    ],
)
def test_unsupported_hub_options_are_refused(tmp_path: Path, override: dict[str, Any], message: str) -> None:
    from remora.core.errors import ModelLoadError

    build_hub(tmp_path / "m", hub_config(**override), seed=5)
    with pytest.raises(ModelLoadError, match=message):
        remora_forward(loaded(tmp_path / "m"), [[1000, 1001]], None)


def test_masked_lm_checkpoint_encodes(tmp_path: Path) -> None:
    """A NomicBertForMaskedLM checkpoint encodes with its encoder; the MLM head is declared unused."""
    model = build_transformers(tmp_path / "mlm", "NomicBertForMaskedLM", seed=2)
    ids, types = random_ids([5, 50, 9], seed=3), pair_types([5, 50, 9])
    got = remora_forward(loaded(tmp_path / "mlm"), ids, types)
    assert_per_sequence(got, reference_outputs(model.nomic_bert, ids, types), ATOL)


@pytest.mark.parametrize("num_labels", [1, 3])
def test_sequence_classification_matches_transformers(tmp_path: Path, num_labels: int) -> None:
    path = tmp_path / "ce"
    model = build_transformers(path, "NomicBertForSequenceClassification", seed=4, num_labels=num_labels)
    pairs = [(QUERY, d) for d in DOCS] + [("a premise", "a hypothesis")]
    raw = loaded(path).score_pairs("m", pairs, apply_activation=False)
    assert raw.shape == (len(pairs), num_labels)
    np.testing.assert_allclose(raw, pair_logits(model, path, pairs, types=True), atol=ATOL, rtol=0)


def test_token_classification_logits_match_transformers(tmp_path: Path) -> None:
    model = build_transformers(tmp_path / "ner", "NomicBertForTokenClassification", seed=6, num_labels=5)
    ids, types = random_ids(LENGTHS, seed=8), pair_types(LENGTHS)
    got = remora_forward(loaded(tmp_path / "ner"), ids, types, head=True)
    assert_per_sequence(got, reference_outputs(model, ids, types, logits=True), ATOL)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_cuda_matches_transformers(model: tuple[Path, Any], dtype: str) -> None:
    path, reference = model
    ids, types = random_ids(LENGTHS, seed=1), pair_types(LENGTHS)
    got = remora_forward(loaded(path, device="cuda", dtype=dtype), ids, types)
    assert_per_sequence(got, reference_outputs(reference, ids, types), CUDA_ATOL[dtype])
