"""A loaded model: tokenizer + encoder + head, and the tokenize -> pack -> forward -> head path."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import numpy as np
import torch
from torch import nn

from remora.core.batch import PackedBatch, pack
from remora.core.batcher import plan_batches
from remora.core.config import ModelSpec
from remora.core.errors import InputTooLong, UnsupportedTask
from remora.core.heads.dense import DenseStep
from remora.core.heads.multivector import ColbertTokens, maxsim
from remora.core.heads.pooling import Pooler, normalize
from remora.core.heads.sparse import BLOCK_ELEMENTS as SPARSE_BLOCK_ELEMENTS
from remora.core.heads.yes_no import YesNoHead
from remora.core.layers.activations import module_act
from remora.core.layers.attention import Attention
from remora.core.prompts import RERANKER_PREFIX, RERANKER_SUFFIX, reranker_body
from remora.core.tokenizer import TextTokenizer, Tokenized

Kind = Literal["encode", "score", "extract"]
Output = Literal["dense", "sparse", "multivector"]
OUTPUTS: tuple[Output, ...] = ("dense", "sparse", "multivector")

# A forward pass's results, by name, indexable by sequence: "dense" [B, dim] and "scores"
# [B, labels] are arrays; "sparse", "multivector" and "tokens" (per-token logits) are lists.
Rows = dict[str, Any]
STACKED = ("dense", "scores")


@dataclass(frozen=True)
class Prepared:
    """One request's tokenized inputs: the unit the scheduler queues."""

    kind: Kind
    tokens: Tokenized
    prompt_len: int  # prompt tokens to leave out of pooling (0 when the model pools them)
    outputs: tuple[Output, ...] = ("dense",)  # what an encode request wants from the pass
    # Host-side data the finishing step needs (extraction: texts, offsets, labels); never batched.
    extra: Any = None

    @property
    def size(self) -> int:
        return len(self.tokens.ids)

    @property
    def group(self) -> tuple[Kind, tuple[Output, ...]]:
        """Requests of one group share forward passes."""
        return (self.kind, self.outputs if self.kind == "encode" else ())


@dataclass(frozen=True)
class Encoded:
    """One encode request's finished outputs; the ones not asked for are None."""

    dense: np.ndarray | None = None  # [N, dim] float32
    sparse: list[Any] | None = None  # N SparseVector (indices ascending, values)
    multivector: list[np.ndarray] | None = None  # N arrays [n_tokens, d] float32

    def __len__(self) -> int:
        for part in (self.dense, self.sparse, self.multivector):
            if part is not None:
                return len(part)
        return 0


@dataclass(frozen=True)
class Runtime:
    """Where and how models run; fixed at engine start."""

    device: torch.device
    attention: Attention
    max_batch_tokens: int
    max_batch_size: int


class TextModel(nn.Module):
    """Encoder plus its optional heads; one module so loading checks them all at once.

    `head` is the task head (sequence classifier for score, token classifier for extract);
    `sparse` and `multivector` are extra encode outputs (SPLADE / BGE-M3 sparse weights,
    ColBERT token vectors), each mapping (hidden [T, h], batch) to one result per sequence.
    """

    def __init__(
        self,
        encoder: nn.Module,
        head: nn.Module | None,
        *,
        sparse: nn.Module | None = None,
        multivector: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.sparse = sparse
        self.multivector = multivector


class LoadedModel:
    def __init__(
        self,
        spec: ModelSpec,
        architecture: str,
        module: TextModel,
        tokenizer: TextTokenizer,
        post: Sequence[DenseStep | str],
        runtime: Runtime,
        *,
        score_activation: str | None,
        no_dense: bool = False,
    ) -> None:
        self.spec = spec
        self.architecture = architecture
        self.module = module
        self.tokenizer = tokenizer
        self.post = list(post)
        self.runtime = runtime
        self.no_dense = no_dense
        self.pooler = Pooler(spec.pooling or ("mean",), include_prompt=bool(spec.include_prompt))
        self._score_activation = module_act(score_activation)
        self._prompt_lengths: dict[str, int] = {}
        self._template: tuple[list[int], list[int]] | None = None
        self.num_labels = int(getattr(module.head, "num_labels", 0))
        # Dense / Normalize steps in the model's order; a trailing Normalize is split off because
        # requests may override the final normalisation (a Normalize feeding a Dense may not).
        self._trailing_normalize = bool(self.post) and self.post[-1] == "normalize"
        self._body = self.post[:-1] if self._trailing_normalize else list(self.post)

    @property
    def dim(self) -> int:
        """Width of the dense vectors, or of the token vectors of a multi-vector-only model."""
        if not self.has_dense and self.module.multivector is not None:
            return int(cast(Any, self.module.multivector).dim)
        width = self.pooler.output_dim(self.module.encoder.hidden_size)
        for step in self.post:
            if isinstance(step, DenseStep):
                width = step.out_features
        return width

    @property
    def nbytes(self) -> int:
        tensors = [*self.module.parameters(), *self.module.buffers()]
        tensors += [p for step in self.post if isinstance(step, DenseStep) for p in step.parameters()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def prompt_for(self, *, is_query: bool) -> str:
        return (self.spec.query_prompt if is_query else self.spec.document_prompt) or ""

    # -- the three steps the scheduler drives: prepare, forward, finish ------------------

    @property
    def outputs(self) -> tuple[Output, ...]:
        """The encode outputs this model produces."""
        module = self.module
        found: list[Output] = []
        if self.has_dense:
            found.append("dense")
        if module.sparse is not None:
            found.append("sparse")
        if module.multivector is not None:
            found.append("multivector")
        return tuple(found)

    @property
    def has_dense(self) -> bool:
        # A SPLADE model's pooled vectors are its sparse ones; it has no dense output.
        return self.spec.tasks is not None and "encode" in self.spec.tasks and not self.no_dense

    def prepare_encode(
        self,
        texts: Sequence[str],
        *,
        is_query: bool = False,
        prompt: str | None = None,
        truncate: bool = True,
        outputs: Sequence[Output] = ("dense",),
    ) -> Prepared:
        """Tokenize texts for encoding (the prompt prepended), checking the model encodes."""
        if "encode" not in (self.spec.tasks or ()):
            raise UnsupportedTask(f"model {self.spec.id!r} ({self.architecture}) does not encode")
        wanted = tuple(dict.fromkeys(outputs))
        missing = [o for o in wanted if o not in self.outputs]
        if missing or not wanted:
            raise UnsupportedTask(
                f"model {self.spec.id!r} ({self.architecture}) has no {', '.join(missing) or 'requested'} output; "
                f"it produces: {', '.join(self.outputs) or 'nothing'}"
            )
        prompt = self.prompt_for(is_query=is_query) if prompt is None else prompt
        inputs = [prompt + t for t in texts] if prompt else list(texts)
        colbert = self._colbert_tokens()
        if colbert is not None:
            # ColBERT: [Q]/[D] token after [CLS], its own lengths, queries expanded with [MASK].
            tokens = colbert.encode(inputs, is_query=is_query, truncate=truncate)
        else:
            tokens = self.tokenizer.encode(inputs, truncate=truncate)
        return Prepared("encode", tokens, self._prompt_length(prompt), outputs=wanted)

    def _colbert_tokens(self) -> ColbertTokens | None:
        """The multi-vector head's own tokenization (ColBERT), when it has one."""
        tokens = getattr(self.module.multivector, "tokens", None)
        return tokens if isinstance(tokens, ColbertTokens) else None

    def prepare_pairs(
        self, queries: Sequence[str], documents: Sequence[str], *, truncate: bool = True
    ) -> Prepared:
        head = self.module.head
        if head is None or "score" not in (self.spec.tasks or ()):
            raise UnsupportedTask(f"model {self.spec.id!r} ({self.architecture}) does not score pairs")
        if isinstance(head, YesNoHead):
            return Prepared("score", self._reranker_prompts(queries, documents, truncate=truncate), 0)
        return Prepared("score", self.tokenizer.encode_pairs(queries, documents, truncate=truncate), 0)

    def _reranker_prompts(self, queries: Sequence[str], documents: Sequence[str], *, truncate: bool) -> Tokenized:
        """Qwen3-Reranker's chat template around each pair. As the reference does, the fixed prefix
        and suffix are tokenized apart and only the body between them is cut to fit max_len."""
        if self._template is None:
            prefix, suffix = self.tokenizer.encode_plain([RERANKER_PREFIX, RERANKER_SUFFIX])
            self._template = (prefix, suffix)
        prefix, suffix = self._template
        room = self.tokenizer.max_len - len(prefix) - len(suffix)
        bodies = self.tokenizer.encode_plain(
            [reranker_body(q, d, self.spec.instruction) for q, d in zip(queries, documents, strict=True)]
        )
        ids = []
        for index, body in enumerate(bodies):
            if len(body) > room:
                if not truncate:
                    raise InputTooLong(
                        f"pair {index} is {len(body) + len(prefix) + len(suffix)} tokens long with the reranker's "
                        f"template; this model takes at most {self.tokenizer.max_len} (send truncate=true to cut it)"
                    )
                body = body[: max(room, 0)]
            ids.append(prefix + body + suffix)
        return Tokenized(ids=ids, type_ids=[[0] * len(x) for x in ids])

    def forward(
        self,
        kind: Kind,
        ids: Sequence[list[int]],
        type_ids: Sequence[list[int]],
        prompt_lens: Sequence[int],
        outputs: Sequence[Output] = ("dense",),
    ) -> Rows:
        """One packed forward pass over sequences of any requests -> results by name, each
        indexable by sequence, on the CPU: "dense" pooled vectors through the model's Dense steps
        (final normalisation is per request) [B, dim]; "sparse" / "multivector" lists; "scores"
        classifier logits [B, labels]; "tokens" per-token logits, a list of [n, labels]."""
        runtime = self.runtime
        module = self.module
        with torch.inference_mode():
            batch = pack(ids, type_ids).to(runtime.device)
            hidden = module.encoder(batch)  # [T, h]
            if kind == "score":
                assert module.head is not None
                return {"scores": module.head(hidden, batch).float().cpu().numpy()}  # [B, labels]
            if kind == "extract":
                assert module.head is not None
                logits = module.head(hidden, batch).float().cpu()  # [T, labels]
                return {"tokens": list(logits.split(list(batch.lengths)))}
            rows: Rows = {}
            for output in outputs:
                if output == "dense":
                    rows["dense"] = self._pool(hidden, batch, prompt_lens).numpy()
                elif output == "sparse":
                    assert module.sparse is not None
                    rows["sparse"] = module.sparse(hidden, batch)
                else:
                    assert module.multivector is not None
                    rows["multivector"] = module.multivector(hidden, batch)
            return rows

    def _pool(self, hidden: torch.Tensor, batch: PackedBatch, prompt_lens: Sequence[int]) -> torch.Tensor:
        """hidden [T, h] -> [B, dim] float32 on the CPU, through the model's Dense steps."""
        if self.pooler.include_prompt or not any(prompt_lens):
            skip: int | torch.Tensor = 0
        else:
            skip = torch.tensor(list(prompt_lens), dtype=torch.long, device=batch.device)
        pooled = self.pooler(hidden, batch, prompt_len=skip)  # [B, pooled width]
        for step in self._body:
            pooled = step(pooled) if isinstance(step, DenseStep) else normalize(pooled)
        return pooled.float().cpu()  # [B, dim]

    def collect(self, prepared: Prepared, items: Sequence[dict[str, Any]]) -> Rows:
        """Per-sequence results (in request order) -> one request's Rows."""
        names = self._result_names(prepared)
        rows: Rows = {}
        for name in names:
            values = [item[name] for item in items]
            if name in STACKED:
                width = self.dim if name == "dense" else self.num_labels
                rows[name] = np.stack(values) if values else np.empty((0, width), np.float32)
            else:
                rows[name] = values
        return rows

    @staticmethod
    def _result_names(prepared: Prepared) -> tuple[str, ...]:
        if prepared.kind == "score":
            return ("scores",)
        if prepared.kind == "extract":
            return ("tokens",)
        return prepared.outputs

    def finish(
        self, kind: Kind, rows: Rows, *, normalize_output: bool | None = None, apply_activation: bool = True
    ) -> np.ndarray:
        """Per-request last step on the dense vectors (the final normalisation, the model's own
        unless `normalize_output` says otherwise) or the scores (the cross-encoder's activation)
        -> [N, width] float32."""
        if kind == "encode":
            tensor = torch.from_numpy(rows["dense"])
            if normalize_output or (normalize_output is None and self._trailing_normalize):
                tensor = normalize(tensor)
        else:
            tensor = torch.from_numpy(rows["scores"])
            if apply_activation:
                tensor = self._score_activation(tensor)
        return tensor.numpy()

    def run(self, prepared: Prepared) -> Rows:
        """Forward every sequence of one request in token-budget batches -> its Rows."""
        tokens = prepared.tokens
        runtime = self.runtime
        items: list[dict[str, Any]] = [{} for _ in range(prepared.size)]
        plan = plan_batches(tokens.lengths, max_tokens=runtime.max_batch_tokens, max_seqs=runtime.max_batch_size)
        for indices in plan:
            rows = self.forward(
                prepared.kind,
                [tokens.ids[i] for i in indices],
                [tokens.type_ids[i] for i in indices],
                [prepared.prompt_len] * len(indices),
                prepared.outputs,
            )
            for b, i in enumerate(indices):
                items[i] = {name: value[b] for name, value in rows.items()}
        return self.collect(prepared, items)

    def workspace_bytes(self, num_tokens: int, longest: int) -> int:
        """Activation memory a forward pass of `num_tokens` needs at its peak (an estimate for
        the memory budget): a few hidden-width tensors and the FFN's intermediate per token,
        plus one sequence's attention scores."""
        encoder = self.module.encoder
        hidden = int(getattr(encoder, "hidden_size", 0))
        intermediate = int(getattr(encoder, "intermediate_size", 4 * hidden))
        heads = int(getattr(encoder, "num_heads", 1))
        element = next(self.module.parameters()).element_size()
        per_token = (8 * hidden + 2 * intermediate) * element
        extra = 0
        sparse = self.module.sparse
        if sparse is not None:
            # The [tokens, vocab] logits block and the [B, vocab] pooled weights, in fp32.
            vocab = int(getattr(sparse, "vocab_size", 0))
            extra = SPARSE_BLOCK_ELEMENTS * 4 + min(num_tokens, self.runtime.max_batch_size) * vocab * 4
        return num_tokens * per_token + heads * longest * longest * 4 + extra

    # -- whole requests, in process ------------------------------------------------------

    def encode(
        self,
        texts: Sequence[str],
        *,
        is_query: bool = False,
        prompt: str | None = None,
        normalize_output: bool | None = None,
        truncate: bool = True,
    ) -> np.ndarray:
        """texts -> [N, dim] float32."""
        prepared = self.prepare_encode(texts, is_query=is_query, prompt=prompt, truncate=truncate)
        return self.finish("encode", self.run(prepared), normalize_output=normalize_output)

    def encode_outputs(
        self,
        texts: Sequence[str],
        *,
        outputs: Sequence[Output],
        is_query: bool = False,
        prompt: str | None = None,
        normalize_output: bool | None = None,
        truncate: bool = True,
    ) -> Encoded:
        """texts -> the requested outputs of one forward pass (BGE-M3 gives all three at once)."""
        prepared = self.prepare_encode(texts, is_query=is_query, prompt=prompt, truncate=truncate, outputs=outputs)
        return self.finish_encoded(self.run(prepared), normalize_output=normalize_output)

    def finish_encoded(self, rows: Rows, *, normalize_output: bool | None = None) -> Encoded:
        dense = self.finish("encode", rows, normalize_output=normalize_output) if "dense" in rows else None
        multivector = None
        if "multivector" in rows:
            multivector = [np.asarray(v, dtype=np.float32) for v in rows["multivector"]]
        return Encoded(dense=dense, sparse=rows.get("sparse"), multivector=multivector)

    @property
    def relevance(self) -> Literal["cross_encoder", "late_interaction", "cosine"] | None:
        """How this model scores a (query, document) pair: its classifier, the cosine of its dense
        embeddings, or ColBERT MaxSim over token vectors for a multi-vector-only model; None when
        it can do none. BGE-M3 has both and uses dense, as FlagEmbedding's default."""
        tasks = self.spec.tasks or ()
        if "score" in tasks and self.module.head is not None:
            return "cross_encoder"
        if "dense" in self.outputs:
            return "cosine"
        if "multivector" in self.outputs:
            return "late_interaction"
        return None

    def relevance_scores(self, query: Encoded, documents: Encoded) -> np.ndarray:
        """[N] float32 from the query's and the documents' encodings (see `relevance`)."""
        if self.relevance == "late_interaction":
            assert query.multivector is not None and documents.multivector is not None
            return np.asarray([maxsim(query.multivector[0], doc) for doc in documents.multivector], np.float32)
        assert query.dense is not None and documents.dense is not None
        q = query.dense[0] / max(float(np.linalg.norm(query.dense[0])), 1e-12)
        docs = documents.dense / np.maximum(np.linalg.norm(documents.dense, axis=1, keepdims=True), 1e-12)
        return (docs @ q).astype(np.float32)

    def similarity_outputs(self) -> tuple[Output, ...]:
        return ("multivector",) if self.relevance == "late_interaction" else ("dense",)

    def _prompt_length(self, prompt: str) -> int:
        if not prompt or self.pooler.include_prompt:
            return 0
        if prompt not in self._prompt_lengths:
            self._prompt_lengths[prompt] = self.tokenizer.prompt_length(prompt)
        return self._prompt_lengths[prompt]

    def score(
        self, query: str, documents: Sequence[str], *, truncate: bool = True, apply_activation: bool = True
    ) -> np.ndarray:
        """(query, document) pairs -> [N] float32 relevance: a single-label cross-encoder's score,
        or, for an embedder, MaxSim (ColBERT) or the cosine of query and document embeddings."""
        if self.relevance in ("late_interaction", "cosine"):
            outputs = self.similarity_outputs()
            q = self.encode_outputs([query], outputs=outputs, is_query=True, truncate=truncate)
            docs = self.encode_outputs(documents, outputs=outputs, truncate=truncate)
            return self.relevance_scores(q, docs)
        self.check_single_label()
        queries = [query] * len(documents)
        return self.score_pairs(queries, documents, truncate=truncate, apply_activation=apply_activation)[:, 0]

    def check_single_label(self) -> None:
        if self.relevance is None:
            raise UnsupportedTask(f"model {self.spec.id!r} ({self.architecture}) cannot score pairs")
        if self.relevance != "cross_encoder":
            return
        if self.num_labels != 1:
            raise UnsupportedTask(
                f"model {self.spec.id!r} has {self.num_labels} labels, not one relevance score; "
                "use score_pairs for per-label scores"
            )

    def score_pairs(
        self, queries: Sequence[str], documents: Sequence[str], *, truncate: bool = True, apply_activation: bool = True
    ) -> np.ndarray:
        """Pairs -> [N, num_labels] float32, activated as sentence-transformers' CrossEncoder does."""
        prepared = self.prepare_pairs(queries, documents, truncate=truncate)
        return self.finish("score", self.run(prepared), apply_activation=apply_activation)
