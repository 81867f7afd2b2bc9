"""Cross-encoder scores vs transformers (logits) and sentence-transformers' CrossEncoder.

Tolerance: 1e-5 absolute on activated scores and on raw logits (fp32).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from remora.core import Engine, EngineSettings
from remora.core.errors import UnsupportedTask
from tests.helpers import (
    copy_wordpiece_tokenizer,
    minilm_dir,
    randomize_layernorms,
    save_tiny,
    tiny_bert_config,
    tiny_xlmr_config,
    write_bpe_tokenizer,
)

ATOL = 1e-5
QUERY = "how do sea otters open shellfish"
DOCS = [
    "Sea otters crack shellfish open with rocks they carry.",
    "",
    "The stock market closed higher on Tuesday. " * 40,  # past max length: truncated longest-first
    "otter",
    "中文 🦈 ünïcödé",
]


def engine_for(path: Path) -> Engine:
    engine = Engine(EngineSettings(register_defaults=False))
    engine.register("ce", path)
    return engine


def transformers_logits(model_dir: Path, pairs: list[tuple[str, str]], max_length: int) -> np.ndarray:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()
    features = tokenizer(
        [q for q, _ in pairs], [d for _, d in pairs], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    with torch.no_grad():
        return model(**features).logits.numpy()


def build_bert_ce(target: Path, num_labels: int, seed: int = 0) -> Path:
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    model = BertForSequenceClassification(tiny_bert_config(num_labels=num_labels)).eval()
    randomize_layernorms(model, seed)
    return save_tiny(model, target)


def build_xlmr_ce(target: Path, num_labels: int, seed: int = 0) -> Path:
    from transformers import XLMRobertaForSequenceClassification

    target.mkdir(parents=True)
    vocab = write_bpe_tokenizer(target)
    torch.manual_seed(seed)
    model = XLMRobertaForSequenceClassification(tiny_xlmr_config(vocab, num_labels=num_labels)).eval()
    randomize_layernorms(model, seed)
    return save_tiny(model, target, tokenizer="none")


BUILDERS = {"bert": build_bert_ce, "xlmr": build_xlmr_ce}


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_single_label_scores_match_transformers_and_cross_encoder(tmp_path: Path, family: str) -> None:
    from sentence_transformers import CrossEncoder

    path = BUILDERS[family](tmp_path / family, 1)
    pairs = [(QUERY, d) for d in DOCS]
    engine = engine_for(path)
    got = engine.score("ce", QUERY, DOCS)
    raw = engine.score("ce", QUERY, DOCS, apply_activation=False)
    logits = transformers_logits(path, pairs, max_length=128)[:, 0]
    np.testing.assert_allclose(raw, logits, atol=ATOL, rtol=0)
    np.testing.assert_allclose(got, 1 / (1 + np.exp(-logits)), atol=ATOL, rtol=0)
    reference = CrossEncoder(str(path), device="cpu").predict(pairs)
    np.testing.assert_allclose(got, reference, atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_multi_label_pairs_match_cross_encoder(tmp_path: Path, family: str) -> None:
    from sentence_transformers import CrossEncoder

    path = BUILDERS[family](tmp_path / family, 3, seed=5)
    pairs = [(QUERY, d) for d in DOCS] + [("a premise", "a hypothesis")]
    engine = engine_for(path)
    got = engine.score_pairs("ce", pairs)
    assert got.shape == (len(pairs), 3)
    # Several labels: no activation by default, as CrossEncoder does.
    reference = CrossEncoder(str(path), device="cpu").predict(pairs)
    np.testing.assert_allclose(got, reference, atol=ATOL, rtol=0)
    np.testing.assert_allclose(got, transformers_logits(path, pairs, 128), atol=ATOL, rtol=0)
    with pytest.raises(UnsupportedTask, match="3 labels"):
        engine.score("ce", QUERY, DOCS)


def test_saved_activation_is_honoured(tmp_path: Path) -> None:
    """A CrossEncoder saved with an explicit activation (Identity) keeps it."""
    from sentence_transformers import CrossEncoder

    path = build_bert_ce(tmp_path / "src", 1)
    ce = CrossEncoder(str(path), device="cpu", activation_fn=torch.nn.Identity())
    saved = tmp_path / "saved"
    ce.save(str(saved))
    engine = engine_for(saved)
    got = engine.score("ce", QUERY, DOCS)
    reference = CrossEncoder(str(saved), device="cpu").predict([(QUERY, d) for d in DOCS])
    np.testing.assert_allclose(got, reference, atol=ATOL, rtol=0)
    # Identity: the scores are the raw logits, not their sigmoid.
    np.testing.assert_array_equal(got, engine.score("ce", QUERY, DOCS, apply_activation=False))


def test_embedder_scores_by_cosine_and_cross_encoder_cannot_encode(tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer, util

    path = build_bert_ce(tmp_path / "ce", 1)
    engine = engine_for(path)
    with pytest.raises(UnsupportedTask):
        engine.encode("ce", ["text"])
    engine.register("minilm", minilm_dir())
    st = SentenceTransformer(str(minilm_dir()), device="cpu")
    want = util.cos_sim(st.encode([QUERY]), st.encode(DOCS))[0].numpy()
    np.testing.assert_allclose(engine.score("minilm", QUERY, DOCS), want, atol=ATOL, rtol=0)


@pytest.mark.slow
def test_real_minilm_encoder_with_seeded_head(tmp_path: Path) -> None:
    """Real trained encoder weights (MiniLM) under a seeded random classification head."""
    from sentence_transformers import CrossEncoder
    from transformers import BertForSequenceClassification

    torch.manual_seed(1234)
    model = BertForSequenceClassification.from_pretrained(str(minilm_dir()), num_labels=1).eval()
    target = tmp_path / "minilm-ce"
    model.save_pretrained(str(target), safe_serialization=True)
    copy_wordpiece_tokenizer(target)
    pairs = [(QUERY, d) for d in DOCS] + [(d, QUERY) for d in DOCS]
    engine = engine_for(target)
    got = engine.score_pairs("ce", pairs)[:, 0]
    reference = CrossEncoder(str(target), device="cpu").predict(pairs)
    np.testing.assert_allclose(got, reference, atol=ATOL, rtol=0)
    assert np.ptp(got) > 1e-4, "scores must differ across documents"
