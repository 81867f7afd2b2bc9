"""A text gives the same vector alone, inside a batch of mixed lengths, in any order and
whatever the batch split (<= 1e-5), on the real MiniLM weights."""

from __future__ import annotations

import random

import numpy as np
import pytest

from remora.core import Engine, EngineSettings
from remora.core.defaults import DEFAULT_MODEL_ID
from tests.texts import texts

TOL = 1e-5


@pytest.fixture(scope="module")
def sample() -> list[str]:
    corpus = texts(120, max_words=250)
    return corpus[::3]  # 40 texts, edge cases and lengths from 0 to ~320 tokens


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine()


@pytest.fixture(scope="module")
def batched(engine: Engine, sample: list[str]) -> np.ndarray:
    return engine.encode(DEFAULT_MODEL_ID, sample)


def test_alone_equals_batched(engine: Engine, sample: list[str], batched: np.ndarray) -> None:
    for index, text in enumerate(sample):
        alone = engine.encode(DEFAULT_MODEL_ID, [text])[0]
        assert np.abs(alone - batched[index]).max() <= TOL, f"text {index} differs alone vs batched"


def test_any_order(engine: Engine, sample: list[str], batched: np.ndarray) -> None:
    order = list(range(len(sample)))
    random.Random(3).shuffle(order)
    shuffled = engine.encode(DEFAULT_MODEL_ID, [sample[i] for i in order])
    assert np.abs(shuffled - batched[order]).max() <= TOL


@pytest.mark.parametrize("budget", [1, 300, 100_000])
def test_any_batch_split(sample: list[str], batched: np.ndarray, budget: int) -> None:
    """Budget 1 runs every text alone; 100k runs all of them in one forward pass."""
    engine = Engine(EngineSettings(max_batch_tokens=budget))
    assert np.abs(engine.encode(DEFAULT_MODEL_ID, sample) - batched).max() <= TOL


def test_duplicates_in_one_batch(engine: Engine, sample: list[str]) -> None:
    doubled = engine.encode(DEFAULT_MODEL_ID, sample[:10] + sample[:10])
    assert np.abs(doubled[:10] - doubled[10:]).max() <= TOL
