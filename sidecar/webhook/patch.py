"""RFC 6902 JSON Patch operations, with RFC 6901 pointers.

An `add` into an array that does not exist fails, and the API server omits empty arrays and maps
from the objects it sends, so every append first asks whether the parent is there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

Op = dict[str, Any]


def escape(key: str) -> str:
    """One pointer segment: `~` -> `~0` first, then `/` -> `~1` (`remora.dev/x` -> `remora.dev~1x`)."""
    return key.replace("~", "~0").replace("/", "~1")


def pointer(*segments: str | int) -> str:
    return "".join(f"/{escape(str(s))}" for s in segments)


def append(path: str, existing: Sequence[Any] | None, items: Sequence[Any]) -> list[Op]:
    """Append `items` to the array at `path`: create it whole when absent, else `/-` per item."""
    if not items:
        return []
    if existing is None:
        return [{"op": "add", "path": path, "value": list(items)}]
    return [{"op": "add", "path": f"{path}/-", "value": item} for item in items]


def set_keys(path: str, existing: Mapping[str, Any] | None, values: Mapping[str, Any]) -> list[Op]:
    """Set keys of the object at `path` (an annotations map, say): create it whole when absent."""
    if not values:
        return []
    if existing is None:
        return [{"op": "add", "path": path, "value": dict(values)}]
    # `add` on an existing member replaces it (RFC 6902 4.1), so one op covers both cases.
    return [{"op": "add", "path": f"{path}/{escape(k)}", "value": v} for k, v in values.items()]
