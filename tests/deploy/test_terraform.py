"""Checks of terraform/: the `remora` module (Helm), the `eks-gpu` module (AWS) and the AWS example.

Always, with python-hcl2 (no terraform needed): every file parses; variables have a type, a
description and (unless boolean) a validation; outputs are described; every `var.`, `local.`
and `module.` reference is declared and every variable is used; providers are pinned; module
calls pass only variables the called module declares and all those it requires; third-party
charts are pinned; the local chart path exists; the chart values the module and the example set
exist in helm/remora/values.yaml.

With terraform (on this image; not on a fresh machine, where these skip and say why):
`terraform fmt -check`; `terraform validate` and `terraform test` (mock AWS provider) of
eks-gpu, whose only provider, AWS, is in the offline mirror; and the remora module's values,
evaluated by `terraform console` from its variables for several profiles, rendered through the
real chart with `helm template`. The helm provider is not mirrored, so the remora module and the
example are not `terraform validate`d: that test skips with the reason.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import hcl2
import pytest
import yaml

from tests.deploy.tools import helm_binary

ROOT = Path(__file__).resolve().parents[2]
TF = ROOT / "terraform"
CHART = ROOT / "helm" / "remora"
MODULES = {
    "modules/remora": TF / "modules" / "remora",
    "modules/eks-gpu": TF / "modules" / "eks-gpu",
    "examples/aws": TF / "examples" / "aws",
}
# Providers whose plugins are in the offline filesystem mirror (see /opt/tf-plugins).
MIRROR = Path(os.environ.get("REMORA_TF_PLUGIN_MIRROR", "/opt/tf-plugins"))
MIRRORED = {"aws"}
SEMVER = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+$")


# --- python-hcl2 ---------------------------------------------------------------------------------


def _unquote(value: Any) -> Any:
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def _normalise(node: Any) -> Any:
    """Block labels and strings without their quotes, whatever python-hcl2's version."""
    if isinstance(node, dict):
        return {_unquote(k): _normalise(v) for k, v in node.items() if not str(k).startswith("__")}
    if isinstance(node, list):
        return [_normalise(v) for v in node]
    return _unquote(node)


def parse(path: Path) -> dict[str, Any]:
    text = path.read_text()
    try:
        from hcl2 import SerializationOptions  # python-hcl2 >= 8
    except ImportError:
        return _normalise(hcl2.loads(text))
    options = SerializationOptions(strip_string_quotes=True, explicit_blocks=False, with_comments=False)
    return _normalise(hcl2.loads(text, serialization_options=options))


class Module:
    """The merged blocks of one directory's .tf files."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.files = sorted(directory.glob("*.tf"))
        assert self.files, f"{directory} has no .tf files"
        self.variables: dict[str, dict[str, Any]] = {}
        self.outputs: dict[str, dict[str, Any]] = {}
        self.locals: dict[str, Any] = {}
        self.modules: dict[str, dict[str, Any]] = {}
        self.resources: dict[str, dict[str, Any]] = {}  # "type.name" -> body
        self.data: dict[str, dict[str, Any]] = {}
        self.providers: dict[str, dict[str, Any]] = {}
        self.terraform: list[dict[str, Any]] = []
        for path in self.files:
            doc = parse(path)
            for block in doc.get("variable", []):
                self.variables.update(block)
            for block in doc.get("output", []):
                self.outputs.update(block)
            for block in doc.get("locals", []):
                self.locals.update(block)
            for block in doc.get("module", []):
                self.modules.update(block)
            for kind, target in (("resource", self.resources), ("data", self.data)):
                for block in doc.get(kind, []):
                    for rtype, named in block.items():
                        for name, body in named.items():
                            target[f"{rtype}.{name}"] = body
            for block in doc.get("provider", []):
                self.providers.update(block)
            self.terraform.extend(doc.get("terraform", []))

    def text(self) -> str:
        """All .tf text without comments (for reference scanning)."""
        lines = []
        for path in self.files:
            for line in path.read_text().splitlines():
                stripped = line.strip()
                if stripped.startswith("#") or stripped.startswith("//"):
                    continue
                lines.append(line)
        return "\n".join(lines)

    def required_providers(self) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for block in self.terraform:
            for providers in block.get("required_providers", []):
                found.update(providers)
        return found


@pytest.fixture(scope="module", params=sorted(MODULES))
def module(request: pytest.FixtureRequest) -> Module:
    return Module(MODULES[request.param])


def _tf_files() -> list[Path]:
    return sorted(p for p in TF.rglob("*.tf") if ".terraform" not in p.parts)


@pytest.mark.parametrize("path", _tf_files(), ids=lambda p: str(p.relative_to(TF)))
def test_every_file_parses(path: Path) -> None:
    assert parse(path), f"{path} is empty"


def test_layout() -> None:
    for directory in MODULES.values():
        assert (directory / "variables.tf").is_file() and (directory / "outputs.tf").is_file(), directory
    assert (TF / "modules" / "eks-gpu" / "tests").is_dir(), "eks-gpu's terraform tests are missing"


def test_variables_are_typed_described_and_validated(module: Module) -> None:
    assert module.variables, module.dir
    for name, body in module.variables.items():
        assert body.get("type"), f"{module.dir.name}: variable {name} has no type"
        assert str(body.get("description", "")).strip(), f"{module.dir.name}: variable {name} has no description"
        if body["type"] == "bool":
            continue  # a bool cannot hold a wrong value
        validations = body.get("validation", [])
        assert validations, f"{module.dir.name}: variable {name} has no validation block"
        for v in validations:
            assert f"var.{name}" in str(v.get("condition", "")), f"{name}: a validation that does not test var.{name}"
            assert str(v.get("error_message", "")).strip(), f"{name}: a validation without an error message"


def test_outputs_are_described(module: Module) -> None:
    assert module.outputs, module.dir
    for name, body in module.outputs.items():
        assert str(body.get("description", "")).strip(), f"{module.dir.name}: output {name} has no description"
        assert "value" in body, name


def test_references_are_declared_and_variables_used(module: Module) -> None:
    text = module.text()
    used_vars = set(re.findall(r"\bvar\.([A-Za-z_][A-Za-z0-9_-]*)", text))
    assert used_vars <= set(module.variables), f"undeclared variables: {used_vars - set(module.variables)}"
    assert set(module.variables) <= used_vars, f"variables never used: {set(module.variables) - used_vars}"
    used_locals = set(re.findall(r"\blocal\.([A-Za-z_][A-Za-z0-9_-]*)", text))
    assert used_locals <= set(module.locals), f"undeclared locals: {used_locals - set(module.locals)}"
    used_modules = set(re.findall(r"\bmodule\.([A-Za-z_][A-Za-z0-9_-]*)", text))
    assert used_modules <= set(module.modules), f"undeclared modules: {used_modules - set(module.modules)}"
    for rtype, name in re.findall(r"\b((?:aws|helm)_[a-z0-9_]+)\.([a-z0-9_]+)\b", text):
        ref = f"{rtype}.{name}"
        assert ref in module.resources or ref in module.data, f"{module.dir.name}: {ref} is not declared"


def test_providers_are_pinned(module: Module) -> None:
    required = module.required_providers()
    versions = [b.get("required_version") for b in module.terraform if b.get("required_version")]
    assert versions, f"{module.dir.name}: no required_version"
    used = {t.split(".")[0].split("_")[0] for t in [*module.resources, *module.data]}
    used |= set(module.providers)
    assert used <= set(required), f"{module.dir.name}: providers used but not required: {used - set(required)}"
    for name, spec in required.items():
        assert spec.get("source") == f"hashicorp/{name}", spec
        constraint = str(spec.get("version", ""))
        # A lower and an upper bound: a new major version is a deliberate change.
        assert re.search(r">=\s*\d", constraint) and "<" in constraint, f"{name}: version {constraint!r}"


def test_module_calls_match_the_called_modules(module: Module) -> None:
    for name, call in module.modules.items():
        source = module.dir / call["source"]
        assert source.is_dir(), f"module {name}: source {call['source']} does not exist"
        callee = Module(source.resolve())
        meta = {"source", "version", "depends_on", "providers", "count", "for_each"}
        passed = set(call) - meta
        assert passed <= set(callee.variables), f"module {name}: unknown arguments {passed - set(callee.variables)}"
        required = {v for v, body in callee.variables.items() if "default" not in body}
        assert required <= passed, f"module {name}: required variables not passed: {required - passed}"
        used_outputs = set(re.findall(rf"\bmodule\.{name}\.([A-Za-z_][A-Za-z0-9_]*)", module.text()))
        assert used_outputs <= set(callee.outputs), f"module {name}: no such outputs {used_outputs - set(callee.outputs)}"


def test_local_chart_path_is_the_chart() -> None:
    remora = Module(MODULES["modules/remora"])
    path = remora.locals["local_chart"].replace("${path.module}", str(remora.dir))
    chart = Path(os.path.normpath(path))
    assert chart == CHART, chart
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    assert meta["name"] == "remora"
    release = remora.resources["helm_release.remora"]
    assert "local.local_chart" in release["chart"], release["chart"]


def _default(module: Module, expr: str) -> Any:
    match = re.fullmatch(r"\$\{var\.(\w+)\}", str(expr))
    return module.variables[match.group(1)].get("default") if match else expr


def test_third_party_charts_are_pinned() -> None:
    seen = set()
    for key in ("modules/remora", "examples/aws"):
        mod = Module(MODULES[key])
        for name, body in mod.resources.items():
            if not name.startswith("helm_release.") or "${" in str(body.get("repository", "${")):
                continue
            version = _default(mod, body.get("version", ""))
            assert SEMVER.match(str(version)), f"{key}: {name} from {body['repository']} is not pinned ({version})"
            seen.add(body["chart"])
    assert {"keda", "kube-prometheus-stack", "cluster-autoscaler", "nvidia-device-plugin"} <= seen, seen


# Values subtrees whose keys are the user's, not the chart's.
FREE_FORM = {("registry", "config")}


def _missing_keys(ours: Any, chart: Any, path: tuple[str, ...] = ()) -> list[str]:
    if not isinstance(ours, dict) or path in FREE_FORM:
        return []
    if not isinstance(chart, dict):
        return [".".join(path)]
    if not chart:  # an empty map in values.yaml takes any keys (nodeSelector, labels, ...)
        return []
    missing = []
    for key, value in ours.items():
        if key not in chart:
            missing.append(".".join((*path, key)))
        else:
            missing.extend(_missing_keys(value, chart[key], (*path, key)))
    return missing


def test_chart_values_set_by_terraform_exist_in_the_chart() -> None:
    chart_values = yaml.safe_load((CHART / "values.yaml").read_text())
    ours = {
        "modules/remora": Module(MODULES["modules/remora"]).locals["chart_values"],
        "examples/aws": Module(MODULES["examples/aws"]).locals["remora_values"],
    }
    for where, values in ours.items():
        assert isinstance(values, dict) and values, where
        missing = _missing_keys(values, chart_values)
        assert not missing, f"{where} sets values the chart does not have: {missing}"


def test_gpu_node_group_is_spot_tainted_and_starts_at_zero() -> None:
    eks = Module(MODULES["modules/eks-gpu"])
    gpu = eks.resources["aws_eks_node_group.gpu"]
    assert eks.variables["gpu_capacity_type"]["default"] == "SPOT" and "var.gpu_capacity_type" in gpu["capacity_type"]
    assert eks.variables["gpu_node_count"]["default"]["min"] == 0
    (scaling,) = gpu["scaling_config"]
    assert "var.gpu_node_count.min" in scaling["min_size"] and "var.gpu_node_count.min" in scaling["desired_size"]
    assert eks.variables["gpu_ami_type"]["default"] in ("AL2023_x86_64_NVIDIA", "AL2_x86_64_GPU", "BOTTLEROCKET_x86_64_NVIDIA")
    taint = eks.locals["gpu_taint"]
    assert taint == {"key": "nvidia.com/gpu", "value": "true", "effect": "NO_SCHEDULE"}, taint
    example = Module(MODULES["examples/aws"])
    assert "min = 0" in example.text(), "the example does not let the GPU group reach zero"


def test_example_helm_provider_uses_the_new_cluster() -> None:
    example = Module(MODULES["examples/aws"])
    kube = example.providers["helm"]["kubernetes"]
    assert "module.eks_gpu.cluster_endpoint" in kube["host"]
    assert "module.eks_gpu.cluster_certificate_authority_data" in kube["cluster_ca_certificate"]
    assert kube["exec"]["command"] == "aws" and "get-token" in json.dumps(kube["exec"]["args"])


# --- terraform -----------------------------------------------------------------------------------


def terraform() -> str:
    found = shutil.which("terraform")
    if found is None:
        pytest.skip(
            "terraform is not on PATH (it is on the development image, not on a fresh machine, and no "
            "package registry here ships it); fmt/validate/test did not run. The python-hcl2 checks did."
        )
    return found


def _cli_config(tmp_path: Path) -> dict[str, str]:
    """Environment for terraform with providers only from the offline filesystem mirror."""
    if not (MIRROR / "registry.terraform.io" / "hashicorp" / "aws").is_dir():
        pytest.skip(f"no offline provider mirror at {MIRROR} (REMORA_TF_PLUGIN_MIRROR): the AWS provider cannot be installed")
    rc = tmp_path / "terraformrc"
    rc.write_text(
        textwrap.dedent(f"""\
            provider_installation {{
              filesystem_mirror {{
                path    = "{MIRROR}"
                include = ["registry.terraform.io/hashicorp/aws"]
              }}
              direct {{
                exclude = ["registry.terraform.io/*/*"]
              }}
            }}
        """)
    )
    env = dict(os.environ, TF_CLI_CONFIG_FILE=str(rc), TF_IN_AUTOMATION="1", CHECKPOINT_DISABLE="1")
    env.pop("TF_PLUGIN_CACHE_DIR", None)
    return env


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.integration
def test_terraform_fmt() -> None:
    result = _run([terraform(), "fmt", "-check", "-recursive", "-diff", "-no-color", str(TF)], cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def eks_gpu_workdir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """eks-gpu copied out of the repository (init writes .terraform/ and a lock file) and initialised."""
    binary = terraform()
    tmp = tmp_path_factory.mktemp("eks-gpu")
    env = _cli_config(tmp)
    work = tmp / "eks-gpu"
    shutil.copytree(MODULES["modules/eks-gpu"], work)
    init = _run([binary, "init", "-backend=false", "-input=false", "-no-color"], cwd=work, env=env)
    assert init.returncode == 0, init.stdout + init.stderr
    return work, env


@pytest.mark.integration
def test_eks_gpu_module_validates(eks_gpu_workdir: tuple[Path, dict[str, str]]) -> None:
    work, env = eks_gpu_workdir
    result = _run([terraform(), "validate", "-json", "-no-color"], cwd=work, env=env)
    report = json.loads(result.stdout)
    assert report["valid"] and report["error_count"] == 0, json.dumps(report["diagnostics"], indent=1)


@pytest.mark.integration
@pytest.mark.slow
def test_eks_gpu_terraform_test_with_a_mock_provider(eks_gpu_workdir: tuple[Path, dict[str, str]]) -> None:
    """terraform/modules/eks-gpu/tests/*.tftest.hcl: plans against a mocked AWS provider, asserts, bad inputs."""
    work, env = eks_gpu_workdir
    result = _run([terraform(), "test", "-no-color"], cwd=work, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"(\d+) passed, (\d+) failed", result.stdout)
    assert match and int(match.group(1)) >= 10 and match.group(2) == "0", result.stdout


@pytest.mark.integration
@pytest.mark.parametrize("key", ["modules/remora", "examples/aws"])
def test_validate_needs_providers_outside_the_mirror(key: str) -> None:
    terraform()
    needed = set(Module(MODULES[key]).required_providers()) - MIRRORED
    assert needed, f"{key} needs only mirrored providers: validate it like eks-gpu"
    pytest.skip(
        f"terraform validate of {key} needs the {sorted(needed)} provider(s), which are not in the offline mirror; "
        "python-hcl2 checks and the rendered-values test cover it instead"
    )


# The remora module's values, evaluated by terraform from the variables, rendered by the real chart.

CRON = {"type": "cron", "metadata": {"timezone": "UTC", "start": "0 7 * * 1-5", "end": "0 19 * * 1-5", "desiredReplicas": "1"}}
PROFILES: dict[str, dict[str, Any]] = {
    "defaults (injection)": {},
    "shared keda gpu": {"mode": "shared", "gpu": 1, "max_replicas": 4},
    "shared scale to zero": {"mode": "shared", "min_replicas": 0, "keda_wake_triggers": [CRON]},
    "both hpa own prometheus": {
        "mode": "both", "autoscaling": "hpa", "install_keda": False, "install_kube_prometheus_stack": False,
        "prometheus_address": "http://prometheus.example:9090",
    },
    "shared no monitoring": {"mode": "shared", "monitoring": False, "autoscaling": "none", "proxy": "none"},
}
REJECTED: dict[str, tuple[dict[str, Any], str]] = {
    "scale to zero without a wake trigger": ({"mode": "shared", "min_replicas": 0}, "min_replicas = 0 (scale to zero)"),
    "scale to zero in injection mode": ({"min_replicas": 0, "keda_wake_triggers": [CRON]}, "min_replicas = 0 (scale to zero)"),
    "more minimum than maximum": ({"mode": "shared", "min_replicas": 5, "max_replicas": 2}, "must not exceed max_replicas"),
    "repository without version": ({"chart_repository": "oci://ghcr.io/remora-project/charts"}, "chart_version is required"),
    "unknown mode": ({"mode": "sidecar"}, "mode is injection, shared or both"),
    "bad values document": ({"values": ["a: [1, 2"]}, "every entry of values is a YAML document"),
    "fractional gpu": ({"gpu": 0.5}, "gpu is a whole number"),
}


@pytest.fixture(scope="module")
def values_workdir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """The remora module's variables and locals alone: no provider is needed to evaluate them."""
    binary = terraform()
    tmp = tmp_path_factory.mktemp("remora-values")
    work = tmp / "remora"
    work.mkdir()
    for name in ("variables.tf", "locals.tf"):
        shutil.copy(MODULES["modules/remora"] / name, work / name)
    env = dict(os.environ, TF_CLI_CONFIG_FILE=str(tmp / "none.tfrc"), CHECKPOINT_DISABLE="1")
    (tmp / "none.tfrc").write_text("")
    init = _run([binary, "init", "-backend=false", "-input=false", "-no-color"], cwd=work, env=env)
    assert init.returncode == 0, init.stdout + init.stderr
    return work, env


def _evaluate(work: Path, env: dict[str, str], variables: dict[str, Any], expression: str) -> subprocess.CompletedProcess[str]:
    # -var flags, not a var file: JSON lists and objects are valid HCL, and terraform 1.11's console
    # panics on some invalid values read from a .tfvars.json.
    flags = [f"-var={k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in variables.items()]
    return subprocess.run(
        [terraform(), "console", "-no-color", *flags],
        cwd=work, env=env, input=expression + "\n", capture_output=True, text=True, timeout=120,
    )


def _heredoc(output: str) -> str:
    lines = output.strip().splitlines()
    assert lines[0] == "<<EOT" and lines[-1] == "EOT", output
    return "\n".join(lines[1:-1]) + "\n"


@pytest.mark.integration
@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_module_values_render_through_the_chart(
    profile: str, values_workdir: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    work, env = values_workdir
    variables = PROFILES[profile]
    result = _evaluate(work, env, variables, "yamlencode(local.chart_values)")
    assert result.returncode == 0 and "Error" not in result.stderr, result.stdout + result.stderr
    rendered_values = _heredoc(result.stdout)
    values = yaml.safe_load(rendered_values)
    (tmp_path / "values.yaml").write_text(rendered_values)
    helm = helm_binary()
    render = _run(
        [str(helm), "template", "remora", str(CHART), "--namespace", "remora", "-f", str(tmp_path / "values.yaml")],
        cwd=ROOT,
    )
    assert render.returncode == 0, render.stderr
    kinds = [doc["kind"] for doc in yaml.safe_load_all(render.stdout) if doc]
    mode = variables.get("mode", "injection")
    keda = mode != "injection" and variables.get("autoscaling", "keda") == "keda"
    assert ("ScaledObject" in kinds) == keda, kinds
    assert ("HorizontalPodAutoscaler" in kinds) == (mode != "injection" and variables.get("autoscaling") == "hpa")
    assert ("MutatingWebhookConfiguration" in kinds) == (mode != "shared"), kinds
    monitoring = variables.get("monitoring", True)
    assert ("PrometheusRule" in kinds) == monitoring, kinds
    assert ("ServiceMonitor" in kinds) == (monitoring and mode != "injection"), kinds
    assert ("PodMonitor" in kinds) == (monitoring and mode != "shared"), kinds
    if variables.get("install_kube_prometheus_stack", True):
        assert values["monitoring"]["labels"] == {"release": "kube-prometheus-stack"}
    if keda:
        (scaled,) = [d for d in yaml.safe_load_all(render.stdout) if d and d["kind"] == "ScaledObject"]
        assert scaled["spec"]["minReplicaCount"] == variables.get("min_replicas", 1)
        address = variables.get("prometheus_address", "http://prometheus-operated.monitoring.svc:9090")
        prometheus = [t for t in scaled["spec"]["triggers"] if t["type"] == "prometheus"]
        assert prometheus and all(t["metadata"]["serverAddress"] == address for t in prometheus)


@pytest.mark.integration
@pytest.mark.parametrize("case", sorted(REJECTED))
def test_module_rejects_bad_inputs(case: str, values_workdir: tuple[Path, dict[str, str]]) -> None:
    work, env = values_workdir
    variables, message = REJECTED[case]
    result = _evaluate(work, env, variables, "local.autoscaling")
    # terraform console reports a failed validation but may still exit 0 and print a value.
    assert "Error: Invalid value for variable" in result.stderr, f"{case}: accepted\n{result.stdout}{result.stderr}"
    assert message in " ".join(result.stderr.split()), result.stderr
