"""Promise: `trust_remote_code` is never honoured.

A model directory can ship Python (`modeling_*.py`, `configuration_*.py`, `tokenization_*.py`) and
name it in config.json's `auto_map`, or name classes and functions by dotted path (activations).
Remora builds architectures from its own registry and resolves names from fixed tables: the
shipped code is never imported, whatever the configs say. Every module below writes a marker when
imported; the marker never appears. A static scan checks that nothing passes trust_remote_code
and that every dynamic import names Remora's own modules.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from remora.core import Engine, EngineSettings
from remora.core.errors import ModelLoadError, UnsupportedArchitecture
from remora.core.registry import FAMILIES, HEADS
from tests.helpers import write_json
from tests.security.support import Hardened, assert_error, still_serving, write_dense, write_st_model

REPO = Path(__file__).resolve().parents[2]
SCANNED = ("core", "sidecar", "integrations")
TEXTS = ["a text about remoras", "another one"]
SHIPPED = ("modeling_evil", "configuration_evil", "tokenization_evil", "evil")


def plant_code(model: Path, marker: Path) -> None:
    """Python files a hostile repository ships, each writing the marker when imported."""
    for name in SHIPPED:
        (model / f"{name}.py").write_text(
            f"open({str(marker)!r}, 'a').write({name!r} + ' imported\\n')\n"
            "class EvilModel: pass\nclass EvilConfig: pass\nclass EvilTokenizer: pass\n"
            "def evil(x): return x\n"
        )


def edit_json(file: Path, **changes: object) -> None:
    write_json(file, {**json.loads(file.read_text()), **changes})


AUTO_MAP = {
    "AutoConfig": "configuration_evil.EvilConfig",
    "AutoModel": "modeling_evil.EvilModel",
    "AutoModelForSequenceClassification": "modeling_evil.EvilModel",
}


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "IMPORTED"


@pytest.fixture
def hostile(tiny_dir: Path, tmp_path: Path, marker: Path) -> Path:
    model = shutil.copytree(tiny_dir, tmp_path / "model")
    plant_code(model, marker)
    return model


def engine() -> Engine:
    return Engine(EngineSettings(register_defaults=False, device="cpu", num_threads=1))


def encode(path: Path) -> np.ndarray:
    e = engine()
    e.register("m", path)
    return e.encode("m", TEXTS)


def test_the_shipped_code_is_live(hostile: Path, marker: Path) -> None:
    """The control: importing a shipped module, as trust_remote_code would, writes the marker."""
    spec = importlib.util.spec_from_file_location("modeling_evil_control", hostile / "modeling_evil.py")
    assert spec is not None and spec.loader is not None
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    assert marker.read_text() == "modeling_evil imported\n"


def test_a_custom_architecture_is_refused(hostile: Path, marker: Path) -> None:
    """An architecture only the shipped code defines: refused by name, its code never imported."""
    edit_json(hostile / "config.json", architectures=["EvilModel"], model_type="evil", auto_map=AUTO_MAP)
    with pytest.raises(UnsupportedArchitecture) as info:
        encode(hostile)
    assert "EvilModel" in info.value.message and "BertModel" in info.value.message  # names the supported ones
    assert not marker.exists()
    assert not any(name in sys.modules for name in SHIPPED)


def test_auto_map_beside_a_known_architecture_is_ignored(hostile: Path, marker: Path, tiny_dir: Path) -> None:
    """A BERT config that also names shipped code (auto_map in the model and tokenizer configs):
    served as Remora's own BERT, bit for bit, the shipped code never imported."""
    edit_json(hostile / "config.json", auto_map=AUTO_MAP, trust_remote_code=True)
    edit_json(hostile / "tokenizer_config.json", auto_map={"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]},
              tokenizer_class="EvilTokenizer")
    np.testing.assert_array_equal(encode(hostile), encode(tiny_dir))
    assert not marker.exists()


@pytest.mark.parametrize("where", ["hidden_act", "dense_activation", "cross_encoder_activation"])
def test_names_in_configs_are_never_imported(hostile: Path, marker: Path, tiny_dir: Path, ce_dir: Path,
                                             tmp_path: Path, where: str) -> None:
    """Activation functions named by dotted path resolve from a fixed table or are refused."""
    model = hostile
    if where == "hidden_act":
        edit_json(model / "config.json", hidden_act="modeling_evil.evil")
    elif where == "dense_activation":
        model = write_st_model(tiny_dir, tmp_path / "st", dense="2_Dense")
        plant_code(model, marker)
        write_dense(model / "2_Dense")
        edit_json(model / "2_Dense" / "config.json", activation_function="modeling_evil.evil")
    else:
        model = shutil.copytree(ce_dir, tmp_path / "ce")
        plant_code(model, marker)
        write_json(model / "config_sentence_transformers.json", {"activation_fn": "modeling_evil.evil"})
    with pytest.raises(ModelLoadError) as info:
        e = engine()
        e.register("m", model)
        e.model("m")
    assert "modeling_evil.evil" in info.value.message
    assert not marker.exists()


@pytest.mark.integration
def test_the_server_never_imports_shipped_code(hardened: Hardened, tiny_dir: Path, marker: Path) -> None:
    model = shutil.copytree(tiny_dir, hardened.root / "remote-code")
    plant_code(model, marker)
    edit_json(model / "config.json", architectures=["EvilModel"], model_type="evil", auto_map=AUTO_MAP)
    try:
        assert hardened.client.post("/v1/models", json={"id": "remote-code", "path": str(model)}).status_code == 201
        message = assert_error(hardened.client.post("/v1/encode", json={"model": "remote-code", "inputs": TEXTS}),
                               502, "UNSUPPORTED_ARCHITECTURE")
        assert "EvilModel" in message
        assert not marker.exists()
        still_serving(hardened.client)
    finally:
        shutil.rmtree(model)


# -- static -------------------------------------------------------------------------------------------


def python_files() -> list[Path]:
    files = [f for top in SCANNED for f in (REPO / top).rglob("*.py")]
    assert len(files) > 50, "the scan found too few files to mean anything"
    return files


def remote_code_sites(source: str, where: str) -> list[str]:
    """trust_remote_code passed as anything but a literal False, and code run from strings."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        for keyword in node.keywords:
            value = keyword.value
            if keyword.arg == "trust_remote_code" and not (isinstance(value, ast.Constant) and value.value is False):
                found.append(f"{where}:{node.lineno} passes trust_remote_code={ast.unparse(value)}")
        if isinstance(node.func, ast.Name) and node.func.id in ("exec", "eval", "compile", "__import__"):
            found.append(f"{where}:{node.lineno} calls {node.func.id}")
    return found


def dynamic_imports(source: str, where: str) -> list[tuple[str, str]]:
    """(file, argument) of every importlib.import_module / spec_from_file_location call."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
            "import_module", "spec_from_file_location", "load_module", "exec_module"
        ):
            found.append((where, ast.unparse(node.args[0]) if node.args else ""))
    return found


def test_the_scan_finds_what_it_looks_for() -> None:
    source = ("from transformers import AutoModel\nAutoModel.from_pretrained('x', trust_remote_code=True)\n"
              "AutoModel.from_pretrained('x', trust_remote_code=flag)\nexec('1')\n"
              "import importlib\nimportlib.import_module(config['auto_map'])\n")
    assert len(remote_code_sites(source, "s.py")) == 3
    assert dynamic_imports(source, "s.py") == [("s.py", "config['auto_map']")]


def test_nothing_trusts_remote_code() -> None:
    found = [site for file in python_files()
             for site in remote_code_sites(file.read_text(encoding="utf-8"), str(file.relative_to(REPO)))]
    assert found == [], "\n".join(found)


def test_dynamic_imports_name_only_remoras_own_modules() -> None:
    """Every dynamic import in the code is one of these, and each reads from a table of Remora's
    own modules (a new one must be reviewed and added here)."""
    found = {site for file in python_files()
             for site in dynamic_imports(file.read_text(encoding="utf-8"), str(file.relative_to(REPO)))}
    assert found == {
        ("core/registry.py", "FAMILIES[family]"),
        ("core/registry.py", "module_name"),  # HEADS[name], split at ':'
        ("sidecar/app.py", "f'remora.sidecar.routes.{name}'"),
    }, found
    assert all(module.startswith("remora.core.") for module in FAMILIES.values())
    assert all(target.startswith("remora.core.") for target in HEADS.values())
