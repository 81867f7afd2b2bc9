"""A loaded model: tokenizer + encoder + head, and the tokenize -> pack -> forward -> head path."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from remora.core.batch import PackedBatch, pack
from remora.core.batcher import plan_batches
from remora.core.config import ModelSpec
from remora.core.errors import UnsupportedTask
from remora.core.heads.dense import DenseStep
from remora.core.heads.pooling import Pooler, normalize
from remora.core.layers.activations import module_act
from remora.core.layers.attention import Attention
from remora.core.tokenizer import TextTokenizer, Tokenized


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

    # -- encode ---------------------------------------------------------------------------

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
        if "encode" not in (self.spec.tasks or ()):
            raise UnsupportedTask(f"model {self.spec.id!r} ({self.architecture}) does not encode")
        prompt = self.prompt_for(is_query=is_query) if prompt is None else prompt
        inputs = [prompt + t for t in texts] if prompt else list(texts)
        tokens = self.tokenizer.encode(inputs, truncate=truncate)
        prompt_len = self._prompt_length(prompt)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for index, pooled in self._run(tokens, lambda h, b: self.pooler(h, b, prompt_len=prompt_len)):
            out[index] = self._post(pooled, normalize_output).cpu().numpy()
        return out

    def _post(self, pooled: torch.Tensor, normalize_output: bool | None) -> torch.Tensor:
        """Dense / Normalize modules in the model's order. `normalize_output` decides only the
        final normalisation; a Normalize that feeds a Dense is part of the model and always runs."""
        steps = self.post
        trailing = bool(steps) and steps[-1] == "normalize"
        body = steps[:-1] if trailing else steps
        for step in body:
            pooled = step(pooled) if isinstance(step, DenseStep) else normalize(pooled)
        if normalize_output or (normalize_output is None and trailing):
            pooled = normalize(pooled)
        return pooled

    def _prompt_length(self, prompt: str) -> int:
        if not prompt or self.pooler.include_prompt:
            return 0
        if prompt not in self._prompt_lengths:
            self._prompt_lengths[prompt] = self.tokenizer.prompt_length(prompt)
        return self._prompt_lengths[prompt]

    # -- score ----------------------------------------------------------------------------

    def score(
        self, query: str, documents: Sequence[str], *, truncate: bool = True, apply_activation: bool = True
    ) -> np.ndarray:
        """(query, document) pairs -> [N] float32 relevance, from a single-label cross-encoder."""
        if self.num_labels != 1:
            raise UnsupportedTask(
                f"model {self.spec.id!r} has {self.num_labels} labels, not one relevance score; "
                "use score_pairs for per-label scores"
            )
        queries = [query] * len(documents)
        return self.score_pairs(queries, documents, truncate=truncate, apply_activation=apply_activation)[:, 0]


    def score_pairs(
        self, queries: Sequence[str], documents: Sequence[str], *, truncate: bool = True, apply_activation: bool = True
    ) -> np.ndarray:
        """Pairs -> [N, num_labels] float32, activated as sentence-transformers' CrossEncoder does."""
        head = self.module.head
        if head is None or "score" not in (self.spec.tasks or ()):
            raise UnsupportedTask(f"model {self.spec.id!r} ({self.architecture}) does not score pairs")
        tokens = self.tokenizer.encode_pairs(queries, documents, truncate=truncate)
        out = np.empty((len(queries), self.num_labels), dtype=np.float32)
        for index, logits in self._run(tokens, head):
            activated = self._score_activation(logits.float()) if apply_activation else logits.float()
            out[index] = activated.cpu().numpy()
        return out

    # -- shared path ----------------------------------------------------------------------

    def _run(
        self, tokens: Tokenized, head: Callable[[torch.Tensor, PackedBatch], torch.Tensor]
    ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """Yield (indices, head output) per planned batch: pack -> forward -> head."""
        runtime = self.runtime
        plan = plan_batches(tokens.lengths, max_tokens=runtime.max_batch_tokens, max_seqs=runtime.max_batch_size)
        with torch.inference_mode():
            for indices in plan:
                batch = pack([tokens.ids[i] for i in indices], [tokens.type_ids[i] for i in indices])
                batch = batch.to(runtime.device)
                hidden = self.module.encoder(batch)  # [T, h]
                yield np.asarray(indices), head(hidden, batch)
