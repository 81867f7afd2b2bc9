"""The side virtualenv that runs the `gliner` package, and the golden outputs it writes.

`gliner` 0.2.29 requires transformers < 5.17, older than Remora's test environment, so it gets
its own pinned venv (about a minute to install: torch's CPU wheel comes from local disk here,
gliner and transformers from PyPI). Both the venv and the golden outputs are cached in the temp
directory under names that hash the pins and the generator, so a machine pays once; set
REMORA_GLINER_CACHE to keep them elsewhere. Concurrent test processes wait on a file lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import venv
from pathlib import Path
from typing import Any

PINS = ("torch==2.13.0", "transformers==5.16.1", "gliner==0.2.29")
GENERATOR = Path(__file__).with_name("generate.py")
INSTALL_TIMEOUT_S = 900


class Unavailable(RuntimeError):
    """The side venv could not be installed (no package index, say): the parity test skips."""


def cache_root() -> Path:
    root = Path(os.environ.get("REMORA_GLINER_CACHE") or Path(tempfile.gettempdir()) / "remora-gliner")
    root.mkdir(parents=True, exist_ok=True)
    return root


def _digest(*parts: bytes) -> str:
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]


def _locked(root: Path) -> Any:
    handle = open(root / ".lock", "w")  # noqa: SIM115 - held until the caller closes it
    fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


def side_python() -> Path:
    """The side venv's python, installing it on first use."""
    root = cache_root()
    env_dir = root / f"venv-{_digest(*(p.encode() for p in PINS))}"
    python = env_dir / "bin" / "python"
    with _locked(root):
        if (env_dir / ".ready").is_file():
            return python
        venv.EnvBuilder(clear=True, with_pip=True).create(env_dir)
        try:
            done = subprocess.run(
                [str(python), "-m", "pip", "install", "-q", *PINS],
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired as exc:
            raise Unavailable(f"installing {' '.join(PINS)} took over {INSTALL_TIMEOUT_S} s") from exc
        if done.returncode != 0:
            raise Unavailable(f"cannot install {' '.join(PINS)}: {done.stderr[-2000:]}")
        (env_dir / ".ready").touch()
    return python


def golden(tokenizer_dir: Path) -> dict[str, Any]:
    """{variant: {"dir": model directory, "cases": [...]}} from generate.py (cached)."""
    root = cache_root()
    out = root / f"golden-{_digest(GENERATOR.read_bytes(), *(p.encode() for p in PINS))}"
    result = out / "golden.json"
    if not result.is_file():
        python = side_python()
        with _locked(root):
            if not result.is_file():
                env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
                done = subprocess.run(
                    [str(python), str(GENERATOR), str(out), str(tokenizer_dir)],
                    capture_output=True,
                    text=True,
                    env=env,
                    timeout=600,
                )
                if done.returncode != 0:
                    # A broken generator is a test failure, not a skip.
                    sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
                    raise RuntimeError(f"generate.py failed ({done.returncode}): {done.stderr[-2000:]}")
    data: dict[str, Any] = json.loads(result.read_text())
    return data
