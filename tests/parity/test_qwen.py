"""Tiny seeded Qwen2 / Qwen3 decoders: Remora's packed causal forward vs transformers.

Tolerances (fp32, CPU): every real token's final hidden state, last-token embeddings, sequence
classification logits and yes/no reranker log-odds and probabilities within atol 1e-5 of
transformers (which runs the same ids right-padded with an attention mask); invariance (alone /
batched / reordered) within 1e-5. CUDA (bf16): within atol 5e-2 of the fp32 reference.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from remora.core import Engine, EngineSettings
from remora.core.batch import pack
from remora.core.errors import InputTooLong, ModelLoadError
from remora.core.heads.yes_no import YesNoHead, yes_no_token_ids
from remora.core.layers.attention import select_attention
from remora.core.model import TextModel
from remora.core.prompts import RERANKER_PREFIX, RERANKER_SUFFIX, reranker_text
from remora.core.registry import build_encoder
from remora.core.weights import Checkpoint, expand, load_weights, prefixed
from tests.zoo_models import RERANK_DOCS as DOCS
from tests.zoo_models import RERANK_QUERY as QUERY
from tests.zoo_models import build_qwen

ATOL = 1e-5
GPU_ATOL = 5e-2
BACKENDS = ("eager", "cpu", "sdpa")
LENGTHS = [1, 7, 33, 2, 64, 128, 15]


def edit_config(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    config = json.loads((path / "config.json").read_text())
    change(config)
    (path / "config.json").write_text(json.dumps(config))


def legacy_rope(config: dict[str, Any]) -> None:
    """The layout released Qwen checkpoints were saved in (before transformers 5)."""
    config["rope_theta"] = config.pop("rope_parameters")["rope_theta"]
    config["rope_scaling"] = None


def engine_for(path: Path, backend: str = "cpu", **settings: Any) -> Engine:
    engine = Engine(EngineSettings(attention=backend, register_defaults=False, **settings))  # type: ignore[arg-type]
    engine.register("qwen", path)
    return engine


def random_ids(seed: int, vocab: int, lengths: list[int] = LENGTHS) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    # From 5 up: never the pad id, which transformers' classifier would skip.
    return [torch.randint(5, vocab, (n,), generator=gen).tolist() for n in lengths]


def padded(ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(len(x) for x in ids)
    input_ids = torch.zeros(len(ids), longest, dtype=torch.long)
    mask = torch.zeros(len(ids), longest, dtype=torch.long)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    return input_ids, mask


def reference_hidden(model: torch.nn.Module, ids: list[list[int]]) -> list[torch.Tensor]:
    input_ids, mask = padded(ids)
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=mask).last_hidden_state
    return [out[row, : len(seq)] for row, seq in enumerate(ids)]


def remora_hidden(engine: Engine, ids: list[list[int]]) -> list[torch.Tensor]:
    batch = pack(ids).to(engine.model("qwen").runtime.device)
    with torch.inference_mode():
        hidden = engine.model("qwen").module.encoder(batch).float().cpu()
    return [hidden[s:e] for s, e in itertools.pairwise(batch.cu_seqlens.tolist())]


def assert_per_sequence(got: list[torch.Tensor], expected: list[torch.Tensor], atol: float = ATOL) -> None:
    for index, (g, e) in enumerate(zip(got, expected, strict=True)):
        torch.testing.assert_close(g, e, atol=atol, rtol=0, msg=lambda m, i=index: f"sequence {i}: {m}")


# Variants: (checkpoint class, config overrides, legacy rope layout). They cover a Qwen2
# causal LM under `model.` with its lm_head dropped and the pre-5 rope layout, a bare Qwen3Model
# (head_dim != hidden / heads), and a Qwen3 causal LM with attention biases and tied embeddings.
VARIANTS: dict[str, tuple[str, dict[str, Any], bool]] = {
    "qwen2": ("Qwen2ForCausalLM", {}, True),
    "qwen3": ("Qwen3Model", {}, False),
    "qwen3_bias_tied": ("Qwen3ForCausalLM", {"attention_bias": True, "tie_word_embeddings": True}, False),
}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Any]]:
    """name -> (directory, transformers base model)."""
    out: dict[str, tuple[Path, Any]] = {}
    for seed, (name, (cls_name, overrides, legacy)) in enumerate(VARIANTS.items()):
        path = tmp_path_factory.mktemp("qwen") / name
        model = build_qwen(path, cls_name, seed, **overrides)
        if legacy:
            edit_config(path, legacy_rope)
        out[name] = (path, getattr(model, "model", model))
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_hidden_states_match_transformers(
    tiny_models: dict[str, tuple[Path, Any]], variant: str, backend: str
) -> None:
    path, model = tiny_models[variant]
    ids = random_ids(1, model.config.vocab_size)
    assert_per_sequence(remora_hidden(engine_for(path, backend), ids), reference_hidden(model, ids))


@pytest.mark.parametrize("backend", BACKENDS)
def test_alone_batched_reordered_agree(tiny_models: dict[str, tuple[Path, Any]], backend: str) -> None:
    path, model = tiny_models["qwen3"]
    engine = engine_for(path, backend)
    ids = random_ids(2, model.config.vocab_size)
    batched = remora_hidden(engine, ids)
    for index, seq in enumerate(ids):
        assert_per_sequence(remora_hidden(engine, [seq]), [batched[index]])
    order = [3, 0, 6, 2, 5, 1, 4]
    assert_per_sequence(remora_hidden(engine, [ids[i] for i in order]), [batched[i] for i in order])


def test_last_token_embedding_without_st_files(tmp_path: Path) -> None:
    """A causal LM with no sentence-transformers files embeds with its last token, unnormalised."""
    from transformers import AutoTokenizer

    path = tmp_path / "emb"
    model = build_qwen(path, "Qwen3ForCausalLM", seed=4)
    engine = engine_for(path)
    assert engine.model("qwen").spec.pooling == ("lasttoken",)
    texts = ["Remora packs tokens.", "yes", "The quick brown fox " * 10]
    got = engine.encode("qwen", texts)
    ids = AutoTokenizer.from_pretrained(str(path))(texts)["input_ids"]
    expected = torch.stack([h[-1] for h in reference_hidden(model.model, ids)]).numpy()
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)


def test_qwen3_embedding_layout_matches_sentence_transformers(tmp_path: Path) -> None:
    """Qwen3-Embedding's layout: Qwen3ForCausalLM in config.json, weights without a prefix, a
    tokenizer that appends <|endoftext|>, sentence-transformers lasttoken pooling + Normalize."""
    from sentence_transformers import SentenceTransformer, models

    path = tmp_path / "qwen3-embedding"
    model = build_qwen(path, "Qwen3Model", seed=5, eos_suffix=True)
    edit_config(path, lambda c: c.update(architectures=["Qwen3ForCausalLM"]))
    transformer = models.Transformer(str(path))
    pooling = models.Pooling(model.config.hidden_size, pooling_mode="lasttoken")
    SentenceTransformer(modules=[transformer, pooling, models.Normalize()], device="cpu").save(str(path))
    texts = ["Remora packs tokens.", "", "yes", "The quick brown fox " * 20, "中文 🦈 ünïcödé"]
    reference = SentenceTransformer(str(path), device="cpu").encode(texts, convert_to_numpy=True)
    got = engine_for(path).encode("qwen", texts)
    assert got.shape == reference.shape
    np.testing.assert_allclose(got, reference, atol=ATOL, rtol=0)


@pytest.mark.parametrize("num_labels", [1, 3])
@pytest.mark.parametrize("family", ["Qwen2", "Qwen3"])
def test_sequence_classification_matches_transformers(tmp_path: Path, family: str, num_labels: int) -> None:
    from transformers import AutoTokenizer

    path = tmp_path / "cls"
    model = build_qwen(path, f"{family}ForSequenceClassification", seed=6, num_labels=num_labels)
    engine = engine_for(path)
    # Packed ids against transformers' rightmost-non-pad token.
    ids = random_ids(7, model.config.vocab_size)
    input_ids, mask = padded(ids)
    with torch.no_grad():
        expected = model(input_ids=input_ids, attention_mask=mask).logits
    loaded = engine.model("qwen")
    batch = pack(ids)
    with torch.inference_mode():
        got = loaded.module.head(loaded.module.encoder(batch), batch)
    assert loaded.module.head.weight_table("model.") == {"score.weight": "score.weight"}
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    # And from text, through the pair tokenizer.
    pairs = [(QUERY, d) for d in DOCS]
    features = AutoTokenizer.from_pretrained(str(path))(
        [q for q, _ in pairs], [d for _, d in pairs], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        logits = model(**features).logits.numpy()
    np.testing.assert_allclose(
        engine.score_pairs("qwen", pairs, apply_activation=False), logits, atol=ATOL, rtol=0
    )


def load_reranker(
    path: Path, backend: str = "cpu", device: str = "cpu", dtype: torch.dtype = torch.float32
) -> TextModel:
    """Encoder + YesNoHead loaded strictly from `path` (what the loader does once a spec or the
    directory marks the model as a yes/no reranker)."""
    config = json.loads((path / "config.json").read_text())
    config.update(yes_no_token_ids(path / "tokenizer.json"))
    with torch.device(device):
        encoder = build_encoder("qwen", config, select_attention(torch.device(device), backend))
        head = YesNoHead(config, encoder.hidden_size)
    names = Checkpoint.from_dir(path).names()
    prefix = next(p for p in encoder.prefixes if p + encoder.embed_key in names)
    table = {
        f"encoder.{k}": v
        for k, v in prefixed(expand(encoder.weight_table(), encoder.num_layers), prefix).items()
    }
    table.update({f"head.{k}": v for k, v in head.weight_table(prefix).items()})
    module = TextModel(encoder, head).to(dtype=dtype).eval()
    load_weights(module, Checkpoint.from_dir(path), table, drop=["lm_head.weight"])
    return module


def reranker_reference(model: Any, ids: list[list[int]], yes: int, no: int) -> tuple[np.ndarray, np.ndarray]:
    """(log-odds, probability of "yes") as Qwen3-Reranker's reference code computes them."""
    input_ids, mask = padded(ids)
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=mask).logits.float()
    last = logits[torch.arange(len(ids)), mask.sum(1) - 1]  # [B, V]
    pair = torch.stack([last[:, no], last[:, yes]], dim=1)
    return (pair[:, 1] - pair[:, 0]).numpy(), torch.softmax(pair, dim=1)[:, 1].numpy()


@pytest.fixture(scope="module")
def rerankers(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, tuple[Path, Any]]:
    """tied -> (directory, transformers Qwen3ForCausalLM): untied as Qwen3-Reranker-8B, tied as 0.6B."""
    root = tmp_path_factory.mktemp("reranker")
    return {
        tied: (
            root / f"tied-{tied}",
            build_qwen(root / f"tied-{tied}", "Qwen3ForCausalLM", 8, tie_word_embeddings=tied),
        )
        for tied in (False, True)
    }


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tied", [False, True])
def test_yes_no_reranker_matches_transformers(
    rerankers: dict[bool, tuple[Path, Any]], tied: bool, backend: str
) -> None:
    from tokenizers import Tokenizer

    path, model = rerankers[tied]
    tokens = yes_no_token_ids(path / "tokenizer.json")
    yes, no = tokens["yes_token_id"], tokens["no_token_id"]
    module = load_reranker(path, backend)
    assert module.head is not None and tuple(module.head.weight.shape) == (2, 64)  # two LM-head rows only
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    texts = [reranker_text(QUERY, d, None) for d in DOCS] + [
        reranker_text("otter", "sea otter", "Find animals")
    ]
    ids = [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    log_odds, probability = reranker_reference(model, ids, yes, no)
    batch = pack(ids)
    with torch.inference_mode():
        raw = module.head(module.encoder(batch), batch)[:, 0].numpy()
    np.testing.assert_allclose(raw, log_odds, atol=ATOL, rtol=0)
    np.testing.assert_allclose(1 / (1 + np.exp(-raw)), probability, atol=ATOL, rtol=0)
    assert np.ptp(raw) > 1e-4, "scores must differ across documents"


def test_engine_scores_with_the_reranker_template(rerankers: dict[bool, tuple[Path, Any]], tmp_path: Path) -> None:
    """Through the engine: `head: yes_no` (or a directory named like a reranker) turns the causal LM
    into a reranker whose score is P(yes) on the templated text, the instruction taken from the spec."""
    import shutil

    from tokenizers import Tokenizer

    path, model = rerankers[True]
    tokens = yes_no_token_ids(path / "tokenizer.json")
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))

    def reference(instruction: str | None) -> np.ndarray:
        texts = [reranker_text(QUERY, d, instruction) for d in DOCS]
        ids = [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
        return reranker_reference(model, ids, tokens["yes_token_id"], tokens["no_token_id"])[1]

    engine = engine_for(path)  # registered as "qwen": an embedder unless told otherwise
    assert engine.model("qwen").relevance == "cosine"
    engine.register("rr", path, head="yes_no")
    np.testing.assert_allclose(engine.score("rr", QUERY, DOCS), reference(None), atol=ATOL, rtol=0)
    engine.register("rr-code", path, head="yes_no", instruction="Find code")
    np.testing.assert_allclose(engine.score("rr-code", QUERY, DOCS), reference("Find code"), atol=ATOL, rtol=0)
    named = tmp_path / "Qwen3-Reranker-tiny"
    shutil.copytree(path, named)
    engine.register("by-name", named)
    np.testing.assert_allclose(engine.score("by-name", QUERY, DOCS), reference(None), atol=ATOL, rtol=0)
    # Over-long pairs: only the body between the template's prefix and suffix is cut.
    long_doc = "otters " * 400
    prepared = engine.model("rr").prepare_pairs([QUERY], [long_doc])
    ids = prepared.tokens.ids[0]
    prefix, suffix = engine.model("rr").tokenizer.encode_plain([RERANKER_PREFIX, RERANKER_SUFFIX])
    assert len(ids) == engine.model("rr").tokenizer.max_len
    assert ids[: len(prefix)] == prefix and ids[-len(suffix) :] == suffix
    with pytest.raises(InputTooLong):
        engine.model("rr").prepare_pairs([QUERY], [long_doc], truncate=False)


def test_reranker_template() -> None:
    text = reranker_text("what is remora", "A sidecar.", None)
    assert text == (
        "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
        'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
        "<Instruct>: Given a web search query, retrieve relevant passages that answer the query\n"
        "<Query>: what is remora\n<Document>: A sidecar."
        "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    custom = reranker_text("q", "d", "Judge code")
    assert custom == RERANKER_PREFIX + "<Instruct>: Judge code\n<Query>: q\n<Document>: d" + RERANKER_SUFFIX


def test_sliding_window_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "sliding"
    build_qwen(path, "Qwen2Model", use_sliding_window=True, sliding_window=16, max_window_layers=1)
    with pytest.raises(ModelLoadError, match="sliding-window"):
        engine_for(path).model("qwen")


@pytest.mark.gpu
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_cuda_bf16_matches_fp32_reference(tiny_models: dict[str, tuple[Path, Any]], variant: str) -> None:
    """The engine's CUDA defaults (bf16, the best varlen backend) against transformers in fp32."""
    path, model = tiny_models[variant]
    engine = engine_for(path, "auto", device="cuda")
    assert next(engine.model("qwen").module.parameters()).dtype == torch.bfloat16
    ids = random_ids(9, model.config.vocab_size)
    assert_per_sequence(remora_hidden(engine, ids), reference_hidden(model, ids), atol=GPU_ATOL)


@pytest.mark.gpu
def test_cuda_bf16_reranker(tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    path = tmp_path / "reranker"
    model = build_qwen(path, "Qwen3ForCausalLM", seed=10, tie_word_embeddings=True)
    tokens = yes_no_token_ids(path / "tokenizer.json")
    module = load_reranker(path, "auto", "cuda", torch.bfloat16)
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    ids = [
        e.ids
        for e in tokenizer.encode_batch(
            [reranker_text(QUERY, d, None) for d in DOCS], add_special_tokens=False
        )
    ]
    _, probability = reranker_reference(model, ids, tokens["yes_token_id"], tokens["no_token_id"])
    batch = pack(ids).to("cuda")
    with torch.inference_mode():
        raw = module.head(module.encoder(batch), batch)[:, 0].float().cpu().numpy()
    np.testing.assert_allclose(1 / (1 + np.exp(-raw)), probability, atol=GPU_ATOL, rtol=0)


def test_rows_source_reads_chosen_rows_in_order(tmp_path: Path) -> None:
    """`Rows` (the yes/no head's two LM-head rows): the named rows, in the given order, strictly."""
    from safetensors.torch import save_file

    from remora.core.errors import WeightsError
    from remora.core.weights import Rows

    table = torch.arange(12.0).view(6, 2)
    save_file({"lm_head.weight": table}, str(tmp_path / "model.safetensors"))
    head = torch.nn.Linear(2, 2, bias=False)
    load_weights(head, Checkpoint.from_dir(tmp_path), {"weight": Rows("lm_head.weight", (4, 1))})
    torch.testing.assert_close(head.weight.data, table[[4, 1]])
    with pytest.raises(WeightsError, match="rows \\[6\\] do not exist"):
        load_weights(head, Checkpoint.from_dir(tmp_path), {"weight": Rows("lm_head.weight", (6, 1))})
