"""Multi-vector outputs: ColBERT (PyLate layout, Stanford HF_ColBERT) and BGE-M3, on tiny seeded models.

Reference: an oracle written here from transformers' hidden states (padded batches with HF's
attention mask) and PyLate 1.6's / FlagEmbedding 1.4's formulas: PyLate's tokenization ([Q]/[D]
token after [CLS], queries cut to query_length - 1 and padded with [MASK], the [MASK] tokens'
attention_mask 0 unless attend_to_expansion_tokens), Dense, skip-list on documents only, L2
normalisation; BGE-M3's relu(sparse_linear) max per token id without cls/eos/pad/unk and
normalize(colbert_linear(h[1:])). PyLate itself is not installed (it pins other
sentence-transformers / transformers versions); sentence-transformers' MultiVectorEncoder, which
loads PyLate directories, is a second reference.

Tolerances (fp32, CPU): every token vector within atol 1e-5, identical token counts; sparse
weights within 1e-5 with identical index sets; MaxSim scores within 1e-4. CUDA: 3e-2 (fp16).
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from remora.core import Engine, EngineSettings
from remora.core.errors import InputTooLong
from remora.core.heads.multivector import maxsim
from tests.helpers import (
    write_json,
)
from tests.zoo_models import COLBERT_DIM as DIM
from tests.zoo_models import COLBERT_DOCUMENT_LENGTH as DOCUMENT_LENGTH
from tests.zoo_models import COLBERT_QUERY_LENGTH as QUERY_LENGTH
from tests.zoo_models import bert_with_tokens, build_bge_m3, build_pylate

ATOL = 1e-5
QUERIES = ["what is a remora?", "fish", "Why do remoras, sharks and rays swim together " * 6, "中文 🦈"]
DOCUMENTS = [
    "Remoras, also called suckerfish, attach to sharks!",
    "x",
    "...!!!",  # nothing but skip-list tokens
    "The quick brown fox jumps over the lazy dog; pack my box. " * 8,  # truncated
]
VARIANTS: dict[str, dict[str, Any]] = {
    "hidden_expansion": {"attend_to_expansion_tokens": False, "do_query_expansion": True},
    "attended_expansion": {"attend_to_expansion_tokens": True, "do_query_expansion": True},
    "no_expansion": {"attend_to_expansion_tokens": False, "do_query_expansion": False},
}


# -- building the directories -------------------------------------------------------------------


def build_stanford(target: Path, seed: int = 0) -> Path:
    """Stanford's HF_ColBERT: BERT under `bert.` + `linear.weight`, settings in artifact.metadata."""
    target.mkdir(parents=True)
    bert_with_tokens(target, [], seed)
    weights = {f"bert.{k}": v for k, v in load_file(str(target / "model.safetensors")).items()}
    weights["linear.weight"] = torch.randn(DIM, 64, generator=torch.Generator().manual_seed(seed + 1)) * 0.2
    save_file(weights, str(target / "model.safetensors"))
    config = json.loads((target / "config.json").read_text())
    write_json(target / "config.json", {**config, "architectures": ["HF_ColBERT"]})
    write_json(target / "artifact.metadata", {
        "query_token_id": "[unused0]", "doc_token_id": "[unused1]", "query_maxlen": QUERY_LENGTH,
        "doc_maxlen": DOCUMENT_LENGTH, "mask_punctuation": True, "attend_to_mask_tokens": False,
    })
    return target


# -- the oracle ---------------------------------------------------------------------------------


def colbert_oracle(model_dir: Path, texts: list[str], *, is_query: bool, settings: dict[str, Any],
                   prefixes: tuple[str, str], projection: torch.Tensor) -> list[np.ndarray]:
    """PyLate's ColBERT.tokenize + encode, from transformers' BertModel."""
    from transformers import AutoTokenizer, BertModel

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    tokenizer.pad_token = tokenizer.mask_token  # PyLate pads with [MASK]
    expand = settings["do_query_expansion"]
    attend = expand and settings["attend_to_expansion_tokens"]
    prefix_id = tokenizer.convert_tokens_to_ids(prefixes[0] if is_query else prefixes[1])
    length = QUERY_LENGTH if is_query else DOCUMENT_LENGTH
    padding: Any = "max_length" if is_query and expand else True
    enc = tokenizer(texts, padding=padding, truncation=True, max_length=length - 1, return_tensors="pt")

    def insert(x: torch.Tensor, value: int) -> torch.Tensor:
        return torch.cat([x[:, :1], torch.full((len(x), 1), value, dtype=x.dtype), x[:, 1:]], dim=1)

    ids, mask, types = insert(enc["input_ids"], prefix_id), insert(enc["attention_mask"], 1), insert(enc["token_type_ids"], 0)
    if is_query and attend:
        mask.fill_(1)
    model = BertModel.from_pretrained(str(model_dir), add_pooling_layer=False).eval()
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
    projected = hidden @ projection.T  # [B, L, d]
    if is_query:
        keep = torch.ones_like(mask, dtype=torch.bool) if expand else mask.bool()
    else:
        skip = torch.tensor(tokenizer.convert_tokens_to_ids(list(string.punctuation)))
        keep = mask.bool() & ~torch.isin(ids, skip)
    return [torch.nn.functional.normalize(projected[i][keep[i]], dim=-1).numpy() for i in range(len(texts))]


def assert_vectors(got: list[np.ndarray], expected: list[np.ndarray], atol: float = ATOL) -> float:
    worst = 0.0
    assert len(got) == len(expected)
    for index, (g, e) in enumerate(zip(got, expected, strict=True)):
        assert g.dtype == np.float32 and g.shape == e.shape, (index, g.shape, e.shape)
        if len(e):
            worst = max(worst, float(np.abs(g - e).max()))
    assert worst <= atol, worst
    return worst


def engine_for(model_dir: Path, **settings: Any) -> Engine:
    engine = Engine(EngineSettings(register_defaults=False, device="cpu", **settings))
    engine.register("mv", model_dir)
    return engine


def multivector(engine: Engine, texts: list[str], *, is_query: bool) -> list[np.ndarray]:
    encoded = engine.encode_outputs("mv", texts, outputs=("multivector",), is_query=is_query)
    assert encoded.multivector is not None and encoded.dense is None
    return encoded.multivector


@pytest.fixture(scope="module", params=list(VARIANTS))
def pylate_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    settings = VARIANTS[request.param]
    target = build_pylate(tmp_path_factory.mktemp("colbert") / request.param, **settings)
    projection = load_file(str(target / "1_Dense" / "model.safetensors"))["linear.weight"]
    oracle = {
        is_query: colbert_oracle(target, QUERIES if is_query else DOCUMENTS, is_query=is_query, settings=settings,
                                 prefixes=("[Q] ", "[D] "), projection=projection)
        for is_query in (True, False)
    }
    return {"variant": request.param, "dir": target, "oracle": oracle}


# -- PyLate ColBERT -------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["eager", "cpu", "sdpa"])
def test_pylate_colbert_matches_oracle(pylate_model: dict[str, Any], backend: str) -> None:
    engine = engine_for(pylate_model["dir"], attention=backend)
    assert engine.model("mv").outputs == ("multivector",)
    assert_vectors(multivector(engine, QUERIES, is_query=True), pylate_model["oracle"][True])
    assert_vectors(multivector(engine, DOCUMENTS, is_query=False), pylate_model["oracle"][False])


def test_queries_and_documents_in_one_packed_batch(pylate_model: dict[str, Any]) -> None:
    """The scheduler may pack queries with documents: expansion is hidden only where it exists."""
    model = engine_for(pylate_model["dir"]).model("mv")
    queries = model.prepare_encode(QUERIES, is_query=True, outputs=("multivector",)).tokens
    documents = model.prepare_encode(DOCUMENTS, is_query=False, outputs=("multivector",)).tokens
    order = [3, 0, 5, 1, 6, 2, 7, 4]  # interleaved
    ids = queries.ids + documents.ids
    types = queries.type_ids + documents.type_ids
    rows = model.forward("encode", [ids[i] for i in order], [types[i] for i in order], [0] * 8, ("multivector",))
    expected = pylate_model["oracle"][True] + pylate_model["oracle"][False]
    assert_vectors(rows["multivector"], [expected[i] for i in order])


def test_sentence_transformers_multivector_encoder_agrees(pylate_model: dict[str, Any]) -> None:
    from sentence_transformers import MultiVectorEncoder

    reference = MultiVectorEncoder(str(pylate_model["dir"]), device="cpu")
    engine = engine_for(pylate_model["dir"])
    queries = list(reference.encode_query(QUERIES, convert_to_numpy=True))
    documents = list(reference.encode_document(DOCUMENTS, convert_to_numpy=True))
    assert_vectors(multivector(engine, QUERIES, is_query=True), queries)
    assert_vectors(multivector(engine, DOCUMENTS, is_query=False), documents)


def test_score_is_maxsim_of_query_and_documents(pylate_model: dict[str, Any]) -> None:
    engine = engine_for(pylate_model["dir"])
    query = pylate_model["oracle"][True][0]
    expected = [maxsim(query, doc) for doc in pylate_model["oracle"][False]]
    np.testing.assert_allclose(engine.score("mv", QUERIES[0], DOCUMENTS), expected, atol=1e-4)


def test_query_length_and_truncation(tmp_path: Path) -> None:
    engine = engine_for(build_pylate(tmp_path / "c", **VARIANTS["hidden_expansion"]))
    model = engine.model("mv")
    tokens = model.prepare_encode(["fish", QUERIES[2]], is_query=True, outputs=("multivector",)).tokens
    assert [len(t) for t in tokens.ids] == [QUERY_LENGTH, QUERY_LENGTH]
    assert tokens.ids[0][:2] == [101, 30522] and tokens.ids[0][-1] == 103  # [CLS] [Q] ... [MASK]
    docs = model.prepare_encode(["fish", DOCUMENTS[3]], outputs=("multivector",)).tokens
    assert docs.ids[0] == [101, 30523, 3869, 102] and len(docs.ids[1]) == DOCUMENT_LENGTH
    with pytest.raises(InputTooLong):
        engine.encode_outputs("mv", [DOCUMENTS[3]], outputs=("multivector",), truncate=False)


def test_maxsim() -> None:
    gen = np.random.default_rng(0)
    query, document = gen.normal(size=(5, 8)), gen.normal(size=(11, 8))
    brute = sum(max(float(q @ d) for d in document) for q in query)
    assert maxsim(query, document) == pytest.approx(brute)
    assert maxsim(query, document[:0]) == 0.0 and maxsim(query[:0], document) == 0.0


# -- Stanford HF_ColBERT ---------------------------------------------------------------------------


def test_stanford_hf_colbert_as_pylate_reads_it(tmp_path: Path) -> None:
    target = build_stanford(tmp_path / "stanford")
    projection = load_file(str(target / "model.safetensors"))["linear.weight"]
    settings = {"do_query_expansion": True, "attend_to_expansion_tokens": False}
    engine = engine_for(target)
    for is_query, texts in ((True, QUERIES), (False, DOCUMENTS)):
        expected = colbert_oracle(target, texts, is_query=is_query, settings=settings,
                                  prefixes=("[unused0]", "[unused1]"), projection=projection)
        assert_vectors(multivector(engine, texts, is_query=is_query), expected)


# -- BGE-M3 ---------------------------------------------------------------------------------------


M3_TEXTS = ["the the the cat sat on the mat", "x", "Remora " * 60, "中文 🦈 ünïcödé"]


def m3_oracle(model_dir: Path, heads: dict[str, torch.Tensor], texts: list[str]) -> dict[str, Any]:
    """FlagEmbedding's BGEM3FlagModel.encode outputs, from transformers' XLMRobertaModel."""
    from transformers import AutoTokenizer, XLMRobertaModel

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    enc = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    model = XLMRobertaModel.from_pretrained(str(model_dir), add_pooling_layer=False).eval()
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state  # [B, L, h]
    dense = torch.nn.functional.normalize(hidden[:, 0], dim=-1).numpy()
    weights = torch.relu(hidden @ heads["sparse.weight"].T + heads["sparse.bias"]).squeeze(-1)  # [B, L]
    unused = {tokenizer.cls_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id}
    colbert = hidden[:, 1:] @ heads["colbert.weight"].T + heads["colbert.bias"]
    colbert = torch.nn.functional.normalize(colbert * enc["attention_mask"][:, 1:, None], dim=-1)
    sparse, vectors = [], []
    for row in range(len(texts)):
        lexical: dict[int, float] = {}
        for w, idx in zip(weights[row].tolist(), enc["input_ids"][row].tolist(), strict=True):
            if idx not in unused and w > 0 and w > lexical.get(idx, 0):
                lexical[idx] = w
        sparse.append(lexical)
        vectors.append(colbert[row][: int(enc["attention_mask"][row].sum()) - 1].numpy())
    return {"dense": dense, "sparse": sparse, "multivector": vectors}


@pytest.mark.parametrize("backend", ["eager", "cpu", "sdpa"])
def test_bge_m3_three_outputs_in_one_pass(tmp_path: Path, backend: str) -> None:
    target, heads = build_bge_m3(tmp_path / "m3")
    expected = m3_oracle(target, heads, M3_TEXTS)
    engine = engine_for(target, attention=backend)
    assert engine.model("mv").outputs == ("dense", "sparse", "multivector")
    got = engine.encode_outputs("mv", M3_TEXTS, outputs=("dense", "sparse", "multivector"))
    assert got.dense is not None and got.sparse is not None and got.multivector is not None
    assert np.abs(got.dense - expected["dense"]).max() <= ATOL
    assert_vectors(got.multivector, expected["multivector"])
    for vector, lexical in zip(got.sparse, expected["sparse"], strict=True):
        assert vector.indices.tolist() == sorted(lexical)
        np.testing.assert_allclose(vector.values, [lexical[i] for i in sorted(lexical)], atol=ATOL, rtol=0)


@pytest.mark.gpu
def test_colbert_on_cuda(pylate_model: dict[str, Any]) -> None:
    engine = Engine(EngineSettings(register_defaults=False, device="cuda", dtype="float16"))
    engine.register("mv", pylate_model["dir"])
    assert_vectors(multivector(engine, QUERIES, is_query=True), pylate_model["oracle"][True], atol=3e-2)
    assert_vectors(multivector(engine, DOCUMENTS, is_query=False), pylate_model["oracle"][False], atol=3e-2)
