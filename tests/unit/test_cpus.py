from __future__ import annotations

from pathlib import Path

import pytest

from remora.core.cpus import quota_cpus, usable_cpus


@pytest.mark.parametrize(
    ("line", "expected"),
    [("max 100000", None), ("200000 100000", 2), ("150000 100000", 2), ("50000 100000", 1), ("garbage", None), ("0 100000", None)],
)
def test_quota_parsing(line: str, expected: int | None) -> None:
    assert quota_cpus(line) == expected


def test_quota_caps_affinity(tmp_path: Path) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("100000 100000\n")
    assert usable_cpus(cpu_max) == 1
    assert usable_cpus(tmp_path / "absent") >= 1
