"""Multi-vector (late-interaction) outputs: one [n_tokens, d] float32 matrix per sequence.

- ColBERT as PyLate runs it (and Stanford's HF_ColBERT through PyLate): a prefix token ([Q] / [D])
  after [CLS], queries cut to `query_length - 1` tokens and padded with [MASK] up to
  `query_length` (query expansion), documents cut to `document_length - 1`; every token projected
  by the Dense layers, documents' punctuation (the skip-list) dropped, vectors L2-normalised.
  Unless `attend_to_expansion_tokens`, the [MASK] tokens see the query but no token sees them:
  `expansion_attention` gives the encoder exactly that on the packed layout.
- BGE-M3's `colbert_linear` over every token after the first (<s>), L2-normalised.

`maxsim` scores a query's vectors against a document's.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from remora.core.batch import PackedBatch
from remora.core.layers.activations import Activation, module_act
from remora.core.layers.attention import Attention, Window
from remora.core.layers.uninit import Linear
from remora.core.tokenizer import TextTokenizer, Tokenized
from remora.core.weights import Checkpoint, load_weights


def maxsim(query: np.ndarray, document: np.ndarray) -> float:
    """ColBERT late interaction: each query vector [q, d] takes its best dot product with a
    document vector [n, d]; the sum over query vectors. (BGE-M3's own colbert_score divides this by
    the number of query vectors: the same ranking for one query.)"""
    if len(query) == 0 or len(document) == 0:
        return 0.0
    return float((query @ document.T).max(axis=1).sum())


class TokenDense(nn.Module):
    """A Linear (+ activation, + optional residual) applied to every token: [n, in] -> [n, out]."""

    def __init__(
        self, in_features: int, out_features: int, *, bias: bool, activation: Activation, residual: bool = False
    ) -> None:
        super().__init__()
        self.linear = Linear(in_features, out_features, bias=bias)
        self.activation = activation
        self.use_residual = residual
        # PyLate's residual: the input itself, or projected when the widths differ.
        self.residual = Linear(in_features, out_features, bias=False) if residual and in_features != out_features else None

    @property
    def out_features(self) -> int:
        return self.linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.activation(self.linear(x))
        if self.use_residual:
            out = out + (x if self.residual is None else self.residual(x))
        return out

    def table(self) -> dict[str, str]:
        return {name: name for name, _ in self.named_parameters()}

    @classmethod
    def load(cls, module_dir: Path) -> TokenDense:
        """A PyLate Dense module directory (config.json + model.safetensors)."""
        try:
            config = json.loads((module_dir / "config.json").read_text(encoding="utf-8"))
            layer = cls(
                int(config["in_features"]),
                int(config["out_features"]),
                bias=bool(config.get("bias", True)),
                activation=module_act(config.get("activation_function")),
                residual=bool(config.get("use_residual", False)),
            )
        except (OSError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"bad Dense module config in {module_dir}: {exc}") from exc
        load_weights(layer, Checkpoint.from_dir(module_dir), layer.table(), where=str(module_dir))
        return layer


@dataclass(frozen=True)
class ColbertRule:
    """Tells queries from documents in a packed batch, and where a query's expansion starts."""

    query_prefix_id: int | None
    document_prefix_id: int | None
    mask_id: int
    query_length: int
    skiplist_ids: frozenset[int]

    def is_query(self, ids: Sequence[int]) -> bool:
        # The [Q] token after [CLS] says it; without distinct prefixes, a query is known by its
        # expansion: exactly query_length tokens ending in [MASK] (documents end with [SEP]).
        if self.query_prefix_id is not None and self.query_prefix_id != self.document_prefix_id:
            return len(ids) > 1 and ids[1] == self.query_prefix_id
        return len(ids) == self.query_length and ids[-1] == self.mask_id

    def expansion(self, ids: Sequence[int]) -> int:
        """How many trailing [MASK] tokens of a query are expansion (0 for a document)."""
        if not self.is_query(ids):
            return 0
        count = 0
        while count < len(ids) - 1 and ids[len(ids) - 1 - count] == self.mask_id:
            count += 1
        return count


class ColbertTokens:
    """PyLate's tokenization: truncation, prefix token after the first token, query expansion."""

    def __init__(
        self,
        model_dir: Path,
        rule: ColbertRule,
        *,
        query_length: int,
        document_length: int,
        expand_queries: bool,
        lowercase: bool,
    ) -> None:
        self.rule = rule
        self.query_length = query_length
        self.expand_queries = expand_queries
        # The prefix token is inserted after truncation, so the text gets one token less.
        q_room = query_length - (rule.query_prefix_id is not None)
        d_room = document_length - (rule.document_prefix_id is not None)
        self.query = TextTokenizer(model_dir, max_len=q_room, lowercase=lowercase)
        self.document = TextTokenizer(model_dir, max_len=d_room, lowercase=lowercase)

    def encode(self, texts: Sequence[str], *, is_query: bool, truncate: bool = True) -> Tokenized:
        tokens = (self.query if is_query else self.document).encode(texts, truncate=truncate)
        prefix = self.rule.query_prefix_id if is_query else self.rule.document_prefix_id
        ids, types = tokens.ids, tokens.type_ids
        if prefix is not None:
            ids = [[seq[0], prefix, *seq[1:]] for seq in ids]
            types = [[seq[0], 0, *seq[1:]] for seq in types]
        if is_query and self.expand_queries:
            ids = [seq + [self.rule.mask_id] * (self.query_length - len(seq)) for seq in ids]
            types = [seq + [0] * (self.query_length - len(seq)) for seq in types]
        return Tokenized(ids=ids, type_ids=types)


class MultiVectorHead(nn.Module):
    """Dense layers over the kept tokens of each sequence, L2-normalised -> [n_b, d] per sequence.

    `rule` set: ColBERT (documents lose skip-list tokens, queries keep every token);
    `rule` None: BGE-M3 (every token but the first)."""

    def __init__(self, layers: Sequence[TokenDense], *, rule: ColbertRule | None, tokens: ColbertTokens | None = None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.rule = rule
        self.tokens = tokens  # how prepare_encode tokenizes for this model (ColBERT only)
        self._skiplist = np.asarray(sorted(rule.skiplist_ids) if rule else [], dtype=np.int64)
        self.dim = layers[-1].out_features  # width of the vectors

    def _keep(self, batch: PackedBatch) -> np.ndarray:
        """[T] bool: the tokens that get a vector."""
        bounds = batch.cu_seqlens.tolist()
        keep = np.ones(batch.num_tokens, dtype=bool)
        if self.rule is None:
            keep[bounds[:-1]] = False
            return keep
        ids = batch.input_ids.cpu().numpy()
        for start, stop in itertools.pairwise(bounds):
            seq = ids[start:stop]
            if not self.rule.is_query(seq.tolist()):
                keep[start:stop] = ~np.isin(seq, self._skiplist)
        return keep

    def forward(self, hidden: torch.Tensor, batch: PackedBatch) -> list[np.ndarray]:
        keep = self._keep(batch)
        x = hidden[torch.from_numpy(keep).to(hidden.device)]  # [K, h]
        for layer in self.layers:
            x = layer(x)
        vectors = F.normalize(x.float(), p=2.0, dim=-1, eps=1e-12).cpu().numpy()  # [K, d]
        bounds = batch.cu_seqlens.tolist()
        counts = [int(keep[a:b].sum()) for a, b in itertools.pairwise(bounds)]
        return np.split(vectors, np.cumsum(counts)[:-1])


# -- query expansion without attention to the [MASK] tokens -----------------------------------


@dataclass
class _ExpansionPlan:
    """Per batch: the sequences with expansion tokens (run here, padded, keys masked) and the
    rest (run by the engine's own backend as a smaller packed batch)."""

    masked_rows: torch.Tensor | None = None  # [Tm] rows of the packed batch in the masked group
    pad_index: torch.Tensor | None = None  # [Tm] row of each in a [Bm * L] padded buffer
    key_ok: torch.Tensor | None = None  # [Bm, L] bool: real, non-expansion tokens
    rest_rows: torch.Tensor | None = None
    rest: PackedBatch | None = None


def _subset(batch: PackedBatch, rows: torch.Tensor, lengths: list[int]) -> PackedBatch:
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths), 0)
    return PackedBatch(
        input_ids=batch.input_ids[rows],
        position_ids=batch.position_ids[rows],
        token_type_ids=batch.token_type_ids[rows],
        cu_seqlens=cu.to(batch.device),
        lengths=tuple(lengths),
    )


def _plan(batch: PackedBatch, rule: ColbertRule) -> _ExpansionPlan:
    ids = batch.input_ids.cpu().tolist()
    bounds = batch.cu_seqlens.tolist()
    masked: list[tuple[int, int, int]] = []  # (start, stop, expansion tokens)
    rest: list[tuple[int, int]] = []
    for start, stop in itertools.pairwise(bounds):
        count = rule.expansion(ids[start:stop])
        if count:
            masked.append((start, stop, count))
        else:
            rest.append((start, stop))
    plan = _ExpansionPlan()
    if not masked:
        return plan
    device = batch.device
    longest = max(stop - start for start, stop, _ in masked)
    plan.masked_rows = torch.tensor([t for a, b, _ in masked for t in range(a, b)], device=device)
    plan.pad_index = torch.tensor([i * longest + p for i, (a, b, _) in enumerate(masked) for p in range(b - a)], device=device)
    lengths = torch.tensor([stop - start for start, stop, _ in masked])
    attended = lengths - torch.tensor([count for _, _, count in masked])
    plan.key_ok = (torch.arange(longest)[None, :] < attended[:, None]).to(device)
    if rest:
        plan.rest_rows = torch.tensor([t for a, b in rest for t in range(a, b)], device=device)
        plan.rest = _subset(batch, plan.rest_rows, [b - a for a, b in rest])
    return plan


def _window_mask(n: int, device: torch.device, causal: bool, window: Window | None) -> torch.Tensor | None:
    if not causal and window is None:
        return None
    pos = torch.arange(n, device=device)
    offset = pos[None, :] - pos[:, None]  # j - i
    ok = torch.ones(n, n, dtype=torch.bool, device=device)
    if causal:
        ok &= offset <= 0
    if window is not None:
        ok &= (offset >= -window[0]) & (offset <= window[1])
    return ok


def _key_masked(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: _ExpansionPlan, *, scale: float, causal: bool, window: Window | None
) -> torch.Tensor:
    """Attention of the masked group, padded to [Bm, H, L, D], expansion keys hidden."""
    assert plan.key_ok is not None and plan.pad_index is not None
    groups, longest = plan.key_ok.shape
    heads, dim = q.shape[1:]

    def pad(x: torch.Tensor) -> torch.Tensor:  # [Tm, Hx, D] -> [Bm, Hx, L, D]
        padded = x.new_zeros(groups * longest, x.shape[1], dim)
        padded.index_copy_(0, plan.pad_index, x)  # type: ignore[arg-type]
        return padded.view(groups, longest, x.shape[1], dim).transpose(1, 2)

    mask = plan.key_ok[:, None, None, :]  # [Bm, 1, 1, L]; [CLS] is always a key: no empty row
    allowed = _window_mask(longest, q.device, causal, window)
    if allowed is not None:
        mask = mask & allowed
    out = F.scaled_dot_product_attention(
        pad(q), pad(k), pad(v), attn_mask=mask, scale=scale, enable_gqa=k.shape[1] != heads
    )
    return out.transpose(1, 2).reshape(groups * longest, heads, dim).index_select(0, plan.pad_index)


def expansion_attention(inner: Attention, rule: ColbertRule) -> Attention:
    """`inner` for every sequence without expansion tokens; for queries with them, attention in
    which no token attends to an expansion [MASK] token (HF's attention_mask = 0 on them) while
    they still attend to the query, as PyLate / ColBERT run queries by default."""

    def attend(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        batch: PackedBatch,
        *,
        scale: float,
        causal: bool = False,
        window: Window | None = None,
    ) -> torch.Tensor:
        plan = batch.attn_cache.get("colbert_expansion")
        if plan is None:  # once per forward pass: every layer reuses it
            plan = batch.attn_cache["colbert_expansion"] = _plan(batch, rule)
        if plan.masked_rows is None:
            return inner(q, k, v, batch, scale=scale, causal=causal, window=window)
        out = torch.empty_like(q)
        if plan.rest is not None:
            rows = plan.rest_rows
            out[rows] = inner(q[rows], k[rows], v[rows], plan.rest, scale=scale, causal=causal, window=window)
        rows = plan.masked_rows
        out[rows] = _key_masked(q[rows], k[rows], v[rows], plan, scale=scale, causal=causal, window=window)
        return out

    return Attention(f"{inner.name}+colbert-expansion", attend)
