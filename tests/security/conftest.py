"""Fixtures for the security tests: tiny seeded models, a layout with a model root and places
outside it, and one hardened `remora serve` (model roots, an API key, small limits, its log
captured) shared by the modules that speak HTTP."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from tests.helpers import (
    save_tiny,
    save_tiny_bert_encoder,
    tiny_bert_config,
    write_json,
)
from tests.security.support import API_KEY, MAX_INPUTS, MAX_REQUEST_BYTES, Hardened
from tests.sidecar.server import ServerProcess


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny seeded BERT encoder (64-d, 128 positions) with MiniLM's WordPiece tokenizer."""
    return save_tiny_bert_encoder(tmp_path_factory.mktemp("security-tiny") / "model")


@pytest.fixture(scope="session")
def ce_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny seeded BERT cross-encoder (one label)."""
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(num_labels=1)).eval()
    return save_tiny(model, tmp_path_factory.mktemp("security-ce") / "model")


@pytest.fixture(scope="session")
def broken_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model that loads but fails in its forward pass: a 100-token embedding table behind a
    30522-token tokenizer (IndexError on any ordinary text)."""
    from transformers import BertModel

    torch.manual_seed(0)
    model = BertModel(tiny_bert_config(vocab_size=100), add_pooling_layer=False).eval()
    return save_tiny(model, tmp_path_factory.mktemp("security-broken") / "model")


@pytest.fixture(scope="session")
def hardened(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path, broken_dir: Path) -> Iterator[Hardened]:
    """`remora serve` with a model root, an API key, a 1 MiB body limit and 8 texts per request;
    models `tiny` and `broken` (fails in its forward pass) from a registry file."""
    base = tmp_path_factory.mktemp("hardened")
    root, outside = base / "root", base / "outside"
    shutil.copytree(tiny_dir, root / "tiny")
    shutil.copytree(broken_dir, root / "broken")
    shutil.copytree(tiny_dir, outside / "tiny")
    config = base / "models.yaml"
    write_json(config, {"default_model": "tiny", "models": [
        {"id": "tiny", "path": str(root / "tiny")},
        {"id": "broken", "path": str(root / "broken")},
    ]})
    env = {
        "REMORA_MODEL_ROOTS": str(root),
        "REMORA_API_KEY": API_KEY,
        "REMORA_MAX_REQUEST_BYTES": str(MAX_REQUEST_BYTES),
        "REMORA_MAX_INPUTS": str(MAX_INPUTS),
    }
    log = base / "server.log"
    server = ServerProcess(config=config, env=env, log=log).wait_healthy()
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=60) as client:
        yield Hardened(server, client, root, outside, config, log)
    assert server.stop() == 0, server.logs()
