"""Pair truncation as the `tokenizers` library does it, computed by Remora from each text's own
tokens: the special tokens a post-processor puts around a pair (`PairTemplate`), the
longest-first split (`longest_first`), and whether a pre-tokenizer splits words at whitespace
(what lets a far-too-long text be tokenized from its head).

The library builds every overflowing window of a truncated pair, the product of both texts'
windows (two 35 kB texts took 2.5 GB); these pieces give the same ids without them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tokenizers import Tokenizer


@dataclass(frozen=True)
class PairTemplate:
    """What a tokenizer's post-processor puts around a pair: ids (and segment ids) before the
    first text, between the two and after the second."""

    before: list[int]
    between: list[int]
    after: list[int]
    types: tuple[list[int], int, list[int], int, list[int]]  # before, first, between, second, after

    @property
    def size(self) -> int:
        return len(self.before) + len(self.between) + len(self.after)

    def ids(self, first: list[int], second: list[int]) -> list[int]:
        return [*self.before, *first, *self.between, *second, *self.after]

    def type_ids(self, first: int, second: int) -> list[int]:
        before, type_first, between, type_second, after = self.types
        return [*before, *[type_first] * first, *between, *[type_second] * second, *after]

    @staticmethod
    def of(tokenizer: Tokenizer) -> PairTemplate | None:
        """Read off the post-processor applied to a probe pair; None when it does not split
        into special tokens around two runs of content (then `tokenizers` truncates)."""
        first = tokenizer.encode("a", add_special_tokens=False)
        second = tokenizer.encode("b c", add_special_tokens=False)
        if not first.ids or not second.ids:
            return None
        out = tokenizer.post_process(first, second, add_special_tokens=True)
        content = [i for i, special in enumerate(out.special_tokens_mask) if not special]
        n = len(first.ids)
        if [out.ids[i] for i in content] != first.ids + second.ids or content != [
            *range(content[0], content[0] + n), *range(content[n], content[n] + len(second.ids))
        ]:
            return None
        start_second, end_first, end_second = content[n], content[n - 1] + 1, content[-1] + 1
        types = out.type_ids
        if len({types[i] for i in content[:n]}) != 1 or len({types[i] for i in content[n:]}) != 1:
            return None
        return PairTemplate(
            before=out.ids[: content[0]],
            between=out.ids[end_first:start_second],
            after=out.ids[end_second:],
            types=(types[: content[0]], types[content[0]], types[end_first:start_second], types[start_second],
                   types[end_second:]),
        )


def longest_first(first: int, second: int, budget: int) -> tuple[int, int]:
    """How many tokens of each text a pair keeps: the `tokenizers` library's longest-first rule
    (the shorter text whole if the longer can fill the rest, else half each, the odd token to
    the longer, or to the second on a tie)."""
    if first + second <= budget:
        return first, second
    swap = first > second
    shorter, longer = (second, first) if swap else (first, second)
    longer = shorter if shorter > budget else max(shorter, budget - shorter)
    if shorter + longer > budget:
        shorter = budget // 2
        longer = shorter + budget % 2
    return (longer, shorter) if swap else (shorter, longer)


# Pre-tokenizers that split at whitespace, and those that only split further.
WORD_SPLITTERS = {"BertPreTokenizer", "Whitespace", "WhitespaceSplit"}
FURTHER_SPLITTERS = {"Punctuation", "Digits", "UnicodeScripts", "CharDelimiterSplit", "Split", "ByteLevel", "Metaspace"}


def splits_at_whitespace(node: Any) -> bool:
    """Whether a tokenizer.json pre_tokenizer cuts text into pieces at whitespace (so no token
    spans two words), and does nothing else that could join them."""
    if not isinstance(node, dict):
        return False
    kind = node.get("type")
    if kind == "Sequence":
        parts = node.get("pretokenizers") or []
        return all(isinstance(p, dict) and p.get("type") in WORD_SPLITTERS | FURTHER_SPLITTERS for p in parts) and any(
            splits_at_whitespace(p) for p in parts
        )
    if kind in WORD_SPLITTERS:
        return True
    if kind == "ByteLevel":
        return bool(node.get("use_regex", True))
    if kind == "Metaspace":
        return bool(node.get("split", True))
    if kind == "Split":
        pattern = node.get("pattern") or {}
        return "\\s" in str(pattern.get("Regex", "")) or pattern.get("String") == " "
    return False
