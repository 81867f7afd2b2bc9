"""The Remora container, its volumes and the optional init step, as the `kubernetes` client's models.

Built as V1Container / V1Volume so the client checks required fields, then serialised with
`ApiClient.sanitize_for_serialization` into the camelCase JSON the API server expects.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kubernetes import client as k8s

from remora.sidecar.webhook.config import EnvVar, InitStep, InjectionConfig, Resources

CONFIG_DIR = "/etc/remora"
CONFIG_FILE = f"{CONFIG_DIR}/models.yaml"  # the registry ConfigMap's key `models.yaml`
MODELS_DIR = "/models"
PORT_NAME = "remora-http"  # not `http`: database containers (Qdrant's chart) already use that name
INIT_NAME = "remora-models-init"
UID = 10001


@dataclass(frozen=True)
class VolumeNames:
    registry: str
    models: str
    tmp: str


def unique(name: str, taken: Iterable[str]) -> str:
    """`name`, or `name-2`, `name-3`, ... when the pod already uses it."""
    used = set(taken)
    candidate, n = name, 1
    while candidate in used:
        n += 1
        candidate = f"{name}-{n}"
    return candidate


def volume_names(taken: Iterable[str]) -> VolumeNames:
    used = set(taken)
    registry = unique("remora-registry", used)
    models = unique("remora-models", used | {registry})
    return VolumeNames(registry=registry, models=models, tmp=unique("remora-tmp", used | {registry, models}))


def serialize(obj: Any) -> Any:
    return _api().sanitize_for_serialization(obj)


@functools.cache
def _api() -> k8s.ApiClient:
    return k8s.ApiClient()


def _env(entries: Iterable[EnvVar]) -> list[k8s.V1EnvVar]:
    # valueFrom stays the mapping the config holds; serialisation passes it through as it is.
    return [k8s.V1EnvVar(name=e.name, value=e.value, value_from=e.value_from) for e in entries]


def models_read_only(config: InjectionConfig) -> bool:
    """Remora mounts /models read-only unless it may write there: an emptyDir (the pod's own
    scratch, e.g. a hub download cache) or a claim the config marks `readOnly: false`."""
    if config.models.source == "emptyDir":
        return False
    if config.models.source == "persistentVolumeClaim":
        return bool(config.models.spec.get("readOnly", True))
    return True  # a hostPath: never write into the node's filesystem unasked


def volumes(config: InjectionConfig, names: VolumeNames) -> list[k8s.V1Volume]:
    # optional=True: a missing registry ConfigMap must not keep the whole pod (the database with
    # it) from starting; only Remora then fails, on its missing config file.
    registry = k8s.V1Volume(
        name=names.registry,
        config_map=k8s.V1ConfigMapVolumeSource(name=config.registry_config_map, optional=True),
    )
    spec = config.models.spec
    if config.models.source == "persistentVolumeClaim":
        models = k8s.V1Volume(name=names.models, persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
            claim_name=spec["claimName"], read_only=spec.get("readOnly")))
    elif config.models.source == "hostPath":
        models = k8s.V1Volume(name=names.models, host_path=k8s.V1HostPathVolumeSource(
            path=spec["path"], type=spec.get("type")))
    else:
        models = k8s.V1Volume(name=names.models, empty_dir=k8s.V1EmptyDirVolumeSource(
            medium=spec.get("medium"), size_limit=spec.get("sizeLimit")))
    # No sizeLimit on /tmp: exceeding one evicts the whole pod, database included.
    tmp = k8s.V1Volume(name=names.tmp, empty_dir=k8s.V1EmptyDirVolumeSource())
    return [registry, models, tmp]


def security_context() -> k8s.V1SecurityContext:
    """Restricted Pod Security Standard: non-root uid 10001, read-only root, no capabilities."""
    return k8s.V1SecurityContext(
        run_as_non_root=True,
        run_as_user=UID,
        run_as_group=UID,
        read_only_root_filesystem=True,
        allow_privilege_escalation=False,
        privileged=False,
        capabilities=k8s.V1Capabilities(drop=["ALL"]),
        seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
    )


def _resources(resources: Resources, *, gpu: int = 0) -> k8s.V1ResourceRequirements | None:
    limits = dict(resources.limits)
    if gpu:
        # Extended resources are set as limits; the scheduler copies them into requests.
        limits["nvidia.com/gpu"] = str(gpu)
    if not resources.requests and not limits:
        return None
    return k8s.V1ResourceRequirements(requests=dict(resources.requests) or None, limits=limits or None)


def _probe(path: str, *, period: int, failures: int, timeout: int = 2) -> k8s.V1Probe:
    return k8s.V1Probe(
        http_get=k8s.V1HTTPGetAction(path=path, port=PORT_NAME, scheme="HTTP"),
        period_seconds=period,
        timeout_seconds=timeout,
        failure_threshold=failures,
    )


def sidecar_container(config: InjectionConfig, *, port: int, names: VolumeNames, weaviate_open: bool) -> k8s.V1Container:
    env = [
        k8s.V1EnvVar(name="REMORA_CONFIG", value=CONFIG_FILE),
        k8s.V1EnvVar(name="REMORA_MODEL_ROOTS", value=MODELS_DIR),
    ]
    if config.api_key_secret is not None:
        # Not optional: with the Secret missing Remora does not start, rather than serve without a key.
        env.append(k8s.V1EnvVar(name="REMORA_API_KEY", value_from=k8s.V1EnvVarSource(
            secret_key_ref=k8s.V1SecretKeySelector(name=config.api_key_secret.name, key=config.api_key_secret.key))))
    if weaviate_open:
        # Weaviate's module clients send no key; this opens only the /weaviate/<model>/ routes.
        env.append(k8s.V1EnvVar(name="REMORA_WEAVIATE_OPEN", value="1"))
    env += _env(config.env)
    return k8s.V1Container(
        name="remora",
        image=config.image,
        image_pull_policy=config.image_pull_policy,
        # The command is spelled out so the port matches the one chosen for this pod, whatever the
        # image's entrypoint; 0.0.0.0 because the kubelet probes and Prometheus use the pod IP.
        command=["remora", "serve"],
        args=["--host", "0.0.0.0", "--port", str(port)],
        ports=[k8s.V1ContainerPort(name=PORT_NAME, container_port=port, protocol="TCP")],
        env=env,
        resources=_resources(config.resources, gpu=config.gpu),
        volume_mounts=[
            k8s.V1VolumeMount(name=names.registry, mount_path=CONFIG_DIR, read_only=True),
            k8s.V1VolumeMount(name=names.models, mount_path=MODELS_DIR, read_only=models_read_only(config) or None),
            k8s.V1VolumeMount(name=names.tmp, mount_path="/tmp"),
        ],
        # Models load in the background after the server starts: /healthz answers during loading and
        # /readyz turns ready after. The startup probe only has to cover the process start (Python,
        # torch, the CUDA context on a cold GPU node), which it allows up to 5 minutes.
        startup_probe=_probe("/healthz", period=2, failures=150),
        liveness_probe=_probe("/healthz", period=10, failures=3),
        readiness_probe=_probe("/readyz", period=5, failures=2),
        security_context=security_context(),
        termination_message_policy="FallbackToLogsOnError",
    )


def init_container(step: InitStep, *, name: str, names: VolumeNames) -> k8s.V1Container:
    return k8s.V1Container(
        name=name,
        image=step.image,
        image_pull_policy=step.image_pull_policy,
        command=list(step.command),
        args=list(step.args) or None,
        env=_env(step.env) or None,
        resources=_resources(step.resources),
        volume_mounts=[
            k8s.V1VolumeMount(name=names.models, mount_path=MODELS_DIR),
            k8s.V1VolumeMount(name=names.tmp, mount_path="/tmp"),
        ],
        security_context=security_context(),
        termination_message_policy="FallbackToLogsOnError",
    )
