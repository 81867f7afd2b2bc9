"""Pooling on the packed layout vs sentence-transformers' Pooling module on the padded one."""

from __future__ import annotations

import pytest
import torch

from remora.core.batch import pack
from remora.core.heads.pooling import POOLING_MODES, Pooler, normalize

LENGTHS = [4, 1, 9, 6]
HIDDEN = 8


def inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Packed hidden [T, h], and the same as padded [B, L, h] with its attention mask."""
    gen = torch.Generator().manual_seed(seed)
    packed = torch.randn(sum(LENGTHS), HIDDEN, generator=gen)
    padded = torch.zeros(len(LENGTHS), max(LENGTHS), HIDDEN)
    mask = torch.zeros(len(LENGTHS), max(LENGTHS), dtype=torch.long)
    start = 0
    for row, n in enumerate(LENGTHS):
        padded[row, :n] = packed[start : start + n]
        mask[row, :n] = 1
        start += n
    return packed, padded, mask


def st_pool(modes: tuple[str, ...], padded: torch.Tensor, mask: torch.Tensor, prompt_length: int | None) -> torch.Tensor:
    from sentence_transformers.models import Pooling

    module = Pooling(HIDDEN, pooling_mode=modes if len(modes) > 1 else modes[0], include_prompt=prompt_length is None)
    features = {"token_embeddings": padded, "attention_mask": mask}
    if prompt_length is not None:
        features["prompt_length"] = prompt_length
    return module(features)["sentence_embedding"]


@pytest.mark.parametrize("mode", POOLING_MODES)
@pytest.mark.parametrize("prompt_length", [None, 2])
def test_each_mode_matches_sentence_transformers(mode: str, prompt_length: int | None) -> None:
    packed, padded, mask = inputs()
    batch = pack([[1] * n for n in LENGTHS])
    pooler = Pooler((mode,), include_prompt=prompt_length is None)
    got = pooler(packed, batch, prompt_len=prompt_length or 0)
    expected = st_pool((mode,), padded, mask, prompt_length)
    if prompt_length is not None:
        # A sequence made only of prompt tokens has nothing to pool; each side then holds a
        # sentinel that no caller uses. Compare the sequences that have content.
        keep = torch.tensor(LENGTHS) > prompt_length
        got, expected = got[keep], expected[keep]
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    assert got.dtype == torch.float32


def test_concatenated_modes_in_order() -> None:
    packed, padded, mask = inputs(1)
    batch = pack([[1] * n for n in LENGTHS])
    modes = ("cls", "mean", "max")
    got = Pooler(modes)(packed, batch)
    assert got.shape == (len(LENGTHS), 3 * HIDDEN)
    torch.testing.assert_close(got, st_pool(modes, padded, mask, None), atol=1e-6, rtol=1e-6)


def test_low_precision_accumulates_in_fp32() -> None:
    packed, _, _ = inputs(2)
    batch = pack([[1] * n for n in LENGTHS])
    half = Pooler(("mean",))(packed.bfloat16(), batch)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, Pooler(("mean",))(packed.bfloat16().float(), batch))


def test_unknown_mode() -> None:
    with pytest.raises(ValueError, match="unsupported pooling"):
        Pooler(("median",))


def test_normalize_unit_rows_and_zero_safe() -> None:
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    torch.testing.assert_close(normalize(x), torch.tensor([[0.6, 0.8], [0.0, 0.0]]))
