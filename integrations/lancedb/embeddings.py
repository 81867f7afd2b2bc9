"""LanceDB embedding functions that vectorize through a Remora sidecar.

`remora` embeds a text column into one dense vector per row; `remora-multivector` into one
ColBERT-style matrix per row (a LanceDB multivector column). Both are registered in LanceDB's
embedding registry, so a table created with them stores only their *configuration* (url, model,
dimensions, the name of a secret — never a secret) in its Arrow schema metadata, and a process that
imports `remora.integrations.lancedb` rebuilds them when it opens the table.

Source texts (`table.add`) are encoded with the model's document prompt, query texts
(`table.search("...")`) with its query prompt.
"""

from __future__ import annotations

import os
import threading
import time
from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
from lancedb.embeddings import TextEmbeddingFunction, register
from lancedb.embeddings.utils import TEXT
from pydantic import Field, PrivateAttr

from remora.integrations.client import InputType, RemoraClient, RemoraError, RemoraUnavailable

T = TypeVar("T")

# Answers worth another try: the sidecar restarting or shedding load. Anything else (unknown
# model, bad input, 401) is permanent, and retrying would only delay the error.
RETRYABLE_STATUS = frozenset({429, 502, 503, 504})
FIRST_BACKOFF_S = 0.5

# A document longer than any model's document length, of one word no ColBERT skiplist drops, so
# its vector count is the most one document can give (the sidecar truncates it to the model's).
PROBE_WORDS = 8192

# LanceDB rebuilds a function from the table's metadata on every `add` and asks `ndims()` for
# every batch, so the sidecar's answer is kept for the process: (url, model, options) -> shape.
_shapes: dict[tuple[object, ...], tuple[int, ...]] = {}
_lock = threading.Lock()  # guards _shapes and each function's lazily opened client


class _RemoraFunction(TextEmbeddingFunction):
    """What both functions share: where the sidecar is, how to authenticate, how to retry.

    Only the arguments given to `create()` are saved in the table's metadata (LanceDB keeps
    `create`'s raw kwargs), so `url=None` stays portable: the reopening process uses its own
    `$REMORA_URL`. The API key is a sensitive key: LanceDB refuses a literal value, so it is
    `$var:name` (set with `get_registry().set_var(name, key)` in every process) or, with
    `api_key_env`, the *name* of an environment variable; `$REMORA_API_KEY` when neither is given.
    """

    url: str | None = None
    model: str | None = None
    api_key: str | None = Field(default=None, repr=False)
    api_key_env: str | None = None
    timeout: float = Field(default=60.0, gt=0)
    # LanceDB's own default (7 retries from 2 s, doubling) would hide a dead sidecar for minutes;
    # here only unreachable / overloaded answers are retried, from FIRST_BACKOFF_S doubling.
    max_retries: int = Field(default=2, ge=0)

    _client: RemoraClient | None = PrivateAttr(default=None)

    @staticmethod
    def sensitive_keys() -> list[str]:
        return ["api_key"]

    @property
    def client(self) -> RemoraClient:
        """One connection pool per function, opened on first use (LanceDB embeds queries in worker threads)."""
        with _lock:
            if self._client is None:
                kwargs: dict[str, Any] = {"timeout": self.timeout}
                if self.url is not None:
                    kwargs["url"] = self.url
                if self.api_key is not None:
                    kwargs["api_key"] = self.api_key
                elif self.api_key_env is not None:
                    kwargs["api_key"] = os.environ.get(self.api_key_env) or None
                self._client = RemoraClient(**kwargs)
            return self._client

    # LanceDB wraps embedding calls in a retry loop that retries every exception and finally raises
    # a bare `Exception("Maximum number of retries ...", error)`; these keep the RemoraError.
    def compute_query_embeddings_with_retry(self, *args: Any, **kwargs: Any) -> list[Any]:
        return self._retrying(lambda: self.compute_query_embeddings(*args, **kwargs))

    def compute_source_embeddings_with_retry(self, *args: Any, **kwargs: Any) -> list[Any]:
        return self._retrying(lambda: self.compute_source_embeddings(*args, **kwargs))

    def _retrying(self, call: Callable[[], T]) -> T:
        attempt = 0
        while True:
            try:
                return call()
            except RemoraError as exc:
                transient = isinstance(exc, RemoraUnavailable) or exc.status in RETRYABLE_STATUS
                if not transient or attempt >= self.max_retries:
                    raise
            time.sleep(FIRST_BACKOFF_S * 2**attempt)
            attempt += 1

    def compute_query_embeddings(self, query: str, *args: Any, **kwargs: Any) -> list[Any]:
        return self._embed(self.sanitize_input(query), "query")

    def compute_source_embeddings(self, texts: TEXT, *args: Any, **kwargs: Any) -> list[Any]:
        return self._embed(self.sanitize_input(texts), "document")

    def generate_embeddings(self, texts: Sequence[str] | np.ndarray, *args: Any, **kwargs: Any) -> list[Any]:
        """Document-mode embeddings (TextEmbeddingFunction's abstract method)."""
        return self._embed(list(texts), "document")

    def _embed(self, texts: Sequence[str | None] | np.ndarray, input_type: InputType) -> list[Any]:
        """One embedding per text; None for a null text (LanceDB stores a null vector for it)."""
        texts = list(texts)
        present = [i for i, text in enumerate(texts) if text is not None]
        out: list[Any] = [None] * len(texts)
        if present:
            for i, row in zip(present, self._encode([str(texts[i]) for i in present], input_type), strict=True):
                out[i] = row
        return out

    @abstractmethod
    def _encode(self, texts: list[str], input_type: InputType) -> list[Any]:
        """The embeddings of non-null texts, in order."""

    def _shape(self, options: tuple[object, ...], probe: Callable[[], tuple[int, ...]]) -> tuple[int, ...]:
        key = (self.client.url, self.model, *options)
        with _lock:
            known = _shapes.get(key)
        if known is None:
            known = self._retrying(probe)
            with _lock:
                _shapes[key] = known
        return known


@register("remora")
class RemoraEmbeddings(_RemoraFunction):
    """Dense vectors from a Remora sidecar, one per row.

        from lancedb.embeddings import get_registry
        from lancedb.pydantic import LanceModel, Vector
        import remora.integrations.lancedb  # registers "remora"

        remora = get_registry().get("remora").create(model="all-MiniLM-L6-v2")

        class Doc(LanceModel):
            text: str = remora.SourceField()
            vector: Vector(remora.ndims()) = remora.VectorField()

    `dimensions` keeps the first N dimensions of a Matryoshka model (renormalised by the sidecar).
    """

    dimensions: int | None = Field(default=None, gt=0)

    def ndims(self) -> int:
        """The vector width, asked of the sidecar once per process."""
        def probe() -> tuple[int, ...]:
            dense = self.client.embed(["ndims"], model=self.model, dimensions=self.dimensions)
            return (len(dense[0]),)

        return self._shape(("dense", self.dimensions), probe)[0]

    def _encode(self, texts: list[str], input_type: InputType) -> list[Any]:
        dense = self.client.embed(texts, model=self.model, input_type=input_type, dimensions=self.dimensions)
        return [np.asarray(vector, dtype=np.float32) for vector in dense]


@register("remora-multivector")
class RemoraMultivectorEmbeddings(_RemoraFunction):
    """ColBERT-style token vectors from a Remora sidecar: one matrix per row, searched by MaxSim.

    Declared as `remora` is (see `RemoraEmbeddings`), with `"remora-multivector"` from the registry
    and a `MultiVector(colbert.dim())` vector column in place of `Vector(remora.ndims())`.

    LanceDB 0.40 stores null for every computed embedding whose `len()` differs from `ndims()`,
    and a matrix's `len()` is its number of vectors. So every document is stored as exactly
    `ndims()` vectors: `vectors_per_row`, by default the most the model gives for one document
    (asked of the sidecar once). A shorter document repeats its own vectors, which leaves MaxSim
    unchanged (a maximum over the same set); a longer one keeps its first `vectors_per_row`, as the
    model's own document-length truncation does. Set `vectors_per_row` for a model with a long
    document length: every row stores that many vectors. Queries are not padded.
    """

    vectors_per_row: int | None = Field(default=None, gt=0)

    def ndims(self) -> int:
        """The number of vectors each row holds (what LanceDB compares `len(embedding)` with)."""
        return self._matrix_shape()[0]

    def dim(self) -> int:
        """The width of each vector: the schema's `MultiVector(dim)`."""
        return self._matrix_shape()[1]

    def _matrix_shape(self) -> tuple[int, ...]:
        def probe() -> tuple[int, ...]:
            text = " ".join(["remora"] * PROBE_WORDS) if self.vectors_per_row is None else "ndims"
            matrix = self.client.embed_multivector([text], model=self.model)[0]
            return (self.vectors_per_row or len(matrix), len(matrix[0]))

        return self._shape(("multivector", self.vectors_per_row), probe)

    def _encode(self, texts: list[str], input_type: InputType) -> list[Any]:
        matrices = [np.asarray(m, dtype=np.float32) for m in
                    self.client.embed_multivector(texts, model=self.model, input_type=input_type)]
        if input_type == "query":
            return matrices
        rows = self.ndims()
        return [_fit(matrix, rows, self.client.url) for matrix in matrices]


def _fit(matrix: np.ndarray, rows: int, url: str) -> list[np.ndarray]:
    """Exactly `rows` vectors: the matrix's own, repeated in order or cut ([tokens][dim] in)."""
    if len(matrix) == 0:
        raise RemoraError(url, "the sidecar returned a document with no vectors")
    picked = matrix[np.arange(rows) % len(matrix)]  # [rows][dim]
    return list(picked)  # a list of 1-D vectors: pyarrow will not convert a 2-D array to a list column
