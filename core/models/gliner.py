"""GLiNER span models: loading a gliner directory, a request's prompt, and decoding.

Reference: the `gliner` package (0.2.x), uni-encoder span models (`predict_entities`):
- words: each text is split by gliner's whitespace splitter (a word is `\\w+` joined by `-` or
  `_`, or any other single non-space character), at most `max_len` words;
- prompt: for each label "<<ENT>>" and the label, then "<<SEP>>", then the words, tokenized as
  pre-split words (transformers' `is_split_into_words`), so a word is never merged with another;
- the encoder is one of Remora's encoder families (built from the backbone config gliner saves
  as `encoder_config`); its per-token rows come back from the packed forward pass;
- word embeddings: a pooling (default: the first token) of each word's tokens; label
  embeddings: the <<ENT>> tokens (or the token after each); then the head's scorer
  (core/heads/gliner.py) gives span x label logits;
- decoding: sigmoid, spans above the threshold, then gliner's greedy search: best score first,
  a span overlapping (or, with flat_ner off, partly overlapping) a kept one is dropped.

Differences by design: a word the tokenizer turns into no token (a lone zero-width or control
character) does not shift the following words (gliner's word mask would), and with truncation
the words cut off are left out (gliner keeps them as zero vectors).
Checkpoints load from model.safetensors only; a directory with only pytorch_model.bin is
refused, never unpickled.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from remora.core.config import ModelSpec
from remora.core.errors import InputTooLong, ModelLoadError, UnsupportedArchitecture
from remora.core.heads.gliner import GlinerHead, GlinerSettings
from remora.core.model import LoadedModel, Prepared, Runtime, TextModel
from remora.core.registry import build_encoder, resolve
from remora.core.st_format import read_json, tokenizer_max_length
from remora.core.tokenizer import TextTokenizer
from remora.core.weights import Checkpoint, expand, load_weights, prefixed

CONFIG_FILE = "gliner_config.json"
ENCODER_PREFIX = "token_rep_layer.bert_layer.model."
WORD = re.compile(r"\w+(?:[-_]\w+)*|\S")

# (first word, last word, label, score) of one decoded span, word indices inclusive.
WordSpan = tuple[int, int, str, float]


def is_gliner_dir(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file()


def split_words(text: str) -> list[tuple[int, int]]:
    """gliner's whitespace splitter: (start, end) character offsets of each word."""
    return [match.span() for match in WORD.finditer(text)]


# -- loading --------------------------------------------------------------------------------


def load(spec: ModelSpec, runtime: Runtime) -> LoadedModel:
    from remora.core.loader import resolve_dtype  # the loader imports this module lazily

    path = spec.path
    assert isinstance(path, Path)
    config = read_json(path / CONFIG_FILE)
    try:
        GlinerSettings.from_config(config)  # refuse unsupported variants before reading weights
    except (ValueError, TypeError) as exc:
        raise ModelLoadError(f"cannot load the GLiNER model in {path}: {exc}") from exc
    backbone = config.get("encoder_config")
    if not isinstance(backbone, dict):
        raise ModelLoadError(
            f"{path / CONFIG_FILE} has no encoder_config (the backbone's configuration); "
            "re-save the model with a recent gliner so the directory describes its encoder"
        )
    if int(config.get("vocab_size") or -1) > 0:
        # gliner grows the embedding table by its added tokens and records the size here.
        backbone = {**backbone, "vocab_size": int(config["vocab_size"])}
    try:
        arch_name, arch = resolve(backbone)
    except UnsupportedArchitecture as exc:
        raise UnsupportedArchitecture(f"GLiNER backbone: {exc}") from exc
    checkpoint = Checkpoint.from_dir(path)
    try:
        with runtime.device:
            encoder = build_encoder(arch.family, backbone, runtime.attention)
            head = GlinerHead(config, encoder.hidden_size)
    except (KeyError, ValueError, TypeError) as exc:
        raise ModelLoadError(f"cannot build GLiNER ({arch_name} backbone) from {path / CONFIG_FILE}: {exc}") from exc
    module = TextModel(encoder, head)
    table = {
        f"encoder.{k}": v
        for k, v in prefixed(expand(encoder.weight_table(), encoder.num_layers), ENCODER_PREFIX).items()
    }
    table.update({f"head.{k}": v for k, v in head.weight_table().items()})
    drop = [ENCODER_PREFIX + name for name in encoder.unused]
    module.to(dtype=resolve_dtype(spec.dtype, runtime.device)).eval()
    head.scorer.float()  # the word-level layers stay in float32 (see core/heads/gliner.py)
    load_weights(module, checkpoint, table, drop=drop, where=str(path))
    if head.scorer.rnn is not None:
        # Once, here: the finishing step may run it from several threads (cuDNN wants one
        # contiguous weight buffer; a no-op on the CPU).
        head.scorer.rnn.flatten_parameters()

    max_len = min(spec.max_seq_len or tokenizer_max_length(path) or encoder.max_tokens, encoder.max_tokens)
    tokenizer = TextTokenizer(path, max_len=max_len)
    settings = head.settings
    for token in (settings.ent_token, settings.sep_token):
        if tokenizer.token_id(token) is None:
            raise ModelLoadError(f"the tokenizer in {path} lacks GLiNER's {token!r} token")
    resolved = dataclasses.replace(spec, tasks=spec.tasks or ("extract",), max_seq_len=max_len)
    return LoadedModel(resolved, "GLiNER", module, tokenizer, [], runtime, score_activation=None)


# -- a request ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class GlinerExtra:
    """Host data of one GLiNER request, for the finishing step."""

    texts: list[str]
    labels: list[str]
    words: list[list[tuple[int, int]]]  # per text: character span of each word the encoder saw
    token_words: list[list[int]]  # per text: each token's word index, -1 for prompt and specials
    label_tokens: list[list[int]]  # per text: the token whose embedding stands for each label


def _head(model: LoadedModel) -> GlinerHead:
    head = model.module.head
    assert isinstance(head, GlinerHead)
    return head


def prepare(model: LoadedModel, texts: list[str], labels: list[str], *, truncate: bool) -> Prepared:
    settings = _head(model).settings
    prompt: list[str] = []
    for label in labels:
        prompt += [settings.ent_token, label]
    prompt.append(settings.sep_token)
    words = [split_words(text)[: settings.max_len] for text in texts]
    sequences = [prompt + [text[a:b] for a, b in spans] for text, spans in zip(texts, words, strict=True)]
    tokens, word_ids = model.tokenizer.encode_words(sequences, truncate=truncate)
    token_words: list[list[int]] = []
    label_tokens: list[list[int]] = []
    for index, ids in enumerate(word_ids):
        first: dict[int, int] = {}
        for position, word in enumerate(ids):
            if word is not None:
                first.setdefault(word, position)
        # Label c's <<ENT>> is prompt word 2c; its embedding is that token's or the next one's.
        shift = 0 if settings.embed_ent_token else 1
        found = [first.get(2 * c) for c in range(len(labels))]
        if any(t is None or t + shift >= len(ids) for t in found):
            raise InputTooLong(
                f"the {len(labels)} labels do not fit in this model's {model.tokenizer.max_len} tokens "
                f"(input {index}); send fewer or shorter labels"
            )
        label_tokens.append([t + shift for t in found if t is not None])
        skip = len(prompt)
        mapped = [-1 if word is None or word < skip else word - skip for word in ids]
        token_words.append(mapped)
        # Words after the last one with a token were cut by truncation: the encoder never saw them.
        words[index] = words[index][: max(mapped, default=-1) + 1]
    extra = GlinerExtra(texts, labels, words, token_words, label_tokens)
    return Prepared("extract", tokens, 0, extra=extra)


def finish(
    model: LoadedModel,
    extra: GlinerExtra,
    rows: Sequence[torch.Tensor],
    *,
    threshold: float,
    flat_ner: bool,
    multi_label: bool,
) -> list[list[tuple[int, int, str, float]]]:
    """Per-token rows of one request -> per text (start char, end char, label, score), by start."""
    if not rows:
        return []
    head = _head(model)
    scorer = head.scorer
    device = next(scorer.parameters()).device
    pooling = head.settings.subtoken_pooling
    words, prompts = [], []
    for index, row in enumerate(rows):
        states = torch.as_tensor(row).to(device=device, dtype=torch.float32)  # [n, D]
        words.append(_pool(states, extra.token_words[index], len(extra.words[index]), pooling))
        prompts.append(states[extra.label_tokens[index]])  # [C, D]
    with torch.inference_mode():
        logits = scorer.span_logits(scorer.contextualize(words), prompts)
    out = []
    for index, text_logits in enumerate(logits):
        probs = torch.sigmoid(text_logits).cpu()  # [W, K, C]
        spans = decode(probs, extra.labels, threshold=threshold, flat_ner=flat_ner, multi_label=multi_label)
        offsets = extra.words[index]
        out.append([(offsets[s][0], offsets[e][1], label, score) for s, e, label, score in spans])
    return out


def _pool(states: torch.Tensor, token_words: list[int], num_words: int, pooling: str) -> torch.Tensor:
    """[n, D] token states -> [num_words, D]: each word's first / last token, or the mean / max
    of its tokens; zeros for a word without tokens."""
    index = torch.tensor(token_words, device=states.device)
    keep = (index >= 0) & (index < num_words)
    index, values = index[keep], states[keep]
    out = states.new_zeros(num_words, states.shape[-1])
    if pooling in ("first", "last") and len(index):
        # A word's tokens are consecutive: its first token is where the word index changes.
        edge = torch.ones_like(index, dtype=torch.bool)
        if pooling == "first":
            edge[1:] = index[1:] != index[:-1]
        else:
            edge[:-1] = index[:-1] != index[1:]
        out[index[edge]] = values[edge]
    elif len(index):
        reduce = "mean" if pooling == "mean" else "amax"
        out.scatter_reduce_(0, index[:, None].expand_as(values), values, reduce=reduce, include_self=False)
    return out


def decode(
    probs: torch.Tensor, labels: Sequence[str], *, threshold: float, flat_ner: bool, multi_label: bool
) -> list[WordSpan]:
    """[W, K, C] span probabilities -> kept spans (first word, last word, label, score) by start,
    as gliner's span decoder: candidates above the threshold in (start, width, label) order,
    then greedily by score, dropping a span that clashes with one already kept."""
    num_words = probs.shape[0]
    starts, widths, classes = torch.where(probs > threshold)
    inside = starts + widths + 1 <= num_words
    starts, widths, classes = starts[inside], widths[inside], classes[inside]
    scores = probs[starts, widths, classes].tolist()
    candidates = [
        (s, s + k, labels[c], score)
        for s, k, c, score in zip(starts.tolist(), widths.tolist(), classes.tolist(), scores, strict=True)
    ]
    kept: list[WordSpan] = []
    for span in sorted(candidates, key=lambda x: -x[3]):
        if not any(_clash(span, other, flat_ner=flat_ner, multi_label=multi_label) for other in kept):
            kept.append(span)
    kept.sort(key=lambda x: x[0])
    return kept


def _clash(a: WordSpan, b: WordSpan, *, flat_ner: bool, multi_label: bool) -> bool:
    """gliner's has_overlapping (flat) / has_overlapping_nested (nested allowed)."""
    if a[:2] == b[:2]:
        return not multi_label
    disjoint = a[0] > b[1] or b[0] > a[1]
    if flat_ner:
        return not disjoint
    nested = (a[0] <= b[0] and a[1] >= b[1]) or (b[0] <= a[0] and b[1] >= a[1])
    return not (disjoint or nested)
