"""The model registry file (YAML or JSON) and applying it to a running engine.

    default_model: minilm            # what TEI routes and requests without a model use
    default_reranker: my-reranker    # what TEI's /rerank uses
    default_extractor: my-ner        # what /v1/extract uses without a model
    models:
      - id: minilm
        path: models/minilm          # relative to this file
        preload: true                # load at start; /readyz waits for it
        pinned: false                # never evicted
        aliases: [sentence-transformers/all-MiniLM-L6-v2]
      - id: bge-small
        hf: BAAI/bge-small-en-v1.5   # from the local hub cache (or downloaded when enabled)
        revision: main
        query_prompt: "Represent this sentence for searching relevant passages: "

Reloading (SIGHUP or POST /v1/models/reload) registers new and changed models and removes
the ones the file no longer lists; models registered through the API are left alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from remora.core.config import HubRef
from remora.core.engine import SPEC_OPTIONS, Engine, check_model_id
from remora.core.errors import RemoraError

_ENTRY_KEYS = {"id", "path", "hf", "revision", "preload", "pinned"}
_SPEC_KEYS = SPEC_OPTIONS


class RegistryError(ValueError):
    pass


@dataclass(frozen=True)
class Entry:
    id: str
    source: Path | HubRef
    options: tuple[tuple[str, Any], ...] = ()
    preload: bool = False
    pinned: bool = False


@dataclass(frozen=True)
class RegistryFile:
    entries: tuple[Entry, ...] = ()
    default_model: str | None = None
    default_reranker: str | None = None
    default_extractor: str | None = None


def read_registry(path: Path) -> RegistryFile:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise RegistryError(f"cannot read model registry {path}: {exc}") from None
    if data is None:
        # Most often a file caught mid-write: read as "no models" it would unregister them all.
        raise RegistryError(f"{path}: the registry is empty; write 'models: []' to register no models")
    if not isinstance(data, dict):
        raise RegistryError(f"{path}: the registry must be a mapping with a 'models' list")
    unknown = set(data) - {"models", "default_model", "default_reranker", "default_extractor"}
    if unknown:
        raise RegistryError(f"{path}: unknown keys {sorted(unknown)}")
    entries = []
    seen: set[str] = set()
    for index, raw in enumerate(data.get("models") or []):
        where = f"{path}: models[{index}]"
        if not isinstance(raw, dict) or not isinstance(raw.get("id"), str):
            raise RegistryError(f"{where} must be a mapping with an 'id'")
        bad = set(raw) - _ENTRY_KEYS - _SPEC_KEYS
        if bad:
            raise RegistryError(f"{where} ({raw['id']}): unknown keys {sorted(bad)}")
        if ("path" in raw) == ("hf" in raw):
            raise RegistryError(f"{where} ({raw['id']}): give exactly one of 'path' and 'hf'")
        if raw["id"] in seen:
            raise RegistryError(f"{where}: model id {raw['id']!r} appears twice")
        seen.add(raw["id"])
        source: Path | HubRef
        if "hf" in raw:
            source = HubRef(str(raw["hf"]), str(raw.get("revision") or "main"))
        else:
            source = Path(str(raw["path"])).expanduser()
            if not source.is_absolute():
                source = path.parent / source
        options = tuple(sorted((k, _freeze(v)) for k, v in raw.items() if k in _SPEC_KEYS))
        entries.append(Entry(raw["id"], source, options, bool(raw.get("preload")), bool(raw.get("pinned"))))
    return RegistryFile(
        tuple(entries), data.get("default_model"), data.get("default_reranker"), data.get("default_extractor")
    )


def _freeze(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


@dataclass
class Registry:
    """What the file put in the engine, so a reload can tell added, changed and removed."""

    engine: Engine
    path: Path | None
    applied: dict[str, Entry] = field(default_factory=dict)
    current: RegistryFile = field(default_factory=RegistryFile)
    listeners: list[Callable[[bool], None]] = field(default_factory=list)  # told whether each load applied

    def load(self) -> dict[str, list[str]]:
        """(Re)read the file and apply it. A bad file changes nothing."""
        if self.path is None:
            return {"added": [], "changed": [], "removed": []}
        try:
            changes = self._apply(read_registry(self.path))
        except Exception:
            self._tell(False)
            raise
        self._tell(True)
        return changes

    def _tell(self, applied: bool) -> None:
        for listener in self.listeners:
            listener(applied)

    def _apply(self, new: RegistryFile) -> dict[str, list[str]]:
        assert self.path is not None
        for entry in new.entries:  # validate every entry before touching the engine
            aliases = dict(entry.options).get("aliases") or ()
            try:
                for name in (entry.id, *((aliases,) if isinstance(aliases, str) else aliases)):
                    check_model_id(name)
                if isinstance(entry.source, Path):
                    self.engine.check_path(entry.source)
            except RemoraError as exc:  # a bad id or path half-way through would apply half the file
                raise RegistryError(f"{self.path}: model {entry.id!r}: {exc.message}") from None
        changes: dict[str, list[str]] = {"added": [], "changed": [], "removed": []}
        for entry in new.entries:
            old = self.applied.get(entry.id)
            if old == entry:
                continue
            self.engine.register(entry.id, entry.source, pinned=entry.pinned, preload=entry.preload,
                                 **dict(entry.options))
            changes["changed" if old else "added"].append(entry.id)
            self.applied[entry.id] = entry
        listed = {e.id for e in new.entries}
        for model_id in [i for i in self.applied if i not in listed]:
            self.engine.unregister(model_id)
            del self.applied[model_id]
            changes["removed"].append(model_id)
        self.current = new
        return changes
