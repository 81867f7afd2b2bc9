"""Checkpoint loading: safetensors only, through a declarative name map with strict coverage.

A model declares a table from its own parameter names to checkpoint tensor names, with `{i}`
standing for the layer index, `Fuse` for parameters built from several tensors (fused QKV) and
`Rows` for a few rows of one tensor (two rows of an LM head).
Loading fails, naming the tensors, when a parameter finds no tensor, a shape differs, or a
checkpoint tensor is neither used nor matched by an explicit drop pattern.
"""

from __future__ import annotations

import fnmatch
import json
import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from remora.core.errors import WeightsError
from remora.core.paths import child

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")

# safetensors dtype names -> torch dtypes (the format's little-endian layouts).
ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
MAX_HEADER_BYTES = 100_000_000  # as the safetensors library: a larger header is a corrupt file


@dataclass(frozen=True)
class Fuse:
    """A parameter made by concatenating checkpoint tensors along `dim` (e.g. Q, K, V -> QKV)."""

    sources: tuple[str, ...]
    dim: int = 0


@dataclass(frozen=True)
class Rows:
    """A parameter made of chosen rows of one checkpoint tensor, in the given order (the two rows
    of a [V, h] LM head that a yes/no reranker reads), so the other rows are never copied."""

    source: str
    rows: tuple[int, ...]


Source = str | Fuse | Rows
WeightTable = Mapping[str, Source]


@dataclass(frozen=True)
class _Stored:
    """Where one tensor lies: its file, dtype, shape and absolute byte range."""

    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int
    nbytes: int


class Checkpoint:
    """The safetensors files of one model directory, read lazily, tensor by tensor.

    Tensors are read with ordinary file reads, never memory-mapped: a file truncated or rewritten
    in place while a model loads (`cp` over it) then fails that load with a WeightsError, where a
    read from a mapping past the file's new end would kill the whole process with SIGBUS."""

    def __init__(self, files: Sequence[Path]) -> None:
        self.files = tuple(files)
        self._stored: dict[str, _Stored] = {}
        for file in self.files:
            try:
                self._stored.update(_read_header(file))
            except WeightsError:
                raise
            except Exception as exc:  # a bad header can fail in many ways
                raise WeightsError(f"corrupt safetensors file {file}: {exc}") from exc

    @classmethod
    def from_dir(cls, model_dir: Path, *, stem: str = "model") -> Checkpoint:
        index = model_dir / f"{stem}.safetensors.index.json"
        single = model_dir / f"{stem}.safetensors"
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (ValueError, KeyError, TypeError) as exc:
                raise WeightsError(f"unreadable shard index {index}: {exc}") from exc
            files = [child(model_dir, str(shard), named_in=index) for shard in shards]
            missing = [str(f) for f in files if not f.is_file()]
            if missing:
                raise WeightsError(f"shard index {index} names missing files: {', '.join(missing)}")
            return cls(files)
        if single.is_file():
            return cls([single])
        pickles = sorted(p.name for p in model_dir.glob("*") if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise WeightsError(
                f"{model_dir} holds only pickle checkpoints ({', '.join(pickles)}); Remora never unpickles "
                "weights. Convert them to safetensors (e.g. `save_pretrained(..., safe_serialization=True)`)."
            )
        raise WeightsError(f"no weights in {model_dir}: expected {single.name} or {index.name}")

    def names(self) -> set[str]:
        return set(self._stored)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._stored[name].shape

    def rows(self, name: str, rows: Sequence[int]) -> torch.Tensor:
        """Rows `rows` of a tensor (stacked along dim 0), read without loading the rest."""
        stored = self._stored[name]
        count = stored.shape[0] if stored.shape else 0
        outside = [r for r in rows if not 0 <= r < count]
        if outside:
            raise WeightsError(f"tensor {name!r} has {count} rows; rows {outside} do not exist")
        rest = stored.shape[1:]
        row_bytes = math.prod(rest) * stored.dtype.itemsize
        if not rows or row_bytes == 0:
            return torch.empty((len(rows), *rest), dtype=stored.dtype)
        data = bytearray().join(_read(stored, name, stored.offset + r * row_bytes, row_bytes) for r in rows)
        return torch.frombuffer(data, dtype=stored.dtype).reshape(len(rows), *rest)

    def tensor(self, name: str) -> torch.Tensor:
        stored = self._stored[name]
        if stored.nbytes == 0:
            return torch.empty(stored.shape, dtype=stored.dtype)
        data = _read(stored, name, stored.offset, stored.nbytes)
        return torch.frombuffer(data, dtype=stored.dtype).reshape(stored.shape)


def _read_header(file: Path) -> dict[str, _Stored]:
    """The tensors a safetensors file holds, from its header, each checked to lie inside the file."""
    with file.open("rb") as handle:
        size = handle.seek(0, 2)
        handle.seek(0)
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise WeightsError(f"corrupt safetensors file {file}: {size} bytes, too short for a header")
        (length,) = struct.unpack("<Q", prefix)
        if length > min(size - 8, MAX_HEADER_BYTES):
            raise WeightsError(f"corrupt safetensors file {file}: header length {length} past the end of the file")
        header = json.loads(handle.read(length))
    if not isinstance(header, dict):
        raise WeightsError(f"corrupt safetensors file {file}: the header is not a JSON object")
    data_start, data_len = 8 + length, size - 8 - length
    stored = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = ST_DTYPES.get(info["dtype"])
        if dtype is None:
            raise WeightsError(f"corrupt safetensors file {file}: tensor {name!r} has unknown dtype {info['dtype']!r}")
        shape = tuple(int(d) for d in info["shape"])
        begin, end = (int(x) for x in info["data_offsets"])
        if any(d < 0 for d in shape) or not 0 <= begin <= end <= data_len:
            raise WeightsError(
                f"corrupt safetensors file {file}: tensor {name!r} lies at bytes {begin}..{end} of {data_len}"
            )
        if end - begin != math.prod(shape) * dtype.itemsize:
            raise WeightsError(
                f"corrupt safetensors file {file}: tensor {name!r} of shape {shape} takes {end - begin} bytes"
            )
        stored[name] = _Stored(file, dtype, shape, data_start + begin, end - begin)
    return stored


def _read(stored: _Stored, name: str, offset: int, nbytes: int) -> bytearray:
    """`nbytes` from `offset` of the tensor's file, or a WeightsError if the file is gone or shorter now."""
    data = bytearray(nbytes)
    view = memoryview(data)
    try:
        with stored.file.open("rb", buffering=0) as handle:
            handle.seek(offset)
            got = 0
            while got < nbytes:
                n = handle.readinto(view[got:])
                if not n:
                    raise WeightsError(
                        f"corrupt safetensors file {stored.file}: cannot read {name!r}: the file ends at byte "
                        f"{offset + got}, before the tensor does (truncated or rewritten while loading?)"
                    )
                got += n
    except OSError as exc:
        raise WeightsError(f"corrupt safetensors file {stored.file}: cannot read {name!r}: {exc}") from exc
    return data


def expand(table: WeightTable, num_layers: int) -> dict[str, Source]:
    """Expand `{i}` templates over layers; entries without `{i}` pass through unchanged."""
    out: dict[str, Source] = {}
    for target, source in table.items():
        if "{i}" not in target:
            out[target] = source
            continue
        for i in range(num_layers):
            if isinstance(source, Fuse):
                out[target.format(i=i)] = Fuse(tuple(s.format(i=i) for s in source.sources), source.dim)
            elif isinstance(source, Rows):
                out[target.format(i=i)] = Rows(source.source.format(i=i), source.rows)
            else:
                out[target.format(i=i)] = source.format(i=i)
    return out


def prefixed(table: WeightTable, prefix: str) -> dict[str, Source]:
    """The same table with `prefix` in front of every checkpoint name (e.g. 'bert.')."""
    out: dict[str, Source] = {}
    for target, source in table.items():
        if isinstance(source, Fuse):
            out[target] = Fuse(tuple(prefix + s for s in source.sources), source.dim)
        elif isinstance(source, Rows):
            out[target] = Rows(prefix + source.source, source.rows)
        else:
            out[target] = prefix + source
    return out


def _sources(source: Source) -> tuple[str, ...]:
    if isinstance(source, Fuse):
        return source.sources
    return (source.source,) if isinstance(source, Rows) else (source,)


def _listing(names: Iterable[str], limit: int = 8) -> str:
    names = sorted(names)
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _check_fused_shapes(checkpoint: Checkpoint, source: Fuse, dest: tuple[int, ...], target: str, where: str) -> None:
    """Each fused part must be an equal slice of the destination, so errors name the culprit."""
    size = dest[source.dim] // len(source.sources)
    part = (*dest[: source.dim], size, *dest[source.dim + 1 :])
    for name in source.sources:
        shape = checkpoint.shape(name)
        if shape != part:
            raise WeightsError(
                f"checkpoint {where}: tensor {name!r} has shape {shape}, but {target} needs {part} from it"
            )


def load_weights(
    module: torch.nn.Module,
    checkpoint: Checkpoint,
    table: WeightTable,
    *,
    drop: Sequence[str] = (),
    where: str = "",
) -> None:
    """Fill every parameter and buffer of `module` from `checkpoint` through `table`, strictly."""
    state = module.state_dict(keep_vars=True)
    available = checkpoint.names()
    unmapped = sorted(set(state) - set(table))
    if unmapped:
        # A bug in a model's table, not in the checkpoint: say so plainly.
        raise WeightsError(f"weight table of {type(module).__name__} does not cover {_listing(unmapped)}")
    missing = sorted({s for target in state for s in _sources(table[target]) if s not in available})
    if missing:
        raise WeightsError(f"checkpoint {where} is missing tensors {_listing(missing)}")
    used = {s for target in state for s in _sources(table[target])}
    unexpected = [n for n in available - used if not any(fnmatch.fnmatchcase(n, p) for p in drop)]
    if unexpected:
        raise WeightsError(f"checkpoint {where} has unexpected tensors {_listing(unexpected)}")
    with torch.no_grad():
        for target, dest in state.items():
            source = table[target]
            if isinstance(source, Fuse):
                _check_fused_shapes(checkpoint, source, tuple(dest.shape), target, where)
            if isinstance(source, Rows):
                tensor = checkpoint.rows(source.source, source.rows)
            else:
                parts = [checkpoint.tensor(s) for s in _sources(source)]
                tensor = torch.cat(parts, dim=source.dim) if isinstance(source, Fuse) else parts[0]
            if tensor.is_floating_point() != dest.is_floating_point():
                raise WeightsError(
                    f"checkpoint {where}: tensor {_sources(source)} has dtype {tensor.dtype}, but {target} is {dest.dtype}"
                )
            if tuple(tensor.shape) != tuple(dest.shape):
                raise WeightsError(
                    f"checkpoint {where}: tensor {_sources(source)} has shape {tuple(tensor.shape)}, "
                    f"but {target} needs {tuple(dest.shape)}"
                )
            dest.copy_(tensor)
