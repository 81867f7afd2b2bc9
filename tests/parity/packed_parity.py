"""Shared steps of the rotary-family parity tests (ModernBERT, NomicBERT, GTE): transformers on a
right-padded batch vs Remora's packed forward, compared sequence by sequence."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import torch

from remora.core import Engine, EngineSettings
from remora.core.batch import pack


def random_ids(lengths: list[int], *, seed: int, low: int = 1000, high: int = 30000) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(low, high, (n,), generator=gen).tolist() for n in lengths]


def pair_types(lengths: list[int]) -> list[list[int]]:
    """Segment ids as a pair would have them: 0 for the first half, 1 for the rest."""
    return [[0] * (n // 2) + [1] * (n - n // 2) for n in lengths]


def padded(ids: list[list[int]], types: list[list[int]] | None) -> dict[str, torch.Tensor]:
    longest = max(map(len, ids))
    names = ("input_ids", "attention_mask") + (("token_type_ids",) if types is not None else ())
    features = {name: torch.zeros(len(ids), longest, dtype=torch.long) for name in names}
    for row, seq in enumerate(ids):
        features["input_ids"][row, : len(seq)] = torch.tensor(seq)
        features["attention_mask"][row, : len(seq)] = 1
        if types is not None:
            features["token_type_ids"][row, : len(seq)] = torch.tensor(types[row])
    return features


def reference_outputs(
    model: Any, ids: list[list[int]], types: list[list[int]] | None, *, logits: bool = False
) -> list[torch.Tensor]:
    """transformers' last hidden states (or per-token logits), cut back to each sequence's tokens."""
    with torch.no_grad():
        out = model(**padded(ids, types))
    full = out.logits if logits else out.last_hidden_state
    return [full[row, : len(seq)] for row, seq in enumerate(ids)]


def loaded(path: Path, backend: str = "auto", *, device: str = "cpu", dtype: str = "auto") -> Engine:
    """An engine holding the model at `path` as "m"."""
    settings = EngineSettings(attention=backend, device=device, register_defaults=False, num_threads=1)  # type: ignore[arg-type]
    engine = Engine(settings)
    engine.register("m", path, dtype=dtype)
    return engine


def remora_forward(
    engine: Engine, ids: list[list[int]], types: list[list[int]] | None, *, head: bool = False
) -> list[torch.Tensor]:
    """Per-sequence hidden states (or token-head logits) [n, width] from one packed batch."""
    module = engine.model("m").module
    batch = pack(ids, types).to(next(module.parameters()).device)
    with torch.inference_mode():
        out = module.encoder(batch)
        if head:
            out = module.head(out, batch)
    out = out.float().cpu()
    return [out[s:e] for s, e in itertools.pairwise(batch.cu_seqlens.tolist())]


def assert_per_sequence(got: list[torch.Tensor], expected: list[torch.Tensor], atol: float) -> float:
    """Every sequence within `atol`; returns the worst absolute difference seen."""
    worst = 0.0
    for index, (g, e) in enumerate(zip(got, expected, strict=True)):
        torch.testing.assert_close(
            g.float(), e.float(), atol=atol, rtol=0, msg=lambda m, i=index: f"sequence {i}: {m}"
        )
        worst = max(worst, float((g.float() - e.float()).abs().max()))
    return worst


def assert_batch_invariant(
    engine: Engine, ids: list[list[int]], types: list[list[int]] | None, atol: float
) -> None:
    """A sequence's hidden states do not depend on what it is batched with, or in which order."""
    batched = remora_forward(engine, ids, types)
    alone = [
        remora_forward(engine, [seq], None if types is None else [types[i]])[0] for i, seq in enumerate(ids)
    ]
    order = list(reversed(range(len(ids))))
    order[0], order[-1] = order[-1], order[0]
    reordered = remora_forward(
        engine, [ids[i] for i in order], None if types is None else [types[i] for i in order]
    )
    assert_per_sequence(alone, batched, atol)
    assert_per_sequence(reordered, [batched[i] for i in order], atol)


def perturb(
    model: torch.nn.Module, seed: int, *, names: tuple[str, ...] = ("norm", "LayerNorm", "_ln", "ln.")
) -> None:
    """Fresh models have norm weights 1 and biases 0; perturb norms and biases so parity sees them."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias") or any(n in name for n in names):
                param.add_(torch.randn(param.shape, generator=gen) * 0.1)


def pair_logits(model: Any, path: Path, pairs: list[tuple[str, str]], *, types: bool) -> np.ndarray:
    """transformers' classifier logits on pairs tokenized by the model directory's tokenizer (128
    tokens at most, as the tiny configs hold); without `types` the segment ids are left out."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    features = tokenizer(
        [q for q, _ in pairs],
        [d for _, d in pairs],
        padding=True,
        truncation=True,
        max_length=128,
        return_tensors="pt",
    )
    if not types:
        features.pop("token_type_ids", None)
    with torch.no_grad():
        return np.asarray(model(**features).logits.numpy())
