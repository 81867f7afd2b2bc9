"""Every attention backend against the eager oracle on packed random inputs."""

from __future__ import annotations

import pytest
import torch

from remora.core.batch import pack
from remora.core.layers import attention as attn
from remora.core.layers.attention import BACKENDS, eager_attention, select_attention

CPU_BACKENDS = ("cpu", "sdpa")


def packed_qkv(lengths: list[int], heads: int = 4, dim: int = 16, seed: int = 0, dtype: torch.dtype = torch.float32, device: str = "cpu"):  # type: ignore[no-untyped-def]
    batch = pack([[1] * n for n in lengths]).to(device)
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch.num_tokens, heads, dim, generator=gen).to(device, dtype) for _ in range(3))
    return batch, q, k, v


def padded_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: list[int], scale: float, causal: bool) -> torch.Tensor:
    """Independent oracle: one plain softmax attention per sequence, built from the lengths alone."""
    outs, start = [], 0
    for n in lengths:
        qs, ks, vs = (x[start : start + n].double().transpose(0, 1) for x in (q, k, v))
        scores = qs @ ks.transpose(1, 2) * scale
        if causal:
            scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
        outs.append((scores.softmax(-1) @ vs).transpose(0, 1))
        start += n
    return torch.cat(outs).float()


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("lengths", [[5], [1, 1, 1], [3, 17, 1, 64, 8], [32, 32, 32]])
def test_eager_matches_independent_oracle(lengths: list[int], causal: bool) -> None:
    batch, q, k, v = packed_qkv(lengths)
    got = eager_attention(q, k, v, batch, scale=0.25, causal=causal)
    torch.testing.assert_close(got, padded_reference(q, k, v, lengths, 0.25, causal), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("lengths", [[5], [1, 1, 1], [3, 17, 1, 64, 8], [32, 32, 32], [200, 3]])
def test_cpu_backends_match_eager(backend: str, lengths: list[int], causal: bool) -> None:
    batch, q, k, v = packed_qkv(lengths)
    expected = eager_attention(q, k, v, batch, scale=0.25, causal=causal)
    got = BACKENDS[backend](q, k, v, batch, scale=0.25, causal=causal)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # The backend scratch cached on the batch must give the same answer when reused by a later layer.
    torch.testing.assert_close(BACKENDS[backend](q, k, v, batch, scale=0.25, causal=causal), expected, atol=1e-5, rtol=1e-5)


def test_cpu_backend_long_sequence_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sequences past LONG_SEQUENCE go through SDPA's blockwise kernel; same answer."""
    monkeypatch.setattr(attn, "LONG_SEQUENCE", 16)
    batch, q, k, v = packed_qkv([40, 8, 17])
    for causal in (False, True):
        expected = eager_attention(q, k, v, batch, scale=0.3, causal=causal)
        torch.testing.assert_close(attn.cpu_attention(q, k, v, batch, scale=0.3, causal=causal), expected, atol=1e-5, rtol=1e-5)


def test_selection() -> None:
    cpu = torch.device("cpu")
    assert select_attention(cpu).name == "cpu"
    assert select_attention(cpu, "eager").name == "eager"
    with pytest.raises(ValueError, match="cannot run"):
        select_attention(cpu, "flash")
    with pytest.raises(ValueError, match="unknown attention backend"):
        select_attention(cpu, "bogus")
    cuda = torch.device("cuda")
    assert select_attention(cuda, probe=lambda n: True).name == "flash"
    assert select_attention(cuda, probe=lambda n: n != "flash").name == "torch_varlen"
    assert select_attention(cuda, probe=lambda n: n in ("sdpa", "eager")).name == "sdpa"


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["torch_varlen", "sdpa", "flash"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_backends_match_eager(backend: str, dtype: torch.dtype) -> None:
    device = torch.device("cuda")
    try:
        chosen = select_attention(device, backend)
    except ValueError:
        pytest.skip(f"{backend} not available on this CUDA machine")
    for causal in (False, True):
        batch, q, k, v = packed_qkv([3, 17, 1, 64, 8, 300], heads=8, dim=64, dtype=dtype, device="cuda")
        expected = eager_attention(q, k, v, batch, scale=0.125, causal=causal)
        got = chosen(q, k, v, batch, scale=0.125, causal=causal)
        torch.testing.assert_close(got.float(), expected.float(), atol=2e-2, rtol=2e-2)


def windowed_gqa_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: list[int], scale: float, causal: bool, window: tuple[int, int] | None
) -> torch.Tensor:
    """Independent oracle for grouped-query heads and sliding windows, one query at a time."""
    groups = q.shape[1] // k.shape[1]
    outs, start = [], 0
    for n in lengths:
        for i in range(n):
            lo, hi = 0, n - 1
            if window is not None:
                lo, hi = max(lo, i - window[0]), min(hi, i + window[1])
            if causal:
                hi = min(hi, i)
            rows = []
            for h in range(q.shape[1]):
                qi = q[start + i, h].double()
                ks = k[start + lo : start + hi + 1, h // groups].double()
                vs = v[start + lo : start + hi + 1, h // groups].double()
                rows.append((ks @ qi * scale).softmax(-1) @ vs)
            outs.append(torch.stack(rows))
        start += n
    return torch.stack(outs).float()


@pytest.mark.parametrize("backend", [*CPU_BACKENDS, "eager"])
@pytest.mark.parametrize(("causal", "window"), [(False, None), (True, None), (False, (3, 3)), (True, (4, 0)), (False, (0, 6))])
@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_grouped_query_and_window(backend: str, causal: bool, window: tuple[int, int] | None, kv_heads: int) -> None:
    lengths = [9, 1, 20, 4]
    batch, q, _, _ = packed_qkv(lengths)
    gen = torch.Generator().manual_seed(1)
    k, v = (torch.randn(batch.num_tokens, kv_heads, 16, generator=gen) for _ in range(2))
    expected = windowed_gqa_reference(q, k, v, lengths, 0.25, causal, window)
    got = BACKENDS[backend](q, k, v, batch, scale=0.25, causal=causal, window=window)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_window_on_long_sequence_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(attn, "LONG_SEQUENCE", 16)
    lengths = [40, 8]
    batch, q, k, v = packed_qkv(lengths)
    expected = windowed_gqa_reference(q, k, v, lengths, 0.3, False, (5, 5))
    torch.testing.assert_close(attn.cpu_attention(q, k, v, batch, scale=0.3, window=(5, 5)), expected, atol=1e-5, rtol=1e-5)
