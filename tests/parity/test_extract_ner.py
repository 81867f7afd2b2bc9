"""Token-classification NER: Remora's extract vs transformers' token-classification pipeline.

Tiny seeded BertForTokenClassification (MiniLM's WordPiece, a word-aware vocabulary) and
XLMRobertaForTokenClassification (a byte-level BPE, where the pipeline guesses word boundaries)
with B-/I- tags for three entity types, over a dozen texts with unicode and punctuation, every
aggregation strategy. Remora runs all texts in one batched request; the pipeline one at a time.
Tolerance: the same entities (label, start, end) in the same order, text = input[start:end], and
scores within 1e-5.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from remora.core import Engine, EngineSettings
from remora.core.errors import InvalidInput, UnsupportedTask
from remora.core.extract import AGGREGATIONS, Entity, extract, finish_extract, prepare_extract
from remora.core.model import LoadedModel
from tests.helpers import (
    save_tiny,
    tiny_bert_config,
    tiny_xlmr_config,
    write_bpe_tokenizer,
)
from tests.zoo_models import NER_TAGS as TAGS
from tests.zoo_models import build_bert_ner, seeded_tagger, tag_config

ATOL = 1e-5
TEXTS = [
    "Barack Obama visited Paris with Angela Merkel on 3 March 2015.",
    "Apple Inc. and Microsoft compete in Cupertino, California.",
    "Ünïcödé names like Zoë Ångström and 中文 文本 appear here 🦈!",
    "The U.S. Food-and-Drug Administration approved aspirin_v2 yesterday; shares rose 5%.",
    "no capitals at all, just lowercase words about london and new york",
    "",
    "   ",
    "Dr. Jean-Luc Picard (captain) met Q at 10:30 p.m. -- then left.",
    "Real Madrid beat FC Barcelona 3-1 at the Santiago Bernabéu in El Clásico.",
    "a",
    "Tim Cook leads Apple; Satya Nadella leads Microsoft, and Sundar Pichai leads Google.",
    "Ibuprofen,paracetamol&aspirin...sold\tin\npharmacies across Germany/France",
]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bert_ner(tmp_path_factory.mktemp("bert-ner"))


@pytest.fixture(scope="module")
def xlmr_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import XLMRobertaForTokenClassification

    target = tmp_path_factory.mktemp("xlmr-ner")
    vocab = write_bpe_tokenizer(target)
    torch.manual_seed(1)
    model = seeded_tagger(XLMRobertaForTokenClassification(tiny_xlmr_config(vocab, **tag_config())))
    return save_tiny(model, target, tokenizer="none")


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(EngineSettings(attention="cpu", register_defaults=False))


def loaded(engine: Engine, name: str, path: Path) -> LoadedModel:
    engine.register(name, path)
    return engine.model(name)


def pipeline_entities(path: Path, aggregation: str) -> list[list[dict[str, Any]]]:
    import warnings

    from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline

    model = AutoModelForTokenClassification.from_pretrained(str(path)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    ner = pipeline("token-classification", model=model, tokenizer=tokenizer, aggregation_strategy=aggregation)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the BPE's "fallback heuristic" warning
        return [ner(text) if text else [] for text in TEXTS]


def assert_same(got: list[list[Entity]], expected: list[list[dict[str, Any]]]) -> float:
    worst = 0.0
    for text, ours, theirs in zip(TEXTS, got, expected, strict=True):
        assert [(e.label, e.start, e.end) for e in ours] == [(e["entity_group"], e["start"], e["end"]) for e in theirs], text
        for entity, reference in zip(ours, theirs, strict=True):
            assert entity.text == text[entity.start : entity.end]
            assert abs(entity.score - float(reference["score"])) <= ATOL
            worst = max(worst, abs(entity.score - float(reference["score"])))
    return worst


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("family", ["bert", "xlmr"])
def test_matches_pipeline(engine: Engine, bert_dir: Path, xlmr_dir: Path, family: str, aggregation: str) -> None:
    path = bert_dir if family == "bert" else xlmr_dir
    model = loaded(engine, family, path)
    got = extract(model, TEXTS, aggregation=aggregation)  # type: ignore[arg-type]
    expected = pipeline_entities(path, aggregation)
    assert sum(len(e) for e in expected) > 20  # the seeded model does tag entities
    assert_same(got, expected)


def test_alone_equals_batched(engine: Engine, bert_dir: Path) -> None:
    model = loaded(engine, "bert", bert_dir)
    batched = extract(model, TEXTS)
    alone = [extract(model, [text])[0] for text in TEXTS]
    for a, b in zip(alone, batched, strict=True):
        assert [(e.label, e.start, e.end) for e in a] == [(e.label, e.start, e.end) for e in b]
        assert all(abs(x.score - y.score) <= ATOL for x, y in zip(a, b, strict=True))


def test_threshold_and_label_filter(engine: Engine, bert_dir: Path) -> None:
    model = loaded(engine, "bert", bert_dir)
    everything = [e for found in extract(model, TEXTS) for e in found]
    cut = sorted(e.score for e in everything)[len(everything) // 2]
    high = [e for found in extract(model, TEXTS, threshold=cut) for e in found]
    assert high == [e for e in everything if e.score >= cut]
    people = [e for found in extract(model, TEXTS, labels=["PER"]) for e in found]
    assert people and people == [e for e in everything if e.label == "PER"]


def test_prepare_then_finish(engine: Engine, bert_dir: Path) -> None:
    """The scheduler's path: prepare (host), run (forward rows), finish (host)."""
    model = loaded(engine, "bert", bert_dir)
    prepared = prepare_extract(model, TEXTS[:3])
    assert prepared.kind == "extract" and prepared.size == 3
    rows = model.run(prepared)
    assert [tuple(r.shape) for r in rows["tokens"]] == [(len(ids), len(TAGS)) for ids in prepared.tokens.ids]
    assert finish_extract(model, prepared, rows) == extract(model, TEXTS[:3])
    assert next(e.to_dict() for e in finish_extract(model, prepared, rows)[0]).keys() == {
        "text", "label", "score", "start", "end"
    }


def test_refusals(engine: Engine, bert_dir: Path, tmp_path: Path) -> None:
    from transformers import BertModel

    model = loaded(engine, "bert", bert_dir)
    with pytest.raises(InvalidInput):
        extract(model, ["x"], labels=["PER", ""])
    with pytest.raises(InvalidInput):
        extract(model, ["x"], aggregation="longest")  # type: ignore[arg-type]
    torch.manual_seed(0)
    encoder = loaded(engine, "plain", save_tiny(BertModel(tiny_bert_config()), tmp_path / "plain"))
    with pytest.raises(UnsupportedTask):
        extract(encoder, ["x"])
