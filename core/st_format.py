"""Reads a sentence-transformers model directory so Remora behaves as sentence-transformers would.

Files read (all optional): modules.json, sentence_bert_config.json,
config_sentence_transformers.json, <pooling dir>/config.json, <dense dir>/config.json,
tokenizer_config.json. Both the v2-v5 layouts and the v6 one (module types under
`sentence_transformers.base.modules...`, `pooling_mode` as a string) are understood.

Two non-dense layouts are recognised too: a SparseEncoder (SPLADE: an MLM Transformer followed by
SpladePooling) and a PyLate ColBERT (Transformer + per-token Dense, with the ColBERT settings at the
top level of config_sentence_transformers.json).
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from remora.core.errors import ModelLoadError, UnsupportedArchitecture
from remora.core.paths import child

# Legacy boolean pooling keys, in the order sentence-transformers concatenates them.
_LEGACY_POOLING = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


@dataclass(frozen=True)
class PostStep:
    """A module applied to the pooled vector: ('dense', its directory) or ('normalize', None)."""

    kind: str
    path: Path | None = None


@dataclass(frozen=True)
class SpladeSpec:
    """sentence-transformers' SpladePooling: log1p(activation(MLM logits)) pooled over tokens."""

    pooling: str = "max"  # "max" (SPLADE v2 and later) or "sum"
    activation: str = "relu"  # "relu" or "log1p_relu" (a second log1p)
    max_active_dims: int | None = None  # keep only the k largest weights (SparseEncoder's setting)


# PyLate's defaults for settings a saved config leaves out (or sets to null).
COLBERT_DEFAULTS: dict[str, Any] = {
    "query_prefix": "[Q] ",
    "document_prefix": "[D] ",
    "query_length": 32,
    "document_length": 180,
    "do_query_expansion": True,
    "attend_to_expansion_tokens": False,
    "skiplist_words": list(string.punctuation),
}
_COLBERT_KEYS = tuple(COLBERT_DEFAULTS)


@dataclass(frozen=True)
class ColbertSpec:
    """A ColBERT model's query/document handling, as PyLate reads it (see `colbert_spec`)."""

    query_prefix: str
    document_prefix: str
    query_length: int
    document_length: int
    do_query_expansion: bool
    attend_to_expansion_tokens: bool
    skiplist_words: tuple[str, ...]
    dense: tuple[Path, ...] = ()  # per-token Dense module directories, in order


def colbert_spec(values: dict[str, Any], dense: tuple[Path, ...] = ()) -> ColbertSpec:
    """PyLate's resolution: a saved value wins unless null, else the default; without query
    expansion the expansion tokens are never attended (there are none)."""
    merged = {k: values[k] if values.get(k) is not None else v for k, v in COLBERT_DEFAULTS.items()}
    expand = bool(merged["do_query_expansion"])
    return ColbertSpec(
        query_prefix=str(merged["query_prefix"]),
        document_prefix=str(merged["document_prefix"]),
        query_length=int(merged["query_length"]),
        document_length=int(merged["document_length"]),
        do_query_expansion=expand,
        attend_to_expansion_tokens=expand and bool(merged["attend_to_expansion_tokens"]),
        skiplist_words=tuple(str(w) for w in merged["skiplist_words"]),
        dense=dense,
    )


def _is_pylate(entries: list[dict[str, Any]], st_config: dict[str, Any]) -> bool:
    if any(str(e.get("type", "")).startswith("pylate.") for e in entries):
        return True
    return st_config.get("model_type") == "ColBERT" or any(k in st_config for k in _COLBERT_KEYS)


@dataclass(frozen=True)
class StConfig:
    is_sentence_transformers: bool = False
    pooling: tuple[str, ...] | None = None
    include_prompt: bool = True
    post: tuple[PostStep, ...] = ()
    max_seq_length: int | None = None
    lowercase: bool = False
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    activation_fn: str | None = None
    splade: SpladeSpec | None = None  # a SparseEncoder: sparse output only
    colbert: ColbertSpec | None = None  # a PyLate ColBERT: multi-vector output only


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"unreadable {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} is not a JSON object")
    return data


def _maybe_json(path: Path) -> dict[str, Any]:
    return read_json(path) if path.is_file() else {}


def _pooling_modes(config: dict[str, Any]) -> tuple[str, ...]:
    mode = config.get("pooling_mode")
    if isinstance(mode, str):
        return (mode,)
    if isinstance(mode, list | tuple):
        return tuple(mode)
    return tuple(name for key, name in _LEGACY_POOLING.items() if config.get(key))


def read_st_config(model_dir: Path) -> StConfig:
    modules_file = model_dir / "modules.json"
    bert_config = _maybe_json(model_dir / "sentence_bert_config.json")
    st_config = _maybe_json(model_dir / "config_sentence_transformers.json")
    prompts = st_config.get("prompts") or {}
    common: dict[str, Any] = {
        "max_seq_length": bert_config.get("max_seq_length"),
        "lowercase": bool(bert_config.get("do_lower_case", False)),
        "prompts": {str(k): str(v) for k, v in prompts.items()},
        "default_prompt_name": st_config.get("default_prompt_name"),
        "activation_fn": st_config.get("activation_fn"),
    }
    if not modules_file.is_file():
        return StConfig(**common)
    try:
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
        entries = sorted(modules, key=lambda m: m.get("idx", 0))
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        raise ModelLoadError(f"unreadable {modules_file}: {exc}") from exc
    pooling: tuple[str, ...] | None = None
    include_prompt = True
    post: list[PostStep] = []
    splade: SpladeSpec | None = None
    pylate = _is_pylate(entries, st_config)
    token_dense: list[Path] = []
    for entry in entries:
        kind = str(entry.get("type", "")).rsplit(".", 1)[-1]
        if kind in ("Transformer", "MLMTransformer"):
            continue
        sub = child(model_dir, str(entry.get("path", "")), named_in=modules_file)
        if kind == "SpladePooling":
            splade = _splade(read_json(sub / "config.json") if (sub / "config.json").is_file() else {}, st_config)
        elif pylate and kind == "Dense":
            # PyLate's Dense projects every token, not the pooled vector.
            token_dense.append(sub)
        elif pylate and kind == "Normalize":
            continue  # PyLate drops it on load and L2-normalises the token vectors itself
        elif kind == "Pooling":
            config = read_json(sub / "config.json")
            pooling = _pooling_modes(config)
            include_prompt = bool(config.get("include_prompt", True))
        elif kind == "Normalize":
            post.append(PostStep("normalize"))
        elif kind == "Dense":
            post.append(PostStep("dense", sub))
        else:
            raise UnsupportedArchitecture(
                f"sentence-transformers module {entry.get('type')!r} in {modules_file} is not supported "
                "(supported: Transformer, Pooling, Dense, Normalize, SpladePooling, PyLate's Dense)"
            )
    return StConfig(
        is_sentence_transformers=True,
        pooling=pooling,
        include_prompt=include_prompt,
        post=tuple(post),
        splade=splade,
        colbert=colbert_spec(st_config, tuple(token_dense)) if pylate else None,
        **common,
    )


def _splade(pooling: dict[str, Any], st_config: dict[str, Any]) -> SpladeSpec:
    spec = SpladeSpec(
        pooling=str(pooling.get("pooling_strategy", "max")),
        activation=str(pooling.get("activation_function", "relu")),
        max_active_dims=int(st_config["max_active_dims"]) if st_config.get("max_active_dims") else None,
    )
    if spec.pooling not in ("max", "sum") or spec.activation not in ("relu", "log1p_relu"):
        raise UnsupportedArchitecture(
            f"SpladePooling with pooling_strategy={spec.pooling!r}, activation_function={spec.activation!r} "
            "is not supported (supported: max or sum; relu or log1p_relu)"
        )
    return spec


def tokenizer_max_length(model_dir: Path) -> int | None:
    value = _maybe_json(model_dir / "tokenizer_config.json").get("model_max_length")
    # Tokenizers without a limit store a huge sentinel (int(1e30)); treat it as none.
    if isinstance(value, int) and 0 < value < 1_000_000:
        return value
    return None
