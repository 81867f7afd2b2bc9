"""The sentence-transformers directory reader, alone and end to end against sentence-transformers.

Hand-written directories cover the legacy (v2-v5) layout; directories written by
sentence-transformers itself cover the current one. Parity checks load the same directory with
`SentenceTransformer` and with the engine and compare the vectors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from remora.core import Engine, EngineSettings
from remora.core.errors import ModelLoadError, UnsupportedArchitecture
from remora.core.st_format import PostStep, read_st_config, tokenizer_max_length
from tests.helpers import write_json

LEGACY = "sentence_transformers.models."
TEXTS = [
    "hello world",
    "Remora FISH swim beside Sharks and eat what the shark leaves behind",
    "x",
    "a long text about packing token sequences without padding " * 8,
]
TOL = 1e-5


def modules(*entries: tuple[str, str]) -> list[dict[str, Any]]:
    """modules.json entries from (type, path) pairs, in order."""
    return [{"idx": i, "name": str(i), "path": path, "type": kind} for i, (kind, path) in enumerate(entries)]


def write_pooling_dir(model_dir: Path, pooling: dict[str, Any], *extra: tuple[str, str]) -> None:
    write_json(
        model_dir / "modules.json",
        modules((LEGACY + "Transformer", ""), (LEGACY + "Pooling", "1_Pooling"), *extra),
    )
    write_json(model_dir / "1_Pooling" / "config.json", {"word_embedding_dimension": 64, **pooling})


def make_engine() -> Engine:
    return Engine(EngineSettings(register_defaults=False, device="cpu"))


def engine_for(path: Path, **options: Any) -> Engine:
    engine = make_engine()
    engine.register("x", path, **options)
    return engine


@pytest.fixture(scope="module")
def st_module() -> Any:
    return pytest.importorskip("sentence_transformers")


def st_model(st_module: Any, path: Path) -> Any:
    return st_module.SentenceTransformer(str(path), device="cpu")


def assert_close(ours: np.ndarray, theirs: Any) -> None:
    theirs = np.asarray(theirs, dtype=np.float32)
    assert ours.shape == theirs.shape
    diff = float(np.abs(ours - theirs).max())
    assert diff <= TOL, f"max abs diff {diff:.3g} against sentence-transformers"


# -- pooling ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"pooling_mode_mean_tokens": True}, ("mean",)),
        ({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}, ("cls",)),
        ({"pooling_mode_max_tokens": True}, ("max",)),
        ({"pooling_mode_mean_sqrt_len_tokens": True}, ("mean_sqrt_len_tokens",)),
        ({"pooling_mode_weightedmean_tokens": True}, ("weightedmean",)),
        ({"pooling_mode_lasttoken": True}, ("lasttoken",)),
        # Several: sentence-transformers' concatenation order, whatever the order in the file.
        ({"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": True}, ("cls", "mean")),
        (
            {
                "pooling_mode_mean_tokens": True,
                "pooling_mode_max_tokens": True,
                "pooling_mode_cls_token": True,
            },
            ("cls", "max", "mean"),
        ),
    ],
)
def test_legacy_pooling_keys(tmp_path: Path, keys: dict[str, bool], expected: tuple[str, ...]) -> None:
    write_pooling_dir(tmp_path, keys)
    config = read_st_config(tmp_path)
    assert config.is_sentence_transformers
    assert config.pooling == expected
    assert config.include_prompt is True


@pytest.mark.parametrize(
    ("pooling", "expected"),
    [
        ({"pooling_mode": "cls"}, ("cls",)),
        ({"pooling_mode": "lasttoken"}, ("lasttoken",)),
        ({"pooling_mode": ["mean", "max"]}, ("mean", "max")),  # v6 lists keep their own order
        ({"pooling_mode": ["max", "cls"]}, ("max", "cls")),
        # `pooling_mode` wins over legacy keys left in the same file.
        ({"pooling_mode": "max", "pooling_mode_mean_tokens": True}, ("max",)),
    ],
)
def test_v6_pooling_mode(tmp_path: Path, pooling: dict[str, Any], expected: tuple[str, ...]) -> None:
    write_pooling_dir(tmp_path, pooling)
    assert read_st_config(tmp_path).pooling == expected


def test_include_prompt_false(tmp_path: Path) -> None:
    write_pooling_dir(tmp_path, {"pooling_mode": "mean", "include_prompt": False})
    assert read_st_config(tmp_path).include_prompt is False


def test_no_pooling_key_set_means_mean(tiny: Path) -> None:
    # Legacy files with every mode false: sentence-transformers falls back to mean pooling.
    write_pooling_dir(tiny, {"pooling_mode_cls_token": False, "pooling_mode_mean_tokens": False})
    assert engine_for(tiny).model("x").spec.pooling == ("mean",)


def test_pooling_read_into_the_engine_spec(tiny: Path) -> None:
    write_pooling_dir(tiny, {"pooling_mode_cls_token": True, "pooling_mode_max_tokens": True})
    model = engine_for(tiny).model("x")
    assert model.spec.pooling == ("cls", "max")
    assert model.dim == 128
    # An explicit register option beats the file.
    assert engine_for(tiny, pooling="mean").model("x").spec.pooling == ("mean",)


# -- module list -----------------------------------------------------------------------------


def test_dense_then_normalize(tmp_path: Path) -> None:
    write_pooling_dir(
        tmp_path,
        {"pooling_mode": "mean"},
        (LEGACY + "Dense", "2_Dense"),
        (LEGACY + "Normalize", "3_Normalize"),
    )
    assert read_st_config(tmp_path).post == (PostStep("dense", tmp_path / "2_Dense"), PostStep("normalize"))


def test_normalize_then_dense_v6_names(tmp_path: Path) -> None:
    write_json(
        tmp_path / "modules.json",
        modules(
            ("sentence_transformers.base.modules.transformer.Transformer", ""),
            ("sentence_transformers.sentence_transformer.modules.pooling.Pooling", "1_Pooling"),
            ("sentence_transformers.base.modules.normalize.Normalize", "2_Normalize"),
            ("sentence_transformers.base.modules.dense.Dense", "3_Dense"),
        ),
    )
    write_json(tmp_path / "1_Pooling" / "config.json", {"embedding_dimension": 64, "pooling_mode": "cls"})
    config = read_st_config(tmp_path)
    assert config.pooling == ("cls",)
    assert config.post == (PostStep("normalize"), PostStep("dense", tmp_path / "3_Dense"))


def test_modules_are_taken_in_idx_order(tmp_path: Path) -> None:
    entries = modules(
        (LEGACY + "Transformer", ""),
        (LEGACY + "Pooling", "1_Pooling"),
        (LEGACY + "Dense", "2_Dense"),
        (LEGACY + "Normalize", "3_Normalize"),
    )
    write_json(tmp_path / "modules.json", list(reversed(entries)))
    write_json(tmp_path / "1_Pooling" / "config.json", {"pooling_mode_mean_tokens": True})
    assert [s.kind for s in read_st_config(tmp_path).post] == ["dense", "normalize"]


@pytest.mark.parametrize(
    "kind",
    [
        "sentence_transformers.models.CNN",
        "sentence_transformers.models.LSTM",
        "sentence_transformers.sentence_transformer.modules.word_weights.WordWeights",
        "my_package.CustomModule",
    ],
)
def test_unsupported_module_type_is_named(tmp_path: Path, kind: str) -> None:
    write_pooling_dir(tmp_path, {"pooling_mode": "mean"}, (kind, "2_Other"))
    with pytest.raises(UnsupportedArchitecture) as info:
        read_st_config(tmp_path)
    message = str(info.value)
    assert kind in message
    assert "Dense" in message and "Normalize" in message  # says what is supported


def test_unsupported_module_refuses_the_model(tiny: Path) -> None:
    write_pooling_dir(tiny, {"pooling_mode": "mean"}, (LEGACY + "CNN", "2_CNN"))
    with pytest.raises(UnsupportedArchitecture, match=r"sentence_transformers\.models\.CNN"):
        engine_for(tiny).model("x")


def test_unreadable_modules_json(tmp_path: Path) -> None:
    (tmp_path / "modules.json").write_text("[{not json")
    with pytest.raises(ModelLoadError, match=r"modules\.json"):
        read_st_config(tmp_path)


def test_pooling_module_without_config(tmp_path: Path) -> None:
    write_json(
        tmp_path / "modules.json", modules((LEGACY + "Transformer", ""), (LEGACY + "Pooling", "1_Pooling"))
    )
    with pytest.raises(ModelLoadError, match="1_Pooling"):
        read_st_config(tmp_path)


def test_plain_hf_directory(tmp_path: Path) -> None:
    write_json(tmp_path / "sentence_bert_config.json", {"max_seq_length": 77, "do_lower_case": True})
    config = read_st_config(tmp_path)
    assert not config.is_sentence_transformers
    assert config.pooling is None
    assert config.post == ()
    assert config.max_seq_length == 77
    assert config.lowercase is True


# -- prompts ---------------------------------------------------------------------------------


def test_prompts_and_default_prompt_name_are_read(tmp_path: Path) -> None:
    write_json(
        tmp_path / "config_sentence_transformers.json",
        {"prompts": {"query": "query: ", "document": "passage: "}, "default_prompt_name": "query"},
    )
    config = read_st_config(tmp_path)
    assert config.prompts == {"query": "query: ", "document": "passage: "}
    assert config.default_prompt_name == "query"


@pytest.mark.parametrize(
    ("st_config", "query", "document"),
    [
        ({"prompts": {"query": "q: ", "document": "d: "}}, "q: ", "d: "),
        ({"prompts": {"query": "q: ", "passage": "p: "}}, "q: ", "p: "),
        ({"prompts": {"corpus": "c: "}}, None, "c: "),
        # "document" before "passage" before "corpus", as encode_document picks them.
        ({"prompts": {"corpus": "c: ", "passage": "p: ", "document": "d: "}}, None, "d: "),
        ({"prompts": {"corpus": "c: ", "passage": "p: "}}, None, "p: "),
        ({}, None, None),
    ],
)
def test_prompt_resolution(
    tiny: Path, st_config: dict[str, Any], query: str | None, document: str | None
) -> None:
    write_json(tiny / "config_sentence_transformers.json", st_config)
    model = engine_for(tiny).model("x")
    assert model.spec.query_prompt == query
    assert model.spec.document_prompt == document
    assert model.prompt_for(is_query=True) == (query or "")
    assert model.prompt_for(is_query=False) == (document or "")


def test_register_options_override_prompts(tiny: Path) -> None:
    write_json(tiny / "config_sentence_transformers.json", {"prompts": {"query": "q: ", "document": "d: "}})
    spec = engine_for(tiny, query_prompt="", document_prompt="doc: ").model("x").spec
    assert spec.query_prompt == ""
    assert spec.document_prompt == "doc: "


# -- max_seq_length and do_lower_case --------------------------------------------------------


def test_tokenizer_max_length_ignores_the_no_limit_sentinel(tmp_path: Path) -> None:
    write_json(tmp_path / "tokenizer_config.json", {"model_max_length": int(1e30)})
    assert tokenizer_max_length(tmp_path) is None
    write_json(tmp_path / "tokenizer_config.json", {"model_max_length": 512})
    assert tokenizer_max_length(tmp_path) == 512
    (tmp_path / "tokenizer_config.json").unlink()
    assert tokenizer_max_length(tmp_path) is None


def _set_lengths(model_dir: Path, *, st_max: int | None, tok_max: int | None) -> None:
    write_pooling_dir(model_dir, {"pooling_mode_mean_tokens": True})
    bert_config: dict[str, Any] = {"do_lower_case": False}
    if st_max is not None:
        bert_config["max_seq_length"] = st_max
    write_json(model_dir / "sentence_bert_config.json", bert_config)
    tok_config = json.loads((model_dir / "tokenizer_config.json").read_text())
    tok_config.pop("model_max_length", None)
    if tok_max is not None:
        tok_config["model_max_length"] = tok_max
    write_json(model_dir / "tokenizer_config.json", tok_config)


# The tiny model's position table holds 128 tokens.
@pytest.mark.parametrize(
    ("st_max", "tok_max", "expected"),
    [
        (32, 64, 32),  # sentence_bert_config first
        (None, 40, 40),  # then tokenizer_config's model_max_length
        (None, 1000, 128),  # capped at the position table
        (None, int(1e30), 128),  # "no limit" sentinel
        (None, None, 128),
    ],
)
def test_max_seq_length_source_matches_sentence_transformers(
    tiny: Path, st_module: Any, st_max: int | None, tok_max: int | None, expected: int
) -> None:
    _set_lengths(tiny, st_max=st_max, tok_max=tok_max)
    model = engine_for(tiny).model("x")
    assert model.spec.max_seq_len == expected
    long_text = "word " * 400
    assert model.tokenizer.encode([long_text]).lengths == [expected]
    assert st_model(st_module, tiny).max_seq_length == expected


def test_max_seq_length_past_the_position_table_is_capped(tiny: Path) -> None:
    # sentence-transformers would take 512 and fail on long inputs; the engine caps it.
    _set_lengths(tiny, st_max=512, tok_max=512)
    model = engine_for(tiny).model("x")
    assert model.spec.max_seq_len == 128
    assert model.tokenizer.encode(["word " * 400]).lengths == [128]
    assert engine_for(tiny, max_seq_len=1000).model("x").spec.max_seq_len == 128


def test_register_max_seq_len_beats_the_files(tiny: Path) -> None:
    _set_lengths(tiny, st_max=32, tok_max=64)
    model = engine_for(tiny, max_seq_len=16).model("x")
    assert model.spec.max_seq_len == 16
    assert model.tokenizer.encode(["word " * 400]).lengths == [16]


def _make_cased(model_dir: Path) -> None:
    """Turn MiniLM's uncased WordPiece tokenizer into a cased one (its normalizer stops lowercasing)."""
    tokenizer = json.loads((model_dir / "tokenizer.json").read_text())
    tokenizer["normalizer"]["lowercase"] = False
    (model_dir / "tokenizer.json").write_text(json.dumps(tokenizer))
    tok_config = json.loads((model_dir / "tokenizer_config.json").read_text())
    tok_config["do_lower_case"] = False
    write_json(model_dir / "tokenizer_config.json", tok_config)


@pytest.mark.parametrize("lower", [True, False])
def test_do_lower_case(tiny: Path, st_module: Any, lower: bool) -> None:
    _make_cased(tiny)
    write_pooling_dir(tiny, {"pooling_mode_mean_tokens": True})
    write_json(tiny / "sentence_bert_config.json", {"max_seq_length": 64, "do_lower_case": lower})
    assert read_st_config(tiny).lowercase is lower
    engine = engine_for(tiny)
    tokenizer = engine.model("x").tokenizer
    upper_ids, lower_ids = tokenizer.encode(["HELLO World", "hello world"]).ids
    assert (upper_ids == lower_ids) is lower
    texts = ["HELLO World", "Remora FISH", "hello world"]
    assert_close(engine.encode("x", texts), st_model(st_module, tiny).encode_document(texts))


# -- end to end against sentence-transformers ------------------------------------------------


def test_st_written_dense_prompts_exclude_prompt(tiny_src: Path, tmp_path: Path, st_module: Any) -> None:
    from sentence_transformers.sentence_transformer import modules as st_modules

    torch.manual_seed(1)
    out = tmp_path / "st"
    st_module.SentenceTransformer(
        modules=[
            st_modules.Transformer(str(tiny_src)),
            st_modules.Pooling(64, pooling_mode="mean", include_prompt=False),
            st_modules.Dense(64, 24, bias=True, activation_function=torch.nn.Tanh()),
        ],
        prompts={"query": "query: ", "document": "passage: "},
    ).save(str(out))

    # What sentence-transformers wrote is what the reader expects.
    dense_config = json.loads((out / "2_Dense" / "config.json").read_text())
    assert dense_config["activation_function"] == "torch.nn.modules.activation.Tanh"
    assert (dense_config["in_features"], dense_config["out_features"], dense_config["bias"]) == (64, 24, True)
    assert set(load_file(str(out / "2_Dense" / "model.safetensors"))) == {"linear.weight", "linear.bias"}
    config = read_st_config(out)
    assert config.pooling == ("mean",)
    assert config.include_prompt is False
    assert config.post == (PostStep("dense", out / "2_Dense"),)
    assert config.prompts == {"query": "query: ", "document": "passage: "}

    reference = st_model(st_module, out)
    engine = engine_for(out)
    queries = engine.encode("x", TEXTS, is_query=True)
    documents = engine.encode("x", TEXTS, is_query=False)
    assert queries.shape == (len(TEXTS), 24)
    assert float(np.abs(queries - documents).max()) > 1e-3  # the prompts do something
    assert float(np.abs(queries).max()) <= 1.0  # Tanh applied
    assert_close(queries, reference.encode_query(TEXTS))
    assert_close(documents, reference.encode_document(TEXTS))


def _write_legacy_dense(module_dir: Path, in_features: int, out_features: int, seed: int) -> None:
    write_json(
        module_dir / "config.json",
        {
            "in_features": in_features,
            "out_features": out_features,
            "bias": True,
            "activation_function": "torch.nn.modules.activation.Tanh",
        },
    )
    gen = torch.Generator().manual_seed(seed)
    save_file(
        {
            "linear.weight": torch.randn(out_features, in_features, generator=gen) * 0.2,
            "linear.bias": torch.randn(out_features, generator=gen) * 0.1,
        },
        str(module_dir / "model.safetensors"),
    )


def test_hand_written_legacy_directory(tiny: Path, st_module: Any) -> None:
    write_pooling_dir(
        tiny,
        {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False},
        (LEGACY + "Dense", "2_Dense"),
        (LEGACY + "Normalize", "3_Normalize"),
    )
    _write_legacy_dense(tiny / "2_Dense", 128, 16, seed=3)
    (tiny / "3_Normalize").mkdir()
    write_json(tiny / "sentence_bert_config.json", {"max_seq_length": 24, "do_lower_case": False})
    write_json(tiny / "config_sentence_transformers.json", {"prompts": {"query": "Query: "}})

    engine = engine_for(tiny)
    spec = engine.model("x").spec
    assert (spec.pooling, spec.normalize, spec.max_seq_len, spec.query_prompt) == (
        ("cls", "mean"),
        True,
        24,
        "Query: ",
    )
    reference = st_model(st_module, tiny)
    queries = engine.encode("x", TEXTS, is_query=True)
    np.testing.assert_allclose(np.linalg.norm(queries, axis=1), 1.0, atol=1e-5)
    assert_close(queries, reference.encode_query(TEXTS))
    assert_close(engine.encode("x", TEXTS), reference.encode_document(TEXTS))


def test_hand_written_dense_without_safetensors_is_refused(tiny: Path) -> None:
    write_pooling_dir(tiny, {"pooling_mode_mean_tokens": True}, (LEGACY + "Dense", "2_Dense"))
    _write_legacy_dense(tiny / "2_Dense", 64, 8, seed=0)
    weights = load_file(str(tiny / "2_Dense" / "model.safetensors"))
    (tiny / "2_Dense" / "model.safetensors").unlink()
    torch.save(weights, tiny / "2_Dense" / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="pickle"):
        engine_for(tiny).model("x")


def _normalize_then_dense(tiny_src: Path, out: Path, st_module: Any) -> None:
    from sentence_transformers.sentence_transformer import modules as st_modules

    torch.manual_seed(2)
    st_module.SentenceTransformer(
        modules=[
            st_modules.Transformer(str(tiny_src)),
            st_modules.Pooling(64, pooling_mode="mean"),
            st_modules.Normalize(),
            st_modules.Dense(64, 16, bias=True, activation_function=torch.nn.Identity()),
        ]
    ).save(str(out))


def test_normalize_then_dense_follows_the_model(tiny_src: Path, tmp_path: Path, st_module: Any) -> None:
    out = tmp_path / "st"
    _normalize_then_dense(tiny_src, out, st_module)
    assert [s.kind for s in read_st_config(out).post] == ["normalize", "dense"]
    vectors = engine_for(out).encode("x", TEXTS)
    assert_close(vectors, st_model(st_module, out).encode(TEXTS))
    # The Dense output is not normalised: the Normalize module comes before it.
    assert float(np.abs(np.linalg.norm(vectors, axis=1) - 1.0).max()) > 1e-3


def test_normalize_true_keeps_a_normalize_before_dense(
    tiny_src: Path, tmp_path: Path, st_module: Any
) -> None:
    out = tmp_path / "st"
    _normalize_then_dense(tiny_src, out, st_module)
    vectors = engine_for(out).encode("x", TEXTS, normalize=True)
    assert_close(vectors, st_model(st_module, out).encode(TEXTS, normalize_embeddings=True))


def test_explicit_empty_prompt_beats_default_prompt_name(
    tiny_src: Path, tmp_path: Path, st_module: Any
) -> None:
    from sentence_transformers.sentence_transformer import modules as st_modules

    out = tmp_path / "st"
    st_module.SentenceTransformer(
        modules=[st_modules.Transformer(str(tiny_src)), st_modules.Pooling(64, pooling_mode="mean")],
        prompts={"query": "", "document": "", "classification": "Classify: "},
        default_prompt_name="classification",
    ).save(str(out))
    reference = st_model(st_module, out)
    engine = engine_for(out)
    assert_close(engine.encode("x", TEXTS, is_query=True), reference.encode_query(TEXTS))
    assert_close(engine.encode("x", TEXTS, is_query=False), reference.encode_document(TEXTS))
