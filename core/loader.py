"""Turn a ModelSpec into a LoadedModel.

Every field of the spec left unset is resolved from the model directory: sentence-transformers
files first, then config.json and tokenizer_config.json. Weights go through the architecture's
name table, strictly.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from remora.core.batch import pack
from remora.core.config import ModelSpec
from remora.core.errors import ModelLoadError, WeightsError
from remora.core.heads.cross_encoder import count_labels
from remora.core.heads.dense import DenseStep
from remora.core.heads.yes_no import yes_no_token_ids
from remora.core.model import LoadedModel, Runtime, TextModel
from remora.core.outputs import build_outputs, plan_outputs
from remora.core.registry import Architecture, build_encoder, head_class, resolve
from remora.core.st_format import StConfig, read_json, read_st_config, tokenizer_max_length
from remora.core.tokenizer import TextTokenizer
from remora.core.weights import Checkpoint, expand, load_weights, prefixed

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}



def _resolve_spec(spec: ModelSpec, arch: Architecture, st: StConfig, max_tokens: int) -> ModelSpec:
    assert isinstance(spec.path, Path)
    max_len = spec.max_seq_len or st.max_seq_length or tokenizer_max_length(spec.path) or max_tokens
    prompts = st.prompts
    # As sentence-transformers' encode_query / encode_document: a prompt present under the
    # task's key wins even when empty; only a missing key falls back to default_prompt_name.
    default = prompts.get(st.default_prompt_name) if st.default_prompt_name else None
    query = prompts.get("query", default)
    document = next((prompts[k] for k in ("document", "passage", "corpus") if k in prompts), default)
    return dataclasses.replace(
        spec,
        tasks=spec.tasks or (arch.task,),
        pooling=spec.pooling or st.pooling or arch.pooling,
        include_prompt=st.include_prompt if spec.include_prompt is None else spec.include_prompt,
        normalize=bool(st.post) and st.post[-1].kind == "normalize" if spec.normalize is None else spec.normalize,
        # Never past what the position table holds, whatever the configs claim.
        max_seq_len=min(max_len, max_tokens),
        query_prompt=spec.query_prompt if spec.query_prompt is not None else query,
        document_prompt=spec.document_prompt if spec.document_prompt is not None else document,
    )


def _is_yes_no_reranker(spec: ModelSpec, arch_name: str, path: Path) -> bool:
    """Qwen3-Reranker's config is an ordinary Qwen3ForCausalLM, the same as Qwen3-Embedding's:
    the spec's `head: yes_no` says so, or else the model id, its directory or (hub cache) its
    repository names a "reranker"."""
    if spec.head == "yes_no":
        return True
    if not arch_name.endswith("ForCausalLM"):
        return False
    names = [spec.id, path.name]
    if path.parent.name == "snapshots":  # hub cache: models--Org--Name/snapshots/<commit>
        names.append(path.parent.parent.name)
    return any("reranker" in name.lower() for name in names)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name != "auto":
        return DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_model(spec: ModelSpec, runtime: Runtime) -> LoadedModel:
    if not isinstance(spec.path, Path):
        # Hub references are resolved to a local snapshot by the pool before loading.
        raise ModelLoadError(f"{spec.path} is not a local model directory")
    path = spec.path
    if not path.is_dir():
        raise ModelLoadError(f"model directory {path} does not exist")
    if (path / "gliner_config.json").is_file():
        # A GLiNER directory: its own config names the backbone (core/models/gliner.py).
        from remora.core.models import gliner

        return gliner.load(spec, runtime)
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} has no config.json")
    config = read_json(path / "config.json")
    arch_name, arch = resolve(config)
    if _is_yes_no_reranker(spec, arch_name, path):
        # A causal LM judged by its next-token "yes" vs "no" logits (Qwen3-Reranker).
        arch = dataclasses.replace(arch, task="score", head="yes_no")
        try:
            config = {**yes_no_token_ids(path / "tokenizer.json"), **config}
        except ValueError as exc:
            raise ModelLoadError(str(exc)) from exc
    st = read_st_config(path)
    checkpoint = Checkpoint.from_dir(path)
    extras = plan_outputs(path, config, st)  # sparse / multi-vector outputs (core/outputs.py)

    try:
        # Parameters are allocated uninitialised, directly on the device; loading fills them all.
        with runtime.device:
            encoder = build_encoder(arch.family, config, extras.attention(runtime.attention))
            head = None
            if arch.head is not None:
                head = head_class(arch.head)(config, encoder.hidden_size)
    except (KeyError, ValueError, TypeError) as exc:
        raise ModelLoadError(f"cannot build {arch_name} from {path / 'config.json'}: {exc!r}") from exc
    module = TextModel(encoder, head)

    names = checkpoint.names()
    prefix = next((p for p in encoder.prefixes if f"{p}{encoder.embed_key}" in names), None)
    if prefix is None:
        raise WeightsError(
            f"checkpoint in {path} is missing tensors {encoder.embed_key!r} "
            f"(looked under prefixes {list(encoder.prefixes)})"
        )
    table = {f"encoder.{k}": v for k, v in prefixed(expand(encoder.weight_table(), encoder.num_layers), prefix).items()}
    drop = [prefix + name for name in encoder.unused] + list(arch.unused)
    if head is not None:
        table.update({f"head.{k}": v for k, v in head.weight_table(prefix).items()})
        drop = [d for d in drop if d not in table.values()]
    # Cast before filling, so the checkpoint is copied straight into the run dtype.
    module.to(dtype=resolve_dtype(spec.dtype, runtime.device)).eval()
    load_weights(module, checkpoint, table, drop=drop, where=str(path))
    _check_runs(module, runtime, arch_name, path)
    module.sparse, module.multivector = build_outputs(
        extras, path, config, arch_name, encoder, checkpoint, lowercase=st.lowercase,
        dtype=resolve_dtype(spec.dtype, runtime.device), device=runtime.device,
    )

    resolved = _resolve_spec(spec, arch, st, encoder.max_tokens)
    post: list[DenseStep | str] = []
    try:
        for step in st.post:
            if step.kind == "dense":
                assert step.path is not None
                post.append(DenseStep.load(step.path).to(runtime.device).eval())
            else:
                post.append("normalize")
        # The spec's `normalize` decides the final normalisation only.
        if post and post[-1] == "normalize" and not resolved.normalize:
            post.pop()
        elif resolved.normalize and (not post or post[-1] != "normalize"):
            post.append("normalize")
        tokenizer = TextTokenizer(path, max_len=int(resolved.max_seq_len or encoder.max_tokens), lowercase=st.lowercase)
        return LoadedModel(
            resolved,
            arch_name,
            module,
            tokenizer,
            post,
            runtime,
            score_activation=_score_activation(arch, st, config, head),
            no_dense=extras.no_dense,
        )
    except ValueError as exc:
        raise ModelLoadError(f"cannot load {path}: {exc}") from exc


def _check_runs(module: TextModel, runtime: Runtime, arch_name: str, path: Path) -> None:
    """One two-token forward pass through the encoder: a config whose shapes agree with the
    checkpoint but not with each other (a hidden size that the heads do not divide) fails the
    load here, with the model's name, instead of every request later."""
    try:
        with torch.inference_mode():
            hidden = module.encoder(pack([[0, 0]]).to(runtime.device))  # [2, h]
    except torch.OutOfMemoryError:
        raise
    except Exception as exc:
        raise ModelLoadError(
            f"{arch_name} from {path / 'config.json'} does not run: {type(exc).__name__}: {exc}"
        ) from exc
    if tuple(hidden.shape) != (2, module.encoder.hidden_size):
        raise ModelLoadError(
            f"{arch_name} from {path / 'config.json'} does not run: a test pass gave hidden states of shape "
            f"{tuple(hidden.shape)}, not (2, {module.encoder.hidden_size})"
        )


def _score_activation(arch: Architecture, st: StConfig, config: dict[str, Any], head: nn.Module | None) -> str | None:
    """The activation sentence-transformers' CrossEncoder applies: saved in the model, else
    sigmoid for a single label and none for several."""
    if head is None:
        return None
    saved = (config.get("sentence_transformers") or {}).get("activation_fn") or st.activation_fn
    saved = saved or config.get("sbert_ce_default_activation_function")
    if saved:
        return str(saved)
    labels = int(getattr(head, "num_labels", count_labels(config)))
    return "torch.nn.modules.activation.Sigmoid" if labels == 1 else None
