"""The persisted configuration shared by Remora's Chroma embedding functions.

Chroma stores `{"type": "known", "name": ..., "config": get_config()}` in a collection's
configuration and calls `build_from_config(config)` whenever the collection is opened, in any
process. So the config must hold everything that decides the vectors (the model, the dimensions,
normalisation) and nothing secret: the API key is read from the environment variable whose NAME is
stored (`api_key_env_var`), never the key itself.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any

from remora.integrations.client import API_KEY_ENV, RemoraClient, default_url

DEFAULT_TIMEOUT = 120.0

# Settings that decide the vectors: changing one would mix incomparable vectors in one collection.
VECTOR_KEYS = ("model", "dimensions", "normalize")


def check_config(config: Mapping[str, Any], *, allowed: Mapping[str, tuple[type, ...]], required: tuple[str, ...],
                 what: str) -> None:
    """Raise ValueError naming the first key that is missing, unknown or of the wrong type.

    Unknown keys are refused rather than ignored: a config written by a newer Remora may hold a
    setting that changes the vectors, and silently dropping it would mix incomparable vectors.
    """
    if not isinstance(config, Mapping):
        raise ValueError(f"{what} config must be a mapping, got {type(config).__name__}")
    if "api_key" in config:
        raise ValueError(f"{what} config must not hold an API key: store the NAME of an environment "
                         "variable in 'api_key_env_var' instead")
    unknown = sorted(set(config) - set(allowed))
    if unknown:
        raise ValueError(f"{what} config has unknown keys {unknown}; known: {sorted(allowed)}")
    for key in required:
        if config.get(key) is None:
            raise ValueError(f"{what} config needs {key!r}")
    for key, value in config.items():
        types = allowed[key]
        # bool is an int in Python: refuse True as a dimension count.
        if value is not None and (not isinstance(value, types) or (bool not in types and isinstance(value, bool))):
            names = " or ".join(t.__name__ for t in types)
            raise ValueError(f"{what} config {key!r} must be {names} or null, got {value!r}")
    for key in ("model", "api_key_env_var", "url"):
        if key in config and config[key] is not None and not str(config[key]).strip():
            raise ValueError(f"{what} config {key!r} must not be empty")
    dims = config.get("dimensions")
    if dims is not None and dims < 1:
        raise ValueError(f"{what} config 'dimensions' must be at least 1, got {dims}")
    timeout = config.get("timeout")
    if timeout is not None and timeout <= 0:
        raise ValueError(f"{what} config 'timeout' must be positive, got {timeout}")


def check_update(old: Mapping[str, Any], new: Mapping[str, Any], *, what: str) -> None:
    """Refuse a change to a setting that decides the vectors; the URL, key name and timeout may move."""
    for key in VECTOR_KEYS:
        if key in old and key in new and old[key] != new[key]:
            raise ValueError(f"{what}: {key!r} cannot change from {old[key]!r} to {new[key]!r}: the "
                             "collection's vectors would no longer be comparable; create a new collection")


def make_client(url: str | None, api_key: str | None, api_key_env_var: str, timeout: float, *,
                stacklevel: int = 3) -> RemoraClient:
    """A client for `url` (None: `$REMORA_URL`, then the default), keyed from the argument or the env var.

    `stacklevel` is the api_key warning's, counted from `warnings.warn` in here."""
    if api_key is not None:
        # Chroma rebuilds the function from its config, which never holds the key: a reopened
        # collection will read the variable instead, so say so now rather than with a 401 later.
        warnings.warn(f"api_key is used by this instance but not persisted; a collection reopened from its "
                      f"config reads the key from ${api_key_env_var}", UserWarning, stacklevel=stacklevel)
    key = api_key if api_key is not None else (os.environ.get(api_key_env_var) or None)
    return RemoraClient(url or default_url(), api_key=key, timeout=timeout)


__all__ = ["API_KEY_ENV", "DEFAULT_TIMEOUT", "check_config", "check_update", "make_client"]
