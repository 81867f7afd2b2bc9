"""A loaded model: tokenizer + encoder + head, and the tokenize -> pack -> forward -> head path."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from remora.core.batch import pack
from remora.core.batcher import plan_batches
from remora.core.config import ModelSpec
from remora.core.errors import UnsupportedTask
from remora.core.heads.dense import DenseStep
from remora.core.heads.pooling import Pooler, normalize
from remora.core.layers.activations import module_act
from remora.core.layers.attention import Attention
from remora.core.tokenizer import TextTokenizer, Tokenized

Kind = Literal["encode", "score"]


@dataclass(frozen=True)
class Prepared:
    """One request's tokenized inputs: the unit the scheduler queues."""

    kind: Kind
    tokens: Tokenized
    prompt_len: int  # prompt tokens to leave out of pooling (0 when the model pools them)

    @property
    def size(self) -> int:
        return len(self.tokens.ids)


@dataclass(frozen=True)
class Runtime:
    """Where and how models run; fixed at engine start."""

    device: torch.device
    attention: Attention
    max_batch_tokens: int
    max_batch_size: int


class TextModel(nn.Module):
    """Encoder plus an optional classification head; one module so loading checks both at once."""

    def __init__(self, encoder: nn.Module, head: nn.Module | None) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head


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
    ) -> None:
        self.spec = spec
        self.architecture = architecture
        self.module = module
        self.tokenizer = tokenizer
        self.post = list(post)
        self.runtime = runtime
        self.pooler = Pooler(spec.pooling or ("mean",), include_prompt=bool(spec.include_prompt))
        self._score_activation = module_act(score_activation)
        self._prompt_lengths: dict[str, int] = {}
        self.num_labels = int(getattr(module.head, "num_labels", 0))
        # Dense / Normalize steps in the model's order; a trailing Normalize is split off because
        # requests may override the final normalisation (a Normalize feeding a Dense may not).
        self._trailing_normalize = bool(self.post) and self.post[-1] == "normalize"
        self._body = self.post[:-1] if self._trailing_normalize else list(self.post)

    @property
    def dim(self) -> int:
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

    def prepare_encode(
        self, texts: Sequence[str], *, is_query: bool = False, prompt: str | None = None, truncate: bool = True
    ) -> Prepared:
        """Tokenize texts for encoding (the prompt prepended), checking the model encodes."""
        if "encode" not in (self.spec.tasks or ()):
            raise UnsupportedTask(f"model {self.spec.id!r} ({self.architecture}) does not encode")
        prompt = self.prompt_for(is_query=is_query) if prompt is None else prompt
        inputs = [prompt + t for t in texts] if prompt else list(texts)
        return Prepared("encode", self.tokenizer.encode(inputs, truncate=truncate), self._prompt_length(prompt))

    def prepare_pairs(
        self, queries: Sequence[str], documents: Sequence[str], *, truncate: bool = True
    ) -> Prepared:
        head = self.module.head
        if head is None or "score" not in (self.spec.tasks or ()):
            raise UnsupportedTask(f"model {self.spec.id!r} ({self.architecture}) does not score pairs")
        return Prepared("score", self.tokenizer.encode_pairs(queries, documents, truncate=truncate), 0)

    def width(self, kind: Kind) -> int:
        return self.dim if kind == "encode" else self.num_labels

    def forward(
        self, kind: Kind, ids: Sequence[list[int]], type_ids: Sequence[list[int]], prompt_lens: Sequence[int]
    ) -> torch.Tensor:
        """One packed forward pass over sequences of any requests -> [B, width] float32 on CPU:
        pooled vectors through the model's Dense steps (final normalisation is per request),
        or classifier logits."""
        runtime = self.runtime
        with torch.inference_mode():
            batch = pack(ids, type_ids).to(runtime.device)
            hidden = self.module.encoder(batch)  # [T, h]
            if kind == "score":
                assert self.module.head is not None
                return self.module.head(hidden, batch).float().cpu()  # [B, labels]
            if self.pooler.include_prompt or not any(prompt_lens):
                skip: int | torch.Tensor = 0
            else:
                skip = torch.tensor(list(prompt_lens), dtype=torch.long, device=runtime.device)
            pooled = self.pooler(hidden, batch, prompt_len=skip)  # [B, pooled width]
            for step in self._body:
                pooled = step(pooled) if isinstance(step, DenseStep) else normalize(pooled)
            return pooled.float().cpu()  # [B, dim]

    def finish(
        self, kind: Kind, rows: np.ndarray, *, normalize_output: bool | None = None, apply_activation: bool = True
    ) -> np.ndarray:
        """Per-request last step on [N, width] rows: the final normalisation (the model's own
        unless `normalize_output` says otherwise) or the cross-encoder's activation."""
        tensor = torch.from_numpy(rows)
        if kind == "encode":
            if normalize_output or (normalize_output is None and self._trailing_normalize):
                tensor = normalize(tensor)
        elif apply_activation:
            tensor = self._score_activation(tensor)
        return tensor.numpy()

    def run(self, prepared: Prepared) -> np.ndarray:
        """Forward every sequence of one request in token-budget batches -> [N, width] rows."""
        tokens = prepared.tokens
        runtime = self.runtime
        out = np.empty((prepared.size, self.width(prepared.kind)), dtype=np.float32)
        plan = plan_batches(tokens.lengths, max_tokens=runtime.max_batch_tokens, max_seqs=runtime.max_batch_size)
        for indices in plan:
            rows = self.forward(
                prepared.kind,
                [tokens.ids[i] for i in indices],
                [tokens.type_ids[i] for i in indices],
                [prepared.prompt_len] * len(indices),
            )
            out[np.asarray(indices)] = rows.numpy()
        return out

    def workspace_bytes(self, num_tokens: int, longest: int) -> int:
        """Activation memory a forward pass of `num_tokens` needs at its peak (an estimate for
        the memory budget): a few hidden-width tensors and the FFN's intermediate per token,
        plus one sequence's attention scores."""
        encoder = self.module.encoder
        hidden = int(getattr(encoder, "hidden_size", 0))
        args = getattr(encoder, "args", None)
        intermediate = int(getattr(args, "intermediate_size", 4 * hidden))
        heads = int(getattr(args, "num_heads", 1))
        element = next(self.module.parameters()).element_size()
        per_token = (8 * hidden + 2 * intermediate) * element
        return num_tokens * per_token + heads * longest * longest * 4

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

    def _prompt_length(self, prompt: str) -> int:
        if not prompt or self.pooler.include_prompt:
            return 0
        if prompt not in self._prompt_lengths:
            self._prompt_lengths[prompt] = self.tokenizer.prompt_length(prompt)
        return self._prompt_lengths[prompt]

    def score(
        self, query: str, documents: Sequence[str], *, truncate: bool = True, apply_activation: bool = True
    ) -> np.ndarray:
        """(query, document) pairs -> [N] float32 relevance, from a single-label cross-encoder."""
        self.check_single_label()
        queries = [query] * len(documents)
        return self.score_pairs(queries, documents, truncate=truncate, apply_activation=apply_activation)[:, 0]

    def check_single_label(self) -> None:
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
