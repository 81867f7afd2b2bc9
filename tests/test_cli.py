"""The `remora` command line, run as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from remora.core import Engine
from remora.core.defaults import DEFAULT_MODEL_ID

REMORA = [str(Path(sys.executable).parent / "remora")]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*REMORA, *args], capture_output=True, text=True, timeout=120)


def test_encode_prints_a_384d_vector_per_text() -> None:
    result = run("encode", "some text", "another text")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2
    vectors = np.array([json.loads(line) for line in lines], dtype=np.float32)
    assert vectors.shape == (2, 384)
    expected = Engine().encode(DEFAULT_MODEL_ID, ["some text", "another text"])
    assert np.abs(vectors - expected).max() <= 1e-6


def test_unknown_model_is_a_clear_error() -> None:
    result = run("encode", "x", "--model", "nope")
    assert result.returncode == 2
    assert "MODEL_NOT_FOUND" in result.stderr and "nope" in result.stderr
    assert "Traceback" not in result.stderr


def test_reject_long_input() -> None:
    result = run("encode", "word " * 300, "--reject-long")
    assert result.returncode == 2
    assert "INPUT_TOO_LONG" in result.stderr


def test_demo_ranks_the_relevant_passage_first() -> None:
    result = run("demo")
    assert result.returncode == 0, result.stderr
    ranked = [line for line in result.stdout.splitlines() if line.startswith("  ")]
    assert "packed without padding" in ranked[0]
