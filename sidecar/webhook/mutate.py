"""Pod in, JSON Patch out: the pure core of the webhook (no HTTP, no cluster access).

Order of the ops: the `injected` annotation, the volumes, the init step, the Remora container, then
the database container's env. Every path is computed against the pod as it arrived; the ops touch
disjoint parts of it, so applying them in order is valid.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from remora.sidecar.webhook import container as build
from remora.sidecar.webhook.config import InjectionConfig
from remora.sidecar.webhook.dbenv import database_env, env_patch
from remora.sidecar.webhook.patch import Op, append, pointer, set_keys
from remora.sidecar.webhook.pods import (
    INJECTED,
    containers,
    find_target,
    free_port,
    pod_annotations,
    skip_reason,
)


@dataclass(frozen=True)
class Mutation:
    """The patch (empty when nothing changes), warnings for the admission response, and why a pod
    was skipped (None when it was injected)."""

    patch: list[Op] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    skipped: str | None = None


def mutate(pod: Mapping[str, Any], config: InjectionConfig) -> Mutation:
    reason = skip_reason(pod)
    if reason is not None:
        return Mutation(skipped=reason)
    warnings: list[str] = []
    spec = pod["spec"]
    items = containers(pod)
    inits = containers(pod, "initContainers")
    target = find_target(pod, warnings)
    port = free_port(config.port, pod, target.database)
    if port != config.port:
        warnings.append(f"port {config.port} is taken in this pod; Remora listens on {port}")

    existing_volumes = spec.get("volumes")
    names = build.volume_names(v.get("name", "") for v in existing_volumes or [])
    weaviate_open = target.database == "weaviate" and config.api_key_secret is not None
    sidecar = build.sidecar_container(config, port=port, names=names, weaviate_open=weaviate_open)

    metadata = pod.get("metadata")
    ops: list[Op] = (set_keys("/metadata", None, {"annotations": {INJECTED: "true"}}) if metadata is None
                     else set_keys("/metadata/annotations", metadata.get("annotations"), {INJECTED: "true"}))
    ops += append("/spec/volumes", existing_volumes, build.serialize(build.volumes(config, names)))
    if config.models.init is not None:
        name = build.unique(build.INIT_NAME, [c["name"] for c in [*items, *inits]])
        init = build.init_container(config.models.init, name=name, names=names)
        # Appended: the pod's own init steps (permissions, say) run first, Remora's right before it starts.
        ops += append("/spec/initContainers", spec.get("initContainers"), [build.serialize(init)])
    ops += append("/spec/containers", items, [build.serialize(sidecar)])

    if target.database is not None and target.container is not None:
        plan = database_env(target.database, base_url=f"http://127.0.0.1:{port}", api_key=config.api_key_secret,
                            notes=pod_annotations(pod), existing=items[target.container].get("env") or [],
                            warnings=warnings)
        ops += env_patch(pointer("spec", "containers", target.container), items[target.container], plan, warnings)
    return Mutation(patch=ops, warnings=warnings)
