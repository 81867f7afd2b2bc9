"""Reads a sentence-transformers model directory so Remora behaves as sentence-transformers would.

Files read (all optional): modules.json, sentence_bert_config.json,
config_sentence_transformers.json, <pooling dir>/config.json, <dense dir>/config.json,
tokenizer_config.json. Both the v2-v5 layouts and the v6 one (module types under
`sentence_transformers.base.modules...`, `pooling_mode` as a string) are understood.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from remora.core.errors import ModelLoadError, UnsupportedArchitecture

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
    for entry in entries:
        kind = str(entry.get("type", "")).rsplit(".", 1)[-1]
        sub = model_dir / str(entry.get("path", ""))
        if kind == "Transformer":
            continue
        if kind == "Pooling":
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
                "(supported: Transformer, Pooling, Dense, Normalize)"
            )
    return StConfig(
        is_sentence_transformers=True, pooling=pooling, include_prompt=include_prompt, post=tuple(post), **common
    )


def tokenizer_max_length(model_dir: Path) -> int | None:
    value = _maybe_json(model_dir / "tokenizer_config.json").get("model_max_length")
    # Tokenizers without a limit store a huge sentinel (int(1e30)); treat it as none.
    if isinstance(value, int) and 0 < value < 1_000_000:
        return value
    return None
