"""Fixtures: the embedded-default server, shared by the route tests of a module, and tiny seeded
models (an encoder and a one-label cross-encoder) built once per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.helpers import randomize_layernorms, save_tiny, save_tiny_bert_encoder, tiny_bert_config
from tests.sidecar.server import ServerProcess


@pytest.fixture(scope="session")
def default_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """`remora serve` with no config: the embedded MiniLM as the default model."""
    log = Path(tmp_path_factory.mktemp("default-server")) / "server.log"
    server = ServerProcess(log=log).wait_healthy()
    yield server
    assert server.stop() == 0, server.logs()


@pytest.fixture(scope="session")
def ce_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT cross-encoder with a seeded random one-label head."""
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(num_labels=1)).eval()
    randomize_layernorms(model, 0)
    with torch.no_grad():  # a freshly built head scores everything ~0.5: spread its logits
        model.classifier.weight.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(1))
    return save_tiny(model, tmp_path_factory.mktemp("ce") / "model")


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny seeded BERT encoder (64-d, mean pooling)."""
    return save_tiny_bert_encoder(tmp_path_factory.mktemp("tiny-encoder") / "model")
