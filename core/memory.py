"""Memory facts for the model pool: the budget's default, estimates before a load, and giving
freed memory back to the system after an unload."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import json
import struct
from pathlib import Path

import torch

# Element sizes of safetensors dtype names (header strings).
_ST_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}

# Budget defaults: on a GPU nearly everything is for models; on CPU the process shares RAM with
# tokenizers, the server and the database beside it.
CUDA_FRACTION = 0.85
CPU_FRACTION = 0.5


def _cgroup_limit() -> int | None:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            raw = Path(path).read_text().strip()
        except OSError:
            continue
        if raw.isdigit() and int(raw) < 1 << 60:
            return int(raw)
    return None


def total_memory(device: torch.device) -> int:
    """Bytes the device can hold: GPU memory, or RAM (capped by the cgroup limit)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    import os

    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit = _cgroup_limit()
    return min(ram, limit) if limit else ram


def default_budget(device: torch.device, fraction: float | None = None) -> int:
    share = fraction if fraction is not None else (CUDA_FRACTION if device.type == "cuda" else CPU_FRACTION)
    return int(total_memory(device) * share)


def parse_size(text: str) -> int | float:
    """'4GiB', '512MB', '1073741824' -> bytes (int); '60%' -> 0.6 (a fraction of the device)."""
    raw = text.strip().replace(" ", "")
    if raw.endswith("%"):
        value = float(raw[:-1]) / 100
        if not 0 < value <= 1:
            raise ValueError(f"a memory fraction must be in (0%, 100%], got {text!r}")
        return value
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40, "K": 2**10, "M": 2**20, "G": 2**30}
    number = raw.rstrip("KMGTIBkmgtib")
    unit = raw[len(number):].upper()
    if unit not in units or not number:
        raise ValueError(f"unreadable memory size {text!r} (use e.g. 4GiB, 512MB or 60%)")
    value = float(number) * units[unit]
    if value <= 0:
        raise ValueError(f"a memory size must be positive, got {text!r}")
    return int(value)


def _safetensors_numels(file: Path) -> list[tuple[int, int]]:
    """(numel, element size) per tensor, from the header alone."""
    with file.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        if length > min(file.stat().st_size, 1 << 28):
            raise ValueError(f"corrupt safetensors header length {length}")
        header = json.loads(handle.read(length))
    out = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        numel = 1
        for dim in info["shape"]:
            numel *= int(dim)
        out.append((numel, _ST_SIZES.get(info["dtype"], 4)))
    return out


def estimate_model_bytes(model_dir: Path, dtype: torch.dtype) -> int:
    """What loading a model directory will take on the device, before loading it: every
    floating tensor of its safetensors files (Dense modules included) in the run dtype."""
    target = torch.empty((), dtype=dtype).element_size()
    total = 0
    for file in model_dir.rglob("*.safetensors"):
        try:
            numels = _safetensors_numels(file)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, struct.error):
            total += file.stat().st_size  # unreadable header: loading will say why; count the file
            continue
        total += sum(n * (target if size >= 2 else size) for n, size in numels)
    return total


def release_memory(device: torch.device) -> None:
    """Hand freed tensors back: the CUDA caching allocator's blocks, or glibc's free lists
    (without malloc_trim a freed model's pages stay in the process on CPU)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        return
    name = ctypes.util.find_library("c")
    if name:
        # Not glibc (musl, macOS): nothing to trim.
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(name).malloc_trim(0)


def rss_bytes() -> int:
    """Resident memory of this process (Linux), for tests and benchmarks."""
    import os

    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")
