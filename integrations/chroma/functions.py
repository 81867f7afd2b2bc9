"""Chroma embedding functions that embed through a Remora sidecar.

Both classes are registered with Chroma's embedding-function registry when this module is imported
(that registration is the point of the module: it is how Chroma finds the class again by name).
A collection created with one stores `{"name": "remora", "config": get_config()}`, and any process
that has imported `remora.integrations.chroma` rebuilds the same function from it when it opens the
collection, with no embedding function passed.

Documents are embedded in document mode (`__call__`), query texts in query mode (`embed_query`), so
a model's query prompt (e5's "query: ", BGE's instruction) is applied where it belongs. Every
sidecar failure raises `RemoraError` out of `collection.add` / `collection.query` before Chroma
writes anything.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
from chromadb.api.types import (
    Documents,
    EmbeddingFunction,
    Embeddings,
    Space,
    SparseEmbeddingFunction,
    SparseVector,
    SparseVectors,
)
from chromadb.utils.embedding_functions import register_embedding_function, register_sparse_embedding_function

from remora.integrations.chroma.config import (
    API_KEY_ENV,
    DEFAULT_TIMEOUT,
    check_config,
    check_update,
    make_client,
)
from remora.integrations.client import InputType, RemoraClient

# The sidecar's embedded default model (remora.core.defaults.DEFAULT_MODEL_ID, not imported: that
# package needs torch). Named explicitly so a collection never follows a server's changing default.
DEFAULT_MODEL = "all-MiniLM-L6-v2"

_NUMBER = (int, float)
_DENSE_KEYS: dict[str, tuple[type, ...]] = {
    "url": (str,), "model": (str,), "dimensions": (int,), "normalize": (bool,),
    "api_key_env_var": (str,), "timeout": _NUMBER,
}
_SPARSE_KEYS: dict[str, tuple[type, ...]] = {
    "url": (str,), "model": (str,), "api_key_env_var": (str,), "timeout": _NUMBER,
}

R = TypeVar("R")  # what one call returns: dense Embeddings or SparseVectors


class _SidecarFunction(Generic[R]):
    """What both functions share: the sidecar connection, the two modes, config checks and repr.

    A mixin placed before Chroma's protocol class, so Chroma's `__init_subclass__` finds (and wraps)
    this `__call__`, whose parameter must be named exactly `input`. Each subclass sets `_what` (its
    name in messages) and `_keys` (its persisted config's keys and their types).
    """

    _what: ClassVar[str]
    _keys: ClassVar[dict[str, tuple[type, ...]]]
    url: str | None
    model: str
    api_key_env_var: str
    timeout: float
    _client: RemoraClient

    def _connect(self, model: str, url: str | None, api_key_env_var: str, api_key: str | None,
                 timeout: float) -> None:
        """Store the shared settings, check the whole config, and open the client (end of `__init__`)."""
        self.url = url.rstrip("/") if url else None
        self.model = model
        self.api_key_env_var = api_key_env_var
        self.timeout = float(timeout)
        self.validate_config(self.get_config())
        # stacklevel 4: the api_key warning points at the caller of the subclass's __init__.
        self._client = make_client(self.url, api_key, api_key_env_var, self.timeout, stacklevel=4)

    @property
    def client(self) -> RemoraClient:
        return self._client

    # Chroma checks that `__call__` takes exactly (self, input), and calls both methods with input=...
    def __call__(self, input: Documents) -> R:
        return self._embed(input, "document")

    def embed_query(self, input: Documents) -> R:
        return self._embed(input, "query")

    @abstractmethod
    def _embed(self, texts: Documents, input_type: InputType) -> R:
        """The embeddings of `texts` in `input_type` mode, in order."""

    @abstractmethod
    def get_config(self) -> dict[str, Any]:
        """The persisted config (per class: it decides what `build_from_config` rebuilds)."""

    def _config(self, **settings: Any) -> dict[str, Any]:
        """The persisted config: the shared settings around a subclass's own (for `get_config`)."""
        return {"url": self.url, "model": self.model, **settings,
                "api_key_env_var": self.api_key_env_var, "timeout": self.timeout}

    @classmethod
    def _checked_kwargs(cls, config: dict[str, Any]) -> dict[str, Any]:
        """Validate `config`, then the shared `__init__` arguments it holds (for `build_from_config`)."""
        cls.validate_config(config)
        return {
            "model": config["model"],
            "url": config.get("url"),
            "api_key_env_var": config.get("api_key_env_var") or API_KEY_ENV,
            "timeout": config.get("timeout") or DEFAULT_TIMEOUT,
        }

    @classmethod
    def validate_config(cls, config: dict[str, Any]) -> None:
        check_config(config, allowed=cls._keys, required=("model",), what=cls._what)

    def validate_config_update(self, old_config: dict[str, Any], new_config: dict[str, Any]) -> None:
        self.validate_config(new_config)
        check_update(old_config, new_config, what=self._what)

    def __repr__(self) -> str:
        return f"{self._what}(model={self.model!r}, url={self._client.url!r})"


@register_embedding_function
class RemoraEmbeddingFunction(_SidecarFunction[Embeddings], EmbeddingFunction[Documents]):
    """Dense vectors from a Remora sidecar, for `client.create_collection(embedding_function=...)`.

    `url=None` is stored as None and means `$REMORA_URL` (then http://127.0.0.1:8080) wherever the
    collection is opened, so one collection follows its deployment; a URL given is stored as given.
    `normalize=True` asks the sidecar for unit vectors, so cosine, inner product and L2 rank alike
    and the collection's default space is cosine; `normalize=False` keeps the model's raw vectors
    (for dot-product models) and defaults to inner product. `dimensions` keeps the first N
    dimensions of a Matryoshka model, renormalised by the sidecar. `api_key` is used but never
    stored; the key the rebuilt function uses comes from the variable named by `api_key_env_var`.
    """

    _what = "RemoraEmbeddingFunction"
    _keys = _DENSE_KEYS

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        url: str | None = None,
        dimensions: int | None = None,
        normalize: bool = True,
        api_key_env_var: str = API_KEY_ENV,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.dimensions = dimensions
        self.normalize = normalize
        self._connect(model, url, api_key_env_var, api_key, timeout)

    def _embed(self, texts: Documents, input_type: InputType) -> Embeddings:
        encoded = self._client.encode(list(texts), model=self.model, input_type=input_type,
                                      dimensions=self.dimensions, normalize=self.normalize)
        assert encoded.dense is not None
        return [np.asarray(row, dtype=np.float32) for row in encoded.dense]

    @staticmethod
    def name() -> str:
        return "remora"

    def default_space(self) -> Space:
        return "cosine" if self.normalize else "ip"

    def supported_spaces(self) -> list[Space]:
        return ["cosine", "ip", "l2"] if self.normalize else ["ip", "l2", "cosine"]

    def get_config(self) -> dict[str, Any]:
        return self._config(dimensions=self.dimensions, normalize=self.normalize)

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> RemoraEmbeddingFunction:
        kwargs = RemoraEmbeddingFunction._checked_kwargs(config)
        return RemoraEmbeddingFunction(**kwargs, dimensions=config.get("dimensions"),
                                       normalize=config.get("normalize", True))


@register_sparse_embedding_function
class RemoraSparseEmbeddingFunction(_SidecarFunction[SparseVectors], SparseEmbeddingFunction[Documents]):
    """Sparse vectors (SPLADE, BGE-M3's lexical weights) from a Remora sidecar, for a Chroma schema's
    `SparseVectorIndexConfig(embedding_function=..., source_key=...)`.

    Each vector is a Chroma `SparseVector` over the model's vocabulary ids, ascending and unique.
    `model` is required: a sparse model is never the sidecar's default. URL and key as for
    `RemoraEmbeddingFunction`.
    """

    _what = "RemoraSparseEmbeddingFunction"
    _keys = _SPARSE_KEYS

    def __init__(
        self,
        model: str,
        *,
        url: str | None = None,
        api_key_env_var: str = API_KEY_ENV,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._connect(model, url, api_key_env_var, api_key, timeout)

    def _embed(self, texts: Documents, input_type: InputType) -> SparseVectors:
        encoded = self._client.encode(list(texts), model=self.model, input_type=input_type, outputs=("sparse",))
        assert encoded.sparse is not None
        # SparseVector checks the indices are ascending and unique, so a wrong answer fails loudly here.
        return [SparseVector(indices=[int(i) for i in v.indices], values=[float(x) for x in v.values])
                for v in encoded.sparse]

    @staticmethod
    def name() -> str:
        return "remora_sparse"

    def get_config(self) -> dict[str, Any]:
        return self._config()

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> RemoraSparseEmbeddingFunction:
        return RemoraSparseEmbeddingFunction(**RemoraSparseEmbeddingFunction._checked_kwargs(config))
