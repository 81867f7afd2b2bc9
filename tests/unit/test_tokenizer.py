"""TextTokenizer: truncation, over-long inputs, pairs and prompt lengths, against transformers'
tokenizer and sentence-transformers' rules, on MiniLM's WordPiece tokenizer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from remora.core.errors import InputTooLong, InvalidInput
from remora.core.tokenizer import TextTokenizer
from tests.helpers import WORDPIECE_FILES, minilm_dir, write_bpe_tokenizer

CLS, SEP = 101, 102
SHORT = "a short question?"
LONG = "Remora packs token sequences without padding and runs small encoders beside a vector database. " * 12
MEDIUM = "The quick brown fox jumps over the lazy dog, then naps in the warm afternoon sun."


@pytest.fixture(scope="module")
def hf_tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_dir()))


def tokenizer(max_len: int, model_dir: Path | None = None) -> TextTokenizer:
    return TextTokenizer(model_dir or minilm_dir(), max_len=max_len)


def words(n: int) -> str:
    """A text of exactly n tokens without specials ('hello' is one WordPiece token)."""
    return " ".join(["hello"] * n)


# -- single texts ----------------------------------------------------------------------------


@pytest.mark.parametrize("max_len", [4, 16, 32, 128])
def test_truncation_keeps_special_tokens(hf_tokenizer: Any, max_len: int) -> None:
    tokens = tokenizer(max_len).encode([LONG, SHORT, MEDIUM])
    long_ids = tokens.ids[0]
    assert len(long_ids) == max_len
    assert long_ids[0] == CLS
    assert long_ids[-1] == SEP
    for text, ids in zip([LONG, SHORT, MEDIUM], tokens.ids, strict=True):
        assert ids == hf_tokenizer(text, truncation=True, max_length=max_len)["input_ids"]
    assert tokens.lengths == [len(ids) for ids in tokens.ids]
    assert tokens.type_ids[0] == [0] * max_len


def test_short_text_is_not_touched(hf_tokenizer: Any) -> None:
    ids = tokenizer(64).encode([MEDIUM]).ids[0]
    assert ids == hf_tokenizer(MEDIUM)["input_ids"]
    assert len(ids) < 64


def test_truncation_side_left(hf_tokenizer: Any, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    for name in WORDPIECE_FILES:
        shutil.copy(minilm_dir() / name, tmp_path / name)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["truncation_side"] = "left"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    ids = tokenizer(12, tmp_path).encode([LONG]).ids[0]
    left = AutoTokenizer.from_pretrained(str(tmp_path))
    assert ids == left(LONG, truncation=True, max_length=12)["input_ids"]
    assert ids != hf_tokenizer(LONG, truncation=True, max_length=12)["input_ids"]
    assert (ids[0], ids[-1]) == (CLS, SEP)


def test_empty_string_is_cls_sep() -> None:
    tokens = tokenizer(16).encode(["", SHORT, ""])
    assert tokens.ids[0] == [CLS, SEP]
    assert tokens.ids[2] == [CLS, SEP]
    assert tokens.type_ids[0] == [0, 0]


def test_exactly_max_len_is_accepted_without_truncation() -> None:
    tokens = tokenizer(16).encode([words(14)], truncate=False)
    assert tokens.lengths == [16]


@pytest.mark.parametrize(("index", "extra"), [(0, 1), (2, 1), (1, 30)])
def test_too_long_without_truncation_names_index_and_length(
    hf_tokenizer: Any, index: int, extra: int
) -> None:
    texts = [SHORT, words(5), words(3)]
    texts[index] = words(14 + extra)
    expected_len = len(hf_tokenizer(texts[index])["input_ids"])
    assert expected_len == 16 + extra
    with pytest.raises(InputTooLong) as info:
        tokenizer(16).encode(texts, truncate=False)
    message = str(info.value)
    assert f"input {index} " in message
    assert str(expected_len) in message
    assert "16" in message  # the limit
    assert info.value.code == "INPUT_TOO_LONG"
    assert isinstance(info.value, InvalidInput)


def test_first_over_long_input_is_reported() -> None:
    with pytest.raises(InputTooLong, match="input 1 is 20 tokens"):
        tokenizer(16).encode([SHORT, words(18), words(40)], truncate=False)


def test_engine_encode_truncate_false() -> None:
    from remora.core import Engine, EngineSettings

    engine = Engine(EngineSettings(device="cpu"))
    limit = engine.model("all-MiniLM-L6-v2").spec.max_seq_len
    assert limit == 256
    with pytest.raises(InputTooLong, match="input 1 is 302 tokens"):
        engine.encode("all-MiniLM-L6-v2", [SHORT, words(300)], truncate=False)
    assert engine.encode("all-MiniLM-L6-v2", [SHORT, words(300)]).shape == (2, 384)


# -- pairs -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second"),
    [(LONG, SHORT), (SHORT, LONG), (LONG, LONG), (MEDIUM, LONG), (SHORT, MEDIUM), ("", LONG)],
    ids=["long-short", "short-long", "long-long", "medium-long", "short-medium", "empty-long"],
)
@pytest.mark.parametrize("max_len", [24, 40])
def test_pair_truncation_is_longest_first(hf_tokenizer: Any, first: str, second: str, max_len: int) -> None:
    tokens = tokenizer(max_len).encode_pairs([first], [second])
    expected = hf_tokenizer(first, second, truncation=True, max_length=max_len)
    assert tokens.ids[0] == expected["input_ids"]
    assert tokens.type_ids[0] == expected["token_type_ids"]
    assert len(tokens.ids[0]) <= max_len
    assert tokens.ids[0].count(SEP) == 2


def test_pair_long_short_cuts_only_the_long_side() -> None:
    ids = tokenizer(24).encode_pairs([LONG], [SHORT]).ids[0]
    short_ids = tokenizer(24).encode([SHORT]).ids[0][1:]  # its tokens and the closing [SEP]
    assert len(ids) == 24
    assert ids[-len(short_ids) :] == short_ids


def test_pair_too_long_without_truncation() -> None:
    with pytest.raises(InputTooLong, match=r"input 1 is \d+ tokens"):
        tokenizer(24).encode_pairs([SHORT, SHORT], [SHORT, LONG], truncate=False)


def test_pair_counts_must_match() -> None:
    with pytest.raises(ValueError):
        tokenizer(24).encode_pairs([SHORT, SHORT], [SHORT])


# -- prompt length ---------------------------------------------------------------------------

PROMPTS = ["query: ", "passage: ", "Represent this sentence for searching relevant passages: ", "x", "[SEP]"]


def _st_rule(hf: Any, prompt: str) -> int:
    """sentence-transformers: the prompt tokenized with special tokens, less a trailing special token."""
    ids = hf(prompt)["input_ids"]
    return len(ids) - 1 if ids and ids[-1] in hf.all_special_ids else len(ids)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_prompt_length_follows_sentence_transformers(hf_tokenizer: Any, prompt: str) -> None:
    length = tokenizer(256).prompt_length(prompt)
    assert length == _st_rule(hf_tokenizer, prompt)
    assert length == len(hf_tokenizer(prompt, add_special_tokens=False)["input_ids"]) + 1  # [CLS] + prompt


def test_prompt_length_matches_sentence_transformers_itself() -> None:
    st = pytest.importorskip("sentence_transformers")
    module = st.SentenceTransformer(str(minilm_dir()), device="cpu")[0]
    measure = getattr(module, "_get_prompt_length", None)
    if measure is None:
        pytest.skip("this sentence-transformers has no _get_prompt_length")
    ours = tokenizer(256)
    for prompt in PROMPTS:
        assert ours.prompt_length(prompt) == measure(prompt), prompt


def test_prompt_length_without_trailing_special_token(tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    # tokenizer.json without a post-processor: no special tokens are added, so nothing comes off
    # the end unless the prompt itself ends in one.
    for name in WORDPIECE_FILES:
        shutil.copy(minilm_dir() / name, tmp_path / name)
    data = json.loads((tmp_path / "tokenizer.json").read_text())
    data["post_processor"] = None
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    raw = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    raw.no_padding()
    ours = tokenizer(64, tmp_path)
    assert ours.encode(["query: "]).ids[0] == raw.encode("query: ").ids == [23032, 1024]
    assert ours.prompt_length("query: ") == 2
    assert ours.prompt_length("query: [SEP]") == 2  # a trailing special token still comes off


def test_prompt_length_with_a_bpe_tokenizer(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    write_bpe_tokenizer(tmp_path)
    hf = AutoTokenizer.from_pretrained(str(tmp_path))
    ours = tokenizer(64, tmp_path)
    for prompt in ["query: ", "Represent the document: ", "x"]:
        assert ours.prompt_length(prompt) == _st_rule(hf, prompt), prompt
        assert ours.encode([prompt + "some text"]).ids[0] == hf(prompt + "some text")["input_ids"]
