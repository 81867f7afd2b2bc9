"""Fixtures shared by the unit tests: a tiny seeded BERT directory, and private copies of it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.helpers import randomize_layernorms, save_tiny, tiny_bert_config


@pytest.fixture(scope="session")
def tiny_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import BertModel

    torch.manual_seed(0)
    model = BertModel(tiny_bert_config())
    randomize_layernorms(model)
    return save_tiny(model.eval(), tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def tiny(tiny_src: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny model directory that a test may break."""
    target = tmp_path / "model"
    shutil.copytree(tiny_src, target)
    return target


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a module whose tests run models from several threads at once."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
