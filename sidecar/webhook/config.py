"""The injection config: what the webhook adds to a pod, read once at start.

The chart renders it into the ConfigMap `<release>-injection` (key `injection.yaml`):

    image: ghcr.io/remora-project/remora:0.1.0
    imagePullPolicy: IfNotPresent
    port: 8080
    resources: {requests: {cpu: "1", memory: 2Gi}, limits: {cpu: "2", memory: 4Gi}}
    gpu: 0                                   # > 0 adds nvidia.com/gpu limits
    registryConfigMap: remora-models         # mounted at /etc/remora
    models:                                  # the /models volume, exactly one source:
      persistentVolumeClaim: {claimName: remora-models}
      # hostPath: {path: /var/lib/remora/models, type: Directory}
      # emptyDir: {}                         # needs an initContainer that fills /models
      # initContainer: {image: ..., command: [...], args: [...]}
    apiKeySecret: {name: remora-api-key, key: api-key}   # optional
    env: [{name: REMORA_MAX_BATCH_TOKENS, value: "4096"}] # optional

Every problem is a ConfigError naming the field, so a bad chart value fails the webhook's start
with one readable line instead of surfacing later as pods that silently were not injected.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes.utils.quantity import parse_quantity

log = logging.getLogger("remora.webhook")

# The variables the webhook itself sets on the Remora container; `env` must not shadow them.
RESERVED_ENV = ("REMORA_CONFIG", "REMORA_MODEL_ROOTS", "REMORA_API_KEY", "REMORA_WEAVIATE_OPEN")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
HOST_PATH_TYPES = ("", "DirectoryOrCreate", "Directory", "FileOrCreate", "File", "Socket", "CharDevice", "BlockDevice")
MODEL_SOURCES = ("persistentVolumeClaim", "hostPath", "emptyDir")

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
# valueFrom sources and the fields each needs.
VALUE_FROM = {"secretKeyRef": ("name", "key"), "configMapKeyRef": ("name", "key"), "fieldRef": ("fieldPath",),
              "resourceFieldRef": ("resource",)}
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


class ConfigError(ValueError):
    """The injection config is unreadable or invalid; the message names the file and field."""


@dataclass(frozen=True)
class Resources:
    requests: Mapping[str, str] = field(default_factory=dict)
    limits: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SecretRef:
    name: str
    key: str


@dataclass(frozen=True)
class EnvVar:
    """One env entry: a plain `value`, or `value_from` (secretKeyRef, configMapKeyRef, fieldRef,
    resourceFieldRef) as written in the config."""

    name: str
    value: str | None = None
    value_from: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class InitStep:
    """An init container that fills /models before Remora starts (e.g. copies weights from an image)."""

    image: str
    command: tuple[str, ...]
    args: tuple[str, ...] = ()
    image_pull_policy: str | None = None
    env: tuple[EnvVar, ...] = ()
    resources: Resources = field(default_factory=Resources)


@dataclass(frozen=True)
class ModelsVolume:
    """The /models volume: `source` is one of MODEL_SOURCES, `spec` its fields as written (camelCase)."""

    source: str
    spec: Mapping[str, Any]
    init: InitStep | None = None


@dataclass(frozen=True)
class InjectionConfig:
    image: str
    registry_config_map: str
    models: ModelsVolume
    image_pull_policy: str = "IfNotPresent"
    port: int = 8080
    resources: Resources = field(default_factory=Resources)
    gpu: int = 0
    api_key_secret: SecretRef | None = None
    env: tuple[EnvVar, ...] = ()


def load_config(path: Path) -> InjectionConfig:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"injection config {path}: cannot read it: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"injection config {path}: not valid YAML: {exc}") from None
    try:
        return parse_config(data)
    except ConfigError as exc:
        raise ConfigError(f"injection config {path}: {exc}") from None


def parse_config(data: object) -> InjectionConfig:
    top = _mapping(data, "the top level")
    _only(top, ("image", "imagePullPolicy", "port", "resources", "gpu", "registryConfigMap", "models",
                "apiKeySecret", "env"), "the top level")
    config = InjectionConfig(
        image=_image(top.get("image"), "image"),
        registry_config_map=_dns_name(top.get("registryConfigMap"), "registryConfigMap"),
        models=_models(top.get("models"), "models"),
        image_pull_policy=_pull_policy(top.get("imagePullPolicy", "IfNotPresent"), "imagePullPolicy"),
        port=_int(top.get("port", 8080), "port", low=1, high=65535),
        resources=_resources(top.get("resources"), "resources"),
        gpu=_int(top.get("gpu", 0), "gpu", low=0, high=64),
        api_key_secret=None if top.get("apiKeySecret") is None else _secret(top["apiKeySecret"], "apiKeySecret"),
        env=_env(top.get("env"), "env", reserved=RESERVED_ENV),
    )
    if config.gpu and not _tag(config.image).endswith("-cuda"):
        # Only a hint: a custom image may well carry CUDA under another tag.
        log.warning("gpu is %d but the image %s has no -cuda tag; the CPU image cannot use the GPU",
                    config.gpu, config.image)
    return config


def _mapping(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {_kind(value)}")
    return value


def _only(mapping: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(str(k) for k in mapping if k not in allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(allowed)})")


def _string(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: expected a non-empty string, got {_kind(value)}")
    return value


def _image(value: object, where: str) -> str:
    image = _string(value, where)
    if any(c.isspace() for c in image):
        raise ConfigError(f"{where}: {image!r} is not an image reference (it contains whitespace)")
    return image


def _dns_name(value: object, where: str) -> str:
    name = _string(value, where)
    if len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        raise ConfigError(f"{where}: {name!r} is not a valid Kubernetes object name (lowercase DNS subdomain)")
    return name


def _pull_policy(value: object, where: str) -> str:
    if value not in PULL_POLICIES:
        raise ConfigError(f"{where}: expected one of {', '.join(PULL_POLICIES)}, got {value!r}")
    return str(value)


def _int(value: object, where: str, *, low: int, high: int) -> int:
    # bool is an int in Python; `port: true` is a typo, not port 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{where}: expected an integer, got {_kind(value)}")
    if not low <= value <= high:
        raise ConfigError(f"{where}: expected {low}..{high}, got {value}")
    return value


def _quantity(value: object, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"{where}: expected a quantity like 500m, 2 or 4Gi, got {_kind(value)}")
    text = str(value)
    try:
        amount = parse_quantity(text)
    except ValueError:
        raise ConfigError(f"{where}: {text!r} is not a Kubernetes quantity (like 500m, 2 or 4Gi)") from None
    if amount < 0:
        raise ConfigError(f"{where}: must not be negative, got {text!r}")
    return text


def _resources(value: object, where: str) -> Resources:
    if value is None:
        return Resources()
    spec = _mapping(value, where)
    _only(spec, ("requests", "limits"), where)
    requests, limits = ({str(k): _quantity(v, f"{where}.{part}.{k}")
                         for k, v in _mapping(spec.get(part) or {}, f"{where}.{part}").items()}
                        for part in ("requests", "limits"))
    if "nvidia.com/gpu" in requests or "nvidia.com/gpu" in limits:
        raise ConfigError(f"{where}: set GPUs with the top-level `gpu`, not nvidia.com/gpu")
    for name, request in requests.items():
        if name in limits and parse_quantity(request) > parse_quantity(limits[name]):
            raise ConfigError(f"{where}: requests.{name} ({request}) exceeds limits.{name} ({limits[name]})")
    return Resources(requests=requests, limits=limits)


def _secret(value: object, where: str) -> SecretRef:
    spec = _mapping(value, where)
    _only(spec, ("name", "key"), where)
    key = _string(spec.get("key"), f"{where}.key")
    if not _SECRET_KEY.match(key):
        raise ConfigError(f"{where}.key: {key!r} is not a valid Secret key")
    return SecretRef(name=_dns_name(spec.get("name"), f"{where}.name"), key=key)


def _env(value: object, where: str, *, reserved: tuple[str, ...] = ()) -> tuple[EnvVar, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list of {{name, value}}, got {_kind(value)}")
    entries: list[EnvVar] = []
    for i, item in enumerate(value):
        here = f"{where}[{i}]"
        entry = _mapping(item, here)
        _only(entry, ("name", "value", "valueFrom"), here)
        name = _string(entry.get("name"), f"{here}.name")
        if not _ENV_NAME.match(name):
            raise ConfigError(f"{here}.name: {name!r} is not a valid environment variable name")
        if name in reserved:
            raise ConfigError(f"{here}.name: {name} is set by the webhook itself")
        if any(name == seen.name for seen in entries):
            raise ConfigError(f"{here}.name: {name} appears twice")
        if entry.get("valueFrom") is not None:
            if "value" in entry:
                raise ConfigError(f"{here}: set value or valueFrom, not both")
            entries.append(EnvVar(name=name, value_from=_value_from(entry["valueFrom"], f"{here}.valueFrom")))
            continue
        raw = entry.get("value", "")
        if isinstance(raw, bool) or not isinstance(raw, str | int | float):
            raise ConfigError(f"{here}.value: expected a string, got {_kind(raw)} (quote it)")
        entries.append(EnvVar(name=name, value=str(raw)))
    return tuple(entries)


def _value_from(value: object, where: str) -> dict[str, Any]:
    source = _mapping(value, where)
    _only(source, tuple(VALUE_FROM), where)
    if len(source) != 1:
        raise ConfigError(f"{where}: set exactly one of {', '.join(VALUE_FROM)}")
    (kind, ref), = source.items()
    ref = _mapping(ref, f"{where}.{kind}")
    for key in VALUE_FROM[kind]:
        _string(ref.get(key), f"{where}.{kind}.{key}")
    return dict(source)


def _strings(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: expected a list of strings, got {_kind(value)}")
    return tuple(value)


def _init_step(value: object, where: str) -> InitStep:
    spec = _mapping(value, where)
    _only(spec, ("image", "imagePullPolicy", "command", "args", "env", "resources"), where)
    command = _strings(spec.get("command"), f"{where}.command")
    if not command:
        raise ConfigError(f"{where}.command: must not be empty")
    policy = spec.get("imagePullPolicy")
    return InitStep(
        image=_image(spec.get("image"), f"{where}.image"),
        command=command,
        args=_strings(spec.get("args", []), f"{where}.args"),
        image_pull_policy=None if policy is None else _pull_policy(policy, f"{where}.imagePullPolicy"),
        env=_env(spec.get("env"), f"{where}.env"),
        resources=_resources(spec.get("resources"), f"{where}.resources"),
    )


def _models(value: object, where: str) -> ModelsVolume:
    spec = _mapping(value, where)
    _only(spec, (*MODEL_SOURCES, "initContainer"), where)
    sources = [s for s in MODEL_SOURCES if s in spec]
    if len(sources) != 1:
        raise ConfigError(f"{where}: set exactly one of {', '.join(MODEL_SOURCES)}, got "
                          f"{', '.join(sources) or 'none'}")
    source = sources[0]
    # A chart renders an unset field as null: treat it as absent.
    fields = {k: v for k, v in _mapping(spec[source] or {}, f"{where}.{source}").items() if v is not None}
    here = f"{where}.{source}"
    if source == "persistentVolumeClaim":
        _only(fields, ("claimName", "readOnly"), here)
        _dns_name(fields.get("claimName"), f"{here}.claimName")
        if not isinstance(fields.get("readOnly", False), bool):
            raise ConfigError(f"{here}.readOnly: expected true or false, got {_kind(fields['readOnly'])}")
    elif source == "hostPath":
        _only(fields, ("path", "type"), here)
        if not _string(fields.get("path"), f"{here}.path").startswith("/"):
            raise ConfigError(f"{here}.path: must be absolute, got {fields['path']!r}")
        if fields.get("type", "") not in HOST_PATH_TYPES:
            raise ConfigError(f"{here}.type: expected one of {', '.join(t for t in HOST_PATH_TYPES if t)}, "
                              f"got {fields['type']!r}")
    else:
        _only(fields, ("medium", "sizeLimit"), here)
        if fields.get("medium", "") not in ("", "Memory"):
            raise ConfigError(f"{here}.medium: expected \"\" or Memory, got {fields['medium']!r}")
        if "sizeLimit" in fields:
            fields["sizeLimit"] = _quantity(fields["sizeLimit"], f"{here}.sizeLimit")
    init = None if spec.get("initContainer") is None else _init_step(spec["initContainer"], f"{where}.initContainer")
    if source == "emptyDir" and init is None:
        # Valid: Remora may download hub models into it (REMORA_HF_DOWNLOAD=1); only worth a word.
        log.info("models: an emptyDir with no initContainer starts empty; models come from the hub or nowhere")
    return ModelsVolume(source=source, spec=dict(fields), init=init)


def _tag(image: str) -> str:
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.rsplit(":", 1)[1] if ":" in last else ""


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    return f"{type(value).__name__} {value!r}" if isinstance(value, int | float | str | bool) else type(value).__name__
