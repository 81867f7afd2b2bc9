"""One live sidecar for every database integration test, and the models it serves.

By default a real `remora serve` process is started with a registry of:

- `minilm`: the real all-MiniLM-L6-v2 weights (dense; the default model), so nearest neighbours
  and cosine reranking mean something;
- `splade`: a tiny seeded SPLADE (sparse), `colbert`: a tiny seeded PyLate ColBERT (multi-vector),
  `reranker`: a tiny seeded one-label cross-encoder (the default reranker), `ner`: a tiny seeded
  BERT token classifier (the default extractor).

`REMORA_URL=http://host:port` points the tests at a running sidecar instead; it must serve the
same model ids (the registry this fixture writes, `sidecar-models.json` in the test's temporary
directory, is a template).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from remora.integrations.client import RemoraClient
from tests.helpers import minilm_dir, randomize_layernorms, save_tiny, tiny_bert_config, write_json
from tests.sidecar.server import ServerProcess
from tests.zoo_models import build_bert_ner, build_pylate, build_splade

DENSE, SPARSE, MULTIVECTOR, RERANKER, NER = "minilm", "splade", "colbert", "reranker", "ner"


@dataclass(frozen=True)
class Sidecar:
    url: str
    server: ServerProcess | None  # None when REMORA_URL names an external one
    dirs: dict[str, Path]  # model id -> its directory (empty for an external sidecar)

    def client(self) -> RemoraClient:
        return RemoraClient(self.url, api_key=None)


def build_cross_encoder(target: Path, seed: int = 0) -> Path:
    """A tiny BERT cross-encoder with a seeded random one-label head."""
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    model = BertForSequenceClassification(tiny_bert_config(num_labels=1)).eval()
    randomize_layernorms(model, seed)
    with torch.no_grad():  # a freshly built head scores everything ~0.5: spread its logits
        model.classifier.weight.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(seed + 1))
    return save_tiny(model, target)


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("integration-models")
    return {
        DENSE: minilm_dir(),
        SPARSE: build_splade(root / SPARSE),
        MULTIVECTOR: build_pylate(root / MULTIVECTOR),
        RERANKER: build_cross_encoder(root / RERANKER),
        NER: build_bert_ner(root / NER),
    }


@pytest.fixture(scope="session")
def sidecar(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    external = os.environ.get("REMORA_URL")
    if external:
        yield Sidecar(external.rstrip("/"), None, {})
        return
    dirs: dict[str, Path] = request.getfixturevalue("model_dirs")
    root = tmp_path_factory.mktemp("integration-sidecar")
    config = root / "sidecar-models.json"
    write_json(config, {  # JSON is YAML
        "default_model": DENSE,
        "default_reranker": RERANKER,
        "default_extractor": NER,
        "models": [{"id": name, "path": str(path)} for name, path in dirs.items()],
    })
    server = ServerProcess(config=config, log=root / "server.log").wait_healthy()
    try:
        yield Sidecar(server.url, server, dirs)
    finally:
        assert server.stop() == 0, server.logs()


@pytest.fixture
def remora(sidecar: Sidecar) -> Iterator[RemoraClient]:
    with sidecar.client() as client:
        yield client
