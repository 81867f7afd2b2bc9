"""Promise: no pickle is ever loaded.

Every checkpoint below is a real `torch.save` pickle whose unpickling runs code (its `__reduce__`
writes a marker file). Remora refuses the directories that hold only such files, with a message
that says to convert them, ignores them beside safetensors, and the marker never appears. A
static scan checks that no code path can unpickle.
"""

from __future__ import annotations

import ast
import fnmatch
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from remora.core import Engine, EngineSettings
from remora.core.errors import WeightsError
from remora.core.sources import ALLOWED_PATTERNS
from remora.core.weights import PICKLE_SUFFIXES
from tests.security.support import Hardened, assert_error, still_serving, write_dense, write_st_model

REPO = Path(__file__).resolve().parents[2]
SCANNED = ("core", "sidecar", "integrations")


class _Payload:
    """Unpickling this runs `exec`, which writes the marker."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return exec, (f"open({str(self.marker)!r}, 'w').write('unpickled')",)


def hostile_pickle(file: Path, marker: Path, tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """A torch.save checkpoint with the payload among its tensors."""
    torch.save({**(tensors or {}), "payload": _Payload(marker)}, file)
    return file


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "UNPICKLED"


def test_the_payload_is_live(tmp_path: Path, marker: Path) -> None:
    """The control: loading one of these files the way torch.load(weights_only=False) does runs
    the payload, so a marker that stays absent below means nothing was unpickled."""
    file = hostile_pickle(tmp_path / "pytorch_model.bin", marker)
    torch.load(file, weights_only=False)
    assert marker.read_text() == "unpickled"


def engine() -> Engine:
    return Engine(EngineSettings(register_defaults=False, device="cpu", num_threads=1))


def load(path: Path) -> None:
    e = engine()
    e.register("m", path)
    e.encode("m", ["a text"])


def tensors_of(model_dir: Path) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in load_file(str(model_dir / "model.safetensors")).items()}


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "model.pth", "model.ckpt", "model.pkl"])
def test_a_directory_with_only_a_pickle_is_refused(tiny_dir: Path, tmp_path: Path, marker: Path, name: str) -> None:
    model = shutil.copytree(tiny_dir, tmp_path / "model")
    hostile_pickle(model / name, marker, tensors_of(model))
    (model / "model.safetensors").unlink()
    with pytest.raises(WeightsError) as info:
        load(model)
    assert name in info.value.message and "pickle" in info.value.message and "safetensors" in info.value.message
    assert not marker.exists()


def test_a_pickle_beside_safetensors_is_ignored(tiny_dir: Path, tmp_path: Path, marker: Path) -> None:
    model = shutil.copytree(tiny_dir, tmp_path / "model")
    hostile_pickle(model / "pytorch_model.bin", marker, tensors_of(model))
    load(model)
    assert not marker.exists()


def test_a_pickled_dense_module_is_refused(tiny_dir: Path, tmp_path: Path, marker: Path) -> None:
    """sentence-transformers' 2_Dense/pytorch_model.bin (the old layout) is never read."""
    model = write_st_model(tiny_dir, tmp_path / "st", dense="2_Dense")
    dense = write_dense(model / "2_Dense")
    hostile_pickle(dense / "pytorch_model.bin", marker, {"linear.weight": torch.zeros(8, 64)})
    (dense / "model.safetensors").unlink()
    with pytest.raises(WeightsError, match="pickle"):
        load(model)
    assert not marker.exists()


@pytest.mark.parametrize("head", ["sparse_linear.pt", "colbert_linear.pt"])
def test_pickled_heads_are_refused(tiny_dir: Path, tmp_path: Path, marker: Path, head: str) -> None:
    """BGE-M3 ships its sparse and ColBERT heads as .pt pickles: refused, with how to convert them."""
    model = shutil.copytree(tiny_dir, tmp_path / "model")
    hostile_pickle(model / head, marker, {"weight": torch.zeros(1, 64)})
    with pytest.raises(WeightsError) as info:
        load(model)
    assert head in info.value.message and "never unpickles" in info.value.message
    assert not marker.exists()


def test_downloads_never_fetch_a_pickle() -> None:
    """The hub download's allow-list matches no pickle suffix, in any sub-folder."""
    for suffix in (*PICKLE_SUFFIXES, ".pickle", ".joblib", ".npy", ".npz"):
        for name in (f"pytorch_model{suffix}", f"2_Dense/pytorch_model{suffix}", f"model.safetensors{suffix}"):
            assert not any(fnmatch.fnmatch(name, p) for p in ALLOWED_PATTERNS), name


@pytest.mark.integration
def test_the_server_refuses_a_pickled_model(hardened: Hardened, tiny_dir: Path, marker: Path) -> None:
    model = shutil.copytree(tiny_dir, hardened.root / "pickled")
    hostile_pickle(model / "pytorch_model.bin", marker, tensors_of(model))
    (model / "model.safetensors").unlink()
    try:
        assert hardened.client.post("/v1/models", json={"id": "pickled", "path": str(model)}).status_code == 201
        message = assert_error(hardened.client.post("/v1/encode", json={"model": "pickled", "inputs": ["x"]}),
                               502, "WEIGHTS_INVALID")
        assert "pickle" in message
        assert not marker.exists()
        still_serving(hardened.client)
    finally:
        shutil.rmtree(model)


# -- static: nothing that can unpickle is ever called ------------------------------------------------

# Calls that unpickle (or may, by an argument). Matched on the call's dotted name, whatever the
# module is imported as: `load` of torch, pickle, dill, joblib, cloudpickle, numpy with allow_pickle.
UNPICKLING_CALLS = {
    "torch.load", "torch.serialization.load", "pickle.load", "pickle.loads", "pickle.Unpickler",
    "_pickle.load", "_pickle.loads", "dill.load", "dill.loads", "cloudpickle.load", "cloudpickle.loads",
    "joblib.load", "pandas.read_pickle", "shelve.open", "marshal.load", "marshal.loads",
}
UNPICKLING_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def python_files() -> list[Path]:
    files = [f for top in SCANNED for f in (REPO / top).rglob("*.py")]
    assert len(files) > 50, "the scan found too few files to mean anything"
    return files


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> the dotted name it was imported as (`import numpy as np` -> np: numpy)."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([aliases.get(node.id, node.id), *reversed(parts)])


def unpickling_sites(source: str, where: str) -> list[str]:
    tree = ast.parse(source)
    aliases = _aliases(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"{where}:{node.lineno} imports {m}" for m in modules if m.split(".")[0] in UNPICKLING_MODULES]
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func, aliases)
        if name in UNPICKLING_CALLS:
            found.append(f"{where}:{node.lineno} calls {name}")
        for keyword in node.keywords:
            value = keyword.value
            truthy = not (isinstance(value, ast.Constant) and not value.value)
            if keyword.arg == "allow_pickle" and truthy:
                found.append(f"{where}:{node.lineno} passes allow_pickle")
            if keyword.arg == "weights_only" and not (isinstance(value, ast.Constant) and value.value is True):
                found.append(f"{where}:{node.lineno} passes weights_only other than True")
    return found


def test_the_scan_finds_what_it_looks_for() -> None:
    """The control: each kind of unpickling, written as code would write it, is found."""
    source = (
        "import pickle\nimport torch as t\nimport numpy as np\nfrom joblib import load\n"
        "t.load('x')\nnp.load('x', allow_pickle=True)\nload('x')\nt.load('y', weights_only=False)\n"
    )
    found = unpickling_sites(source, "sample.py")
    assert any("imports pickle" in f for f in found)
    assert any("calls torch.load" in f for f in found)
    assert any("allow_pickle" in f for f in found)
    assert any("calls joblib.load" in f for f in found)
    assert any("weights_only" in f for f in found)


def test_no_code_path_unpickles() -> None:
    found = [site for file in python_files()
             for site in unpickling_sites(file.read_text(encoding="utf-8"), str(file.relative_to(REPO)))]
    assert found == [], "\n".join(found)
