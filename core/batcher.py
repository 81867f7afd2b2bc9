"""Pure batch planning: group sequences into forward passes under a token budget."""

from __future__ import annotations

from collections.abc import Sequence


def plan_batches(lengths: Sequence[int], *, max_tokens: int, max_seqs: int) -> list[list[int]]:
    """Indices of `lengths` grouped into batches, longest first.

    A batch holds at most `max_seqs` sequences and `max_tokens` real tokens (execution is
    unpadded, so padding is not counted); a sequence longer than the budget runs alone.
    Sorting by length keeps the attention backends that pad internally close to padding-free.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    tokens = 0
    for index in order:
        n = lengths[index]
        if current and (tokens + n > max_tokens or len(current) >= max_seqs):
            batches.append(current)
            current, tokens = [], 0
        current.append(index)
        tokens += n
    if current:
        batches.append(current)
    return batches
