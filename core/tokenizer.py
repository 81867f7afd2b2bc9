"""Tokenization with `tokenizers` from tokenizer.json, in batches, without padding.

Truncation follows sentence-transformers: texts are cut to `max_len` tokens (special tokens
included), pairs with the longest-first strategy. With `truncate=False` an over-long input is
an `InputTooLong` error that names it instead.

A text far longer than `max_len` tokens is tokenized from its start only (`_head`), when the
tokenizer splits words at whitespace: cutting it whole would cost time in proportion to its
size (about a second per megabyte), holding a tokenizer thread that other requests need.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

from tokenizers import Encoding, Tokenizer
from tokenizers.normalizers import Lowercase
from tokenizers.normalizers import Sequence as NormalizerSequence

from remora.core.errors import InputTooLong, InvalidInput, ModelLoadError
from remora.core.truncation import PairTemplate, longest_first, splits_at_whitespace

# A text longer than this many characters per `max_len` token is tokenized from a head first.
HEAD_CHARS_PER_TOKEN = 16
# Refusing an over-long text (truncate=False) names its length: exact, unless the text is longer
# than this many characters per `max_len` token (then "over N", from its head).
EXACT_COUNT_CHARS_PER_TOKEN = 1024
_SPACE_RUN = re.compile(r"\s+")
_T = TypeVar("_T")


@dataclass(frozen=True)
class Tokenized:
    ids: list[list[int]]
    type_ids: list[list[int]]

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.ids]


class TextTokenizer:
    def __init__(self, model_dir: Path, *, max_len: int, lowercase: bool = False) -> None:
        path = model_dir / "tokenizer.json"
        if not path.is_file():
            raise ModelLoadError(f"no tokenizer.json in {model_dir}")
        try:
            base = Tokenizer.from_file(str(path))
        except Exception as exc:
            raise ModelLoadError(f"unreadable tokenizer {path}: {exc}") from exc
        spec = json.loads(base.to_str())
        if lowercase and "Lowercase" not in json.dumps(spec.get("normalizer")):
            # sentence_bert_config's do_lower_case: lowercase before the tokenizer's own normalizer.
            base.normalizer = NormalizerSequence([Lowercase(), *([base.normalizer] if base.normalizer else [])])
        base.no_padding()
        base.no_truncation()
        direction = _truncation_side(model_dir)
        self.max_len = max_len
        self._full = base
        # A separate instance for truncation: changing one shared tokenizer per call would race.
        self._truncating = Tokenizer.from_str(base.to_str())
        self._truncating.enable_truncation(max_length=max_len, strategy="longest_first", direction=direction)
        # Heads keep the start of a text: only for right truncation, and only where a word's
        # tokens depend on that word alone (see `_head`).
        self._cut_early = direction == "right" and splits_at_whitespace(spec.get("pre_tokenizer")) and not any(
            re.search(r"\S\s+\S", str(token.get("content", ""))) for token in spec.get("added_tokens") or ()
        )
        self.special_ids = {int(i) for i in base.get_added_tokens_decoder() if base.get_added_tokens_decoder()[i].special}
        self._direction = direction
        self._pair_template = PairTemplate.of(base)

    def encode(self, texts: Sequence[str], *, truncate: bool = True) -> Tokenized:
        return self._run(list(texts), truncate=truncate)

    def encode_pairs(self, firsts: Sequence[str], seconds: Sequence[str], *, truncate: bool = True) -> Tokenized:
        pairs = list(zip(firsts, seconds, strict=True))
        template = self._pair_template
        if truncate and template is not None:
            return self._checked(pairs, lambda: self._truncate_pairs(pairs, template))
        return self._run(pairs, truncate=truncate)

    def encode_plain(self, texts: Sequence[str]) -> list[list[int]]:
        """Ids without special tokens and without truncation (pieces of a template)."""
        return [e.ids for e in self._full.encode_batch(list(texts), add_special_tokens=False)]

    def prompt_length(self, prompt: str) -> int:
        """Tokens a prompt occupies at the start of a text, as sentence-transformers counts them:
        the prompt encoded alone with special tokens, less a trailing special token."""
        ids = self._full.encode(prompt).ids
        return len(ids) - 1 if ids and ids[-1] in self.special_ids else len(ids)

    def token_spans(
        self, texts: Sequence[str], *, add_special_tokens: bool = True
    ) -> list[list[tuple[int, str, bool, int | None, int | None]]]:
        """Each text's tokens, untruncated, as (id, text, special, start, stop) the way
        text-embeddings-inference's /tokenize reports them: start/stop are byte offsets into the
        text's UTF-8 encoding (the offsets of the Rust `tokenizers` crate) and `text` is that slice
        of the input ('##ing' reads 'ing'); special tokens carry their own string and no offsets."""
        encodings: list[Encoding] = self._full.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        out: list[list[tuple[int, str, bool, int | None, int | None]]] = []
        for text, encoding in zip(texts, encodings, strict=True):
            data = text.encode("utf-8", "surrogatepass")
            to_byte: list[int] | None = None  # char offset -> byte offset; identity for ASCII
            if len(data) != len(text):
                to_byte = [0]
                for char in text:
                    to_byte.append(to_byte[-1] + len(char.encode("utf-8", "surrogatepass")))
            tokens: list[tuple[int, str, bool, int | None, int | None]] = []
            for token_id, token, (start, stop), special in zip(
                encoding.ids, encoding.tokens, encoding.offsets, encoding.special_tokens_mask, strict=True
            ):
                if special:
                    tokens.append((token_id, token, True, None, None))
                    continue
                if to_byte is not None:
                    start, stop = to_byte[start], to_byte[stop]
                tokens.append((token_id, data[start:stop].decode("utf-8", "replace"), False, start, stop))
            out.append(tokens)
        return out

    def encode_aligned(self, texts: Sequence[str], *, truncate: bool = True) -> tuple[Tokenized, list[Alignment]]:
        """Texts tokenized as `encode` does, with each token's place in its text (for extraction)."""
        encodings = self._encodings(list(texts), truncate=truncate)
        aligned = [
            Alignment(
                tokens=list(e.tokens),
                offsets=[tuple(o) for o in e.offsets],  # type: ignore[misc]
                special=[bool(s) for s in e.special_tokens_mask],
                word_ids=list(e.word_ids),
            )
            for e in encodings
        ]
        return _tokenized(encodings), aligned

    def encode_words(
        self, words: Sequence[Sequence[str]], *, truncate: bool = True
    ) -> tuple[Tokenized, list[list[int | None]]]:
        """Pre-split texts (lists of words, as transformers' `is_split_into_words=True`) -> tokens
        and, per token, the index of the word it came from (None for special tokens)."""
        encodings = self._encodings([list(w) for w in words], truncate=truncate, pretokenized=True)
        return _tokenized(encodings), [list(e.word_ids) for e in encodings]

    @cached_property
    def subword_prefix(self) -> str | None:
        """The continuation marker of a WordPiece-style vocabulary ('##'); None when the model has
        none (byte-level BPE, Unigram), as transformers' token-classification pipeline asks."""
        prefix = getattr(self._full.model, "continuing_subword_prefix", None)
        return str(prefix) if prefix else None

    @cached_property
    def unk_id(self) -> int | None:
        """The unknown token's id (WordPiece / BPE name it, Unigram numbers it), or None."""
        model = json.loads(self._full.to_str()).get("model") or {}
        if isinstance(model.get("unk_id"), int):
            return int(model["unk_id"])
        token = model.get("unk_token")
        return self.token_id(token) if isinstance(token, str) else None

    def token_id(self, token: str) -> int | None:
        found = self._full.token_to_id(token)
        return None if found is None else int(found)

    def _run(self, inputs: list[Any], *, truncate: bool) -> Tokenized:
        return _tokenized(self._encodings(inputs, truncate=truncate))

    def _encodings(self, inputs: list[Any], *, truncate: bool, pretokenized: bool = False) -> list[Encoding]:
        return self._checked(inputs, lambda: self._encode_checked(inputs, truncate=truncate, pretokenized=pretokenized))

    def _checked(self, inputs: list[Any], run: Callable[[], _T]) -> _T:
        try:
            return run()
        except TypeError:
            # `tokenizers` takes only text it can hand to Rust as UTF-8: a lone surrogate
            # ("\ud800", possible in a Python str, never in JSON or msgpack) is a TypeError there.
            bad = next((i for i, item in enumerate(inputs) if _unencodable(item)), None)
            if bad is None:
                raise
            raise InvalidInput(
                f"input {bad} is not valid Unicode: it holds a lone surrogate (U+D800 to U+DFFF)"
            ) from None

    def _encode_checked(self, inputs: list[Any], *, truncate: bool, pretokenized: bool) -> list[Encoding]:
        tokenizer = self._truncating if truncate else self._full
        cut: set[int] = set()  # inputs replaced by a head that is already over max_len tokens
        if self._cut_early and not pretokenized:
            inputs = list(inputs)
            floor = 0 if truncate else self.max_len * EXACT_COUNT_CHARS_PER_TOKEN
            for index, item in enumerate(inputs):
                longest = len(item) if isinstance(item, str) else max(map(len, item)) if isinstance(item, tuple) else 0
                if longest <= floor:
                    continue
                shorter = self._shorten(item)
                if shorter is not item:
                    inputs[index] = shorter
                    cut.add(index)
        encodings: list[Encoding] = tokenizer.encode_batch(
            inputs, add_special_tokens=True, is_pretokenized=pretokenized
        )
        if not truncate:
            for index, encoding in enumerate(encodings):
                if len(encoding.ids) > self.max_len:
                    size = f"over {len(encoding.ids)}" if index in cut else str(len(encoding.ids))
                    raise InputTooLong(
                        f"input {index} is {size} tokens long; this model takes at most {self.max_len} "
                        "(send truncate=true to cut it instead)"
                    )
        return encodings

    def _shorten(self, item: Any) -> Any:
        """A text, or a pair, with over-long texts replaced by heads that truncate the same way."""
        if isinstance(item, str):
            found = self._head(item)
            return item if found is None else found[0]
        if not (isinstance(item, tuple) and len(item) == 2 and all(isinstance(x, str) for x in item)):
            return item
        heads = [self._head(x) for x in item]
        if heads[0] is not None and heads[1] is not None:
            # Longest-first gives an odd spare token to the longer text: only whole counts tell which.
            return item
        for side, found in enumerate(heads):
            if found is not None:
                other = item[1 - side]
                # The head must stay the longer of the two, as the whole text is: its first
                # max_len tokens are the text's, so a shorter other text settles it.
                if len(self._full.encode(other, add_special_tokens=False).ids) < self.max_len:
                    return (found[0], other) if side == 0 else (other, found[0])
        return item

    def _truncate_pairs(self, pairs: list[tuple[str, str]], template: PairTemplate) -> Tokenized:
        """Pairs cut longest-first as `tokenizers` cuts them, computed here from each text's own
        tokens. `tokenizers` also builds every overflowing window of a truncated pair, the
        product of both texts' windows: two 35 kB texts took 2.5 GB, two 100 kB ones all memory."""
        budget = self.max_len - template.size
        window = self.max_len * HEAD_CHARS_PER_TOKEN
        heads: list[tuple[str, int] | None] = []
        texts: list[str] = []
        for text in (t for pair in pairs for t in pair):
            found = self._head(text) if self._cut_early and len(text) > window else None
            heads.append(found)
            texts.append(text if found is None else found[0])
        content = self._full.encode_batch(texts, add_special_tokens=False)
        ids: list[list[int]] = []
        type_ids: list[list[int]] = []
        for index in range(len(pairs)):
            first, second = content[2 * index].ids, content[2 * index + 1].ids
            counts = [len(first), len(second)]
            for side in (0, 1):
                # A head holds more tokens than the budget, as its text does; which text of the pair
                # is longer decides the split, and only a whole count can tell when it is close.
                if heads[2 * index + side] is not None and (
                    heads[2 * index + 1 - side] is not None or counts[1 - side] >= self.max_len
                ):
                    whole = pairs[index][side]
                    counts[side] = len(self._full.encode(whole, add_special_tokens=False).ids)
            keep_first, keep_second = longest_first(counts[0], counts[1], budget)
            ids.append(template.ids(self._keep(first, keep_first), self._keep(second, keep_second)))
            type_ids.append(template.type_ids(keep_first, keep_second))
        return Tokenized(ids=ids, type_ids=type_ids)

    def _keep(self, ids: list[int], count: int) -> list[int]:
        return ids[:count] if self._direction == "right" else ids[len(ids) - count:]

    def _head(self, text: str) -> tuple[str, int] | None:
        """(a start of `text`, its token count) such that `text` has the same first `max_len`
        tokens, or None when `text` is not that long or no such start is found.

        The head ends at a word followed by whitespace. Tokens of words before its last one come
        from those words alone (the pre-tokenizer splits there), so they are the whole text's
        tokens too; when at least `max_len` of them start before the whitespace ahead of the last
        word, truncation keeps exactly them. Windows grow fourfold, so a text with few tokens per
        character (whitespace, control characters) costs at most a third more than one pass."""
        window = self.max_len * HEAD_CHARS_PER_TOKEN
        while window < len(text):
            runs = [m.start() for m in _SPACE_RUN.finditer(text, window // 2, window)
                    if not text[m.start() - 1].isspace()]
            if len(runs) >= 2:
                before_last_word, cut = runs[-2], runs[-1]
                encoding = self._full.encode(text[:cut], add_special_tokens=False)
                stable = sum(1 for start, _ in encoding.offsets if start < before_last_word)
                if stable >= self.max_len:
                    return text[:cut], len(encoding.ids)
            window *= 4
        return None


@dataclass(frozen=True)
class Alignment:
    """Where one text's tokens come from: `offsets` are (start, end) CHARACTER offsets into the
    text ((0, 0) for special tokens), `special` marks the tokens the template added, `word_ids`
    the pre-tokenizer word each token belongs to (None for special tokens)."""

    tokens: list[str]
    offsets: list[tuple[int, int]]
    special: list[bool]
    word_ids: list[int | None]


def _unencodable(item: Any) -> bool:
    """Whether a text, a pair or a list of words holds something UTF-8 cannot encode."""
    if isinstance(item, str):
        try:
            item.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    return isinstance(item, tuple | list) and any(_unencodable(x) for x in item)


def _tokenized(encodings: Sequence[Encoding]) -> Tokenized:
    return Tokenized(ids=[e.ids for e in encodings], type_ids=[e.type_ids for e in encodings])


def _truncation_side(model_dir: Path) -> str:
    config = model_dir / "tokenizer_config.json"
    if config.is_file():
        try:
            side = json.loads(config.read_text()).get("truncation_side", "right")
        except ValueError:
            side = "right"
        if side in ("left", "right"):
            return str(side)
    return "right"
