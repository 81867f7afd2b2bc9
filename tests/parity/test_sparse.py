"""SPLADE sparse vectors: Remora vs sentence-transformers' SparseEncoder on tiny seeded MLMs.

Tolerances (fp32, CPU): every vocabulary weight within atol 1e-5, and the same set of indices
whose weight is above 1e-6 (Remora returns exactly the non-zero weights). On CUDA (fp16 / bf16)
weights within 5e-2 / 2e-1 of fp32 sentence-transformers. BGE-M3's sparse weights are tested with
its other outputs in test_multivector.py; here only the refusal of its pickled heads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from remora.core import Engine, EngineSettings
from remora.core.errors import UnsupportedTask, WeightsError
from remora.core.heads import sparse as sparse_module
from remora.core.heads.sparse import SparseVector
from tests.helpers import (
    save_tiny,
    tiny_bert_config,
    write_json,
)
from tests.zoo_models import build_splade

ATOL = 1e-5
FLOOR = 1e-6
CUDA_ATOL = {"float16": 5e-2, "bfloat16": 2e-1}
TEXTS = [
    "hello world, again!",
    "x",
    "Remora FISH swim beside Sharks and eat what the shark leaves behind",
    "The quick brown fox jumps over the lazy dog. " * 20,  # truncated at the 128-token limit
    "中文 🦈 ünïcödé",
]


def reference(model_dir: Path, texts: list[str]) -> np.ndarray:
    from sentence_transformers import SparseEncoder

    encoder = SparseEncoder(str(model_dir), device="cpu")
    return encoder.encode(texts, convert_to_tensor=True).to_dense().numpy()  # [N, V]


def engine_for(model_dir: Path, **settings: Any) -> Engine:
    engine = Engine(EngineSettings(register_defaults=False, device="cpu", **settings))
    engine.register("splade", model_dir)
    return engine


def remora_sparse(engine: Engine, texts: list[str]) -> list[SparseVector]:
    encoded = engine.encode_outputs("splade", texts, outputs=("sparse",))
    assert encoded.sparse is not None and encoded.dense is None and encoded.multivector is None
    return encoded.sparse


def assert_matches(got: list[SparseVector], expected: np.ndarray, atol: float = ATOL) -> float:
    """Each SparseVector against a dense [V] reference row; returns the worst difference."""
    worst = 0.0
    assert len(got) == len(expected)
    for row, (vector, ref) in enumerate(zip(got, expected, strict=True)):
        assert vector.indices.dtype == np.int32 and vector.values.dtype == np.float32
        assert np.all(np.diff(vector.indices) > 0), f"row {row}: indices not ascending and unique"
        dense = np.zeros_like(ref)
        dense[vector.indices] = vector.values
        np.testing.assert_array_equal(np.flatnonzero(dense > FLOOR), np.flatnonzero(ref > FLOOR), err_msg=f"row {row}")
        worst = max(worst, float(np.abs(dense - ref).max()))
    assert worst <= atol, worst
    return worst


@pytest.fixture(scope="module")
def bert_splade(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    target = build_splade(tmp_path_factory.mktemp("splade") / "bert")
    return target, reference(target, TEXTS)


@pytest.mark.parametrize("backend", ["eager", "cpu", "sdpa"])
def test_bert_splade_matches_sparse_encoder(bert_splade: tuple[Path, np.ndarray], backend: str) -> None:
    target, expected = bert_splade
    assert_matches(remora_sparse(engine_for(target, attention=backend), TEXTS), expected)


def test_logit_blocks_across_sequence_boundaries(bert_splade: tuple[Path, np.ndarray], monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 7 tokens split sequences and span several; pooling must not care."""
    target, expected = bert_splade
    monkeypatch.setattr(sparse_module, "BLOCK_ELEMENTS", 7 * 30522)
    assert_matches(remora_sparse(engine_for(target), TEXTS), expected)


def test_batching_invariance(bert_splade: tuple[Path, np.ndarray]) -> None:
    """Alone, in one batch and in tiny batches: the same vectors."""
    target, expected = bert_splade
    alone = [remora_sparse(engine_for(target), [t])[0] for t in TEXTS]
    assert_matches(alone, expected)
    small = remora_sparse(engine_for(target, max_batch_tokens=130), TEXTS[::-1])[::-1]
    assert_matches(small, expected)


def test_splade_is_no_dense(bert_splade: tuple[Path, np.ndarray]) -> None:
    target, _ = bert_splade
    engine = engine_for(target)
    model = engine.model("splade")
    assert model.outputs == ("sparse",)
    assert model.no_dense and not model.has_dense
    # The default output of an encode request is the sparse one.
    default = engine.encode_outputs("splade", ["hello"])
    assert default.sparse is not None and default.dense is None
    with pytest.raises(UnsupportedTask, match="dense"):
        engine.encode_outputs("splade", ["hello"], outputs=("dense",))


@pytest.mark.parametrize(
    ("pooling", "activation", "max_active_dims"),
    [("sum", "relu", None), ("max", "log1p_relu", None), ("max", "relu", 7)],
)
def test_pooling_variants(tmp_path: Path, pooling: str, activation: str, max_active_dims: int | None) -> None:
    target = build_splade(tmp_path / "splade", pooling=pooling, activation=activation, max_active_dims=max_active_dims, seed=3)
    texts = TEXTS[:3]
    got = remora_sparse(engine_for(target), texts)
    if max_active_dims is not None:
        assert all(len(v) == max_active_dims for v in got)
    assert_matches(got, reference(target, texts))


def test_xlm_roberta_splade(tmp_path: Path) -> None:
    """RoBERTa's MLM head layout (lm_head.dense / layer_norm, exact GELU, lm_head.bias)."""
    target = build_splade(tmp_path / "splade", family="xlmr", seed=5)
    assert_matches(remora_sparse(engine_for(target), TEXTS), reference(target, TEXTS))


def test_splade_over_a_bare_encoder_is_refused(tmp_path: Path) -> None:
    from transformers import BertModel

    from remora.core.errors import UnsupportedArchitecture

    target = save_tiny(BertModel(tiny_bert_config()), tmp_path / "bare")
    write_json(target / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"},
        {"idx": 1, "name": "1", "path": "1_SpladePooling",
         "type": "sentence_transformers.sparse_encoder.modules.splade_pooling.SpladePooling"},
    ])
    write_json(target / "1_SpladePooling" / "config.json", {"pooling_strategy": "max", "activation_function": "relu"})
    with pytest.raises(UnsupportedArchitecture, match="masked-LM"):
        engine_for(target).model("splade")


@pytest.mark.parametrize("stem", ["sparse_linear", "colbert_linear"])
def test_bge_m3_pickled_heads_are_refused_with_the_conversion(tmp_path: Path, stem: str) -> None:
    from transformers import BertModel

    target = save_tiny(BertModel(tiny_bert_config()), tmp_path / "m3")
    # Writing a pickle is fine for the test; Remora must never read it.
    torch.save({"weight": torch.zeros(1, 64), "bias": torch.zeros(1)}, target / f"{stem}.pt")
    with pytest.raises(WeightsError) as info:
        engine_for(target).model("splade")
    message = str(info.value)
    assert f"{stem}.pt" in message and "weights_only=True" in message and f"{stem}.safetensors" in message


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_splade_on_cuda(bert_splade: tuple[Path, np.ndarray], dtype: str) -> None:
    target, expected = bert_splade
    engine = Engine(EngineSettings(register_defaults=False, device="cuda", dtype=dtype))
    engine.register("splade", target)
    got = engine.encode_outputs("splade", TEXTS, outputs=("sparse",)).sparse
    assert got is not None
    for vector, ref in zip(got, expected, strict=True):
        dense = np.zeros_like(ref)
        dense[vector.indices] = vector.values
        assert np.abs(dense - ref).max() <= CUDA_ATOL[dtype]
