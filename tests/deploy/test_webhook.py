"""The sidecar-injection webhook: AdmissionReview payloads as the API server sends them, in;
JSON patches out, applied to the pod, and the patched pod validated as the API server would
(strict OpenAPI schema of Kubernetes 1.37, the client's V1Pod model, and the cross-field rules
the schema cannot express: unique names, mounts that name volumes, probe ports that exist).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from fastapi.testclient import TestClient
from kubernetes.client import ApiClient

from remora.sidecar.webhook import review as review_module
from remora.sidecar.webhook.config import ConfigError, EnvVar, InjectionConfig, load_config, parse_config
from remora.sidecar.webhook.mutate import mutate
from remora.sidecar.webhook.patch import escape, set_keys
from remora.sidecar.webhook.pods import image_repository
from remora.sidecar.webhook.review import BadReview, review
from remora.sidecar.webhook.server import MAX_BODY, CertReloader, create_app, make_server

PAYLOADS = Path(__file__).parent / "webhook_payloads"
K8S_VERSION = "1.37"
REMORA = str(Path(sys.executable).parent / "remora")

# The example in the injection-config contract, as the chart renders it.
BASE_CONFIG = """
image: ghcr.io/remora-project/remora:0.1.0
imagePullPolicy: IfNotPresent
port: 8080
resources: {requests: {cpu: "1", memory: 2Gi}, limits: {cpu: "2", memory: 4Gi}}
gpu: 0
registryConfigMap: remora-models
models:
  persistentVolumeClaim: {claimName: remora-models}
env: [{name: REMORA_MAX_BATCH_TOKENS, value: "4096"}]
"""
API_KEY = {"apiKeySecret": {"name": "remora-api-key", "key": "api-key"}}
INIT_MODELS = {"models": {"emptyDir": {}, "initContainer": {
    "image": "ghcr.io/example/remora-weights:2025.05", "command": ["sh", "-c"],
    "args": ["cp -r /weights/. /models/"]}}}


def config(**overrides: Any) -> InjectionConfig:
    data = yaml.safe_load(BASE_CONFIG)
    data.update(overrides)
    return parse_config(data)


def payload(name: str) -> dict[str, Any]:
    return json.loads((PAYLOADS / f"{name}.json").read_text())


def pod_of(name: str) -> dict[str, Any]:
    return payload(name)["request"]["object"]


def wrap(pod: dict[str, Any], *, operation: str = "CREATE") -> dict[str, Any]:
    body = payload("bare-pod")
    body["request"]["object"] = pod
    body["request"]["operation"] = operation
    return body


# --- a small RFC 6902 applier (add / replace), strict about missing parents and bad indices ---

def _unescape(segment: str) -> str:
    return segment.replace("~1", "/").replace("~0", "~")


def _walk(doc: Any, path: str) -> tuple[Any, str]:
    assert path.startswith("/"), path
    *parents, last = [_unescape(s) for s in path[1:].split("/")]
    node = doc
    for segment in parents:
        if isinstance(node, list):
            assert segment.isdigit() and int(segment) < len(node), f"{path}: no index {segment}"
            node = node[int(segment)]
        else:
            assert isinstance(node, dict) and segment in node, f"{path}: no member {segment!r}"
            node = node[segment]
    return node, last


def apply_patch(doc: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    for op in ops:
        assert set(op) == {"op", "path", "value"}, op
        parent, key = _walk(doc, op["path"])
        value = copy.deepcopy(op["value"])
        if op["op"] == "add":
            if isinstance(parent, list):
                index = len(parent) if key == "-" else int(key)
                assert 0 <= index <= len(parent), op
                parent.insert(index, value)
            else:
                parent[key] = value
        elif op["op"] == "replace":
            if isinstance(parent, list):
                assert key.isdigit() and int(key) < len(parent), op
                parent[int(key)] = value
            else:
                assert key in parent, f"replace of a missing member: {op}"
                parent[key] = value
        else:
            raise AssertionError(f"unexpected op {op['op']}")
    return doc


# --- validation of a patched pod ---

def _deserialize(obj: Any, kind: str) -> Any:
    return ApiClient()._ApiClient__deserialize(obj, kind)  # type: ignore[attr-defined]


def assert_valid_pod(pod: dict[str, Any]) -> None:
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    model = _deserialize(pod, "V1Pod")  # the client's models raise on a missing required field
    assert model.spec.containers
    spec = pod["spec"]
    containers = [*spec.get("initContainers", []), *spec["containers"]]
    names = [c["name"] for c in containers]
    assert len(names) == len(set(names)), f"duplicate container names {names}"
    volumes = [v["name"] for v in spec.get("volumes", [])]
    assert len(volumes) == len(set(volumes)), f"duplicate volume names {volumes}"
    ports = [p["containerPort"] for c in spec["containers"] for p in c.get("ports", [])]
    assert len(ports) == len(set(ports)), f"a port is declared twice in the pod: {ports}"
    for c in containers:
        mounts = c.get("volumeMounts", [])
        assert {m["name"] for m in mounts} <= set(volumes), f"{c['name']} mounts a volume the pod lacks"
        paths = [m["mountPath"] for m in mounts]
        assert len(paths) == len(set(paths)), f"{c['name']} mounts one path twice"
        env = [e["name"] for e in c.get("env", [])]
        assert len(env) == len(set(env)), f"{c['name']} sets a variable twice: {env}"
        port_names = {p.get("name") for p in c.get("ports", [])}
        assert all(n is None or len(n) <= 15 for n in port_names), port_names  # IANA_SVC_NAME
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            port = c.get(probe, {}).get("httpGet", {}).get("port")
            if isinstance(port, str):
                assert port in port_names, f"{c['name']}.{probe} names a port it does not declare"


def admit(body: dict[str, Any], cfg: InjectionConfig) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    out = review(body, cfg)
    assert out["apiVersion"] == "admission.k8s.io/v1" and out["kind"] == "AdmissionReview"
    response = out["response"]
    assert response["uid"] == body["request"]["uid"]
    assert response["allowed"] is True  # never denied, whatever happens
    if "patch" not in response:
        assert "patchType" not in response
        return response, []
    assert response["patchType"] == "JSONPatch"
    return response, json.loads(base64.b64decode(response["patch"]))


def inject(name_or_body: str | dict[str, Any], cfg: InjectionConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """(patched pod, response) for a fixture or body that must be injected."""
    body = payload(name_or_body) if isinstance(name_or_body, str) else name_or_body
    response, ops = admit(body, cfg)
    assert ops, response
    patched = apply_patch(body["request"]["object"], ops)
    assert_valid_pod(patched)
    return patched, response


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in [*pod["spec"]["containers"], *pod["spec"].get("initContainers", [])] if c["name"] == name)


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


INJECTABLE = ["qdrant-statefulset-pod", "weaviate-statefulset-pod", "chroma-deployment-pod", "bare-pod",
              "lancedb-app-pod"]


def test_the_validator_has_teeth() -> None:
    pod = copy.deepcopy(pod_of("bare-pod"))
    assert_valid_pod(pod)
    pod["spec"]["containers"][0]["container_port"] = 8080  # snake_case: what a missed serialisation gives
    with pytest.raises(kubernetes_validate.ValidationError):
        assert_valid_pod(pod)


@pytest.mark.parametrize("name", [*INJECTABLE, "opted-out-pod"])
def test_fixtures_are_valid_pods(name: str) -> None:
    assert_valid_pod(pod_of(name))


@pytest.mark.parametrize("name", INJECTABLE)
def test_every_database_pod_gets_a_valid_sidecar(name: str) -> None:
    original = pod_of(name)
    pod, _ = inject(name, config())
    assert pod["metadata"]["annotations"]["remora.dev/injected"] == "true"
    remora = container(pod, "remora")
    assert pod["spec"]["containers"][-1] is remora or pod["spec"]["containers"][-1] == remora
    # The pod's own containers are untouched but for env, where entries are only added (and
    # Weaviate's ENABLE_MODULES list extended); its volumes are kept in order.
    for before, after in zip(original["spec"]["containers"], pod["spec"]["containers"], strict=False):
        assert {k: v for k, v in after.items() if k != "env"} == {k: v for k, v in before.items() if k != "env"}
        kept = after.get("env", [])[: len(before.get("env", []))]
        assert [e for e in kept if e["name"] != "ENABLE_MODULES"] == \
            [e for e in before.get("env", []) if e["name"] != "ENABLE_MODULES"]
    kept = [v["name"] for v in original["spec"].get("volumes", [])]
    assert [v["name"] for v in pod["spec"]["volumes"]][: len(kept)] == kept
    # The container round-trips through the client's model unchanged: every key is camelCase and known.
    assert ApiClient().sanitize_for_serialization(_deserialize(remora, "V1Container")) == remora


def test_remora_container_in_full() -> None:
    pod, response = inject("qdrant-statefulset-pod", config(**API_KEY))
    assert "warnings" not in response
    remora = container(pod, "remora")
    assert remora["image"] == "ghcr.io/remora-project/remora:0.1.0"
    assert remora["imagePullPolicy"] == "IfNotPresent"
    assert remora["command"] == ["remora", "serve"]
    assert remora["args"] == ["--host", "0.0.0.0", "--port", "8080"]
    assert remora["ports"] == [{"name": "remora-http", "containerPort": 8080, "protocol": "TCP"}]
    assert remora["resources"] == {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}}
    assert remora["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "remora-http", "scheme": "HTTP"}
    assert remora["livenessProbe"]["httpGet"]["path"] == "/healthz"
    startup = remora["startupProbe"]
    assert startup["httpGet"]["path"] == "/healthz"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300  # minutes, not the default 30 s
    assert remora["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False, "privileged": False, "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"}}
    mounts = {m["mountPath"]: m for m in remora["volumeMounts"]}
    assert mounts["/etc/remora"]["readOnly"] and mounts["/models"]["readOnly"] and not mounts["/tmp"].get("readOnly")
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes[mounts["/etc/remora"]["name"]]["configMap"] == {"name": "remora-models", "optional": True}
    assert volumes[mounts["/models"]["name"]]["persistentVolumeClaim"] == {"claimName": "remora-models"}
    assert volumes[mounts["/tmp"]["name"]]["emptyDir"] == {}
    env = env_of(remora)
    assert env["REMORA_CONFIG"] == "/etc/remora/models.yaml"
    assert env["REMORA_MODEL_ROOTS"] == "/models"
    assert env["REMORA_MAX_BATCH_TOKENS"] == "4096"
    assert env["REMORA_API_KEY"] == {"secretKeyRef": {"name": "remora-api-key", "key": "api-key"}}
    assert "REMORA_THREADS" not in env and "REMORA_WEAVIATE_OPEN" not in env
    # Qdrant: the inference address, and the same key, optional so a missing Secret never stops Qdrant.
    qdrant = env_of(container(pod, "qdrant"))
    assert qdrant["QDRANT__INFERENCE__ADDRESS"] == "http://127.0.0.1:8080/v1/qdrant/inference"
    assert qdrant["QDRANT__INFERENCE__TOKEN"] == {
        "secretKeyRef": {"name": "remora-api-key", "key": "api-key", "optional": True}}
    assert qdrant["QDRANT_INIT_FILE_PATH"] == "/qdrant/init/.qdrant-initialized"


def test_patch_paths_append_to_existing_arrays() -> None:
    _, ops = admit(payload("qdrant-statefulset-pod"), config())
    assert [(o["op"], o["path"]) for o in ops] == [
        ("add", "/metadata/annotations/remora.dev~1injected"),
        ("add", "/spec/volumes/-"), ("add", "/spec/volumes/-"), ("add", "/spec/volumes/-"),
        ("add", "/spec/containers/-"),
        ("add", "/spec/containers/0/env/-"),
    ]


def test_patch_paths_create_missing_arrays_and_maps() -> None:
    # kubectl run-style pod: no annotations, no volumes, no env, no init containers.
    pod, _ = inject("bare-pod", config(**INIT_MODELS))
    _, ops = admit(payload("bare-pod"), config(**INIT_MODELS))
    assert [(o["op"], o["path"]) for o in ops] == [
        ("add", "/metadata/annotations"), ("add", "/spec/volumes"), ("add", "/spec/initContainers"),
        ("add", "/spec/containers/-"), ("add", "/spec/containers/0/env")]
    assert pod["metadata"]["annotations"] == {"remora.dev/injected": "true"}
    assert env_of(container(pod, "qdrant-scratch")) == {
        "QDRANT__INFERENCE__ADDRESS": "http://127.0.0.1:8080/v1/qdrant/inference"}


def test_pointer_escaping() -> None:
    assert escape("remora.dev/injected") == "remora.dev~1injected"
    assert escape("a~b/c~1") == "a~0b~1c~01"  # `~` first, or `/` -> `~1` -> `~01`
    doc = {"metadata": {"annotations": {"x": "1"}}}
    ops = set_keys("/metadata/annotations", doc["metadata"]["annotations"], {"a~b/c~1": "v"})
    assert apply_patch(doc, ops)["metadata"]["annotations"] == {"x": "1", "a~b/c~1": "v"}


def test_weaviate_env_and_port_beside_weaviate() -> None:
    pod, response = inject("weaviate-statefulset-pod", config())
    remora = container(pod, "remora")
    # Weaviate itself listens on 8080 in the same network namespace: Remora moves to 8081.
    assert remora["ports"][0]["containerPort"] == 8081 and remora["args"][-1] == "8081"
    assert any("8081" in w for w in response["warnings"])
    env = env_of(container(pod, "weaviate"))
    assert env["ENABLE_MODULES"] == "backup-filesystem,text2vec-transformers,reranker-transformers"
    assert env["TRANSFORMERS_INFERENCE_API"] == "http://127.0.0.1:8081/weaviate/bge-small-en-v1.5"
    assert env["RERANKER_INFERENCE_API"] == "http://127.0.0.1:8081"  # no model named: the sidecar's default
    assert env["DEFAULT_VECTORIZER_MODULE"] == "none"  # the user's choice, left alone
    assert env["CLUSTER_HOSTNAME"] == {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}
    assert "REMORA_WEAVIATE_OPEN" not in env_of(remora)
    # The existing ENABLE_MODULES entry is replaced in place, not duplicated.
    _, ops = admit(payload("weaviate-statefulset-pod"), config())
    assert {"op": "replace", "path": "/spec/containers/0/env/8/value",
            "value": "backup-filesystem,text2vec-transformers,reranker-transformers"} in ops


def test_weaviate_with_an_api_key_needs_named_models() -> None:
    pod, response = inject("weaviate-statefulset-pod", config(**API_KEY))
    assert env_of(container(pod, "remora"))["REMORA_WEAVIATE_OPEN"] == "1"
    env = env_of(container(pod, "weaviate"))
    assert env["TRANSFORMERS_INFERENCE_API"] == "http://127.0.0.1:8081/weaviate/bge-small-en-v1.5"
    # No reranker model annotated: the root URL would answer 401, so the module is not enabled at all
    # (Weaviate refuses to start with a module enabled and no URL).
    assert "RERANKER_INFERENCE_API" not in env
    assert env["ENABLE_MODULES"] == "backup-filesystem,text2vec-transformers"
    assert any("reranker-transformers not enabled" in w for w in response["warnings"])


def test_weaviate_keeps_a_user_passage_query_pair() -> None:
    body = payload("weaviate-statefulset-pod")
    weaviate = body["request"]["object"]["spec"]["containers"][0]
    weaviate["env"] += [{"name": "TRANSFORMERS_PASSAGE_INFERENCE_API", "value": "http://t2v-passage:8080"},
                        {"name": "TRANSFORMERS_QUERY_INFERENCE_API", "value": "http://t2v-query:8080"}]
    weaviate["env"] = [e for e in weaviate["env"] if e["name"] != "ENABLE_MODULES"]
    pod, response = inject(body, config())
    env = env_of(container(pod, "weaviate"))
    assert "TRANSFORMERS_INFERENCE_API" not in env  # Weaviate refuses it next to the pair
    assert env["ENABLE_MODULES"] == "reranker-transformers"
    assert any("TRANSFORMERS_INFERENCE_API left unset" in w for w in response["warnings"])


def test_weaviate_enable_modules_without_a_value_and_from_a_configmap() -> None:
    body = payload("weaviate-statefulset-pod")
    env = body["request"]["object"]["spec"]["containers"][0]["env"]
    index = next(i for i, e in enumerate(env) if e["name"] == "ENABLE_MODULES")
    env[index] = {"name": "ENABLE_MODULES"}  # set, to the empty string
    pod, _ = inject(body, config())
    assert env_of(container(pod, "weaviate"))["ENABLE_MODULES"] == "text2vec-transformers,reranker-transformers"

    env[index] = {"name": "ENABLE_MODULES", "valueFrom": {"configMapKeyRef": {"name": "weaviate-env", "key": "modules"}}}
    pod, response = inject(body, config())
    assert env_of(container(pod, "weaviate"))["ENABLE_MODULES"] == env[index]["valueFrom"]
    assert any("ENABLE_MODULES" in w and "valueFrom" in w for w in response["warnings"])


def test_chroma_gets_remora_url() -> None:
    pod, response = inject("chroma-deployment-pod", config(**API_KEY))
    assert "warnings" not in response
    env = env_of(container(pod, "chroma"))
    assert env["REMORA_URL"] == "http://127.0.0.1:8080"
    assert env["REMORA_API_KEY"] == {"secretKeyRef": {"name": "remora-api-key", "key": "api-key", "optional": True}}
    assert env["IS_PERSISTENT"] == "TRUE"


def test_lancedb_app_gets_env_on_the_annotated_container() -> None:
    pod, response = inject("lancedb-app-pod", config())
    api, shipper = container(pod, "api"), container(pod, "log-shipper")
    assert env_of(api) == {"REMORA_URL": "http://127.0.0.1:8081"}  # the app itself listens on 8080
    assert "env" not in shipper
    assert any("envFrom" in w for w in response["warnings"])


def test_user_set_values_are_never_overwritten() -> None:
    body = payload("qdrant-statefulset-pod")
    mine = {"name": "QDRANT__INFERENCE__ADDRESS", "value": "http://tei.inference:8080/v1/qdrant/inference"}
    body["request"]["object"]["spec"]["containers"][0]["env"].append(mine)
    pod, response = inject(body, config())
    assert env_of(container(pod, "qdrant"))["QDRANT__INFERENCE__ADDRESS"] == mine["value"]
    assert any("QDRANT__INFERENCE__ADDRESS is already set" in w for w in response["warnings"])
    assert not any("tei.inference" in w for w in response["warnings"])  # values are never echoed

    body = payload("weaviate-statefulset-pod")
    t2v = {"name": "TRANSFORMERS_INFERENCE_API", "value": "http://weaviate-t2v:8080"}
    body["request"]["object"]["spec"]["containers"][0]["env"].append(t2v)
    pod, _ = inject(body, config())
    assert env_of(container(pod, "weaviate"))["TRANSFORMERS_INFERENCE_API"] == t2v["value"]


def test_gpu_limits() -> None:
    cfg = config(gpu=2, image="ghcr.io/remora-project/remora:0.1.0-cuda")
    pod, _ = inject("qdrant-statefulset-pod", cfg)
    resources = container(pod, "remora")["resources"]
    assert resources["limits"] == {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": "2"}
    assert "nvidia.com/gpu" not in resources["requests"]
    pod, _ = inject("qdrant-statefulset-pod", config())
    assert "nvidia.com/gpu" not in container(pod, "remora")["resources"]["limits"]


def test_models_from_an_init_container() -> None:
    pod, _ = inject("weaviate-statefulset-pod", config(**INIT_MODELS))
    inits = pod["spec"]["initContainers"]
    assert [c["name"] for c in inits] == ["configure-sysctl", "remora-models-init"]  # appended, after the pod's own
    init, remora = inits[-1], container(pod, "remora")
    assert init["command"] == ["sh", "-c"] and init["args"] == ["cp -r /weights/. /models/"]
    models = next(m for m in init["volumeMounts"] if m["mountPath"] == "/models")
    assert not models.get("readOnly")  # the init step writes, Remora only reads
    assert next(m for m in remora["volumeMounts"] if m["mountPath"] == "/models")["name"] == models["name"]
    assert next(v for v in pod["spec"]["volumes"] if v["name"] == models["name"])["emptyDir"] == {}
    assert init["securityContext"]["runAsUser"] == 10001


def models_mount(pod: dict[str, Any]) -> dict[str, Any]:
    return next(m for m in container(pod, "remora")["volumeMounts"] if m["mountPath"] == "/models")


def test_models_from_a_host_path() -> None:
    pod, _ = inject("chroma-deployment-pod",
                    config(models={"hostPath": {"path": "/var/lib/remora/models", "type": "Directory"}}))
    assert {"name": "remora-models", "hostPath": {"path": "/var/lib/remora/models", "type": "Directory"}} \
        in pod["spec"]["volumes"]
    assert models_mount(pod)["readOnly"] is True  # never writes into the node unasked


def test_models_from_the_hub_into_an_emptydir() -> None:
    # The chart's `models.source: emptyDir`: no init step; Remora downloads into /models itself.
    cfg = config(models={"emptyDir": {"sizeLimit": "20Gi"}},
                 env=[{"name": "REMORA_HF_DOWNLOAD", "value": "1"}, {"name": "HF_HOME", "value": "/models/hf"}])
    pod, _ = inject("qdrant-statefulset-pod", cfg)
    assert "readOnly" not in models_mount(pod)
    assert {"name": "remora-models", "emptyDir": {"sizeLimit": "20Gi"}} in pod["spec"]["volumes"]
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["ensure-dir-ownership"]


def test_a_claim_is_read_only_unless_marked_writable() -> None:
    pod, _ = inject("bare-pod", config(models={"persistentVolumeClaim": {"claimName": "m", "readOnly": None}}))
    assert models_mount(pod)["readOnly"] is True  # null, as a chart renders an unset value, is absent
    pod, _ = inject("bare-pod", config(models={"persistentVolumeClaim": {"claimName": "m", "readOnly": False}}))
    assert "readOnly" not in models_mount(pod)
    assert pod["spec"]["volumes"][1]["persistentVolumeClaim"] == {"claimName": "m", "readOnly": False}


def test_extra_env_from_a_secret() -> None:
    token = {"secretKeyRef": {"name": "hf", "key": "token", "optional": True}}
    pod, _ = inject("chroma-deployment-pod", config(env=[{"name": "HF_TOKEN", "valueFrom": token}]))
    assert env_of(container(pod, "remora"))["HF_TOKEN"] == token


def test_volume_and_init_names_never_collide() -> None:
    body = payload("qdrant-statefulset-pod")
    pod = body["request"]["object"]
    pod["spec"]["volumes"].append({"name": "remora-models", "emptyDir": {}})
    pod["spec"]["initContainers"].append({**pod["spec"]["initContainers"][0], "name": "remora-models-init"})
    patched, _ = inject(body, config(**INIT_MODELS))
    names = [v["name"] for v in patched["spec"]["volumes"]]
    assert "remora-models-2" in names
    mount = next(m for m in container(patched, "remora")["volumeMounts"] if m["mountPath"] == "/models")
    assert mount["name"] == "remora-models-2"
    assert patched["spec"]["initContainers"][-1]["name"] == "remora-models-init-2"


@pytest.mark.parametrize("name", INJECTABLE)
def test_injection_is_idempotent(name: str) -> None:
    cfg = config(**INIT_MODELS, **API_KEY)
    pod, _ = inject(name, cfg)
    again = wrap(pod)
    response, ops = admit(again, cfg)
    assert ops == [] and "warnings" not in response


def test_a_pod_with_a_remora_container_is_left_alone() -> None:
    pod = pod_of("chroma-deployment-pod")
    pod["spec"]["containers"].append({"name": "remora", "image": "ghcr.io/remora-project/remora:0.0.9"})
    assert mutate(pod, config()).skipped == "already has a container named remora"


@pytest.mark.parametrize(("change", "reason"), [
    (lambda pod: None, "not opted in"),  # the label removed below
    (lambda pod: pod["metadata"].setdefault("annotations", {}).update({"remora.dev/inject": "false"}), "not opted in"),
    (lambda pod: pod["spec"].update(hostNetwork=True), "hostNetwork"),
])
def test_skipped_pods(change: Any, reason: str) -> None:
    pod = pod_of("chroma-deployment-pod")
    change(pod)
    if reason == "not opted in" and "annotations" not in pod["metadata"]:
        del pod["metadata"]["labels"]["remora.dev/inject"]
    mutation = mutate(pod, config())
    assert mutation.patch == [] and mutation.skipped is not None and reason in mutation.skipped


def test_opted_out_pod_fixture() -> None:
    response, ops = admit(payload("opted-out-pod"), config())
    assert ops == [] and "warnings" not in response


def test_a_deployment_is_not_a_pod() -> None:
    response, ops = admit(payload("deployment"), config())
    assert ops == [] and "warnings" not in response


def test_only_pod_creation_is_mutated() -> None:
    assert admit(wrap(pod_of("qdrant-statefulset-pod"), operation="UPDATE"), config())[1] == []
    body = payload("qdrant-statefulset-pod")
    body["request"]["subResource"] = "ephemeralcontainers"
    assert admit(body, config())[1] == []


@pytest.mark.parametrize(("annotations", "has_env", "warning"), [
    ({"remora.dev/database": "none"}, False, None),
    ({"remora.dev/database": "milvus"}, False, "milvus"),
    ({"remora.dev/target-container": "nope"}, False, "names no container"),
    ({"remora.dev/database": "chroma"}, True, None),
])
def test_database_annotations(annotations: dict[str, str], has_env: bool, warning: str | None) -> None:
    body = payload("qdrant-statefulset-pod")
    body["request"]["object"]["metadata"]["annotations"].update(annotations)
    pod, response = inject(body, config())
    added = set(env_of(container(pod, "qdrant"))) - {"QDRANT_INIT_FILE_PATH"}
    assert bool(added) == has_env, added
    if annotations.get("remora.dev/database") == "chroma":
        assert added == {"REMORA_URL"}
    warnings = response.get("warnings", [])
    assert (warning is None and not warnings) or any(warning in w for w in warnings)


def test_an_unrecognised_image_gets_the_sidecar_but_no_env() -> None:
    body = payload("bare-pod")
    body["request"]["object"]["spec"]["containers"][0]["image"] = "ghcr.io/example/search-api:2.3.1"
    pod, response = inject(body, config())
    assert "env" not in pod["spec"]["containers"][0]
    assert any("remora.dev/database" in w for w in response["warnings"])


@pytest.mark.parametrize(("image", "repository"), [
    ("qdrant/qdrant", "qdrant/qdrant"),
    ("qdrant/qdrant:v1.13.4-unprivileged", "qdrant/qdrant"),
    ("docker.io/qdrant/qdrant:v1.13.4", "qdrant/qdrant"),
    ("cr.weaviate.io/semitechnologies/weaviate:1.28.2", "semitechnologies/weaviate"),
    ("semitechnologies/weaviate@sha256:" + "a" * 64, "semitechnologies/weaviate"),
    ("registry.local:5000/mirror/chromadb/chroma:1.0.12", "chromadb/chroma"),
    ("ghcr.io/chroma-core/chroma:1.0.12", "chroma-core/chroma"),
    ("localhost:5000/qdrant:dev", "qdrant"),
])
def test_image_repository(image: str, repository: str) -> None:
    assert image_repository(image) == repository


def test_never_denies_a_pod_it_cannot_read() -> None:
    body = wrap({"apiVersion": "v1", "kind": "Pod", "metadata": {"labels": {"remora.dev/inject": "true"}}, "spec": {}})
    response, ops = admit(body, config())
    assert ops == [] and "not injected" in response["warnings"][0]


def test_never_denies_on_an_internal_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(pod: Any, cfg: Any) -> Any:
        raise RuntimeError("x" * 1000)

    monkeypatch.setattr(review_module, "mutate", broken)
    response, ops = admit(payload("qdrant-statefulset-pod"), config())
    assert ops == [] and response["warnings"][0].startswith("remora: sidecar not injected: RuntimeError")
    assert len(response["warnings"][0]) <= review_module.MAX_WARNING


@pytest.mark.parametrize(("body", "message"), [
    ([], "JSON object"),
    ({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {}}, "apiVersion"),
    ({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}, "no request"),
    ({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"kind": {"kind": "Pod"}}}, "uid"),
    ({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": "u"}}, "request.kind"),
    ({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
      "request": {"uid": "u", "kind": {"group": "", "kind": "Pod"}, "operation": "CREATE"}}, "request.object"),
])
def test_bad_reviews(body: Any, message: str) -> None:
    with pytest.raises(BadReview, match=message):
        review(body, config())


# --- the injection config ---

def test_config_example_parses() -> None:
    cfg = config(**API_KEY)
    assert cfg.image == "ghcr.io/remora-project/remora:0.1.0" and cfg.port == 8080 and cfg.gpu == 0
    assert cfg.models.source == "persistentVolumeClaim" and cfg.models.spec == {"claimName": "remora-models"}
    assert cfg.resources.limits == {"cpu": "2", "memory": "4Gi"}
    assert cfg.api_key_secret is not None and cfg.api_key_secret.key == "api-key"
    assert cfg.env == (EnvVar(name="REMORA_MAX_BATCH_TOKENS", value="4096"),)


@pytest.mark.parametrize(("change", "message"), [
    ({"image": None}, "image: expected a non-empty string"),
    ({"registryConfigMap": "Remora_Models"}, "registryConfigMap: 'Remora_Models' is not a valid"),
    ({"port": "8080"}, "port: expected an integer"),
    ({"port": 70000}, "port: expected 1..65535"),
    ({"gpu": True}, "gpu: expected an integer"),
    ({"imagePullPolicy": "Sometimes"}, "imagePullPolicy: expected one of"),
    ({"resources": {"limits": {"memory": "4GB"}}}, "resources.limits.memory: '4GB' is not a Kubernetes quantity"),
    ({"resources": {"requests": {"cpu": "4"}, "limits": {"cpu": "2"}}}, "requests.cpu (4) exceeds limits.cpu"),
    ({"resources": {"limits": {"nvidia.com/gpu": 1}}}, "top-level `gpu`"),
    ({"models": {}}, "models: set exactly one of"),
    ({"models": {"hostPath": {"path": "/m"}, "persistentVolumeClaim": {"claimName": "m"}}}, "got persistentVolumeClaim, hostPath"),
    ({"models": {"emptyDir": {"sizeLimit": "20 GB"}}}, "models.emptyDir.sizeLimit: '20 GB' is not"),
    ({"models": {"hostPath": {"path": "models"}}}, "models.hostPath.path: must be absolute"),
    ({"models": {"persistentVolumeClaim": {"name": "m"}}}, "unknown key(s) name"),
    ({"models": {"emptyDir": {}, "initContainer": {"image": "x"}}}, "models.initContainer.command: expected a list"),
    ({"env": [{"name": "REMORA_CONFIG", "value": "/x"}]}, "env[0].name: REMORA_CONFIG is set by the webhook"),
    ({"env": [{"name": "A", "value": True}]}, "env[0].value: expected a string"),
    ({"env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]}, "env[1].name: A appears twice"),
    ({"env": [{"name": "A", "value": "1", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]},
     "env[0]: set value or valueFrom, not both"),
    ({"env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s"}}}]}, "env[0].valueFrom.secretKeyRef.key"),
    ({"env": [{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "x"}, "configMapKeyRef": {}}}]},
     "set exactly one of"),
    ({"env": [{"name": "A", "valueFrom": {"vaultRef": {}}}]}, "unknown key(s) vaultRef"),
    ({"apiKeySecret": {"name": "remora-api-key"}}, "apiKeySecret.key: expected a non-empty string"),
    ({"gpus": 1}, "unknown key(s) gpus"),
])
def test_config_errors_name_the_field(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        config(**change)
    assert message in str(excinfo.value)


def test_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read it"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "injection.yaml"
    bad.write_text("image: [unclosed\n")
    with pytest.raises(ConfigError, match=f"{bad}: not valid YAML"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match=f"{bad}: the top level: expected a mapping"):
        load_config(bad)
    good = tmp_path / "good.yaml"
    good.write_text(BASE_CONFIG)
    assert load_config(good) == config()


# --- the HTTP app, in process ---

def test_app_routes() -> None:
    with TestClient(create_app(config())) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        answer = client.post("/mutate", json=payload("qdrant-statefulset-pod"))
        assert answer.status_code == 200 and answer.json()["response"]["patchType"] == "JSONPatch"
        for content in (b"not json", b"\xff\xfe", b"[]", b'{"kind": "AdmissionReview"}'):
            bad = client.post("/mutate", content=content, headers={"content-type": "application/json"})
            assert bad.status_code == 400, content
            assert bad.json()["error"]
        assert client.post("/mutate", content=b" " * (MAX_BODY + 1)).status_code == 413
        assert client.get("/mutate").status_code == 405


# --- TLS ---

def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def make_certs(directory: Path, tag: str) -> tuple[Path, Path, Path]:
    """(CA file, server cert, server key) for localhost / 127.0.0.1, as cert-manager would issue."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = _key(), _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"remora-webhook-ca-{tag}")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "remora-webhook.remora.svc")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.DNSName("remora-webhook.remora.svc"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    ca_file, cert_file, key_file = directory / "ca.crt", directory / "tls.crt", directory / "tls.key"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(_pem_key(key))
    return ca_file, cert_file, key_file


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def webhook_server(tmp_path: Path) -> Iterator[tuple[str, ssl.SSLContext]]:
    ca, cert, key = make_certs(tmp_path / "tls", "a")
    cfg = tmp_path / "injection.yaml"
    cfg.write_text(BASE_CONFIG)
    port = _free_port()
    proc = subprocess.Popen([REMORA, "webhook", "--port", str(port), "--tls-cert", str(cert), "--tls-key", str(key),
                             "--config", str(cfg), "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url, verify = f"https://localhost:{port}", ssl.create_default_context(cafile=str(ca))
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", verify=verify, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"webhook did not start:\n{proc.communicate()[0]}")
            time.sleep(0.1)
        yield url, verify
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.mark.integration
def test_server_over_tls(webhook_server: tuple[str, ssl.SSLContext]) -> None:
    url, verify = webhook_server
    with httpx.Client(base_url=url, verify=verify, timeout=10) as client:
        body = payload("qdrant-statefulset-pod")
        answer = client.post("/mutate", json=body)
        assert answer.status_code == 200
        response = answer.json()["response"]
        assert response["uid"] == body["request"]["uid"] and response["allowed"] is True
        pod = apply_patch(body["request"]["object"], json.loads(base64.b64decode(response["patch"])))
        assert_valid_pod(pod)
        assert container(pod, "remora")["image"] == "ghcr.io/remora-project/remora:0.1.0"
        bad = client.post("/mutate", content=b"{not json", headers={"content-type": "application/json"})
        assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]
        bad = client.post("/mutate", json={"apiVersion": "v1", "kind": "Pod"})
        assert bad.status_code == 400 and "AdmissionReview" in bad.json()["error"]
    # Plain HTTP is refused: the API server only speaks TLS to webhooks.
    with pytest.raises(httpx.TransportError):
        httpx.get(url.replace("https", "http") + "/healthz", timeout=5)


def test_cli_reports_bad_config_and_certificate(tmp_path: Path) -> None:
    _, cert, key = make_certs(tmp_path / "tls", "a")
    cfg = tmp_path / "injection.yaml"
    cfg.write_text(BASE_CONFIG.replace("gpu: 0", "gpu: lots"))
    run = subprocess.run([REMORA, "webhook", "--tls-cert", str(cert), "--tls-key", str(key), "--config", str(cfg)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "gpu: expected an integer" in run.stderr and "Traceback" not in run.stderr
    cfg.write_text(BASE_CONFIG)
    run = subprocess.run([REMORA, "webhook", "--tls-cert", str(key), "--tls-key", str(key), "--config", str(cfg)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "cannot load the TLS certificate" in run.stderr and "Traceback" not in run.stderr


def test_the_webhook_never_imports_the_engine(tmp_path: Path) -> None:
    cfg = tmp_path / "injection.yaml"
    cfg.write_text(BASE_CONFIG)
    script = f"""
import json, sys
from remora.sidecar import cli
from remora.sidecar.webhook import server
server.serve = lambda config, **kw: 0
rc = cli.main(["webhook", "--tls-cert", "c", "--tls-key", "k", "--config", {str(cfg)!r}])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "numpy", "safetensors", "tokenizers")
               or m.startswith("remora.core"))
print(json.dumps({{"rc": rc, "heavy": heavy, "webhook": "remora.sidecar.webhook.mutate" in sys.modules}}))
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {"rc": 0, "heavy": [], "webhook": True}


def _peer(port: int, ca: Path) -> str:
    async def handshake() -> str:
        context = ssl.create_default_context(cafile=str(ca))
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="localhost")
        issuer = dict(x[0] for x in writer.get_extra_info("peercert")["issuer"])["commonName"]
        writer.close()
        return str(issuer)

    return asyncio.run(handshake())


def test_certificate_rotation_is_picked_up(tmp_path: Path) -> None:
    ca_a, cert, key = make_certs(tmp_path / "a", "a")
    live = tmp_path / "live"
    live.mkdir()
    for f in (cert, key):
        (live / f.name).write_bytes(f.read_bytes())
    certs = CertReloader(live / "tls.crt", live / "tls.key")
    assert certs.check() is False  # nothing changed
    ready = threading.Event()
    loop = asyncio.new_event_loop()
    holder: dict[str, Any] = {}

    async def start() -> None:
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=certs.context)
        holder["server"], holder["port"] = server, server.sockets[0].getsockname()[1]
        ready.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(start()), loop.run_forever()), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        assert _peer(holder["port"], ca_a) == "remora-webhook-ca-a"
        # Mid-rotation: a certificate that does not load keeps the old one in service.
        os.replace(_write(tmp_path / "half", b"-----BEGIN CERTIFICATE-----\n"), live / "tls.crt")
        assert certs.check() is False and certs.reloads == 0
        assert _peer(holder["port"], ca_a) == "remora-webhook-ca-a"
        # The new pair lands (a Secret volume swaps both at once): new handshakes get it.
        ca_b, cert_b, key_b = make_certs(tmp_path / "b", "b")
        os.replace(_write(tmp_path / "k", key_b.read_bytes()), live / "tls.key")
        os.replace(_write(tmp_path / "c", cert_b.read_bytes()), live / "tls.crt")
        assert certs.check() is True and certs.reloads == 1
        assert _peer(holder["port"], ca_b) == "remora-webhook-ca-b"
        with pytest.raises(ssl.SSLCertVerificationError):
            _peer(holder["port"], ca_a)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _issuer(url: str, ca: Path) -> str:
    verify = ssl.create_default_context(cafile=str(ca))
    with httpx.Client(verify=verify, timeout=5) as client, client.stream("GET", f"{url}/healthz") as answer:
        peer = answer.extensions["network_stream"].get_extra_info("ssl_object").getpeercert()
    return str(dict(x[0] for x in peer["issuer"])["commonName"])


@pytest.mark.integration
def test_running_server_serves_a_rotated_certificate(tmp_path: Path) -> None:
    """Through uvicorn itself: the context it serves is the one the lifespan task reloads."""
    ca_a, cert, key = make_certs(tmp_path / "a", "a")
    port = _free_port()
    server = make_server(config(), host="127.0.0.1", port=port, certfile=cert, keyfile=key,
                         log_level="warning", reload_every=0.05)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"https://localhost:{port}"
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _issuer(url, ca_a) == "remora-webhook-ca-a"
        ca_b, cert_b, key_b = make_certs(tmp_path / "b", "b")
        os.replace(_write(tmp_path / "k", key_b.read_bytes()), key)
        os.replace(_write(tmp_path / "c", cert_b.read_bytes()), cert)
        deadline = time.monotonic() + 10
        while True:
            try:
                if _issuer(url, ca_b) == "remora-webhook-ca-b":
                    break
            except httpx.TransportError:  # still the old certificate
                assert time.monotonic() < deadline, "the server never picked up the new certificate"
                time.sleep(0.05)
    finally:
        server.should_exit = True
        thread.join(10)
