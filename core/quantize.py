"""Output quantisation of float32 vectors [N, d] (dense rows, or one multi-vector matrix).

Schemes (`quantize(vectors, dtype)`):
- "float32": unchanged; "float16": a cast (round to nearest; |x| > 65504 becomes inf).
- "int8": per-vector symmetric: q = round(x / s), s = max|x| / 127 for that vector, so q is in
  [-127, 127] and 0 stays 0. `quantize_int8` also returns the scales [N] (x ~ q * s).
  Cosine similarity needs only q (a vector's scale cancels); dot products need s.
- "uint8": the same codes offset by 128 (q + 128, in [1, 255]): x ~ (u - 128) * s.
- "binary": sign bits (1 for x > 0) packed 8 per byte, big-endian within a byte (np.packbits),
  stored as int8 with an offset of -128; "ubinary": the same bytes as uint8. Bit-exact with
  sentence-transformers' quantize_embeddings; d not a multiple of 8 is zero-padded.

Why per-vector int8 rather than sentence-transformers' calibrated scheme: quantize_embeddings maps
each *dimension* through [min_d, max_d] ranges taken from calibration embeddings (or from the
batch being quantised) into 256 floor buckets, minus 128 for int8. Those ranges depend on what
else is in the batch, so a server using them would return different codes for the same text in
different requests, and it cannot quantise a single vector at all without stored ranges. The
per-vector scale depends only on the vector itself. When a deployment has calibration ranges,
`quantize(..., ranges=...)` reproduces sentence-transformers' codes exactly instead.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

QuantizeDtype = Literal["float32", "float16", "int8", "uint8", "binary", "ubinary"]
QUANTIZE_DTYPES: tuple[str, ...] = ("float32", "float16", "int8", "uint8", "binary", "ubinary")


def quantize(vectors: np.ndarray, dtype: QuantizeDtype, *, ranges: np.ndarray | None = None) -> np.ndarray:
    """[N, d] float -> [N, d] (float32 / float16 / int8 / uint8) or [N, ceil(d / 8)] (binary,
    ubinary). `ranges` [2, d] (per-dimension min and max, for int8 / uint8 only) selects
    sentence-transformers' calibrated scheme instead of the per-vector one."""
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected a [N, d] array, got shape {x.shape}")
    if ranges is not None and dtype not in ("int8", "uint8"):
        raise ValueError(f"ranges apply to int8 and uint8 only, not {dtype!r}")
    if dtype == "float32":
        return x
    if dtype == "float16":
        return x.astype(np.float16)
    if dtype in ("int8", "uint8"):
        if ranges is not None:
            return _calibrated(x, np.asarray(ranges, dtype=np.float32), dtype)
        codes, _ = quantize_int8(x)
        return codes if dtype == "int8" else (codes.astype(np.int16) + 128).astype(np.uint8)
    if dtype in ("binary", "ubinary"):
        bits = np.packbits(x > 0, axis=-1)  # [N, ceil(d / 8)] uint8
        return bits if dtype == "ubinary" else (bits.astype(np.int16) - 128).astype(np.int8)
    raise ValueError(f"unsupported dtype {dtype!r}; supported: {', '.join(QUANTIZE_DTYPES)}")


def quantize_int8(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[N, d] float -> (codes [N, d] int8 in [-127, 127], scales [N] float32); x ~ codes * scale.
    An all-zero vector gets scale 0 and codes 0."""
    x = np.asarray(vectors, dtype=np.float32)
    peak = np.abs(x).max(axis=-1) if x.shape[-1] else np.zeros(x.shape[:-1], np.float32)  # [N]
    scales = (peak / 127.0).astype(np.float32)
    safe = np.where(scales > 0, scales, 1.0)[..., None]
    codes = np.clip(np.rint(x / safe), -127, 127).astype(np.int8)
    return codes, scales


def dequantize_int8(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Inverse of `quantize_int8` (codes int8, or uint8 with the +128 offset) -> float32."""
    c = np.asarray(codes)
    values = c.astype(np.float32) - (128.0 if c.dtype == np.uint8 else 0.0)
    return values * np.asarray(scales, dtype=np.float32)[..., None]


def _calibrated(x: np.ndarray, ranges: np.ndarray, dtype: str) -> np.ndarray:
    """sentence-transformers' scheme: per dimension, floor((x - min) / ((max - min) / 255))."""
    if ranges.shape != (2, x.shape[1]):
        raise ValueError(f"ranges must be [2, {x.shape[1]}] (min and max per dimension), got {ranges.shape}")
    starts = ranges[0]
    steps = (ranges[1] - starts) / 255
    steps = np.where(steps == 0, 1, steps)
    buckets = np.clip(np.floor((x - starts) / steps), 0, 255)
    return buckets.astype(np.uint8) if dtype == "uint8" else (buckets - 128).astype(np.int8)
