"""Helpers shared by the security tests."""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.helpers import write_json
from tests.sidecar.server import ServerProcess

API_KEY = "k3y-Security-0123456789"
MAX_REQUEST_BYTES = 2**20
MAX_INPUTS = 8


@dataclass
class Hardened:
    server: ServerProcess
    client: httpx.Client  # sends the API key
    root: Path  # REMORA_MODEL_ROOTS
    outside: Path  # a sibling of the root holding a copy of the tiny model
    config: Path  # the registry file
    log: Path


def hub_snapshot(cache: Path, repo_id: str, commit: str, model_dir: Path) -> Path:
    """`model_dir` laid out as huggingface_hub caches it: content in blobs/, the snapshot a tree of
    relative symlinks into ../../blobs, refs/main naming the commit. Returns the snapshot."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    for file in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, blob)
        link = repo / "snapshots" / commit / file.relative_to(model_dir)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return repo / "snapshots" / commit


def assert_error(response: httpx.Response, status: int, code: str) -> str:
    """The native error body ({"error": {"code", "message"}}) with this status and code; its message."""
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code, error
    return str(error["message"])


def still_serving(client: httpx.Client) -> None:
    """The server answers an ordinary request after whatever the test threw at it."""
    response = client.post("/v1/encode", json={"model": "tiny", "inputs": ["still here"]})
    assert response.status_code == 200, response.text
    assert response.json()["dim"] == 64


# -- model directories that stay inside a root, and ones that try to leave it ------------------------


def write_dense(target: Path, *, seed: int = 0) -> Path:
    """A sentence-transformers Dense module (64 -> 8, no bias, identity) in safetensors."""
    import torch
    from safetensors.torch import save_file

    target.mkdir(parents=True, exist_ok=True)
    write_json(target / "config.json", {
        "in_features": 64, "out_features": 8, "bias": False,
        "activation_function": "torch.nn.modules.linear.Identity",
    })
    weight = torch.randn(8, 64, generator=torch.Generator().manual_seed(seed))
    save_file({"linear.weight": weight}, str(target / "model.safetensors"))
    return target


def write_st_model(tiny: Path, target: Path, *, dense: str) -> Path:
    """`tiny` as a sentence-transformers model: Transformer, mean Pooling, then the Dense module
    that modules.json names by `dense` (a sub-folder, or whatever a hostile file says)."""
    shutil.copytree(tiny, target)
    write_json(target / "1_Pooling" / "config.json", {"word_embedding_dimension": 64, "pooling_mode_mean_tokens": True})
    write_json(target / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": dense, "type": "sentence_transformers.models.Dense"},
    ])
    return target


def copy_with_link(tiny: Path, target: Path, name: str, link_to: Path) -> Path:
    """A copy of `tiny` whose file `name` is a symlink to `link_to`."""
    shutil.copytree(tiny, target)
    (target / name).unlink()
    (target / name).symlink_to(link_to)
    return target


def sharded_naming(tiny: Path, target: Path, shard: str) -> Path:
    """A copy of `tiny` whose weights are a shard index naming `shard` (and no model.safetensors)."""
    from safetensors import safe_open

    shutil.copytree(tiny, target)
    with safe_open(str(tiny / "model.safetensors"), framework="pt") as handle:
        names = list(handle.keys())
    (target / "model.safetensors").unlink()
    write_json(target / "model.safetensors.index.json", {"metadata": {}, "weight_map": dict.fromkeys(names, shard)})
    return target


def build_layouts(tiny: Path, root: Path, outside: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """Model directories under `root`: (the ones that must load, the ones that must be refused),
    by name. `outside` gets a copy of `tiny` and a Dense module for the hostile ones to reach."""
    if not (outside / "tiny").exists():
        shutil.copytree(tiny, outside / "tiny")
    write_dense(outside / "dense")
    write_dense(root / "shared-dense")
    stolen = outside / "tiny" / "model.safetensors"

    good: dict[str, Path] = {"plain": root / "plain"}
    shutil.copytree(tiny, good["plain"])
    # The hub cache's own layout: every file a relative symlink into ../../blobs, inside the root.
    good["hub-snapshot"] = hub_snapshot(root / "hub", "org/tiny", "a" * 40, tiny)
    good["sentence-transformers"] = write_st_model(tiny, root / "st", dense="2_Dense")
    write_dense(good["sentence-transformers"] / "2_Dense")
    # Symlinks that stay inside the root: a weight file, a sub-folder, a loop back to the model itself.
    good["links-inside"] = write_st_model(tiny, root / "links-inside", dense="2_Dense")
    (root / "links-inside" / "2_Dense").symlink_to(root / "shared-dense", target_is_directory=True)
    (root / "links-inside" / "model.safetensors").unlink()
    (root / "links-inside" / "model.safetensors").symlink_to(good["plain"] / "model.safetensors")
    (root / "links-inside" / "loop").symlink_to(root / "links-inside", target_is_directory=True)

    bad: dict[str, Path] = {}
    bad["absolute-outside"] = outside / "tiny"
    bad["dotdot"] = root / "plain" / os.path.relpath(outside / "tiny", root / "plain")  # plain/../../outside/tiny
    bad["symlinked-dir"] = root / "escape"
    bad["symlinked-dir"].symlink_to(outside / "tiny", target_is_directory=True)
    bad["symlinked-weights"] = copy_with_link(tiny, root / "linked-weights", "model.safetensors", stolen)
    bad["symlinked-weights-relative"] = copy_with_link(
        tiny, root / "linked-weights-rel", "model.safetensors", Path(os.path.relpath(stolen, root / "linked-weights-rel"))
    )
    bad["symlinked-config"] = copy_with_link(tiny, root / "linked-config", "config.json", outside / "tiny" / "config.json")
    bad["symlinked-tokenizer"] = copy_with_link(
        tiny, root / "linked-tokenizer", "tokenizer.json", outside / "tiny" / "tokenizer.json"
    )
    bad["symlinked-subfolder"] = write_st_model(tiny, root / "linked-subfolder", dense="2_Dense")
    (root / "linked-subfolder" / "2_Dense").symlink_to(outside / "dense", target_is_directory=True)
    bad["modules-json-dotdot"] = write_st_model(tiny, root / "modules-dotdot", dense=os.path.relpath(outside / "dense", root / "modules-dotdot"))
    bad["modules-json-absolute"] = write_st_model(tiny, root / "modules-absolute", dense=str(outside / "dense"))
    bad["shard-index-dotdot"] = sharded_naming(tiny, root / "shard-dotdot", os.path.relpath(stolen, root / "shard-dotdot"))
    bad["shard-index-absolute"] = sharded_naming(tiny, root / "shard-absolute", str(stolen))
    # A hub snapshot inside the root whose weight "blob" is a link out of it.
    poisoned = hub_snapshot(root / "hub", "org/poisoned", "b" * 40, tiny)
    (poisoned / "model.safetensors").unlink()
    (poisoned / "model.safetensors").symlink_to(stolen)
    bad["poisoned-hub-snapshot"] = poisoned
    for name, path in bad.items():
        assert os.path.exists(path), name  # every hostile layout is a loadable model but for its place
    return good, bad
