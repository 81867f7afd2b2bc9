"""The shared sidecar client every integration builds on, against a live sidecar: each output
equals what the native route returns, requests are batched without changing results, and every
failure (unknown model, wrong output, sidecar down) is a RemoraError that says why."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from remora.integrations.client import RemoraClient, RemoraError, RemoraUnavailable
from tests.integrations.conftest import DENSE, MULTIVECTOR, NER, RERANKER, SPARSE, Sidecar
from tests.sidecar.server import free_port

pytestmark = pytest.mark.integration

TEXTS = ["Remoras ride on sharks.", "x", "The stock market closed higher on Tuesday. " * 8, "中文 🦈"]


def native(sidecar: Sidecar, body: dict[str, object], route: str = "/v1/encode") -> dict[str, object]:
    response = httpx.post(f"{sidecar.url}{route}", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_dense_sparse_and_multivector_equal_the_native_route(sidecar: Sidecar, remora: RemoraClient) -> None:
    dense = remora.embed(TEXTS, model=DENSE, input_type="query")
    want = native(sidecar, {"model": DENSE, "inputs": TEXTS, "input_type": "query"})
    np.testing.assert_array_equal(np.array(dense), np.array(want["embeddings"]))
    assert len(dense[0]) == 384

    sparse = remora.embed_sparse(TEXTS, model=SPARSE)
    want = native(sidecar, {"model": SPARSE, "inputs": TEXTS, "outputs": ["sparse"]})
    assert [(v.indices, v.values) for v in sparse] == [(w["indices"], w["values"]) for w in want["sparse"]]  # type: ignore[union-attr]
    assert all(v.indices == sorted(set(v.indices)) and v.indices for v in sparse)

    multi = remora.embed_multivector(TEXTS, model=MULTIVECTOR, input_type="query")
    want = native(sidecar, {"model": MULTIVECTOR, "inputs": TEXTS, "outputs": ["multivector"], "input_type": "query"})
    assert multi == want["multivector"]


def test_batching_changes_nothing(sidecar: Sidecar) -> None:
    with RemoraClient(sidecar.url, api_key=None) as whole, RemoraClient(sidecar.url, api_key=None, batch_size=3) as small:
        texts = [f"passage number {i} about remoras" for i in range(7)]
        a, b = whole.encode(texts, model=DENSE), small.encode(texts, model=DENSE)
        assert a.dense is not None and b.dense is not None
        np.testing.assert_allclose(np.array(a.dense), np.array(b.dense), atol=1e-6, rtol=0)
        assert a.tokens == b.tokens > 0
        docs = [f"document {i}" for i in range(7)]
        np.testing.assert_allclose(whole.score("a query", docs), small.score("a query", docs), atol=1e-6)


def test_score_and_extract_follow_input_order(remora: RemoraClient, sidecar: Sidecar) -> None:
    docs = ["Remoras attach to sharks.", "Stock prices rose.", "Suckerfish follow whales."]
    scores = remora.score("which fish ride on sharks?", docs, model=RERANKER)
    want = native(sidecar, {"model": RERANKER, "query": "which fish ride on sharks?", "documents": docs}, "/v1/score")
    assert scores == want["scores"]
    cosine = remora.score("which fish ride on sharks?", docs, model=DENSE)
    assert cosine[0] > cosine[1]  # real MiniLM weights: the on-topic passage wins
    found = remora.extract(["Barack Obama visited Paris."], model=NER)
    assert len(found) == 1
    for entity in found[0]:
        assert "Barack Obama visited Paris."[entity.start : entity.end] == entity.text


def test_errors_say_which_sidecar_and_why(remora: RemoraClient, sidecar: Sidecar) -> None:
    with pytest.raises(RemoraError) as info:
        remora.embed(["x"], model="no-such-model")
    assert info.value.status == 404 and info.value.code == "MODEL_NOT_FOUND"
    assert sidecar.url in str(info.value) and "no-such-model" in str(info.value)
    with pytest.raises(RemoraError) as info:
        remora.embed_sparse(["x"], model=DENSE)  # a dense-only model has no sparse output
    assert info.value.status is not None and 400 <= info.value.status < 500
    with pytest.raises(TypeError):
        remora.embed("one string, not a list")  # type: ignore[arg-type]
    down = RemoraClient(f"http://127.0.0.1:{free_port()}", api_key=None, timeout=5)
    with pytest.raises(RemoraUnavailable) as unreachable:
        down.embed(["x"])
    assert unreachable.value.status is None and "unreachable" in str(unreachable.value)
    assert remora.embed([]) == []  # nothing to do: no request at all


def test_no_integration_imports_torch() -> None:
    """The integrations are HTTP clients: importing all of them loads neither torch nor the engine."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "import remora.integrations.client, remora.integrations.qdrant, remora.integrations.qdrant.edge\n"
        "import remora.integrations.chroma, remora.integrations.weaviate, remora.integrations.lancedb\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('remora.core')))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
