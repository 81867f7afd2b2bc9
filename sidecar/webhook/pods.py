"""Reading a pod as the API server sends it: opt-in, the database it runs, where its env goes.

Only reads; the patch is built elsewhere. Pods arrive as plain JSON (camelCase), already defaulted
by the API server, with `metadata.name` empty when the owner uses `generateName`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

INJECT = "remora.dev/inject"  # label (the webhook's objectSelector) or annotation; "false" opts out
INJECTED = "remora.dev/injected"  # set by the webhook: never inject twice
DATABASE = "remora.dev/database"
TARGET_CONTAINER = "remora.dev/target-container"
WEAVIATE_VECTORIZER = "remora.dev/weaviate-vectorizer-model"
WEAVIATE_RERANKER = "remora.dev/weaviate-reranker-model"

CONTAINER_NAME = "remora"
DATABASES = ("qdrant", "weaviate", "chroma", "lancedb")

# Image repositories (the last two path parts, registry and tag dropped) -> database. LanceDB is a
# library inside the application, so it has no server image: name it with the annotation.
KNOWN_IMAGES = {
    "qdrant/qdrant": "qdrant",
    "semitechnologies/weaviate": "weaviate",
    "chromadb/chroma": "chroma",
    "chroma-core/chroma": "chroma",
}

# Ports each database listens on whether or not its pod spec declares them: Remora must not take
# one (all containers of a pod share one network namespace). Weaviate serves HTTP on 8080 itself.
DATABASE_PORTS = {
    "qdrant": (6333, 6334, 6335),
    "weaviate": (8080, 50051, 2112, 7000, 7001, 8300, 8301),
    "chroma": (8000,),
    "lancedb": (),
}


class PodShapeError(ValueError):
    """The object is not a pod this webhook can read (no spec.containers, say)."""


@dataclass(frozen=True)
class Target:
    """The database in the pod and the container whose env points it at Remora (index into containers)."""

    database: str | None
    container: int | None


def pod_annotations(pod: Mapping[str, Any]) -> dict[str, str]:
    return dict((pod.get("metadata") or {}).get("annotations") or {})


def pod_labels(pod: Mapping[str, Any]) -> dict[str, str]:
    return dict((pod.get("metadata") or {}).get("labels") or {})


def containers(pod: Mapping[str, Any], key: str = "containers") -> list[dict[str, Any]]:
    spec = pod.get("spec")
    if not isinstance(spec, dict):
        raise PodShapeError("the pod has no spec")
    items = spec.get(key) or []
    if not isinstance(items, list) or not all(isinstance(c, dict) and c.get("name") for c in items):
        raise PodShapeError(f"spec.{key} is not a list of named containers")
    if key == "containers" and not items:
        raise PodShapeError("the pod has no containers")
    return items


def skip_reason(pod: Mapping[str, Any]) -> str | None:
    """Why this pod gets no sidecar, or None to inject."""
    notes, marks = pod_annotations(pod), pod_labels(pod)
    # An annotation overrides the label both ways, so one pod of a selected set can opt out.
    choice = notes.get(INJECT, marks.get(INJECT))
    if choice is None or choice.strip().lower() != "true":
        return f"not opted in ({INJECT}={choice!r})" if choice is not None else f"not opted in (no {INJECT})"
    if notes.get(INJECTED, "").lower() == "true":
        return f"already injected ({INJECTED})"
    names = [c["name"] for key in ("containers", "initContainers") for c in containers(pod, key)]
    if CONTAINER_NAME in names:
        return f"already has a container named {CONTAINER_NAME}"
    if (pod.get("spec") or {}).get("hostNetwork"):
        # Remora's port would be opened on the node itself and collide across pods.
        return "hostNetwork pods are not injected"
    return None


def image_repository(image: str) -> str:
    """`docker.io/qdrant/qdrant:v1.13.4@sha256:...` -> `qdrant/qdrant` (the last two path parts)."""
    name = image.split("@", 1)[0]
    head, _, last = name.rpartition("/")
    last = last.split(":", 1)[0]  # a tag; a registry port is never in the last part
    parts = [*head.split("/"), last] if head else [last]
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        parts = parts[1:]  # the registry host
    return "/".join(parts[-2:]).lower()


def database_of_image(image: str) -> str | None:
    return KNOWN_IMAGES.get(image_repository(image))


def find_target(pod: Mapping[str, Any], warnings: list[str]) -> Target:
    """The database (annotation, else detected from images) and the container that gets its env:
    the annotated one, else the container running the database's image, else the first."""
    items = containers(pod)
    notes = pod_annotations(pod)
    detected = [(i, db) for i, c in enumerate(items) if (db := database_of_image(str(c.get("image", ""))))]
    wanted = notes.get(DATABASE, "").strip().lower()
    if wanted == "none":
        return Target(database=None, container=None)
    if wanted and wanted not in DATABASES:
        warnings.append(f"{DATABASE}={wanted!r} is not one of {', '.join(DATABASES)}, none; "
                        "no database env set")
        return Target(database=None, container=None)
    database = wanted or (detected[0][1] if detected else None)
    if database is None:
        warnings.append(f"no database image recognised; set {DATABASE} to point one at Remora")
        return Target(database=None, container=None)
    name = notes.get(TARGET_CONTAINER)
    if name is not None:
        index = next((i for i, c in enumerate(items) if c["name"] == name), None)
        if index is None:
            warnings.append(f"{TARGET_CONTAINER}={name!r} names no container; no database env set")
        return Target(database=database, container=index)
    index = next((i for i, db in detected if db == database), 0)
    return Target(database=database, container=index)


def declared_ports(pod: Mapping[str, Any]) -> set[int]:
    ports: set[int] = set()
    for key in ("containers", "initContainers"):
        for container in containers(pod, key):
            ports.update(int(p["containerPort"]) for p in container.get("ports") or [] if "containerPort" in p)
    return ports


def free_port(wanted: int, pod: Mapping[str, Any], database: str | None, *, avoid: Sequence[int] = ()) -> int:
    """`wanted`, or the next port no container of the pod declares or its database is known to use."""
    taken = declared_ports(pod) | set(DATABASE_PORTS.get(database or "", ())) | set(avoid)
    port = wanted
    while port in taken:
        port += 1
    if port > 65535:
        raise PodShapeError(f"no free port at or above {wanted}")
    return port
