"""Output quantisation: bit-exact with sentence-transformers' quantize_embeddings where the schemes
are the same (binary, ubinary, int8/uint8 with calibration ranges); round-trip bounds otherwise.

Bounds: per-vector int8 reconstructs every element within half a step (max|x| / 254) of the
input; float16 within its half-ulp (relative 2^-11) for normal values.
"""

from __future__ import annotations

import numpy as np
import pytest

from remora.core.quantize import dequantize_int8, quantize, quantize_int8


def vectors(n: int = 50, d: int = 37, seed: int = 0) -> np.ndarray:
    gen = np.random.default_rng(seed)
    x = gen.normal(size=(n, d)).astype(np.float32) * gen.uniform(0.01, 10, size=(n, 1)).astype(np.float32)
    x[0] = 0.0  # an all-zero vector
    x[1, :5] = 0.0  # exact zeros are not positive bits
    return x


@pytest.mark.parametrize("dtype", ["binary", "ubinary"])
@pytest.mark.parametrize("d", [8, 37, 64])
def test_binary_bit_exact_with_sentence_transformers(dtype: str, d: int) -> None:
    from sentence_transformers import quantize_embeddings

    x = vectors(d=d)
    got = quantize(x, dtype)  # type: ignore[arg-type]
    expected = quantize_embeddings(x, precision=dtype)
    assert got.dtype == expected.dtype == (np.int8 if dtype == "binary" else np.uint8)
    assert got.shape == (len(x), (d + 7) // 8)
    np.testing.assert_array_equal(got, expected)


def test_binary_bits_are_signs() -> None:
    x = np.array([[1.0, -1.0, 0.0, 2.0, -0.5, 3.0, 0.0, 1e-9, -2.0]], np.float32)
    packed = quantize(x, "ubinary")
    np.testing.assert_array_equal(np.unpackbits(packed, axis=-1)[:, :9], [[1, 0, 0, 1, 0, 1, 0, 1, 0]])
    assert quantize(x, "binary")[0, 0] == int(packed[0, 0]) - 128


@pytest.mark.parametrize("dtype", ["int8", "uint8"])
def test_calibrated_int8_matches_sentence_transformers(dtype: str) -> None:
    from sentence_transformers import quantize_embeddings

    calibration = vectors(n=200, seed=1)
    ranges = np.vstack([calibration.min(axis=0), calibration.max(axis=0)])
    x = vectors(seed=2)
    expected = quantize_embeddings(x, precision=dtype, calibration_embeddings=calibration)
    np.testing.assert_array_equal(quantize(x, dtype, ranges=ranges), expected)  # type: ignore[arg-type]


def test_per_vector_int8_round_trip() -> None:
    x = vectors()
    codes, scales = quantize_int8(x)
    assert codes.dtype == np.int8 and scales.dtype == np.float32 and scales.shape == (len(x),)
    assert codes.min() >= -127 and codes.max() <= 127
    peaks = np.abs(x).max(axis=1)
    np.testing.assert_allclose(np.abs(codes[1:]).max(axis=1), 127)  # each vector uses the full range
    error = np.abs(dequantize_int8(codes, scales) - x).max(axis=1)
    assert np.all(error <= peaks / 254 * (1 + 1e-5) + 1e-12)
    assert not codes[0].any() and scales[0] == 0  # zero vector: zero codes, no NaN
    np.testing.assert_array_equal(quantize(x, "int8"), codes)


def test_per_vector_int8_keeps_cosine() -> None:
    x = vectors()[1:]
    codes, _ = quantize_int8(x)
    def cos(a: np.ndarray) -> np.ndarray:
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        return a @ a.T
    assert np.abs(cos(codes.astype(np.float32)) - cos(x)).max() < 0.02


def test_per_vector_int8_does_not_depend_on_the_batch() -> None:
    x = vectors()
    alone = np.concatenate([quantize(x[i : i + 1], "int8") for i in range(len(x))])
    np.testing.assert_array_equal(alone, quantize(x, "int8"))


def test_uint8_is_int8_offset() -> None:
    x = vectors()
    codes, scales = quantize_int8(x)
    unsigned = quantize(x, "uint8")
    assert unsigned.dtype == np.uint8
    np.testing.assert_array_equal(unsigned.astype(np.int16) - 128, codes)
    np.testing.assert_allclose(dequantize_int8(unsigned, scales), dequantize_int8(codes, scales))


def test_float16_and_float32() -> None:
    x = vectors()
    half = quantize(x, "float16")
    assert half.dtype == np.float16
    assert np.all(np.abs(half.astype(np.float32) - x) <= np.abs(x) * 2.0**-11 + 2.0**-25)
    same = quantize(x, "float32")
    assert same.dtype == np.float32
    np.testing.assert_array_equal(same, x)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="supported"):
        quantize(vectors(), "int4")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\[N, d\]"):
        quantize(np.zeros(4, np.float32), "int8")
    with pytest.raises(ValueError, match="ranges"):
        quantize(vectors(), "binary", ranges=np.zeros((2, 37)))


def test_empty_matrix() -> None:
    """A document with no token vectors left (all punctuation) quantises to an empty matrix."""
    empty = np.zeros((0, 16), np.float32)
    assert quantize(empty, "int8").shape == (0, 16)
    assert quantize(empty, "binary").shape == (0, 2)
