"""The env that points the database container at Remora on localhost, and the patch that sets it.

A value the user set explicitly is never overwritten: the variable is left as it is and the
admission response carries a warning. The one merge is Weaviate's ENABLE_MODULES, a comma list
the needed modules are appended to.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from kubernetes import client as k8s

from remora.sidecar.webhook.config import SecretRef
from remora.sidecar.webhook.container import serialize
from remora.sidecar.webhook.patch import Op, append
from remora.sidecar.webhook.pods import WEAVIATE_RERANKER, WEAVIATE_VECTORIZER

QDRANT_ADDRESS = "QDRANT__INFERENCE__ADDRESS"
QDRANT_TOKEN = "QDRANT__INFERENCE__TOKEN"
ENABLE_MODULES = "ENABLE_MODULES"
TEXT2VEC = "text2vec-transformers"
RERANKER = "reranker-transformers"
TRANSFORMERS_API = "TRANSFORMERS_INFERENCE_API"
# Weaviate refuses TRANSFORMERS_INFERENCE_API next to this pair, so a pair the user set wins.
TRANSFORMERS_PAIR = ("TRANSFORMERS_PASSAGE_INFERENCE_API", "TRANSFORMERS_QUERY_INFERENCE_API")
RERANKER_API = "RERANKER_INFERENCE_API"
REMORA_URL = "REMORA_URL"  # read by remora.integrations' clients (Chroma, LanceDB app code)
REMORA_API_KEY = "REMORA_API_KEY"


@dataclass(frozen=True)
class EnvPlan:
    env: list[k8s.V1EnvVar] = field(default_factory=list)
    modules: tuple[str, ...] = ()  # Weaviate modules ENABLE_MODULES must contain


def _secret_env(name: str, secret: SecretRef) -> k8s.V1EnvVar:
    # optional=True: a missing Secret must not keep the database container from starting.
    return k8s.V1EnvVar(name=name, value_from=k8s.V1EnvVarSource(
        secret_key_ref=k8s.V1SecretKeySelector(name=secret.name, key=secret.key, optional=True)))


def _weaviate_url(base: str, model: str | None) -> str:
    return f"{base}/weaviate/{quote(model.strip('/'), safe='/')}" if model else base


def database_env(database: str, *, base_url: str, api_key: SecretRef | None, notes: Mapping[str, str],
                 existing: Sequence[Mapping[str, Any]], warnings: list[str]) -> EnvPlan:
    """What `database` needs to call Remora at `base_url` (http://127.0.0.1:<port>)."""
    if database == "qdrant":
        env = [k8s.V1EnvVar(name=QDRANT_ADDRESS, value=f"{base_url}/v1/qdrant/inference")]
        if api_key is not None:  # Qdrant sends it as `inference.token`, which the route accepts
            env.append(_secret_env(QDRANT_TOKEN, api_key))
        return EnvPlan(env=env)
    if database in ("chroma", "lancedb"):
        env = [k8s.V1EnvVar(name=REMORA_URL, value=base_url)]
        if api_key is not None:
            env.append(_secret_env(REMORA_API_KEY, api_key))
        return EnvPlan(env=env)
    if database == "weaviate":
        return _weaviate(base_url, api_key=api_key, notes=notes, existing=existing, warnings=warnings)
    raise ValueError(f"unknown database {database!r}")


def _weaviate(base_url: str, *, api_key: SecretRef | None, notes: Mapping[str, str],
              existing: Sequence[Mapping[str, Any]], warnings: list[str]) -> EnvPlan:
    names = {e.get("name") for e in existing}
    env: list[k8s.V1EnvVar] = []
    modules: list[str] = []
    for module, var, note, clashes in ((TEXT2VEC, TRANSFORMERS_API, WEAVIATE_VECTORIZER, TRANSFORMERS_PAIR),
                                       (RERANKER, RERANKER_API, WEAVIATE_RERANKER, ())):
        model = notes.get(note, "").strip() or None
        if set_pair := [c for c in clashes if c in names]:
            warnings.append(f"{', '.join(set_pair)} set on the container: {var} left unset")
            continue
        if api_key is not None and model is None:
            # Weaviate's modules send no key, and only /weaviate/<model>/ opens without one.
            warnings.append(f"{module} not enabled: with an API key, name its model in {note}")
            continue
        env.append(k8s.V1EnvVar(name=var, value=_weaviate_url(base_url, model)))
        modules.append(module)
    return EnvPlan(env=env, modules=tuple(modules))


def env_patch(path: str, container: Mapping[str, Any], plan: EnvPlan, warnings: list[str]) -> list[Op]:
    """Ops that add `plan` to the env of the container at `path` (/spec/containers/<i>)."""
    name = container.get("name")
    existing: list[dict[str, Any]] | None = container.get("env")
    current = existing or []
    by_name = {e.get("name"): (i, e) for i, e in enumerate(current)}  # the last of duplicates wins, as in Kubernetes
    if container.get("envFrom"):
        warnings.append(f"container {name} has envFrom: Remora's env entries take precedence over the same names there")
    ops: list[Op] = []
    additions: list[dict[str, Any]] = []
    if plan.modules:
        if ENABLE_MODULES in by_name:
            index, entry = by_name[ENABLE_MODULES]
            if "valueFrom" in entry:
                warnings.append(f"{ENABLE_MODULES} on container {name} comes from valueFrom; add "
                                f"{','.join(plan.modules)} to it yourself")
            else:
                have = [m.strip() for m in str(entry.get("value") or "").split(",") if m.strip()]
                missing = [m for m in plan.modules if m not in have]
                if missing:
                    op = "replace" if "value" in entry else "add"
                    ops.append({"op": op, "path": f"{path}/env/{index}/value", "value": ",".join([*have, *missing])})
        else:
            additions.append({"name": ENABLE_MODULES, "value": ",".join(plan.modules)})
    for var in plan.env:
        wanted = serialize(var)
        if var.name in by_name:
            entry = by_name[var.name][1]
            if entry != wanted:
                # The value is not echoed: it may be a credential (a user's own REMORA_API_KEY, say).
                warnings.append(f"{var.name} is already set on container {name}; left as is")
            continue
        additions.append(wanted)
    return ops + append(f"{path}/env", existing, additions)
