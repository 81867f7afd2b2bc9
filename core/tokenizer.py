"""Tokenization with `tokenizers` from tokenizer.json, in batches, without padding.

Truncation follows sentence-transformers: texts are cut to `max_len` tokens (special tokens
included), pairs with the longest-first strategy. With `truncate=False` an over-long input is
an `InputTooLong` error that names it instead.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from tokenizers import Encoding, Tokenizer
from tokenizers.normalizers import Lowercase
from tokenizers.normalizers import Sequence as NormalizerSequence

from remora.core.errors import InputTooLong, ModelLoadError


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
        if lowercase and "Lowercase" not in json.dumps(json.loads(base.to_str()).get("normalizer")):
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
        self.special_ids = {int(i) for i in base.get_added_tokens_decoder() if base.get_added_tokens_decoder()[i].special}

    def encode(self, texts: Sequence[str], *, truncate: bool = True) -> Tokenized:
        return self._run(list(texts), truncate=truncate)

    def encode_pairs(self, firsts: Sequence[str], seconds: Sequence[str], *, truncate: bool = True) -> Tokenized:
        return self._run(list(zip(firsts, seconds, strict=True)), truncate=truncate)

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
        tokenizer = self._truncating if truncate else self._full
        encodings: list[Encoding] = tokenizer.encode_batch(
            inputs, add_special_tokens=True, is_pretokenized=pretokenized
        )
        if not truncate:
            for index, encoding in enumerate(encodings):
                if len(encoding.ids) > self.max_len:
                    raise InputTooLong(
                        f"input {index} is {len(encoding.ids)} tokens long; this model takes at most {self.max_len} "
                        "(send truncate=true to cut it instead)"
                    )
        return encodings


@dataclass(frozen=True)
class Alignment:
    """Where one text's tokens come from: `offsets` are (start, end) CHARACTER offsets into the
    text ((0, 0) for special tokens), `special` marks the tokens the template added, `word_ids`
    the pre-tokenizer word each token belongs to (None for special tokens)."""

    tokens: list[str]
    offsets: list[tuple[int, int]]
    special: list[bool]
    word_ids: list[int | None]


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
