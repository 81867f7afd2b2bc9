"""The extract primitive: named entities as character spans of the input texts.

Two kinds of model extract:
- token classifiers (`...ForTokenClassification`, BIO tags in `id2label`): every token gets a
  label distribution and tokens are grouped into entities exactly as transformers'
  `pipeline("token-classification", aggregation_strategy=...)` groups them;
- GLiNER span models (zero-shot: the labels come with each request), see core/models/gliner.py.

Both run in three steps, like the other primitives: `prepare_extract` tokenizes (host), the
scheduler or `LoadedModel.run` does the packed forward pass (per-token rows, "tokens"), and
`finish_extract` turns one request's rows into entities (host; GLiNER's small span layers run
there, on the model's device).
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from remora.core.errors import InvalidInput, UnsupportedTask
from remora.core.model import LoadedModel, Prepared, Rows
from remora.core.models import gliner
from remora.core.tokenizer import Alignment

Aggregation = Literal["simple", "first", "average", "max"]
AGGREGATIONS: tuple[Aggregation, ...] = ("simple", "first", "average", "max")
# transformers' pipeline drops the outside tag; so do we.
OUTSIDE = "O"


@dataclass(frozen=True)
class Entity:
    """One entity: `text` is `input[start:end]`, offsets count characters (Python str indices)."""

    text: str
    label: str
    score: float
    start: int
    end: int

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "label": self.label, "score": self.score, "start": self.start, "end": self.end}


@dataclass(frozen=True)
class TokenExtra:
    """What a token classifier's finishing step needs besides the logits."""

    texts: list[str]
    alignments: list[Alignment]
    id2label: tuple[str, ...]
    ids: list[list[int]]
    subword_prefix: str | None
    unk_id: int | None
    wanted: frozenset[str] | None  # labels the request asked for; None: all


def is_gliner(model: LoadedModel) -> bool:
    return isinstance(model.module.head, gliner.GlinerHead)


def prepare_extract(
    model: LoadedModel,
    texts: Sequence[str],
    *,
    labels: Sequence[str] | None = None,
    truncate: bool = True,
) -> Prepared:
    """Tokenize texts for extraction. GLiNER needs `labels` (the entity types to look for); for a
    token classifier they are optional and keep only entities of those types."""
    if "extract" not in (model.spec.tasks or ()) or model.module.head is None:
        raise UnsupportedTask(f"model {model.spec.id!r} ({model.architecture}) does not extract entities")
    wanted = _check_labels(labels, required=is_gliner(model))
    if is_gliner(model):
        assert wanted is not None
        return gliner.prepare(model, list(texts), list(wanted), truncate=truncate)
    tokens, alignments = model.tokenizer.encode_aligned(texts, truncate=truncate)
    extra = TokenExtra(
        texts=list(texts),
        alignments=alignments,
        id2label=_id2label(model),
        ids=tokens.ids,
        subword_prefix=model.tokenizer.subword_prefix,
        unk_id=model.tokenizer.unk_id,
        wanted=frozenset(wanted) if wanted is not None else None,
    )
    return Prepared("extract", tokens, 0, extra=extra)


def finish_extract(
    model: LoadedModel,
    prepared: Prepared,
    rows: Rows,
    *,
    threshold: float | None = None,
    aggregation: Aggregation = "simple",
    flat_ner: bool = True,
    multi_label: bool = False,
) -> list[list[Entity]]:
    """One request's rows -> its entities, per text, in text order.

    `threshold`: entities scoring below it are dropped; None is the model's own default (0.5
    for GLiNER, as gliner's predict_entities; 0 for token classifiers, as the pipeline).
    `aggregation` (token classifiers): the pipeline's aggregation_strategy.
    `flat_ner` / `multi_label` (GLiNER): gliner's decoding options (no nested spans; one label
    per span)."""
    extra = prepared.extra
    if isinstance(extra, gliner.GlinerExtra):
        spans = gliner.finish(
            model,
            extra,
            rows["tokens"],
            threshold=0.5 if threshold is None else threshold,
            flat_ner=flat_ner,
            multi_label=multi_label,
        )
        return [[Entity(text[s:e], label, score, s, e) for s, e, label, score in found]
                for text, found in zip(extra.texts, spans, strict=True)]
    assert isinstance(extra, TokenExtra)
    check_aggregation(aggregation)
    out: list[list[Entity]] = []
    for index, logits in enumerate(rows["tokens"]):
        entities = _token_entities(extra, index, np.asarray(logits, dtype=np.float32), aggregation)
        out.append([
            e for e in entities
            if (threshold is None or e.score >= threshold) and (extra.wanted is None or e.label in extra.wanted)
        ])
    return out


def extract(
    model: LoadedModel,
    texts: Sequence[str],
    *,
    labels: Sequence[str] | None = None,
    threshold: float | None = None,
    aggregation: Aggregation = "simple",
    flat_ner: bool = True,
    multi_label: bool = False,
    truncate: bool = True,
) -> list[list[Entity]]:
    """A whole extract request in process (on the caller's thread): texts -> entities per text."""
    check_aggregation(aggregation)
    prepared = prepare_extract(model, texts, labels=labels, truncate=truncate)
    return finish_extract(
        model, prepared, model.run(prepared),
        threshold=threshold, aggregation=aggregation, flat_ner=flat_ner, multi_label=multi_label,
    )


def check_aggregation(aggregation: object) -> None:
    if aggregation not in AGGREGATIONS:
        raise InvalidInput(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {aggregation!r}")


def _check_labels(labels: Sequence[str] | None, *, required: bool) -> list[str] | None:
    if labels is None or (isinstance(labels, Sequence) and not isinstance(labels, str) and len(labels) == 0):
        if required:
            raise InvalidInput("this model extracts the entity types you name: send a non-empty list of labels")
        return None
    if isinstance(labels, str):
        labels = [labels]
    items = list(labels)
    for index, label in enumerate(items):
        if not isinstance(label, str) or not label.strip():
            raise InvalidInput(f"labels[{index}] must be a non-empty string")
    return list(dict.fromkeys(items))  # duplicates collapse, first order kept (as gliner)


# -- token classification ---------------------------------------------------------------

_ID2LABEL: weakref.WeakKeyDictionary[LoadedModel, tuple[str, ...]] = weakref.WeakKeyDictionary()


def _id2label(model: LoadedModel) -> tuple[str, ...]:
    """The classifier's labels by index, from the model directory's config.json (read once)."""
    found = _ID2LABEL.get(model)
    if found is None:
        path = model.spec.path
        config: dict[str, Any] = {}
        if isinstance(path, Path) and (path / "config.json").is_file():
            config = json.loads((path / "config.json").read_text())
        raw = config.get("id2label") or {}
        found = tuple(str(raw.get(str(i), raw.get(i, f"LABEL_{i}"))) for i in range(model.num_labels))
        _ID2LABEL[model] = found
    return found


@dataclass
class _Token:
    """A non-special token, as the pipeline's pre-entity: its label distribution and place."""

    scores: np.ndarray  # [labels] float32 softmax
    start: int
    end: int
    is_subword: bool


@dataclass
class _Tagged:
    tag: str  # the id2label entry, e.g. "B-PER"
    score: float
    start: int
    end: int


def _token_entities(extra: TokenExtra, index: int, logits: np.ndarray, aggregation: Aggregation) -> list[Entity]:
    """One text's [n, labels] logits -> entities, as TokenClassificationPipeline.postprocess."""
    text = extra.texts[index]
    alignment = extra.alignments[index]
    # The pipeline's softmax, in float32 numpy.
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    scores = shifted / shifted.sum(axis=-1, keepdims=True)
    tokens: list[_Token] = []
    for t, (token, (start, end), special) in enumerate(
        zip(alignment.tokens, alignment.offsets, alignment.special, strict=True)
    ):
        if special:
            continue
        if extra.subword_prefix:
            # A word-aware vocabulary: a continuation token's string is longer than its text.
            is_subword = len(token) != len(text[start:end])
        else:
            is_subword = start > 0 and " " not in text[start - 1 : start + 1]
        if extra.unk_id is not None and extra.ids[index][t] == extra.unk_id:
            is_subword = False
        tokens.append(_Token(scores[t], start, end, is_subword))
    if aggregation == "simple":
        tagged = [_tag(extra.id2label, tok.scores, tok.start, tok.end) for tok in tokens]
    else:
        tagged = [_word(extra.id2label, word, aggregation) for word in _words(tokens)]
    entities = []
    for group in _groups(tagged):
        label = group[0].tag.split("-", 1)[-1]
        if label == OUTSIDE:
            continue
        score = float(np.mean(np.nanmean(np.asarray([g.score for g in group], dtype=np.float32))))
        start, end = group[0].start, group[-1].end
        entities.append(Entity(text[start:end], label, score, start, end))
    return entities


def _tag(id2label: tuple[str, ...], scores: np.ndarray, start: int, end: int) -> _Tagged:
    best = int(scores.argmax())
    return _Tagged(id2label[best], float(scores[best]), start, end)


def _words(tokens: list[_Token]) -> list[list[_Token]]:
    """Tokens grouped into words: a subword joins the word before it."""
    words: list[list[_Token]] = []
    for token in tokens:
        if words and token.is_subword:
            words[-1].append(token)
        else:
            words.append([token])
    return words


def _word(id2label: tuple[str, ...], word: list[_Token], aggregation: Aggregation) -> _Tagged:
    """One label for a whole word: its first token's, its most confident token's, or the
    average distribution's best."""
    start, end = word[0].start, word[-1].end
    if aggregation == "first":
        return _tag(id2label, word[0].scores, start, end)
    if aggregation == "max":
        best = max(word, key=lambda token: token.scores.max())
        return _tag(id2label, best.scores, start, end)
    average = np.nanmean(np.stack([token.scores for token in word]), axis=0)
    return _tag(id2label, average, start, end)


def _bio(tag: str) -> tuple[str, str]:
    """("B" | "I", entity type); a tag without a B-/I- prefix continues like I-."""
    if tag.startswith("B-"):
        return "B", tag[2:]
    if tag.startswith("I-"):
        return "I", tag[2:]
    return "I", tag


def _groups(tagged: list[_Tagged]) -> list[list[_Tagged]]:
    """Adjacent tokens (words) of one entity type, a B- tag starting a new entity."""
    groups: list[list[_Tagged]] = []
    for item in tagged:
        if groups:
            bi, kind = _bio(item.tag)
            if kind == _bio(groups[-1][-1].tag)[1] and bi != "B":
                groups[-1].append(item)
                continue
        groups.append([item])
    return groups
