"""Hub sources: cache resolution against a hand-built hub cache, downloads against a local fake hub."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import torch
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors

from remora.core.config import HubRef, HubSettings
from remora.core.errors import InvalidInput, ModelLoadError, ModelNotFound
from remora.core.sources import ALLOWED_PATTERNS, resolve_hub, validate_ref

OLD = "1" * 40
NEW = "a" * 39 + "b"
CONFIG = b'{"model_type": "bert", "hidden_size": 8}'


def git_blob_sha1(data: bytes) -> str:
    """The id git (and so the hub's ETag) gives a file that is not stored with LFS."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs(path: str) -> bool:
    # Like a hub repository's .gitattributes: weights go through LFS, text stays in git.
    return path.endswith((".safetensors", ".bin", ".onnx", ".msgpack"))


def etag_of(path: str, data: bytes) -> str:
    """The name huggingface_hub gives the blob: the LFS sha256, or the git blob id."""
    return hashlib.sha256(data).hexdigest() if is_lfs(path) else git_blob_sha1(data)


def repo_dir(cache: Path, repo_id: str) -> Path:
    return cache / ("models--" + repo_id.replace("/", "--"))


def write_snapshot(cache: Path, repo_id: str, commit: str, files: dict[str, bytes]) -> Path:
    """One snapshot exactly as huggingface_hub writes it: content in blobs/<etag>, the snapshot a tree
    of relative symlinks into ../../blobs (one more ../ per sub-folder)."""
    repo = repo_dir(cache, repo_id)
    for path, data in files.items():
        blob = repo / "blobs" / etag_of(path, data)
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / path
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return repo / "snapshots" / commit


def write_ref(cache: Path, repo_id: str, name: str, commit: str) -> None:
    ref = repo_dir(cache, repo_id) / "refs" / name
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(commit)  # the bare hash, no newline, as huggingface_hub writes it


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    """org/model with two commits: main -> NEW, tag v1.0 -> OLD."""
    root = tmp_path / "hub"
    write_snapshot(root, "org/model", OLD, {"config.json": CONFIG, "model.safetensors": b"old"})
    write_snapshot(
        root,
        "org/model",
        NEW,
        {"config.json": CONFIG, "model.safetensors": b"new", "1_Pooling/config.json": b"{}"},
    )
    write_ref(root, "org/model", "main", NEW)
    write_ref(root, "org/model", "v1.0", OLD)
    return root


def offline(cache_dir: Path | None) -> HubSettings:
    return HubSettings(cache_dir=cache_dir, download=False)


# ---------------------------------------------------------------------------------------------------
# Cache resolution


@pytest.mark.parametrize(("revision", "commit"), [("main", NEW), ("v1.0", OLD), (OLD, OLD), (NEW, NEW)])
def test_resolves_branch_tag_and_commit_to_their_snapshot(cache: Path, revision: str, commit: str) -> None:
    path = resolve_hub(HubRef("org/model", revision), offline(cache))
    assert path == repo_dir(cache, "org/model") / "snapshots" / commit
    assert (path / "config.json").read_bytes() == CONFIG
    assert (path / "model.safetensors").read_bytes() == (b"new" if commit == NEW else b"old")


@pytest.mark.parametrize("revision", ["main", "v1.0", OLD])
def test_agrees_with_huggingface_hub_reading_the_same_cache(cache: Path, revision: str) -> None:
    """The hand-built cache is one huggingface_hub itself accepts, and finds the same snapshot in."""
    hf = pytest.importorskip("huggingface_hub")
    report = hf.scan_cache_dir(cache)
    assert report.warnings == []
    assert {(r.repo_id, r.repo_type) for r in report.repos} == {("org/model", "model")}
    theirs = hf.snapshot_download("org/model", revision=revision, cache_dir=cache, local_files_only=True)
    assert resolve_hub(HubRef("org/model", revision), offline(cache)) == Path(theirs)


def test_single_name_repo(tmp_path: Path) -> None:
    write_snapshot(tmp_path, "gpt2", NEW, {"config.json": CONFIG})
    write_ref(tmp_path, "gpt2", "main", NEW)
    assert resolve_hub(HubRef("gpt2"), offline(tmp_path)) == tmp_path / "models--gpt2" / "snapshots" / NEW


def test_branch_name_with_slashes(cache: Path) -> None:
    write_ref(cache, "org/model", "refs/pr/1", OLD)
    path = resolve_hub(HubRef("org/model", "refs/pr/1"), offline(cache))
    assert path.name == OLD


def test_ref_written_with_trailing_newline(cache: Path) -> None:
    (repo_dir(cache, "org/model") / "refs" / "main").write_text(OLD + "\n")
    assert resolve_hub(HubRef("org/model"), offline(cache)).name == OLD


def test_default_cache_is_under_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    # The engine never reads the environment: HF_HUB_CACHE is the sidecar's business.
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    default = tmp_path / ".cache" / "huggingface" / "hub"
    write_snapshot(default, "org/model", NEW, {"config.json": CONFIG})
    write_ref(default, "org/model", "main", NEW)
    assert (
        resolve_hub(HubRef("org/model"), offline(None)) == repo_dir(default, "org/model") / "snapshots" / NEW
    )


def test_cache_hit_does_not_import_huggingface_hub(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # any import of it now raises ImportError
    assert resolve_hub(HubRef("org/model"), HubSettings(cache_dir=cache, download=True)).name == NEW


def test_cache_wins_over_download(cache: Path) -> None:
    # An endpoint nobody listens on: a cached model must not even try it.
    settings = HubSettings(cache_dir=cache, download=True, endpoint=f"http://127.0.0.1:{free_port()}")
    assert resolve_hub(HubRef("org/model"), settings).name == NEW


@pytest.mark.parametrize(
    ("repo_id", "revision"),
    [("org/missing", "main"), ("org/model", "v2.0"), ("org/model", "c" * 40)],
)
def test_not_cached_and_downloads_disabled(cache: Path, repo_id: str, revision: str) -> None:
    with pytest.raises(ModelLoadError) as info:
        resolve_hub(HubRef(repo_id, revision), offline(cache))
    message = str(info.value)
    assert "REMORA_HF_DOWNLOAD=1" in message
    assert repo_id in message and revision in message and str(cache) in message


def test_snapshot_without_config_json_is_not_a_model(cache: Path) -> None:
    write_snapshot(cache, "org/weights-only", NEW, {"model.safetensors": b"w"})
    write_ref(cache, "org/weights-only", "main", NEW)
    with pytest.raises(ModelLoadError, match="REMORA_HF_DOWNLOAD"):
        resolve_hub(HubRef("org/weights-only"), offline(cache))


def test_config_json_whose_blob_was_pruned_is_missing(cache: Path) -> None:
    (repo_dir(cache, "org/model") / "blobs" / etag_of("config.json", CONFIG)).unlink()
    with pytest.raises(ModelLoadError):
        resolve_hub(HubRef("org/model"), offline(cache))


def test_ref_that_is_not_a_commit_hash_is_ignored(cache: Path) -> None:
    # A ref's content becomes a path component; a forged one must not lead out of snapshots/.
    outside = cache / "outside"
    outside.mkdir()
    (outside / "config.json").write_bytes(CONFIG)
    (repo_dir(cache, "org/model") / "refs" / "main").write_text("../../outside")
    with pytest.raises(ModelLoadError):
        resolve_hub(HubRef("org/model"), offline(cache))


@pytest.mark.parametrize(
    "repo_id",
    [
        "../etc",
        "/abs",
        "a/b/c",
        "a/..",
        "..",
        ".",
        "",
        "a/",
        "/a",
        "a//b",
        "a..b",
        "a--b",
        "-a",
        "a.",
        "a b",
        "a\\b",
        "a/b\x00",
        "é",
        "x" * 97,
    ],
)
def test_invalid_repo_id(cache: Path, repo_id: str) -> None:
    with pytest.raises(InvalidInput, match="repo_id"):
        resolve_hub(HubRef(repo_id), HubSettings(cache_dir=cache, download=True))


@pytest.mark.parametrize(
    "revision",
    ["../main", "/main", "main/", "a//b", "..", "a/../b", "refs/.hidden", "a b", "a\\b", "", "x" * 256],
)
def test_invalid_revision(cache: Path, revision: str) -> None:
    with pytest.raises(InvalidInput, match="revision"):
        resolve_hub(HubRef("org/model", revision), HubSettings(cache_dir=cache, download=True))


@pytest.mark.parametrize(
    ("repo_id", "revision"),
    [
        ("gpt2", "main"),
        ("BAAI/bge-small-en-v1.5", "main"),
        ("sentence-transformers/all-MiniLM-L6-v2", "refs/pr/12"),
        ("cross-encoder/ms-marco-MiniLM-L-6-v2", "v1.0.0_rc-1"),
        ("a" * 47 + "/" + "b" * 48, NEW),
    ],
)
def test_valid_refs(repo_id: str, revision: str) -> None:
    validate_ref(HubRef(repo_id, revision))


# ---------------------------------------------------------------------------------------------------
# Downloads from a fake hub


@dataclass
class FakeRepo:
    files: dict[str, bytes]
    commit: str = NEW
    refs: dict[str, str] = field(default_factory=lambda: {"main": NEW})


@dataclass
class Request:
    server: str  # "hub" or "cdn"
    method: str
    path: str  # decoded, without the query
    query: str
    authorization: str | None


class FakeHub:
    """Two HTTP servers that answer like huggingface.co and its LFS CDN, for what snapshot_download uses.

    hub:
      GET  /api/models/{repo}/revision/{rev}     repo info: {"id", "sha", "siblings": [{"rfilename"}]}
      GET  /api/models/{repo}/tree/{rev}?recursive=...
                                                 tree listing: files with "oid" (git blob id), "size",
                                                 "lfs" {"oid": sha256, "size"} for LFS files; directories
      HEAD|GET /{repo}/resolve/{rev}/{path}      text file: 200 with X-Repo-Commit, ETag (git blob id),
                                                 Content-Length. LFS file: 302 to the CDN with
                                                 X-Repo-Commit, X-Linked-Etag (sha256), X-Linked-Size.
      unknown repo: 404 X-Error-Code RepoNotFound; unknown revision: 404 RevisionNotFound;
      unknown file: 404 EntryNotFound.
    cdn (another port, so another origin, as a real CDN; huggingface_hub does not follow it on HEAD):
      HEAD|GET /lfs/{sha256}                     the content.
    Anything else is answered 400 and recorded, so a test sees unexpected requests.
    """

    def __init__(self, repos: dict[str, FakeRepo]) -> None:
        self.repos = repos
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._hub = ThreadingHTTPServer(("127.0.0.1", 0), self._handler("hub"))
        self._cdn = ThreadingHTTPServer(("127.0.0.1", 0), self._handler("cdn"))
        self.url = f"http://127.0.0.1:{self._hub.server_address[1]}"
        self.cdn_url = f"http://127.0.0.1:{self._cdn.server_address[1]}"
        self._threads = [
            threading.Thread(target=s.serve_forever, args=(0.02,), daemon=True)
            for s in (self._hub, self._cdn)
        ]
        for thread in self._threads:
            thread.start()

    def close(self) -> None:
        for server in (self._hub, self._cdn):
            server.shutdown()
            server.server_close()

    def paths(self, server: str | None = None) -> list[str]:
        with self._lock:
            return [r.path for r in self.requests if server is None or r.server == server]

    # -- routing ----------------------------------------------------------------------------------

    def _handler(self, role: str) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self) -> None:
                self._serve(head=True)

            def do_GET(self) -> None:
                self._serve(head=False)

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _serve(self, head: bool) -> None:
                split = urlsplit(self.path)
                with hub._lock:
                    hub.requests.append(
                        Request(
                            role,
                            self.command,
                            unquote(split.path),
                            split.query,
                            self.headers.get("Authorization"),
                        )
                    )
                status, headers, body = hub._route(role, split.path)
                self.send_response(status)
                headers.setdefault("Content-Length", str(len(body)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                if not head:
                    self.wfile.write(body)

        return Handler

    def _route(self, role: str, raw_path: str) -> tuple[int, dict[str, str], bytes]:
        if role == "cdn":
            if raw_path.startswith("/lfs/"):
                sha = raw_path[len("/lfs/") :]
                for repo in self.repos.values():
                    for path, data in repo.files.items():
                        if is_lfs(path) and hashlib.sha256(data).hexdigest() == sha:
                            return 200, {"ETag": f'"{sha}"', "Content-Type": "application/octet-stream"}, data
            return 404, {}, b"no such object"
        if raw_path.startswith("/api/models/"):
            rest = raw_path[len("/api/models/") :]
            for marker, reply in (("/revision/", self._info), ("/tree/", self._tree)):
                if marker in rest:
                    repo_id, rev = rest.split(marker, 1)
                    return self._with_repo(repo_id, unquote(rev), reply)
        elif "/resolve/" in raw_path:
            repo_id, rest = raw_path[1:].split("/resolve/", 1)
            rev, _, filename = rest.partition("/")
            return self._with_repo(
                repo_id, unquote(rev), lambda repo, commit: self._resolve(repo, commit, unquote(filename))
            )
        return 400, {}, b"unexpected request"

    def _with_repo(self, repo_id: str, rev: str, reply: Any) -> tuple[int, dict[str, str], bytes]:
        repo = self.repos.get(repo_id)
        if repo is None:
            return 404, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"}, b"{}"
        commit = repo.refs.get(rev, rev if rev == repo.commit else None)
        if commit is None:
            return 404, {"X-Error-Code": "RevisionNotFound", "X-Error-Message": "Invalid rev id"}, b"{}"
        result: tuple[int, dict[str, str], bytes] = reply(repo, commit)
        return result

    @staticmethod
    def _json(value: Any) -> tuple[int, dict[str, str], bytes]:
        return 200, {"Content-Type": "application/json"}, json.dumps(value).encode()

    def _info(self, repo: FakeRepo, commit: str) -> tuple[int, dict[str, str], bytes]:
        repo_id = next(k for k, v in self.repos.items() if v is repo)
        siblings = [{"rfilename": p} for p in sorted(repo.files)]
        return self._json(
            {
                "_id": "0" * 24,
                "id": repo_id,
                "modelId": repo_id,
                "sha": commit,
                "private": False,
                "siblings": siblings,
            }
        )

    def _tree(self, repo: FakeRepo, commit: str) -> tuple[int, dict[str, str], bytes]:
        entries: list[dict[str, Any]] = []
        folders = sorted({str(p) for path in repo.files for p in Path(path).parents if str(p) != "."})
        entries += [
            {"type": "directory", "oid": git_blob_sha1(f.encode()), "size": 0, "path": f} for f in folders
        ]
        for path, data in sorted(repo.files.items()):
            entry: dict[str, Any] = {
                "type": "file",
                "oid": git_blob_sha1(data),
                "size": len(data),
                "path": path,
            }
            if is_lfs(path):
                entry["lfs"] = {
                    "oid": hashlib.sha256(data).hexdigest(),
                    "size": len(data),
                    "pointerSize": 134,
                }
            entries.append(entry)
        return self._json(entries)

    def _resolve(self, repo: FakeRepo, commit: str, filename: str) -> tuple[int, dict[str, str], bytes]:
        data = repo.files.get(filename)
        if data is None:
            return 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit}, b"{}"
        if is_lfs(filename):
            sha = hashlib.sha256(data).hexdigest()
            return (
                302,
                {
                    "Location": f"{self.cdn_url}/lfs/{sha}",
                    "X-Repo-Commit": commit,
                    "X-Linked-Etag": f'"{sha}"',
                    "X-Linked-Size": str(len(data)),
                    "ETag": f'"{git_blob_sha1(b"pointer " + data)}"',
                },
                b"",
            )
        return (
            200,
            {
                "X-Repo-Commit": commit,
                "ETag": f'"{git_blob_sha1(data)}"',
                "Content-Type": "application/octet-stream",
            },
            data,
        )


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


WEIGHTS = save_safetensors({"embeddings.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3)})
REPO_FILES = {
    "config.json": CONFIG,
    "tokenizer.json": b'{"version": "1.0", "model": {"type": "WordPiece"}}',
    "vocab.txt": b"[PAD]\n[UNK]\nhello\n",
    "model.safetensors": WEIGHTS,
    "modules.json": b'[{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]',
    "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}',
    "README.md": b"# tiny\n",
    "pytorch_model.bin": b"PICKLE" * 10,
    "onnx/model.onnx": b"ONNX" * 10,
    "flax_model.msgpack": b"MSGPACK" * 10,
}
FETCHED = [
    "1_Pooling/config.json",
    "config.json",
    "model.safetensors",
    "modules.json",
    "tokenizer.json",
    "vocab.txt",
]


@pytest.fixture
def fake_hub() -> Iterator[FakeHub]:
    hub = FakeHub(
        {"org/tiny": FakeRepo(REPO_FILES), "org/no-config": FakeRepo({"model.safetensors": WEIGHTS})}
    )
    yield hub
    hub.close()


@pytest.fixture
def hub_online(monkeypatch: pytest.MonkeyPatch) -> Any:
    """huggingface_hub with its offline switch off, whatever the environment says.

    tests/conftest.py sets HF_HUB_OFFLINE=1 (setdefault) so that the reference implementations never
    reach a hub, and huggingface_hub reads it once, into constants.HF_HUB_OFFLINE, when first imported;
    every request then checks constants.is_offline_mode(), which returns that global. Changing the
    environment now would do nothing, so the global is patched, for this test only. The only endpoint
    any download test names is the local fake hub.
    """
    hf = pytest.importorskip("huggingface_hub")
    monkeypatch.setattr(hf.constants, "HF_HUB_OFFLINE", False)
    return hf


def online(cache: Path, hub: FakeHub, **kwargs: Any) -> HubSettings:
    return HubSettings(cache_dir=cache, download=True, endpoint=hub.url, timeout_s=10.0, **kwargs)


def snapshot_files(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


def test_download_fetches_only_allowed_files_then_serves_from_cache(
    tmp_path: Path, fake_hub: FakeHub, hub_online: Any
) -> None:
    path = resolve_hub(HubRef("org/tiny"), online(tmp_path, fake_hub))

    repo = repo_dir(tmp_path, "org/tiny")
    assert path == repo / "snapshots" / NEW
    assert snapshot_files(path) == FETCHED
    for name in FETCHED:
        assert (path / name).read_bytes() == REPO_FILES[name], name
    torch.testing.assert_close(
        load_file(path / "model.safetensors")["embeddings.weight"],
        torch.arange(6, dtype=torch.float32).reshape(2, 3),
    )

    # Nothing refused was asked for, from the hub or the CDN; what was allowed was.
    requested = fake_hub.paths()
    refused = ("pytorch_model.bin", "onnx/model.onnx", "flax_model.msgpack", "README.md")
    assert not [p for p in requested if p.endswith(refused)]
    # Only the safetensors blob went to the CDN (the refused LFS files would have too).
    assert fake_hub.paths("cdn") == [f"/lfs/{hashlib.sha256(WEIGHTS).hexdigest()}"]
    for name in FETCHED:
        assert f"/org/tiny/resolve/{NEW}/{name}" in requested, name
    assert not [r for r in fake_hub.requests if r.method not in ("GET", "HEAD")]

    # The layout the cache lookup relies on is the one huggingface_hub wrote: refs/main holds the
    # commit, snapshot files are relative symlinks to blobs named by ETag (sha256 for LFS files).
    assert (repo / "refs" / "main").read_text() == NEW
    for name in FETCHED:
        link = path / name
        assert link.is_symlink() and not os.path.isabs(os.readlink(link)), name
        assert link.resolve() == (repo / "blobs" / etag_of(name, REPO_FILES[name])).resolve(), name

    # Second time: from the cache, without a single request, with downloads off or on.
    before = len(fake_hub.requests)
    assert resolve_hub(HubRef("org/tiny"), offline(tmp_path)) == path
    assert resolve_hub(HubRef("org/tiny", NEW), offline(tmp_path)) == path
    assert resolve_hub(HubRef("org/tiny"), online(tmp_path, fake_hub)) == path
    assert len(fake_hub.requests) == before


def test_download_of_a_tag(tmp_path: Path, hub_online: Any) -> None:
    hub = FakeHub({"org/tiny": FakeRepo({"config.json": CONFIG}, refs={"main": NEW, "v1": NEW})})
    try:
        path = resolve_hub(HubRef("org/tiny", "v1"), online(tmp_path, hub))
    finally:
        hub.close()
    assert path == repo_dir(tmp_path, "org/tiny") / "snapshots" / NEW
    assert (repo_dir(tmp_path, "org/tiny") / "refs" / "v1").read_text() == NEW
    assert "/api/models/org/tiny/revision/v1" in hub.paths()


def test_allowed_patterns_refuse_pickle_and_friends() -> None:
    from fnmatch import fnmatch

    def allowed(name: str) -> bool:
        return any(fnmatch(name, p) for p in ALLOWED_PATTERNS)

    for name in [
        "pytorch_model.bin",
        "model.pt",
        "model.pth",
        "model.ckpt",
        "x.pkl",
        "tf_model.h5",
        "flax_model.msgpack",
        "onnx/model.onnx",
        "training_args.bin",
        "optimizer.pt",
    ]:
        assert not allowed(name), name
    for name in [
        "model.safetensors",
        "model-00001-of-00002.safetensors",
        "model.safetensors.index.json",
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "vocab.txt",
        "merges.txt",
        "tokenizer.model",
        "sentencepiece.bpe.model",
        "modules.json",
        "config_sentence_transformers.json",
        "sentence_bert_config.json",
        "1_Pooling/config.json",
        "2_Dense/config.json",
        "2_Dense/model.safetensors",
    ]:
        assert allowed(name), name


def test_token_comes_only_from_settings(
    tmp_path: Path, fake_hub: FakeHub, hub_online: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # huggingface_hub would pick HF_TOKEN up by itself; the engine passes token=False instead.
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    resolve_hub(HubRef("org/tiny"), online(tmp_path / "a", fake_hub))
    assert {r.authorization for r in fake_hub.requests} == {None}

    fake_hub.requests.clear()
    resolve_hub(HubRef("org/tiny"), online(tmp_path / "b", fake_hub, token="hf_from_settings"))
    assert {r.authorization for r in fake_hub.requests if r.server == "hub"} == {"Bearer hf_from_settings"}


def test_repo_not_on_the_hub(tmp_path: Path, fake_hub: FakeHub, hub_online: Any) -> None:
    with pytest.raises(ModelNotFound, match="org/ghost"):
        resolve_hub(HubRef("org/ghost"), online(tmp_path, fake_hub))
    assert fake_hub.paths() == ["/api/models/org/ghost/revision/main"]


def test_revision_not_on_the_hub(tmp_path: Path, fake_hub: FakeHub, hub_online: Any) -> None:
    with pytest.raises(ModelLoadError, match=r"v9.*org/tiny") as info:
        resolve_hub(HubRef("org/tiny", "v9"), online(tmp_path, fake_hub))
    assert not isinstance(info.value, ModelNotFound)


def test_downloaded_repo_without_config_json(tmp_path: Path, fake_hub: FakeHub, hub_online: Any) -> None:
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        resolve_hub(HubRef("org/no-config"), online(tmp_path, fake_hub))


def test_hub_unreachable(tmp_path: Path, hub_online: Any) -> None:
    settings = HubSettings(cache_dir=tmp_path, download=True, endpoint=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ModelLoadError, match=r"org/tiny@main.*could not be reached"):
        resolve_hub(HubRef("org/tiny"), settings)


def test_huggingface_hub_offline_mode_is_reported(
    tmp_path: Path, fake_hub: FakeHub, hub_online: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub_online.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE"):
        resolve_hub(HubRef("org/tiny"), online(tmp_path, fake_hub))
    assert fake_hub.requests == []


def test_download_without_huggingface_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ModelLoadError, match=r"pip install 'remora\[hub\]'"):
        resolve_hub(HubRef("org/tiny"), HubSettings(cache_dir=tmp_path, download=True))
