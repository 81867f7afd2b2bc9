"""Loading refuses bad model directories with an error that names the problem.

Every test starts from a tiny random BERT saved the way transformers saves it, breaks one thing,
and checks both the error type (from remora.core.errors) and that the message names the culprit.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from remora.core import Engine, EngineSettings
from remora.core.errors import (
    InvalidInput,
    ModelLoadError,
    PathNotAllowed,
    UnsupportedArchitecture,
    WeightsError,
)
from tests.helpers import write_json

TEXTS = ["hello world", "a second, somewhat longer sentence about remoras and sharks"]


def make_engine(**settings: object) -> Engine:
    return Engine(EngineSettings(register_defaults=False, device="cpu", **settings))  # type: ignore[arg-type]


def load(path: Path) -> object:
    engine = make_engine()
    engine.register("x", path)
    return engine.model("x")


def rewrite(model_dir: Path, mutate: Callable[[dict[str, torch.Tensor]], None]) -> None:
    file = model_dir / "model.safetensors"
    tensors = load_file(str(file))
    mutate(tensors)
    save_file(tensors, str(file), metadata={"format": "pt"})


def test_unbroken_copy_loads(tiny: Path) -> None:
    # The baseline every refusal below departs from: the untouched directory loads and encodes.
    engine = make_engine()
    engine.register("x", tiny)
    vectors = engine.encode("x", TEXTS)
    assert vectors.shape == (2, 64)
    assert np.isfinite(vectors).all()


# -- tensors missing, unexpected, misshapen ---------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "encoder.layer.1.output.dense.bias",
        "encoder.layer.0.attention.self.key.weight",  # one source of the fused QKV
        "embeddings.LayerNorm.weight",
        "embeddings.word_embeddings.weight",  # also the tensor the name prefix is detected by
    ],
)
def test_missing_tensor_is_named(tiny: Path, name: str) -> None:
    rewrite(tiny, lambda t: t.pop(name))
    with pytest.raises(WeightsError) as info:
        load(tiny)
    assert "missing" in str(info.value)
    assert repr(name) in str(info.value)
    assert info.value.code == "WEIGHTS_INVALID"


@pytest.mark.parametrize(
    "name",
    [
        "encoder.layer.2.output.dense.weight",  # a layer the config does not have
        "cls.predictions.bias",  # an MLM head, but config.json says BertModel
        "extra.weight",
    ],
)
def test_unexpected_tensor_is_named(tiny: Path, name: str) -> None:
    rewrite(tiny, lambda t: t.__setitem__(name, torch.zeros(64, 64)))
    with pytest.raises(WeightsError) as info:
        load(tiny)
    assert "unexpected" in str(info.value)
    assert repr(name) in str(info.value)


def test_many_missing_tensors_are_listed_and_counted(tiny: Path) -> None:
    layer1 = lambda t: [t.pop(k) for k in list(t) if k.startswith("encoder.layer.1.")]  # noqa: E731
    rewrite(tiny, layer1)
    with pytest.raises(WeightsError) as info:
        load(tiny)
    message = str(info.value)
    assert "encoder.layer.1." in message
    assert "and 8 more" in message  # 16 tensors in a BERT layer; the first 8 are shown


@pytest.mark.parametrize(
    ("name", "bad_shape", "good_shape"),
    [
        ("embeddings.position_embeddings.weight", (64, 64), (128, 64)),
        ("encoder.layer.1.output.LayerNorm.bias", (32,), (64,)),
        ("encoder.layer.0.intermediate.dense.weight", (64, 128), (128, 64)),  # transposed
    ],
)
def test_wrong_shape_names_tensor_and_both_shapes(
    tiny: Path, name: str, bad_shape: tuple[int, ...], good_shape: tuple[int, ...]
) -> None:
    rewrite(tiny, lambda t: t.__setitem__(name, torch.zeros(bad_shape)))
    with pytest.raises(WeightsError) as info:
        load(tiny)
    message = str(info.value)
    assert name in message
    assert str(bad_shape) in message
    assert str(good_shape) in message


@pytest.mark.parametrize(
    ("name", "bad_shape"),
    [
        ("encoder.layer.0.attention.self.key.weight", (64, 32)),  # wrong width: cat would fail
        ("encoder.layer.0.attention.self.query.weight", (32, 64)),  # wrong rows: cat would pass
    ],
)
def test_wrong_shape_in_fused_source(tiny: Path, name: str, bad_shape: tuple[int, int]) -> None:
    rewrite(tiny, lambda t: t.__setitem__(name, torch.zeros(*bad_shape)))
    with pytest.raises(WeightsError) as info:
        load(tiny)
    message = str(info.value)
    assert name in message
    assert str(bad_shape) in message
    assert "(64, 64)" in message


# -- directories without usable weights ------------------------------------------------------


def test_path_that_does_not_exist(tmp_path: Path) -> None:
    engine = make_engine()
    missing = tmp_path / "no-such-model"
    with pytest.raises(InvalidInput) as info:
        engine.register("x", missing)
    assert str(missing) in str(info.value)
    assert engine.models() == []


def test_path_that_is_a_file(tiny: Path) -> None:
    with pytest.raises(InvalidInput, match="does not exist"):
        make_engine().register("x", tiny / "config.json")


def test_directory_without_config_json(tiny: Path) -> None:
    (tiny / "config.json").unlink()
    with pytest.raises(ModelLoadError, match=r"config\.json"):
        load(tiny)


def test_config_but_no_weights(tiny: Path) -> None:
    (tiny / "model.safetensors").unlink()
    with pytest.raises(WeightsError) as info:
        load(tiny)
    message = str(info.value)
    assert "no weights" in message
    assert "model.safetensors" in message
    assert str(tiny) in message


@pytest.fixture
def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every way to unpickle raises AssertionError for the rest of the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("something tried to unpickle")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(torch.serialization, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    # The trap is armed (otherwise the tests below could not notice an unpickling).
    with pytest.raises(AssertionError):
        pickle.loads(pickle.dumps(1))
    with pytest.raises(AssertionError):
        torch.load("whatever.bin")


def _save_pickle_checkpoint(model_dir: Path) -> None:
    state = {k: v.clone() for k, v in load_file(str(model_dir / "model.safetensors")).items()}
    torch.save(state, model_dir / "pytorch_model.bin")


def test_pickle_only_checkpoint_is_refused_without_unpickling(tiny: Path, no_unpickling: None) -> None:
    _save_pickle_checkpoint(tiny)  # torch.save pickles; only unpickling is trapped
    (tiny / "model.safetensors").unlink()
    with pytest.raises(WeightsError) as info:
        load(tiny)
    message = str(info.value)
    assert "pickle" in message
    assert "pytorch_model.bin" in message
    assert "safetensors" in message  # says what to convert to


def test_pickle_beside_safetensors_is_ignored(tiny: Path, no_unpickling: None) -> None:
    _save_pickle_checkpoint(tiny)  # the trap would fire were this file ever read
    engine = make_engine()
    engine.register("x", tiny)
    assert engine.encode("x", TEXTS).shape == (2, 64)


# -- corrupt safetensors ---------------------------------------------------------------------


def _garbage(file: Path) -> None:
    file.write_bytes(b"this is not a safetensors file, only some junk bytes\n" * 20)


def _truncated(file: Path) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


def _header_past_end(file: Path) -> None:
    data = file.read_bytes()
    file.write_bytes(struct.pack("<Q", len(data) * 2) + data[8:])


def _tiny_file(file: Path) -> None:
    file.write_bytes(b"\x01\x02\x03")


def _bad_offsets(file: Path) -> None:
    # A well-formed header whose data offsets point past the end of the file.
    header = json.dumps({"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}).encode()
    file.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)


@pytest.mark.parametrize("corrupt", [_garbage, _truncated, _header_past_end, _tiny_file, _bad_offsets])
def test_corrupt_safetensors_names_the_file(tiny: Path, corrupt: Callable[[Path], None]) -> None:
    file = tiny / "model.safetensors"
    corrupt(file)
    with pytest.raises(WeightsError) as info:
        load(tiny)
    message = str(info.value)
    assert "corrupt" in message
    assert str(file) in message


# -- architectures ---------------------------------------------------------------------------


def test_unsupported_architecture_is_named_with_the_supported_ones(tiny: Path) -> None:
    write_json(
        tiny / "config.json",
        {"architectures": ["GPT2Model"], "model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4},
    )
    with pytest.raises(UnsupportedArchitecture) as info:
        load(tiny)
    message = str(info.value)
    assert "GPT2Model" in message
    assert "supported" in message
    for name in ("BertModel", "XLMRobertaModel", "BertForSequenceClassification"):
        assert name in message
    assert info.value.code == "UNSUPPORTED_ARCHITECTURE"


def test_unsupported_model_type_without_architectures(tiny: Path) -> None:
    write_json(tiny / "config.json", {"model_type": "gpt2", "n_embd": 64})
    with pytest.raises(UnsupportedArchitecture) as info:
        load(tiny)
    assert "gpt2" in str(info.value)
    assert "BertModel" in str(info.value)


def test_model_type_alone_selects_bert(tiny: Path) -> None:
    config = json.loads((tiny / "config.json").read_text())
    del config["architectures"]
    write_json(tiny / "config.json", config)
    assert load(tiny).architecture == "BertModel"  # type: ignore[attr-defined]


# -- sharded checkpoints ---------------------------------------------------------------------


def _shard(model_dir: Path) -> list[str]:
    """Split model.safetensors into two shards plus an index, as transformers writes them."""
    tensors = load_file(str(model_dir / "model.safetensors"))
    names = sorted(tensors)
    half = len(names) // 2
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    weight_map = {}
    for shard, part in zip(shards, (names[:half], names[half:]), strict=True):
        save_file({n: tensors[n] for n in part}, str(model_dir / shard), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, shard))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    write_json(
        model_dir / "model.safetensors.index.json",
        {"metadata": {"total_size": total}, "weight_map": weight_map},
    )
    (model_dir / "model.safetensors").unlink()
    return shards


def test_sharded_checkpoint_matches_unsharded(tiny: Path, tmp_path: Path) -> None:
    sharded = tmp_path / "sharded"
    shutil.copytree(tiny, sharded)
    _shard(sharded)
    assert not (sharded / "model.safetensors").exists()
    engine = make_engine()
    engine.register("single", tiny)
    engine.register("sharded", sharded)
    single_out = engine.encode("single", TEXTS)
    sharded_out = engine.encode("sharded", TEXTS)
    np.testing.assert_allclose(sharded_out, single_out, rtol=0, atol=1e-6)


def test_shard_index_naming_a_missing_shard(tiny: Path) -> None:
    shards = _shard(tiny)
    (tiny / shards[1]).unlink()
    with pytest.raises(WeightsError) as info:
        load(tiny)
    assert shards[1] in str(info.value)
    assert "missing" in str(info.value)


def test_shard_index_that_is_not_json(tiny: Path) -> None:
    _shard(tiny)
    (tiny / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(WeightsError) as info:
        load(tiny)
    assert "model.safetensors.index.json" in str(info.value)


def test_shards_missing_a_tensor_name_it(tiny: Path) -> None:
    shards = _shard(tiny)
    file = tiny / shards[0]
    tensors = load_file(str(file))
    gone = sorted(tensors)[0]
    del tensors[gone]
    save_file(tensors, str(file), metadata={"format": "pt"})
    with pytest.raises(WeightsError) as info:
        load(tiny)
    assert repr(gone) in str(info.value)


# -- model roots -----------------------------------------------------------------------------


@pytest.fixture
def rooted(tiny: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """(root, a model inside it, a model outside it)."""
    root = tmp_path / "root"
    root.mkdir()
    inside = root / "inside"
    shutil.copytree(tiny, inside)
    outside = tmp_path / "outside"
    shutil.copytree(tiny, outside)
    return root, inside, outside


def test_model_root_allows_paths_inside(rooted: tuple[Path, Path, Path]) -> None:
    root, inside, _ = rooted
    engine = make_engine(model_roots=(root,))
    engine.register("x", inside)
    assert engine.encode("x", TEXTS).shape == (2, 64)


def test_model_root_refuses_path_outside(rooted: tuple[Path, Path, Path]) -> None:
    root, _, outside = rooted
    engine = make_engine(model_roots=(root,))
    with pytest.raises(PathNotAllowed) as info:
        engine.register("x", outside)
    assert str(outside) in str(info.value)
    assert info.value.code == "PATH_NOT_ALLOWED"
    assert engine.models() == []


def test_model_root_refuses_dotdot_escape(rooted: tuple[Path, Path, Path]) -> None:
    root, _, outside = rooted
    escaping = root / "inside" / ".." / ".." / outside.name
    assert escaping.is_dir()
    with pytest.raises(PathNotAllowed):
        make_engine(model_roots=(root,)).register("x", escaping)


def test_model_root_refuses_symlink_pointing_outside(rooted: tuple[Path, Path, Path]) -> None:
    root, _, outside = rooted
    link = root / "link"
    os.symlink(outside, link, target_is_directory=True)
    with pytest.raises(PathNotAllowed):
        make_engine(model_roots=(root,)).register("x", link)


def test_model_root_allows_symlink_pointing_inside(rooted: tuple[Path, Path, Path]) -> None:
    root, inside, _ = rooted
    link = root / "alias"
    os.symlink(inside, link, target_is_directory=True)
    spec = make_engine(model_roots=(root,)).register("x", link)
    assert spec.path == inside.resolve()


def test_model_root_is_not_a_string_prefix(rooted: tuple[Path, Path, Path]) -> None:
    root, _, outside = rooted
    sibling = root.parent / (root.name + "-evil")
    shutil.copytree(outside, sibling)
    with pytest.raises(PathNotAllowed):
        make_engine(model_roots=(root,)).register("x", sibling)


def test_model_root_refuses_missing_path_outside_without_probing_it(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(PathNotAllowed):
        make_engine(model_roots=(root,)).register("x", tmp_path / "nowhere")


# -- register options ------------------------------------------------------------------------


def test_unknown_register_option_is_a_type_error(tiny: Path) -> None:
    engine = make_engine()
    with pytest.raises(TypeError) as info:
        engine.register("x", tiny, pooling_mode="mean")
    assert "pooling_mode" in str(info.value)
    assert engine.models() == []


def test_known_register_option_is_accepted(tiny: Path) -> None:
    spec = make_engine().register("x", tiny, pooling="cls", max_seq_len=16)
    assert spec.pooling == ("cls",)
    assert spec.max_seq_len == 16
