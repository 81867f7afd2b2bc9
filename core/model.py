"""A loaded model: tokenizer + encoder + head, and the tokenize -> pack -> forward -> head path.

`load_model` turns a ModelSpec into a LoadedModel with every field of its spec resolved from the
model directory (sentence-transformers files first, then config.json and tokenizer_config.json).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from remora.core.batch import pack
from remora.core.batcher import plan_batches
from remora.core.config import ModelSpec
from remora.core.errors import ModelLoadError, UnsupportedTask, WeightsError
from remora.core.heads.cross_encoder import BertClassificationHead, RobertaClassificationHead
from remora.core.heads.dense import DenseStep
from remora.core.heads.pooling import Pooler, normalize
from remora.core.layers.activations import module_act
from remora.core.layers.attention import Attention
from remora.core.registry import Architecture, build_encoder, resolve
from remora.core.st_format import StConfig, read_json, read_st_config, tokenizer_max_length
from remora.core.tokenizer import TextTokenizer, Tokenized
from remora.core.weights import Checkpoint, expand, load_weights, prefixed

HEADS: dict[str, type[BertClassificationHead] | type[RobertaClassificationHead]] = {
    "bert": BertClassificationHead,
    "roberta": RobertaClassificationHead,
}

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


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

    def _run(self, tokens: Tokenized, head: Any) -> Any:
        """Yield (indices, head output) per planned batch: pack -> forward -> head."""
        runtime = self.runtime
        plan = plan_batches(tokens.lengths, max_tokens=runtime.max_batch_tokens, max_seqs=runtime.max_batch_size)
        with torch.inference_mode():
            for indices in plan:
                batch = pack([tokens.ids[i] for i in indices], [tokens.type_ids[i] for i in indices])
                batch = batch.to(runtime.device)
                hidden = self.module.encoder(batch)  # [T, h]
                yield np.asarray(indices), head(hidden, batch)


# -- loading ------------------------------------------------------------------------------


def _num_labels(config: dict[str, Any]) -> int:
    id2label = config.get("id2label")
    if isinstance(id2label, dict) and id2label:
        return len(id2label)
    return int(config.get("num_labels", 2))


def _resolve_spec(spec: ModelSpec, arch: Architecture, st: StConfig, config: dict[str, Any], max_tokens: int) -> ModelSpec:
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
        pooling=spec.pooling or st.pooling or ("mean",),
        include_prompt=st.include_prompt if spec.include_prompt is None else spec.include_prompt,
        normalize=bool(st.post) and st.post[-1].kind == "normalize" if spec.normalize is None else spec.normalize,
        # Never past what the position table holds, whatever the configs claim.
        max_seq_len=min(max_len, max_tokens),
        query_prompt=spec.query_prompt if spec.query_prompt is not None else query,
        document_prompt=spec.document_prompt if spec.document_prompt is not None else document,
    )


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name != "auto":
        return DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_model(spec: ModelSpec, runtime: Runtime) -> LoadedModel:
    path = Path(spec.path)
    if not path.is_dir():
        raise ModelLoadError(f"model directory {path} does not exist")
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} has no config.json")
    config = read_json(path / "config.json")
    arch_name, arch = resolve(config)
    st = read_st_config(path)
    checkpoint = Checkpoint.from_dir(path)

    try:
        # Parameters are allocated uninitialised, directly on the device; loading fills them all.
        with runtime.device:
            encoder = build_encoder(arch.family, config, runtime.attention)
            head = None
            if arch.head is not None:
                head = HEADS[arch.head](encoder.hidden_size, _num_labels(config))
    except (KeyError, ValueError, TypeError) as exc:
        raise ModelLoadError(f"cannot build {arch_name} from {path / 'config.json'}: {exc!r}") from exc
    module = TextModel(encoder, head)

    names = checkpoint.names()
    prefix = next((p for p in encoder.prefixes if f"{p}embeddings.word_embeddings.weight" in names), None)
    if prefix is None:
        raise WeightsError(
            f"checkpoint in {path} is missing tensors 'embeddings.word_embeddings.weight' "
            f"(looked under prefixes {list(encoder.prefixes)})"
        )
    table = {f"encoder.{k}": v for k, v in prefixed(expand(encoder.weight_table(), encoder.args.num_layers), prefix).items()}
    drop = [prefix + name for name in encoder.unused] + list(arch.unused)
    if head is not None:
        table.update({f"head.{k}": v for k, v in head.weight_table(prefix).items()})
        drop = [d for d in drop if d not in table.values()]
    load_weights(module, checkpoint, table, drop=drop, where=str(path))

    dtype = resolve_dtype(spec.dtype, runtime.device)
    module.to(dtype=dtype).eval()
    resolved = _resolve_spec(spec, arch, st, config, encoder.max_tokens)
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
        )
    except ValueError as exc:
        raise ModelLoadError(f"cannot load {path}: {exc}") from exc


def _score_activation(arch: Architecture, st: StConfig, config: dict[str, Any], head: nn.Module | None) -> str | None:
    """The activation sentence-transformers' CrossEncoder applies: saved in the model, else
    sigmoid for a single label and none for several."""
    if head is None:
        return None
    saved = (config.get("sentence_transformers") or {}).get("activation_fn") or st.activation_fn
    saved = saved or config.get("sbert_ce_default_activation_function")
    if saved:
        return str(saved)
    return "torch.nn.modules.activation.Sigmoid" if _num_labels(config) == 1 else None
