"""GLiNER span models: Remora's extract vs the `gliner` package's predict_entities.

Parity (slow: the first run on a machine installs gliner in a side venv, about a minute, see
tests/gliner_reference/venv.py): three tiny seeded GLiNER models that gliner itself builds and
saves (a BERT backbone with a projection and a BiLSTM; a DeBERTa-v3 backbone with a two-layer
BiLSTM; a BERT backbone with mean subtoken pooling, label embeddings from the token after
<<ENT>> and no LSTM), twelve texts (unicode, punctuation, empty, long) and three label sets with
three decoding settings. Remora runs each label set's texts as one batched request.
Tolerance: the same token ids and word positions gliner used, the same entities (text, label,
start, end) in the same order, scores within 1e-4.

The other tests use a synthetic GLiNER directory written here (random weights under gliner's
tensor names) and need no side venv: loading refusals, truncation, empty inputs, batching, and
CUDA (fp32 within 1e-3 of CPU; fp16 / bf16 per-token rows within 5e-2 / 1e-1 of fp32).
"""

from __future__ import annotations

import itertools
import json
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import torch

from remora.core import Engine, EngineSettings
from remora.core.errors import InputTooLong, InvalidInput, ModelLoadError, WeightsError
from remora.core.extract import Entity, extract, finish_extract, prepare_extract
from remora.core.model import LoadedModel
from remora.core.models.gliner import GlinerExtra
from tests.helpers import minilm_dir
from tests.zoo_models import write_synthetic_gliner

ATOL = 1e-4
BACKENDS = ("cpu", "eager", "sdpa")
VARIANTS = ("bert", "deberta", "bert_mean")
LABELS = ["person", "organization", "location"]
TEXTS = [
    "Barack Obama visited Paris with Angela Merkel on 3 March 2015.",
    "Ünïcödé names like Zoë Ångström and 中文 文本 appear here 🦈!",
    "The U.S. Food-and-Drug Administration approved aspirin_v2 yesterday.",
    "",
    "a",
]


def engine_for(backend: str = "auto", device: str = "cpu") -> Engine:
    return Engine(EngineSettings(attention=backend, device=device, register_defaults=False))


def loaded(engine: Engine, path: Path, name: str = "gliner", dtype: str = "float32") -> LoadedModel:
    engine.register(name, path, dtype=dtype)
    return engine.model(name)


# -- parity with gliner ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    from tests.gliner_reference import venv

    try:
        return venv.golden(minilm_dir())
    except venv.Unavailable as exc:
        pytest.skip(f"no gliner side venv: {exc}")


def grouped(cases: list[dict[str, Any]]) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
    """Cases by request settings: one batched Remora request per label set."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for case in cases:
        key = (tuple(case["labels"]), case["threshold"], case["flat_ner"], case["multi_label"])
        groups[key].append(case)
    return groups


def check_inputs(model: LoadedModel, case: dict[str, Any]) -> None:
    """Remora's tokens and word positions are the ones gliner fed its encoder."""
    prepared = prepare_extract(model, [case["text"]], labels=case["labels"])
    if case["input_ids"] is None:  # gliner skips a text without words
        return
    assert prepared.tokens.ids[0] == case["input_ids"], case["text"]
    extra = prepared.extra
    assert isinstance(extra, GlinerExtra)
    words = extra.token_words[0]
    mask = case["words_mask"]
    if max(mask) > 0 and sum(1 for m in mask if m) == len({m for m in mask if m}):  # first-token pooling
        firsts = [t for t, w in enumerate(words) if w >= 0 and (t == 0 or words[t - 1] != w)]
        assert firsts == [t for t, m in enumerate(mask) if m], case["text"]
    else:
        assert [w + 1 for w in words if w >= 0] == [m for m in mask if m], case["text"]


def compare(model: LoadedModel, cases: list[dict[str, Any]]) -> float:
    worst = 0.0
    for (labels, threshold, flat_ner, multi_label), group in grouped(cases).items():
        found = extract(
            model, [c["text"] for c in group], labels=list(labels),
            threshold=threshold, flat_ner=flat_ner, multi_label=multi_label,
        )
        for case, ours in zip(group, found, strict=True):
            theirs = case["entities"]
            key = (case["text"], labels, threshold)
            assert [(e.text, e.label, e.start, e.end) for e in ours] == [
                (e["text"], e["label"], e["start"], e["end"]) for e in theirs
            ], key
            for entity, reference in zip(ours, theirs, strict=True):
                worst = max(worst, abs(entity.score - reference["score"]))
            assert worst <= ATOL, key
    return worst


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_matches_gliner(golden: dict[str, Any], variant: str) -> None:
    model = loaded(engine_for(), Path(golden[variant]["dir"]))
    cases = golden[variant]["cases"]
    assert sum(len(c["entities"]) for c in cases) > 100  # the seeded models do find entities
    for case in cases:
        check_inputs(model, case)
    compare(model, cases)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS[1:])
def test_backends_match_gliner(golden: dict[str, Any], backend: str) -> None:
    model = loaded(engine_for(backend), Path(golden["deberta"]["dir"]))
    compare(model, golden["deberta"]["cases"])


# -- a synthetic GLiNER directory (no side venv) ---------------------------------------------


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_gliner(tmp_path_factory.mktemp("gliner") / "model")


@pytest.fixture(scope="module")
def model(synthetic: Path) -> LoadedModel:
    return loaded(engine_for(), synthetic)


def spans(found: list[list[Entity]]) -> list[list[tuple[str, str, int, int]]]:
    return [[(e.text, e.label, e.start, e.end) for e in entities] for entities in found]


def test_finds_entities_batched_as_alone(model: LoadedModel) -> None:
    batched = extract(model, TEXTS, labels=LABELS, threshold=0.3)
    alone = [extract(model, [text], labels=LABELS, threshold=0.3)[0] for text in TEXTS]
    assert sum(len(e) for e in batched) > 5
    assert spans(batched) == spans(alone)
    for a, b in zip(batched, alone, strict=True):
        assert all(abs(x.score - y.score) <= 1e-5 for x, y in zip(a, b, strict=True))
    for text, entities in zip(TEXTS, batched, strict=True):
        assert all(e.text == text[e.start : e.end] and 0.3 < e.score <= 1.0 for e in entities)
    assert batched[TEXTS.index("")] == []


def test_scheduler_batches_label_sets_together(synthetic: Path) -> None:
    """Requests with different labels share forward passes; each finishes with its own."""
    engine = engine_for()
    engine.register("g", synthetic)
    requests = [(TEXTS, LABELS), (TEXTS[::-1], ["city", "person"])]
    leases = [engine.pool.acquire("g") for _ in requests]
    try:
        prepared = [prepare_extract(lease.model, t, labels=labels) for lease, (t, labels) in zip(leases, requests, strict=True)]
        futures = [engine.scheduler.submit(lease, p) for lease, p in zip(leases, prepared, strict=True)]
        for lease, p, future, (texts, labels) in zip(leases, prepared, futures, requests, strict=True):
            got = finish_extract(lease.model, p, future.result(timeout=60), threshold=0.3)
            expected = extract(lease.model, texts, labels=labels, threshold=0.3)
            assert spans(got) == spans(expected)
    finally:
        for lease in leases:
            lease.release()
        engine.close()


def test_flat_by_default(model: LoadedModel) -> None:
    for entities in extract(model, TEXTS, labels=LABELS, threshold=0.1):
        ordered = sorted((e.start, e.end) for e in entities)
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(ordered))


def test_labels_are_required(model: LoadedModel) -> None:
    for labels in (None, [], ["person", " "]):
        with pytest.raises(InvalidInput):
            extract(model, ["text"], labels=labels)


def test_truncation(model: LoadedModel) -> None:
    long_text = "Tim Cook leads Apple in Cupertino . " * 40  # ~280 tokens, past the 128 the model takes
    with pytest.raises(InputTooLong):
        extract(model, [long_text], labels=LABELS, truncate=False)
    prepared = prepare_extract(model, [long_text], labels=LABELS)
    assert prepared.size == 1 and len(prepared.tokens.ids[0]) == model.tokenizer.max_len
    extra = prepared.extra
    assert isinstance(extra, GlinerExtra)
    seen = extra.words[0]
    assert 0 < len(seen) < len(long_text.split())  # only the words the encoder saw
    (found,) = extract(model, [long_text], labels=LABELS, threshold=0.1)
    assert found and max(e.end for e in found) <= seen[-1][1]
    with pytest.raises(InputTooLong):
        extract(model, ["short"], labels=[f"label {i}" for i in range(80)])


def test_refuses_pickles_and_other_variants(synthetic: Path, tmp_path: Path) -> None:
    engine = engine_for()
    pickled = tmp_path / "pickled"
    shutil.copytree(synthetic, pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(WeightsError, match="pickle"):
        loaded(engine, pickled, "pickled")
    for overrides in ({"span_mode": "token_level"}, {"labels_encoder": "some/encoder"}, {"fuse_layers": True}):
        other = tmp_path / f"other-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(synthetic, other)
        config = json.loads((other / "gliner_config.json").read_text())
        (other / "gliner_config.json").write_text(json.dumps({**config, **overrides}))
        with pytest.raises(ModelLoadError):
            loaded(engine, other, other.name)


@pytest.mark.gpu
def test_cuda(synthetic: Path) -> None:
    reference = loaded(engine_for(), synthetic)
    expected = extract(reference, TEXTS, labels=LABELS, threshold=0.3)
    gpu = loaded(engine_for(device="cuda"), synthetic)
    got = extract(gpu, TEXTS, labels=LABELS, threshold=0.3)
    assert spans(got) == spans(expected)
    for a, b in zip(got, expected, strict=True):
        assert all(abs(x.score - y.score) <= 1e-3 for x, y in zip(a, b, strict=True))
    prepared = prepare_extract(reference, TEXTS, labels=LABELS)
    rows = reference.run(prepared)["tokens"]
    for dtype, tolerance in (("float16", 5e-2), ("bfloat16", 1e-1)):
        half = loaded(engine_for(device="cuda"), synthetic, name=dtype, dtype=dtype)
        assert extract(half, TEXTS, labels=LABELS)  # the float32 scorer runs after a half encoder
        for ours, theirs in zip(half.run(prepared)["tokens"], rows, strict=True):
            assert torch.allclose(ours, theirs, atol=tolerance)
