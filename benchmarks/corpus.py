"""A deterministic mixed-length English corpus built from the standard library's docstrings.

Nothing is downloaded and nothing is committed: the text comes from the Python installation that
runs the benchmark. Source files are parsed with `ast` rather than imported, so no module's import
side effects run (`antigravity`, `this`, tkinter) and the result does not depend on which optional
modules happen to import. For a given Python version and seed the corpus is byte-for-byte the same.

Length mix (words): ~10% short queries, ~10% single sentences (both under 20 words), ~50% passages
of 20-90 words and ~30% of 90-220 words, roughly what a retrieval workload sends an embedder.
"""

from __future__ import annotations

import ast
import functools
import os
import random
import re
import sysconfig
from collections.abc import Iterator
from pathlib import Path

# Folders that hold tests, demos or vendored wheels: little prose, and slow to parse.
_SKIP_DIRS = frozenset(
    {
        "site-packages",
        "dist-packages",
        "test",
        "tests",
        "idle_test",
        "turtledemo",
        "ensurepip",
        "lib2to3",
        "__pycache__",
    }
)
_DOC_NODES = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)

# reST markup kept as its text: roles (:func:`x` -> x) and literals (``x`` -> x).
_ROLE = re.compile(r":[a-z]+(?::[a-z]+)?:`~?([^`]*)`")
_LITERAL = re.compile(r"``([^`]*)``|`([^`]*)`")
_SENTENCE_END = re.compile(r"[.!?]$")
_WORD = re.compile(r"^[A-Za-z][a-z'-]*[.,;:!?)]*$")


def _stdlib_files() -> Iterator[Path]:
    root = Path(sysconfig.get_path("stdlib"))
    for dirpath, dirnames, filenames in os.walk(root):
        # Sorting in place fixes os.walk's order, which otherwise follows the file system.
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("config-"))
        for name in sorted(filenames):
            if name.endswith(".py"):
                yield Path(dirpath) / name


def _docstrings(source: bytes) -> Iterator[str]:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return
    # Module, then classes and functions in source order; no need for a full ast.walk
    # (docstrings only sit on these nodes), which is several times slower.
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop(0)
        doc = ast.get_docstring(node, clean=True)  # type: ignore[arg-type]
        if doc:
            yield doc
        body = getattr(node, "body", [])
        stack[:0] = [child for child in body if isinstance(child, _DOC_NODES)]


def _clean(paragraph: str) -> str | None:
    """One prose paragraph on one line, or None for code, doctests, tables and reST directives."""
    lines = paragraph.splitlines()
    if any(line.startswith((" ", "\t", ">>>", "..", "-", "*", "+", "|", "=")) for line in lines):
        return None  # indented code or list items, doctests, directives, bullets, tables
    text = _ROLE.sub(r"\1", " ".join(line.strip() for line in lines))
    text = _LITERAL.sub(lambda m: m.group(1) or m.group(2) or "", text)
    text = " ".join(text.split())
    words = text.split()
    if len(words) < 3 or not text[0].isupper() or not _SENTENCE_END.search(text):
        return None
    # Mostly ordinary words: drops argument tables, signatures and symbol-heavy lines.
    if sum(bool(_WORD.match(w)) for w in words) < 0.75 * len(words):
        return None
    return text


@functools.cache
def _paragraphs() -> tuple[str, ...]:
    """Every clean prose paragraph of the stdlib's docstrings, in a fixed order."""
    out: list[str] = []
    for path in _stdlib_files():
        for doc in _docstrings(path.read_bytes()):
            for block in re.split(r"\n\s*\n", doc):
                cleaned = _clean(block)
                if cleaned is not None:
                    out.append(cleaned)
    if not out:
        raise RuntimeError(f"no docstrings found under {sysconfig.get_path('stdlib')}")
    return tuple(out)


def _cut(words: list[str], target: int, low: int) -> str:
    """The first `target` words, shortened to the last sentence end if that keeps >= `low` words."""
    head = words[:target]
    for end in range(len(head), low - 1, -1):
        if _SENTENCE_END.search(head[end - 1]):
            return " ".join(head[:end])
    return " ".join(head)


def _passage(rng: random.Random, paragraphs: tuple[str, ...], low: int, high: int) -> str:
    """Consecutive paragraphs from a random start, cut to a length drawn from [low, high] words."""
    target = rng.randint(low, high)
    index = rng.randrange(len(paragraphs))
    words: list[str] = []
    while len(words) < target:
        words += paragraphs[index % len(paragraphs)].split()
        index += 1
    return _cut(words, target, low)


def _summaries(paragraphs: tuple[str, ...], low: int, high: int) -> list[str]:
    """Paragraphs that are one short sentence (typically a docstring's summary line)."""
    return [p for p in paragraphs if low <= len(p.split()) <= high and p.count(". ") == 0]


def _query(sentence: str) -> str:
    """A search-box query from a summary line: lower case, no final punctuation."""
    words = sentence.rstrip(".!?").split()
    return " ".join(words).lower()


def mixed_corpus(n: int, seed: int = 0) -> list[str]:
    """`n` texts in a shuffled but deterministic order: 10% queries (3-10 words), 10% sentences
    (10-19 words), 50% passages of 20-90 words and 30% of 90-220 words."""
    if n <= 0:
        return []
    rng = random.Random(seed)
    paragraphs = _paragraphs()
    n_query, n_sentence, n_long = round(0.1 * n), round(0.1 * n), round(0.3 * n)
    n_medium = n - n_query - n_sentence - n_long

    # Short texts are drawn without replacement while the pool lasts, so repeats are rare.
    query_pool = _summaries(paragraphs, 3, 10)
    sentence_pool = _summaries(paragraphs, 10, 19)
    texts = [_query(s) for s in _draw(rng, query_pool, n_query)]
    texts += _draw(rng, sentence_pool, n_sentence)
    texts += [_passage(rng, paragraphs, 20, 90) for _ in range(n_medium)]
    texts += [_passage(rng, paragraphs, 90, 220) for _ in range(n_long)]
    rng.shuffle(texts)
    return texts


def _draw(rng: random.Random, pool: list[str], k: int) -> list[str]:
    out: list[str] = []
    while len(out) < k:
        out += rng.sample(pool, min(k - len(out), len(pool)))
    return out


if __name__ == "__main__":
    # Quick look at the mix: `python benchmarks/corpus.py`
    import statistics

    corpus = mixed_corpus(4096)
    counts = [len(t.split()) for t in corpus]
    buckets = {"<20": sum(c < 20 for c in counts), "20-90": sum(20 <= c <= 90 for c in counts)}
    buckets[">90"] = len(counts) - sum(buckets.values())
    print(f"{len(corpus)} texts, {len(set(corpus))} distinct, {len(_paragraphs())} source paragraphs")
    print(
        f"words: median {statistics.median(counts)}, mean {statistics.fmean(counts):.1f}, max {max(counts)}"
    )
    print("buckets:", {k: f"{v / len(counts):.0%}" for k, v in buckets.items()})
    for text in corpus[:6]:
        print("-", text[:160])
