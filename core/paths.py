"""Model roots: every file a model load opens resolves inside one of them.

Resolving the model directory is not enough. A weight file or sub-folder inside an allowed
directory can be a symlink to anywhere, and files the model's own configuration names
(sentence-transformers' modules.json, a shard index) could point elsewhere too. Symlinks as such
are fine: the hub cache links every snapshot file into `../../blobs/`. What counts is where they
resolve.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from remora.core.errors import PathNotAllowed


def resolve_roots(roots: Sequence[Path | str]) -> tuple[Path, ...]:
    return tuple(Path(root).expanduser().resolve() for root in roots)


def inside(path: Path, roots: Sequence[Path]) -> bool:
    """Whether the already resolved `path` lies in one of the resolved `roots`."""
    return any(path.is_relative_to(root) for root in roots)


def confine(directory: Path, roots: Sequence[Path]) -> None:
    """Raise PathNotAllowed unless `directory` and everything under it, symlinks followed,
    resolves inside one of the resolved `roots`. Without roots there is nothing to confine."""
    if not roots:
        return
    top = directory.resolve()
    if not inside(top, roots):
        raise PathNotAllowed(f"model path {directory} resolves to {top}, outside the configured model roots")
    seen: set[str] = set()
    for current, dirs, files in os.walk(top, followlinks=True):
        real = os.path.realpath(current)
        if real in seen:  # a symlink loop, or a folder linked twice: its entries were checked
            dirs[:] = []
            continue
        seen.add(real)
        if not inside(Path(real), roots):  # a symlinked sub-folder
            raise PathNotAllowed(f"{current} in model path {directory} resolves to {real}, outside the configured model roots")
        # A plain file lies where its folder does; only links can lead elsewhere (dangling ones too).
        for name in files:
            entry = os.path.join(current, name)
            if os.path.islink(entry):
                target = os.path.realpath(entry)
                if not inside(Path(target), roots):
                    raise PathNotAllowed(
                        f"{entry} in model path {directory} resolves to {target}, outside the configured model roots"
                    )


def child(directory: Path, name: str, *, named_in: Path) -> Path:
    """`directory / name` for a path that a model's own file (`named_in`) names: refused unless it
    stays inside `directory` by name (not absolute, no `..`). Where it resolves is `confine`'s job."""
    parts = Path(name).parts
    if Path(name).is_absolute() or ".." in parts or "\0" in name:
        raise PathNotAllowed(f"{named_in} names {name!r}, which is not a path inside {directory}")
    return directory / name
