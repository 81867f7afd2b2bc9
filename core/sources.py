"""Model sources other than a plain directory: a Hugging Face repository resolved to a local snapshot.

The cache is read by hand, in huggingface_hub's own layout, so that a cached model loads without the
optional `huggingface_hub` package and without any network access. Only a download imports it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from remora.core.config import HubRef, HubSettings
from remora.core.errors import InvalidInput, ModelLoadError, ModelNotFound

# What a download may fetch: safetensors weights (and their shard index), JSON configs (config.json,
# tokenizer files, sentence-transformers modules.json, 1_Pooling/config.json, 2_Dense/config.json, ...),
# text vocabularies and sentencepiece models. An allow-list rather than a deny-list, so that pickle
# formats (*.bin, *.pt, *.pth, *.ckpt, *.pkl, ...) and bulky exports (*.onnx, *.h5, *.msgpack) are never
# fetched, whatever new extensions appear on the hub. fnmatch's `*` also matches `/`, so these reach
# sub-folders.
ALLOWED_PATTERNS: tuple[str, ...] = ("*.safetensors", "*.json", "*.txt", "*.model")

# HubSettings.endpoint=None means the public hub. Passed explicitly so that huggingface_hub does not
# fall back to its own HF_ENDPOINT environment variable behind the sidecar's back.
DEFAULT_ENDPOINT = "https://huggingface.co"

_MAX_REPO_ID = 96
_MAX_REVISION = 255
# Each part starts with an alphanumeric (so never `.`, `..` or `-x`) and, as on the hub, cannot end
# with `.` or `-`.
_REPO_PART = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9_])?")
_REVISION_CHARS = re.compile(r"[A-Za-z0-9._/-]+")
# huggingface_hub treats exactly 40 lowercase hex digits as a commit and anything else as a ref name.
_COMMIT = re.compile(r"[0-9a-f]{40}")


def validate_ref(ref: HubRef) -> None:
    """Raise InvalidInput unless `ref` names a repository and revision safely mappable to cache paths.

    Both end up in file-system paths (`models--ns--name/refs/<revision>`), so anything that could
    climb out of the cache (`..`, absolute paths, extra `/`) is refused before any path is built.
    """
    repo_id, revision = ref.repo_id, ref.revision
    if not isinstance(repo_id, str) or not repo_id:
        raise InvalidInput("hub repo_id must be a non-empty string like 'namespace/name'")
    if len(repo_id) > _MAX_REPO_ID:
        raise InvalidInput(f"hub repo_id is longer than {_MAX_REPO_ID} characters: {repo_id[:100]!r}")
    parts = repo_id.split("/")
    if len(parts) > 2 or not all(_REPO_PART.fullmatch(p) for p in parts):
        raise InvalidInput(
            f"invalid hub repo_id {repo_id!r}: expected 'name' or 'namespace/name', each made of letters, "
            "digits, '.', '_' or '-' and starting with a letter or digit"
        )
    # `..` inside a part is harmless as a path but refused by the hub; `--` is the cache's own
    # separator (models--ns--name), so `a--b` and `a/b` would share one cache folder.
    if ".." in repo_id or "--" in repo_id:
        raise InvalidInput(f"invalid hub repo_id {repo_id!r}: '..' and '--' are not allowed")

    if not isinstance(revision, str) or not revision:
        raise InvalidInput(f"hub revision for {repo_id!r} must be a non-empty string")
    if _COMMIT.fullmatch(revision):
        return
    if (
        len(revision) > _MAX_REVISION
        or not _REVISION_CHARS.fullmatch(revision)
        or ".." in revision
        or revision.startswith("/")
        or revision.endswith("/")
        or any(not seg or seg.startswith(".") for seg in revision.split("/"))
    ):
        raise InvalidInput(
            f"invalid hub revision {revision!r} for {repo_id!r}: expected a branch or tag name (letters, "
            "digits, '.', '_', '-', '/'; no '..', no leading or trailing '/') or a 40-hex commit hash"
        )


def hub_cache_dir(settings: HubSettings) -> Path:
    """The hub cache root. Core never reads the environment: the sidecar passes HF_HUB_CACHE/HF_HOME
    already resolved, and None means huggingface_hub's built-in default."""
    if settings.cache_dir is not None:
        return settings.cache_dir.expanduser().resolve()
    return (Path.home() / ".cache" / "huggingface" / "hub").resolve()


def resolve_hub(ref: HubRef, settings: HubSettings) -> Path:
    """The local snapshot directory of `ref`: from the hub cache when present, else downloaded
    (only when settings.download) with huggingface_hub. Raises remora.core.errors errors."""
    validate_ref(ref)
    cache = hub_cache_dir(settings)
    # The cache wins even when downloads are enabled: a cached branch is not re-checked against the
    # hub, so startup works offline and never changes the weights of a model already in use.
    cached = _cached_snapshot(ref, cache)
    if cached is not None:
        return cached
    if not settings.download:
        raise ModelLoadError(
            f"{ref.repo_id}@{ref.revision} is not in the Hugging Face cache at {cache} (no snapshot with a "
            "config.json); downloads are disabled: enable them with REMORA_HF_DOWNLOAD=1, or download the "
            "model into that cache beforehand"
        )
    snapshot = _download(ref, settings, cache)
    if not (snapshot / "config.json").is_file():
        raise ModelLoadError(
            f"{ref.repo_id}@{ref.revision} was downloaded to {snapshot} but has no config.json: "
            "not a model repository Remora can load"
        )
    return snapshot


def _repo_folder(cache: Path, repo_id: str) -> Path:
    # huggingface_hub's repo_folder_name(): "models--" + repo_id with "/" replaced by "--".
    return cache / "--".join(["models", *repo_id.split("/")])


def _cached_snapshot(ref: HubRef, cache: Path) -> Path | None:
    """The snapshot folder for `ref` if the cache holds one with a config.json, else None."""
    repo = _repo_folder(cache, ref.repo_id)
    if _COMMIT.fullmatch(ref.revision):
        commit = ref.revision
    else:
        try:
            # huggingface_hub writes the bare hash; strip() tolerates hand-written refs with a newline.
            commit = (repo / "refs" / ref.revision).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            return None
        # The ref's content becomes a path component: only a real commit hash may.
        if not _COMMIT.fullmatch(commit):
            return None
    snapshot = repo / "snapshots" / commit
    # is_file() follows the snapshot's symlink into blobs/, so a dangling link (blob pruned) counts
    # as missing rather than as a model.
    return snapshot if (snapshot / "config.json").is_file() else None


def _download(ref: HubRef, settings: HubSettings, cache: Path) -> Path:
    """Fetch the allowed files of `ref` into `cache` with huggingface_hub; map its errors."""
    try:
        import huggingface_hub
        from huggingface_hub import errors as hf_errors
    except ImportError as e:
        raise ModelLoadError(
            f"{ref.repo_id}@{ref.revision} is not in the Hugging Face cache at {cache} and downloading it "
            "needs huggingface_hub: pip install 'remora[hub]'"
        ) from e

    endpoint = (settings.endpoint or DEFAULT_ENDPOINT).rstrip("/")
    where = f"{ref.repo_id}@{ref.revision} from {endpoint}"
    kwargs: dict[str, Any] = {
        "repo_id": ref.repo_id,
        "repo_type": "model",
        "revision": ref.revision,
        "cache_dir": str(cache),
        "allow_patterns": list(ALLOWED_PATTERNS),
        "endpoint": endpoint,
        # False, not None: None makes huggingface_hub read HF_TOKEN or ~/.cache/huggingface/token on its
        # own, and core takes credentials only from its settings.
        "token": settings.token or False,
        # Bounds the per-file metadata requests; huggingface_hub has no knob for its other requests.
        "etag_timeout": settings.timeout_s,
    }
    try:
        path = huggingface_hub.snapshot_download(**kwargs)
    except hf_errors.GatedRepoError as e:
        raise ModelLoadError(
            f"{where} is gated: accept its terms on the hub and configure a token that has access"
        ) from e
    except hf_errors.RepositoryNotFoundError as e:
        # The hub answers 401 as well as 404 for a repository that is private and unauthenticated;
        # huggingface_hub reports both as RepositoryNotFoundError.
        raise ModelNotFound(
            f"hub repository {ref.repo_id!r} not found at {endpoint} (or it is private and the configured "
            "token has no access)"
        ) from e
    except hf_errors.RevisionNotFoundError as e:
        raise ModelLoadError(f"revision {ref.revision!r} not found in hub repository {ref.repo_id!r}") from e
    except hf_errors.LocalEntryNotFoundError as e:
        # Raised when the hub could not be asked (offline mode, connection refused, timeout, 5xx) and
        # the cache could not make up for it; the cause says which.
        if _caused_by(e, hf_errors.OfflineModeIsEnabled):
            reason = "huggingface_hub is in offline mode (HF_HUB_OFFLINE is set in this process)"
        else:
            cause = e.__cause__ or e
            reason = f"the hub could not be reached ({type(cause).__name__}: {cause})"
        raise ModelLoadError(f"cannot download {where}: {reason}") from e
    except hf_errors.HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else "?"
        raise ModelLoadError(f"cannot download {where}: HTTP {status} from the hub: {e}") from e
    except Exception as e:
        # Anything else (transport errors of huggingface_hub's HTTP client, a size mismatch, a full
        # disk, xet failures) is still a model that failed to load: keep it in the error taxonomy
        # the sidecar maps to a status, with the original chained.
        raise ModelLoadError(f"cannot download {where}: {type(e).__name__}: {e}") from e
    return Path(path)


def _caused_by(error: BaseException, kind: type[BaseException]) -> bool:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False
