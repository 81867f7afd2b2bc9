"""Properties of the packed layout, tokenization and pooling, over generated inputs (hypothesis).

In process, no server: `pack` then splitting by cu_seqlens gives the sequences back; cu_seqlens
starts at 0, rises strictly and ends at the token count; the batch planner places every sequence
once within its budget; every pooling mode gives a sequence the same vector packed with others as
alone (and as a plain per-sequence reference computes it); truncation never passes the model's
length, keeps the special tokens and equals the `tokenizers` library's own truncation (including
for texts long enough that Remora tokenizes only their head); any Unicode text encodes or fails
with InvalidInput (lone surrogates), never anything else; and a tiny model's embedding of a text
does not depend on the batch it shares.

Reproducible: every test runs derandomized (a fixed example sequence) with no example database.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from remora.core.batch import pack
from remora.core.batcher import plan_batches
from remora.core.config import EngineSettings
from remora.core.engine import Engine
from remora.core.errors import InputTooLong, InvalidInput
from remora.core.heads.last_token import last_tokens
from remora.core.heads.pooling import POOLING_MODES, Pooler
from remora.core.tokenizer import EXACT_COUNT_CHARS_PER_TOKEN, HEAD_CHARS_PER_TOKEN, TextTokenizer
from tests.helpers import minilm_dir, randomize_layernorms, save_tiny, tiny_bert_config, write_bpe_tokenizer
from tests.zoo_models import write_qwen_tokenizer


def derandomized(examples: int) -> Any:
    """Fixed examples (derandomize), no example database, no deadline: the same run every time."""
    return settings(max_examples=examples, derandomize=True, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


# -- strategies -------------------------------------------------------------------------------------

# Any Unicode scalar value: control characters, combining marks, emoji, private use, unassigned;
# not surrogates (a str that holds one is a separate case below).
ANY_CHAR = st.characters(codec="utf-8")
ANY_TEXT = st.text(ANY_CHAR, max_size=300)
SEQUENCES = st.lists(st.lists(st.integers(0, 30_000), min_size=1, max_size=40), min_size=1, max_size=12)
# Words and the whitespace between them, for texts long enough to be tokenized from their head.
WORD = st.text(st.characters(codec="utf-8", exclude_categories=("Zs", "Zl", "Zp", "Cc")), min_size=1, max_size=12)
SPACE = st.text(st.sampled_from(" \t\n\r\u00a0\u3000\u2028\x0b"), min_size=1, max_size=3)
COMBINING = st.sampled_from(["\u0301", "\u0308\u0301", "\u200d", "\ufe0f", "\U0001f3fd"])


# Latin words and punctuation: fewer tokens per character than arbitrary Unicode.
LATIN_WORD = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x17F, exclude_categories=("Zs", "Cc")),
                     min_size=1, max_size=12)


@st.composite
def long_texts(draw: st.DrawFn, *, min_chars: int, words: st.SearchStrategy[str] = WORD) -> str:
    """Words (by default any Unicode: stray combining marks, punctuation, CJK, emoji) and
    whitespace runs, at least `min_chars` characters long."""
    parts: list[str] = []
    size = 0
    while size < min_chars:
        word = draw(words)
        if draw(st.booleans()):
            word += draw(COMBINING)
        parts.append(word + draw(SPACE))
        size += len(parts[-1])
    parts.extend(draw(st.lists(WORD, max_size=3)))
    return "".join(parts)


# -- packing and batch planning ---------------------------------------------------------------------


@derandomized(100)
@given(sequences=SEQUENCES, data=st.data())
def test_pack_then_split_by_cu_seqlens_is_identity(sequences: list[list[int]], data: st.DataObject) -> None:
    types = [data.draw(st.lists(st.integers(0, 1), min_size=len(s), max_size=len(s))) for s in sequences]
    batch = pack(sequences, types)
    cu = batch.cu_seqlens.tolist()
    total = sum(map(len, sequences))
    assert cu[0] == 0 and cu[-1] == total == batch.num_tokens
    assert all(a < b for a, b in itertools.pairwise(cu)), cu  # strictly monotone: no empty sequence
    assert batch.cu_seqlens.dtype == torch.int32 and batch.input_ids.dtype == torch.int64
    assert batch.num_seqs == len(sequences)
    assert batch.lengths == tuple(len(s) for s in sequences)
    assert batch.max_len == max(map(len, sequences))
    for b, (ids, type_ids) in enumerate(zip(sequences, types, strict=True)):
        start, end = cu[b], cu[b + 1]
        assert batch.input_ids[start:end].tolist() == ids
        assert batch.token_type_ids[start:end].tolist() == type_ids
        assert batch.position_ids[start:end].tolist() == list(range(len(ids)))
        assert (batch.seq_index()[start:end] == b).all()


def test_pack_refuses_an_empty_batch_and_an_empty_sequence() -> None:
    with pytest.raises(ValueError, match="empty batch"):
        pack([])
    with pytest.raises(ValueError, match="zero tokens"):
        pack([[1, 2], []])


@derandomized(200)
@given(lengths=st.lists(st.integers(1, 600), max_size=60), max_tokens=st.integers(1, 2048),
       max_seqs=st.integers(1, 64))
def test_plan_batches_places_every_sequence_once_within_the_budget(
    lengths: list[int], max_tokens: int, max_seqs: int
) -> None:
    batches = plan_batches(lengths, max_tokens=max_tokens, max_seqs=max_seqs)
    placed = [i for batch in batches for i in batch]
    assert sorted(placed) == list(range(len(lengths)))
    for batch in batches:
        assert 1 <= len(batch) <= max_seqs
        # Over the token budget only when one sequence is longer than the budget by itself.
        assert sum(lengths[i] for i in batch) <= max_tokens or len(batch) == 1


# -- pooling on the packed layout ---------------------------------------------------------------------


def reference_pool(hidden: torch.Tensor, mode: str, skip: int) -> torch.Tensor:
    """One sequence's [n, h] hidden states -> [h], pooled in float64 from its own rows alone."""
    h = hidden.double()
    n = h.shape[0]
    kept = torch.arange(n) >= skip
    if mode == "cls":
        return h[min(skip, n - 1)]
    if mode == "lasttoken":
        return h[n - 1]
    if mode == "max":
        return h[kept].max(dim=0).values
    weights = kept.double() * ((torch.arange(n) + 1).double() if mode == "weightedmean" else 1.0)
    total = (h * weights[:, None]).sum(dim=0)
    count = weights.sum()
    return total / (count.sqrt() if mode == "mean_sqrt_len_tokens" else count)


@derandomized(80)
@given(
    lengths=st.lists(st.integers(1, 20), min_size=1, max_size=8),
    # In sentence-transformers' order, as st_format reads them from a Pooling config.
    modes=st.lists(st.sampled_from(POOLING_MODES), min_size=1, max_size=3, unique=True).map(
        lambda chosen: sorted(chosen, key=POOLING_MODES.index)
    ),
    include_prompt=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    seed=st.integers(0, 2**31 - 1),
    data=st.data(),
)
def test_pooling_a_packed_batch_equals_pooling_each_sequence_alone(
    lengths: list[int], modes: list[str], include_prompt: bool, dtype: torch.dtype, seed: int, data: st.DataObject
) -> None:
    hidden_size = 8
    generator = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(sum(lengths), hidden_size, generator=generator) * 3).to(dtype)  # [T, h]
    # Prompt tokens to leave out, per sequence: fewer than the sequence has (its text follows).
    prompts = [data.draw(st.integers(0, n - 1)) for n in lengths]
    batch = pack([[0] * n for n in lengths])
    pooler = Pooler(modes, include_prompt=include_prompt)
    packed = pooler(hidden, batch, prompt_len=torch.tensor(prompts))  # [B, h * modes]
    assert packed.dtype == torch.float32 and packed.shape == (len(lengths), hidden_size * len(modes))
    starts = batch.cu_seqlens.tolist()
    for b, n in enumerate(lengths):
        rows = hidden[starts[b]:starts[b + 1]]
        alone = pooler(rows, pack([[0] * n]), prompt_len=prompts[b])[0]
        # fp32 accumulation both ways; only the summation order may differ.
        torch.testing.assert_close(packed[b], alone, rtol=1e-6, atol=1e-6)
        skip = 0 if include_prompt else prompts[b]
        expected = torch.cat([reference_pool(rows, mode, skip) for mode in modes]).float()
        torch.testing.assert_close(packed[b], expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(last_tokens(hidden, batch), hidden[batch.cu_seqlens[1:].long() - 1])


def test_pooling_modes_in_any_order_do_not_leak_into_each_other() -> None:
    """A registry entry's `pooling` may list modes in any order; each mode's vector must be the
    one that mode gives alone."""
    hidden = torch.arange(12, dtype=torch.float32).reshape(6, 2)  # [T, h]
    batch = pack([[0] * 4, [0] * 2])
    for modes in itertools.permutations(("weightedmean", "mean", "mean_sqrt_len_tokens", "max"), 2):
        together = Pooler(modes)(hidden, batch)
        alone = torch.cat([Pooler([mode])(hidden, batch) for mode in modes], dim=-1)
        torch.testing.assert_close(together, alone, msg=str(modes))


# -- tokenization ---------------------------------------------------------------------------------------


MAX_LEN = 8  # small, so generated texts of a few hundred characters reach the head path
PAIR_MAX_LEN = 48  # pairs: the reference builds every overflowing window pair, (tokens / budget) squared


@pytest.fixture(scope="module")
def tokenizer_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three tokenizer families: MiniLM's WordPiece ([CLS] a [SEP] b [SEP]), a byte-level BPE with
    RoBERTa's template (<s> a </s></s> b </s>) and a Qwen-style byte-level BPE that appends its
    end-of-text token."""
    base = tmp_path_factory.mktemp("tokenizers")
    bpe, qwen = base / "bpe", base / "qwen"
    bpe.mkdir()
    qwen.mkdir()
    write_bpe_tokenizer(bpe)
    write_qwen_tokenizer(qwen, eos_suffix=True)
    return {"wordpiece": minilm_dir(), "bpe": bpe, "qwen": qwen}


Family = tuple[TextTokenizer, Tokenizer, Tokenizer]


@pytest.fixture(scope="module")
def tokenizers(tokenizer_dirs: dict[str, Path]) -> dict[tuple[str, int], Family]:
    """Per family and length: Remora's tokenizer, and the `tokenizers` library's own, truncating
    right with longest-first and not truncating at all: the references."""
    out = {}
    for name, path in tokenizer_dirs.items():
        for max_len in (MAX_LEN, PAIR_MAX_LEN):
            truncating = Tokenizer.from_file(str(path / "tokenizer.json"))
            truncating.no_padding()
            truncating.enable_truncation(max_length=max_len, strategy="longest_first", direction="right")
            whole = Tokenizer.from_file(str(path / "tokenizer.json"))
            whole.no_padding()
            whole.no_truncation()
            out[name, max_len] = (TextTokenizer(path, max_len=max_len), truncating, whole)
    return out


FAMILIES = ("wordpiece", "bpe", "qwen")


def specials(reference: Tokenizer) -> tuple[list[int], list[int]]:
    """The ids a family's template puts before and after a single text."""
    empty = reference.encode("")
    return empty.ids[:1] if len(empty.ids) > 1 else [], empty.ids[-1:]


@pytest.mark.parametrize("family", FAMILIES)
@derandomized(60)
@given(texts=st.lists(ANY_TEXT, min_size=1, max_size=4))
def test_truncation_stays_within_max_len_keeps_specials_and_matches_tokenizers(
    tokenizers: dict[tuple[str, int], Family], family: str, texts: list[str]
) -> None:
    ours, truncating, whole = tokenizers[family, MAX_LEN]
    got = ours.encode(texts, truncate=True)
    expected = truncating.encode_batch(texts)
    first, last = specials(whole)
    for ids, type_ids, reference in zip(got.ids, got.type_ids, expected, strict=True):
        assert ids == reference.ids and type_ids == reference.type_ids
        assert len(ids) <= MAX_LEN
        assert ids[: len(first)] == first and ids[len(ids) - len(last):] == last
    # truncate=False: the same ids when the text fits, else InputTooLong naming the first that does not.
    lengths = [len(e.ids) for e in whole.encode_batch(texts)]
    if max(lengths) <= MAX_LEN:
        assert ours.encode(texts, truncate=False).ids == [e.ids for e in whole.encode_batch(texts)]
    else:
        index = next(i for i, n in enumerate(lengths) if n > MAX_LEN)
        with pytest.raises(InputTooLong, match=f"input {index} is {lengths[index]} tokens long"):
            ours.encode(texts, truncate=False)


@pytest.mark.parametrize("family", FAMILIES)
@derandomized(40)
@given(text=long_texts(min_chars=MAX_LEN * HEAD_CHARS_PER_TOKEN * 2))
def test_long_texts_tokenized_from_their_head_match_whole_tokenization(
    tokenizers: dict[tuple[str, int], Family], family: str, text: str
) -> None:
    """A text past HEAD_CHARS_PER_TOKEN characters per token is tokenized from its start only:
    the ids, type ids and character offsets (extraction's alignment) must be exactly what
    tokenizing it whole gives."""
    ours, truncating, _ = tokenizers[family, MAX_LEN]
    reference = truncating.encode(text)
    got, aligned = ours.encode_aligned([text])
    assert got.ids == [reference.ids] and got.type_ids == [reference.type_ids]
    assert aligned[0].offsets == reference.offsets


@pytest.mark.parametrize("family", FAMILIES)
@derandomized(12)
@given(
    first=st.one_of(ANY_TEXT, long_texts(min_chars=PAIR_MAX_LEN * HEAD_CHARS_PER_TOKEN + 1, words=LATIN_WORD)),
    second=st.one_of(ANY_TEXT, long_texts(min_chars=PAIR_MAX_LEN * HEAD_CHARS_PER_TOKEN + 1, words=LATIN_WORD)),
)
def test_pairs_truncate_longest_first_as_tokenizers_does(
    tokenizers: dict[tuple[str, int], Family], family: str, first: str, second: str
) -> None:
    """Remora cuts pairs itself (from heads of long texts): the same ids and segment ids as the
    library's longest-first truncation, short or long texts on either side, either way round.
    Long texts are Latin here: the reference's cost grows with the square of their tokens."""
    ours, truncating, _ = tokenizers[family, PAIR_MAX_LEN]
    for pair in ((first, second), (second, first), (first, first)):
        got = ours.encode_pairs([pair[0]], [pair[1]])
        reference = truncating.encode(*pair)
        assert got.ids == [reference.ids] and got.type_ids == [reference.type_ids], pair
        assert len(got.ids[0]) <= PAIR_MAX_LEN


def test_a_huge_text_refused_without_truncation_is_named_from_its_head(
    tokenizers: dict[tuple[str, int], Family],
) -> None:
    ours, _, _ = tokenizers["wordpiece", MAX_LEN]
    huge = "hello world " * (MAX_LEN * EXACT_COUNT_CHARS_PER_TOKEN // 6)
    with pytest.raises(InputTooLong, match=r"input 1 is over \d+ tokens long; this model takes at most 8"):
        ours.encode(["fine", huge], truncate=False)
    assert ours.encode(["fine", huge]).lengths == [3, MAX_LEN]


@pytest.mark.parametrize("family", FAMILIES)
@derandomized(40)
@given(texts=st.lists(st.text(st.characters(codec=None), max_size=40), min_size=1, max_size=4))
def test_any_python_string_encodes_or_is_invalid_input(
    tokenizers: dict[tuple[str, int], Family], family: str, texts: list[str]
) -> None:
    """Surrogates included (a Python str may hold "\\ud800"; JSON and msgpack bodies cannot):
    those are InvalidInput naming the text, and nothing else is refused."""
    ours, _, _ = tokenizers[family, MAX_LEN]

    def broken(text: str) -> bool:
        return any(0xD800 <= ord(c) <= 0xDFFF for c in text)

    bad = next((i for i, t in enumerate(texts) if broken(t)), None)
    for call in (lambda: ours.encode(texts), lambda: ours.encode_pairs(texts, texts[::-1]),
                 lambda: ours.encode_aligned(texts)):
        if bad is None:
            call()
        else:
            with pytest.raises(InvalidInput, match="lone surrogate"):
                call()


# -- the engine: a text's embedding does not depend on its batch ------------------------------------------


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """A tiny seeded BERT encoder (64-d, 128 positions, mean pooling) in an in-process engine."""
    from transformers import BertModel

    torch.manual_seed(0)
    model = BertModel(tiny_bert_config(), add_pooling_layer=False).eval()
    randomize_layernorms(model, 0)
    path = save_tiny(model, tmp_path_factory.mktemp("properties") / "tiny")
    engine = Engine(EngineSettings(num_threads=1, register_defaults=False))
    engine.register("tiny", path)
    yield engine
    engine.close()


@derandomized(25)
@given(texts=st.lists(st.text(ANY_CHAR, max_size=700), min_size=1, max_size=6), normalize=st.booleans())
def test_encoding_a_batch_equals_encoding_each_text_alone(engine: Engine, texts: list[str], normalize: bool) -> None:
    """Texts up to 700 characters: some pass 128 tokens and are truncated. fp32 on CPU; atol 1e-5
    (only the attention backend's per-sequence summation order differs)."""
    batch = engine.encode("tiny", texts, normalize=normalize)
    assert batch.shape == (len(texts), 64) and batch.dtype == np.float32
    assert np.isfinite(batch).all()
    alone = np.stack([engine.encode("tiny", [text], normalize=normalize)[0] for text in texts])
    np.testing.assert_allclose(batch, alone, atol=1e-5, rtol=0)
    order = list(reversed(range(len(texts))))
    np.testing.assert_allclose(engine.encode("tiny", [texts[i] for i in order], normalize=normalize),
                               batch[order], atol=1e-5, rtol=0)


def test_engine_refuses_a_lone_surrogate_as_invalid_input(engine: Engine) -> None:
    with pytest.raises(InvalidInput, match="input 1 is not valid Unicode"):
        engine.encode("tiny", ["fine", "bad \ud800 text"])
    assert engine.encode("tiny", ["fine"]).shape == (1, 64)
