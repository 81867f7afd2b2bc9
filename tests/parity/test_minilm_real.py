"""Real weights: Remora vs sentence-transformers on all-MiniLM-L6-v2 (fp32).

Tolerances: per-text cosine >= 0.99999 and max abs difference <= 1e-4 over 320+ texts from
0 to 600 tokens (edge cases, unicode, emoji, CJK, code, and texts past max_seq_len=256).
"""

from __future__ import annotations

import numpy as np
import pytest

from remora.core import Engine, EngineSettings
from remora.core.defaults import DEFAULT_MODEL_ID
from tests.helpers import minilm_dir
from tests.texts import texts

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return texts(320)


@pytest.fixture(scope="module")
def reference(corpus: list[str]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm_dir()), device="cpu")
    return model.encode(corpus, batch_size=32, convert_to_numpy=True)


def test_corpus_spans_0_to_600_tokens(corpus: list[str]) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    lengths = [len(e.ids) for e in tok.encode_batch(corpus)]
    assert len(corpus) >= 300
    assert min(lengths) == 2  # the empty string: [CLS] [SEP]
    assert max(lengths) >= 600
    assert sum(n > 256 for n in lengths) >= 50  # plenty past max_seq_len


@pytest.mark.parametrize("attention", ["cpu", "sdpa", "eager"])
def test_minilm_matches_sentence_transformers(corpus: list[str], reference: np.ndarray, attention: str) -> None:
    engine = Engine(EngineSettings(attention=attention))
    got = engine.encode(DEFAULT_MODEL_ID, corpus)
    assert got.shape == reference.shape == (len(corpus), 384)
    assert got.dtype == np.float32
    cosine = (got * reference).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(reference, axis=1))
    worst = int(cosine.argmin())
    assert cosine.min() >= 0.99999, f"text {worst} ({corpus[worst][:40]!r}) cosine {cosine.min()}"
    diff = np.abs(got - reference).max(axis=1)
    assert diff.max() <= 1e-4, f"text {int(diff.argmax())} max abs diff {diff.max()}"
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_hub_alias_and_query_side_agree(corpus: list[str], reference: np.ndarray) -> None:
    """MiniLM has no prompts, so queries and documents embed the same; the hub name is an alias."""
    engine = Engine()
    got = engine.encode("sentence-transformers/all-MiniLM-L6-v2", corpus[:40], is_query=True)
    assert np.abs(got - reference[:40]).max() <= 1e-4
