"""A model directory's extra encode outputs: how they are found and built.

- SPLADE: a sentence-transformers SparseEncoder directory (SpladePooling) over a *ForMaskedLM
  checkpoint. Sparse output only.
- ColBERT: a PyLate directory (per-token Dense, ColBERT settings in
  config_sentence_transformers.json) or Stanford's HF_ColBERT (`linear.weight` in the checkpoint,
  settings in artifact.metadata, read the way PyLate reads them). Multi-vector output only.
- BGE-M3: `sparse_linear.safetensors` / `colbert_linear.safetensors` beside the model give sparse
  and multi-vector outputs next to its dense one. The original repository ships them as pickles
  (`.pt`), which Remora refuses, saying how to convert them.

The loader calls `plan_outputs` before building the encoder (ColBERT queries need their own
attention, see `OutputPlan.attention`) and `build_outputs` once the encoder's weights are in.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer
from torch import nn

from remora.core.errors import ModelLoadError, UnsupportedArchitecture, WeightsError
from remora.core.heads.multivector import (
    ColbertRule,
    ColbertTokens,
    MultiVectorHead,
    TokenDense,
    expansion_attention,
)
from remora.core.heads.sparse import MLM_ARCHITECTURES, MLM_LAYOUTS, SpladeHead, TokenWeightHead
from remora.core.layers.activations import module_act
from remora.core.layers.attention import Attention
from remora.core.st_format import ColbertSpec, SpladeSpec, StConfig, colbert_spec
from remora.core.weights import Checkpoint, load_weights

M3_SPARSE = "sparse_linear"
M3_COLBERT = "colbert_linear"
STANFORD_COLBERT = "HF_ColBERT"
# artifact.metadata keys -> PyLate's names for them.
_STANFORD_KEYS = {
    "query_token_id": "query_prefix",
    "doc_token_id": "document_prefix",
    "query_maxlen": "query_length",
    "doc_maxlen": "document_length",
    "attend_to_mask_tokens": "attend_to_expansion_tokens",
}


@dataclass(frozen=True)
class OutputPlan:
    """What a directory offers besides (or instead of) dense vectors."""

    splade: SpladeSpec | None = None
    colbert: ColbertSpec | None = None
    stanford: bool = False  # ColBERT's projection is `linear.weight` in the main checkpoint
    rule: ColbertRule | None = None
    m3_sparse: Path | None = None
    m3_colbert: Path | None = None

    @property
    def no_dense(self) -> bool:
        """SPLADE and ColBERT models have no pooled dense vector (LoadedModel's no_dense)."""
        return self.splade is not None or self.colbert is not None

    def attention(self, inner: Attention) -> Attention:
        """The attention the encoder is built with: ColBERT queries hide their [MASK] expansion."""
        colbert = self.colbert
        if colbert is None or self.rule is None or not colbert.do_query_expansion or colbert.attend_to_expansion_tokens:
            return inner
        return expansion_attention(inner, self.rule)


def plan_outputs(path: Path, config: Mapping[str, Any], st: StConfig) -> OutputPlan:
    colbert = st.colbert
    stanford = STANFORD_COLBERT in (config.get("architectures") or [])
    if stanford and colbert is None:
        colbert = colbert_spec(_stanford_metadata(path))
    rule = _colbert_rule(path, colbert) if colbert is not None else None
    m3_sparse, m3_colbert = _m3_file(path, M3_SPARSE), _m3_file(path, M3_COLBERT)
    if st.splade is not None and colbert is not None:
        raise UnsupportedArchitecture(f"{path} is both a SPLADE and a ColBERT directory")
    return OutputPlan(st.splade, colbert, stanford, rule, m3_sparse, m3_colbert)


def build_outputs(
    plan: OutputPlan,
    path: Path,
    config: Mapping[str, Any],
    architecture: str,
    encoder: nn.Module,
    checkpoint: Checkpoint,
    *,
    lowercase: bool,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[nn.Module | None, nn.Module | None]:
    """(sparse, multivector) modules with their weights, in the run dtype on the device."""
    hidden = int(_attr(encoder, "hidden_size"))
    sparse: nn.Module | None = None
    multivector: nn.Module | None = None
    if plan.splade is not None:
        sparse = _splade(plan.splade, config, architecture, encoder, checkpoint, path)
    elif plan.m3_sparse is not None:
        sparse = TokenWeightHead(hidden, _m3_skip_ids(path))
        _load(sparse, Checkpoint([plan.m3_sparse]), TokenWeightHead.weight_table(), plan.m3_sparse)
    if plan.colbert is not None:
        assert plan.rule is not None
        if plan.stanford:
            layers = [_linear(checkpoint, "linear.weight", None, hidden, path)]
        else:
            if not plan.colbert.dense:
                raise ModelLoadError(f"ColBERT directory {path} has no Dense module to project its token vectors")
            try:
                layers = [TokenDense.load(d) for d in plan.colbert.dense]
            except ValueError as exc:
                raise ModelLoadError(str(exc)) from exc
        max_tokens = int(_attr(encoder, "max_tokens"))
        tokens = ColbertTokens(
            path,
            plan.rule,
            query_length=min(plan.colbert.query_length, max_tokens),
            document_length=min(plan.colbert.document_length, max_tokens),
            expand_queries=plan.colbert.do_query_expansion,
            lowercase=lowercase,
        )
        multivector = MultiVectorHead(layers, rule=plan.rule, tokens=tokens)
    elif plan.m3_colbert is not None:
        layer = _linear(Checkpoint([plan.m3_colbert]), "weight", "bias", hidden, plan.m3_colbert)
        multivector = MultiVectorHead([layer], rule=None)
    for part in (sparse, multivector):
        if part is not None:
            part.to(device=device, dtype=dtype).eval()
    return sparse, multivector


# -- SPLADE ------------------------------------------------------------------------------------


def _splade(
    spec: SpladeSpec, config: Mapping[str, Any], architecture: str, encoder: nn.Module, checkpoint: Checkpoint, path: Path
) -> SpladeHead:
    family = MLM_ARCHITECTURES.get(architecture)
    if family is None:
        raise UnsupportedArchitecture(
            f"SPLADE needs a masked-LM checkpoint; {path} holds {architecture} "
            f"(supported: {', '.join(sorted(MLM_ARCHITECTURES))})"
        )
    tied = _word_embeddings(encoder) if config.get("tie_word_embeddings", True) else None
    head = SpladeHead(
        config,
        MLM_LAYOUTS[family],
        int(_attr(encoder, "hidden_size")),
        names=checkpoint.names(),
        tied=tied,
        pooling=spec.pooling,
        activation=spec.activation,
        max_active_dims=spec.max_active_dims,
    )
    _load(head, checkpoint, head.weight_table(), path)
    return head


def _word_embeddings(encoder: nn.Module) -> nn.Parameter:
    """The encoder's word-embedding matrix, which a tied MLM decoder reuses (never copied)."""
    embed_key = _attr(encoder, "embed_key")
    for own, source in _attr(encoder, "weight_table")().items():
        if source == embed_key:
            return encoder.get_parameter(own)
    raise ModelLoadError(f"{type(encoder).__name__} maps no parameter to {embed_key!r}")


# -- ColBERT -----------------------------------------------------------------------------------


def _stanford_metadata(path: Path) -> dict[str, Any]:
    """artifact.metadata (when present) in PyLate's names; Stanford's prefixes by default."""
    values: dict[str, Any] = {"query_prefix": "[unused0]", "document_prefix": "[unused1]"}
    metadata = path / "artifact.metadata"
    if metadata.is_file():
        try:
            data = json.loads(metadata.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ModelLoadError(f"unreadable {metadata}: {exc}") from exc
        values.update({name: data[key] for key, name in _STANFORD_KEYS.items() if data.get(key) is not None})
    return values


def _colbert_rule(path: Path, spec: ColbertSpec) -> ColbertRule:
    tokenizer = _tokenizer(path)
    special = special_tokens(path)
    unk = _id(tokenizer, special.get("unk_token"))

    def lookup(token: str) -> int | None:
        # As transformers' convert_tokens_to_ids: an unknown token is the unknown-token id.
        found = tokenizer.token_to_id(token)
        return found if found is not None else unk

    prefixes = []
    for prefix in (spec.query_prefix, spec.document_prefix):
        prefix_id = lookup(prefix) if prefix else None
        if prefix and prefix_id is None:
            raise ModelLoadError(f"ColBERT prefix {prefix!r} is not a token of {path / 'tokenizer.json'}")
        prefixes.append(prefix_id)
    # PyLate pads queries with [MASK]; a model without one (a decoder) with its end-of-text token.
    mask = next((i for key in ("mask_token", "eos_token", "pad_token") if (i := _id(tokenizer, special.get(key))) is not None), None)
    if mask is None:
        raise ModelLoadError(f"ColBERT model {path} has no mask, eos or pad token to expand queries with")
    skip = frozenset(i for word in spec.skiplist_words if (i := lookup(word)) is not None)
    return ColbertRule(prefixes[0], prefixes[1], mask, spec.query_length, skip)


def _linear(checkpoint: Checkpoint, weight: str, bias: str | None, hidden: int, where: Path) -> TokenDense:
    if weight not in checkpoint.names():
        raise WeightsError(f"{where} has no {weight!r} tensor")
    out_features, in_features = checkpoint.shape(weight)
    if in_features != hidden:
        raise WeightsError(f"{where}: {weight!r} is {out_features}x{in_features}, but the encoder is {hidden} wide")
    layer = TokenDense(in_features, out_features, bias=bias is not None, activation=module_act(None))
    table = {"linear.weight": weight} | ({"linear.bias": bias} if bias else {})
    _load(layer, checkpoint, table, where)
    return layer


# -- BGE-M3 ------------------------------------------------------------------------------------


def _m3_file(path: Path, stem: str) -> Path | None:
    safe = path / f"{stem}.safetensors"
    if safe.is_file():
        return safe
    pickled = path / f"{stem}.pt"
    if pickled.is_file():
        raise WeightsError(
            f"{pickled} is a pickle; Remora never unpickles weights. Convert it once, beside the model: "
            f"python -c \"import torch, safetensors.torch as st; "
            f"st.save_file(torch.load('{stem}.pt', weights_only=True), '{stem}.safetensors')\""
        )
    return None


def _m3_skip_ids(path: Path) -> frozenset[int]:
    """BGE-M3 leaves the cls, eos, pad and unk tokens out of its lexical weights."""
    tokenizer, special = _tokenizer(path), special_tokens(path)
    ids = (_id(tokenizer, special.get(key)) for key in ("cls_token", "eos_token", "pad_token", "unk_token"))
    return frozenset(i for i in ids if i is not None)


# -- shared ------------------------------------------------------------------------------------


def special_tokens(path: Path) -> dict[str, str]:
    """cls_token, mask_token, ... -> their strings, from tokenizer_config.json then
    special_tokens_map.json (either may store a string or {"content": ...})."""
    found: dict[str, str] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        file = path / name
        if not file.is_file():
            continue
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ModelLoadError(f"unreadable {file}: {exc}") from exc
        for key, value in data.items():
            if key.endswith("_token") and value:
                content = value.get("content") if isinstance(value, dict) else value
                if isinstance(content, str):
                    found[key] = content
    return found


def _tokenizer(path: Path) -> Tokenizer:
    try:
        return Tokenizer.from_file(str(path / "tokenizer.json"))
    except Exception as exc:
        raise ModelLoadError(f"unreadable tokenizer {path / 'tokenizer.json'}: {exc}") from exc


def _id(tokenizer: Tokenizer, token: str | None) -> int | None:
    return tokenizer.token_to_id(token) if token else None


def _attr(encoder: nn.Module, name: str) -> Any:
    """An attribute of the encoder contract (hidden_size, max_tokens, embed_key, weight_table)."""
    return getattr(encoder, name)


def _load(module: nn.Module, checkpoint: Checkpoint, table: Mapping[str, str], where: Path) -> None:
    # The main checkpoint's other tensors belong to the encoder, which checked them strictly.
    load_weights(module, checkpoint, table, drop=("*",), where=str(where))
