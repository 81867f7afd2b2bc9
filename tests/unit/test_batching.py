"""The packed layout and the pure batch planner."""

from __future__ import annotations

import pytest
import torch

from remora.core.batch import pack
from remora.core.batcher import plan_batches


def test_pack_layout() -> None:
    batch = pack([[5, 6, 7], [8], [9, 10]], [[0, 0, 1], [0], [0, 1]])
    assert batch.input_ids.tolist() == [5, 6, 7, 8, 9, 10]
    assert batch.position_ids.tolist() == [0, 1, 2, 0, 0, 1]
    assert batch.token_type_ids.tolist() == [0, 0, 1, 0, 0, 1]
    assert batch.cu_seqlens.tolist() == [0, 3, 4, 6]
    assert batch.cu_seqlens.dtype == torch.int32
    assert batch.lengths == (3, 1, 2)
    assert batch.max_len == 3
    assert batch.num_tokens == 6
    assert batch.seq_index().tolist() == [0, 0, 0, 1, 2, 2]


def test_pack_refuses_empty() -> None:
    with pytest.raises(ValueError):
        pack([])
    with pytest.raises(ValueError):
        pack([[1], []])


def test_plan_respects_budget_and_covers_every_index() -> None:
    lengths = [5, 300, 12, 12, 80, 1, 256, 7]
    plan = plan_batches(lengths, max_tokens=300, max_seqs=3)
    flat = sorted(i for batch in plan for i in batch)
    assert flat == list(range(len(lengths)))
    for batch in plan:
        assert len(batch) <= 3
        assert len(batch) == 1 or sum(lengths[i] for i in batch) <= 300
    # Longest first, so each batch holds similar lengths.
    firsts = [lengths[b[0]] for b in plan]
    assert firsts == sorted(firsts, reverse=True)


def test_oversized_sequence_runs_alone() -> None:
    assert plan_batches([10, 1000, 10], max_tokens=100, max_seqs=8) == [[1], [0, 2]]


def test_plan_empty() -> None:
    assert plan_batches([], max_tokens=10, max_seqs=2) == []
