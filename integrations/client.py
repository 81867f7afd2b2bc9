"""A small typed HTTP client of a Remora sidecar: what every database integration calls.

It speaks Remora's native API (`/v1/encode`, `/v1/score`, `/v1/extract`) over httpx, imports no
torch, and turns every failure into a `RemoraError` that says which sidecar, which route and why,
so a database client never ends up with silently missing vectors:

    client = RemoraClient("http://127.0.0.1:8080")
    vectors = client.embed(["a passage"], model="minilm")
    scores = client.score("a question", ["a passage", "another"], model="my-reranker")

The URL defaults to `$REMORA_URL`, then http://127.0.0.1:8080; the API key to `$REMORA_API_KEY`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

DEFAULT_URL = "http://127.0.0.1:8080"
URL_ENV = "REMORA_URL"
API_KEY_ENV = "REMORA_API_KEY"
MODEL_HEADER = "X-Remora-Model"
BATCH = 256  # texts per request; the sidecar's default limit is 1,024

InputType = Literal["query", "document"]
Output = Literal["dense", "sparse", "multivector"]


class RemoraError(RuntimeError):
    """The sidecar refused a request or could not be reached.

    `status` is the HTTP status (None when the sidecar was unreachable), `code` Remora's
    machine-readable error code (e.g. MODEL_NOT_FOUND), `message` the sidecar's explanation.
    """

    def __init__(self, url: str, message: str, *, status: int | None = None, code: str | None = None) -> None:
        self.url = url
        self.status = status
        self.code = code
        self.message = message
        where = f"{status} {code}" if status is not None else "unreachable"
        super().__init__(f"Remora sidecar {url}: {where}: {message}")


class RemoraUnavailable(RemoraError):
    """The sidecar did not answer (refused, timed out, closed the connection)."""


@dataclass(frozen=True)
class SparseVector:
    """Vocabulary ids (ascending, unique) and their weights."""

    indices: list[int]
    values: list[float]


@dataclass(frozen=True)
class Entity:
    text: str
    label: str
    score: float
    start: int  # character offset of the first character
    end: int  # one past the last character


@dataclass(frozen=True)
class Encoded:
    """One `/v1/encode` answer; the outputs not asked for are None."""

    model: str
    dense: list[list[float]] | None = None
    sparse: list[SparseVector] | None = None
    multivector: list[list[list[float]]] | None = None
    tokens: int = 0
    dim: int | None = None


def default_url() -> str:
    return os.environ.get(URL_ENV) or DEFAULT_URL


def default_api_key() -> str | None:
    return os.environ.get(API_KEY_ENV) or None


@dataclass
class RemoraClient:
    """A connection pool to one sidecar. Thread-safe (httpx.Client is); close it, or use `with`."""

    url: str = field(default_factory=default_url)
    api_key: str | None = field(default_factory=default_api_key, repr=False)  # a printed client must not show it
    timeout: float = 120.0
    batch_size: int = BATCH
    headers: Mapping[str, str] = field(default_factory=dict)
    _http: httpx.Client | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")

    # -- connection ---------------------------------------------------------------------------

    @property
    def http(self) -> httpx.Client:
        if self._http is None:
            headers = dict(self.headers)
            if self.api_key:
                headers["Authorization"] = f"Bearer {self.api_key}"
            self._http = httpx.Client(base_url=self.url, timeout=self.timeout, headers=headers)
        return self._http

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def __enter__(self) -> RemoraClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def post(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST a JSON body; the JSON answer, or a RemoraError saying why not."""
        where = f"{self.url}{path}"
        model = body.get("model")
        # A proxy in front of a shared pool of sidecars routes by this header (consistent hashing),
        # so each model stays warm on a few replicas; the body alone is opaque to it.
        headers = {MODEL_HEADER: model} if isinstance(model, str) else None
        try:
            response = self.http.post(path, json=dict(body), headers=headers)
        except httpx.TimeoutException as exc:
            raise RemoraUnavailable(where, f"no answer within {self.timeout:g} s ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise RemoraUnavailable(where, f"{type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            code, message = _error_of(response)
            raise RemoraError(where, message, status=response.status_code, code=code)
        try:
            data = response.json()
        except ValueError as exc:
            raise RemoraError(where, "the answer is not JSON", status=response.status_code) from exc
        if not isinstance(data, dict):
            raise RemoraError(where, "the answer is not a JSON object", status=response.status_code)
        return data

    def get(self, path: str) -> dict[str, Any]:
        where = f"{self.url}{path}"
        try:
            response = self.http.get(path)
        except httpx.TransportError as exc:
            raise RemoraUnavailable(where, f"{type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            code, message = _error_of(response)
            raise RemoraError(where, message, status=response.status_code, code=code)
        data = response.json()
        return data if isinstance(data, dict) else {"data": data}

    # -- the primitives -----------------------------------------------------------------------

    def encode(
        self,
        texts: Sequence[str],
        *,
        model: str | None = None,
        input_type: InputType = "document",
        outputs: Sequence[Output] = ("dense",),
        dimensions: int | None = None,
        normalize: bool | None = None,
    ) -> Encoded:
        """Encode `texts` in requests of `batch_size`; every requested output, in input order."""
        texts = _texts(texts)
        dense: list[list[float]] = []
        sparse: list[SparseVector] = []
        multi: list[list[list[float]]] = []
        tokens, name, dim = 0, model or "", None
        for chunk in _chunks(texts, self.batch_size):
            body: dict[str, Any] = {"inputs": chunk, "input_type": input_type, "outputs": list(outputs)}
            if model is not None:
                body["model"] = model
            if dimensions is not None:
                body["dimensions"] = dimensions
            if normalize is not None:
                body["normalize"] = normalize
            data = self.post("/v1/encode", body)
            name, tokens, dim = data.get("model", name), tokens + int(data.get("usage", {}).get("tokens", 0)), data.get("dim")
            if "dense" in outputs:
                dense.extend(_required(data, "embeddings", len(chunk), self.url))
            if "sparse" in outputs:
                sparse.extend(SparseVector(list(v["indices"]), list(v["values"]))
                              for v in _required(data, "sparse", len(chunk), self.url))
            if "multivector" in outputs:
                multi.extend(_required(data, "multivector", len(chunk), self.url))
        return Encoded(
            model=name,
            dense=dense if "dense" in outputs else None,
            sparse=sparse if "sparse" in outputs else None,
            multivector=multi if "multivector" in outputs else None,
            tokens=tokens,
            dim=dim,
        )

    def embed(self, texts: Sequence[str], *, model: str | None = None, input_type: InputType = "document",
              dimensions: int | None = None) -> list[list[float]]:
        """Dense vectors, one per text."""
        dense = self.encode(texts, model=model, input_type=input_type, dimensions=dimensions).dense
        assert dense is not None
        return dense

    def embed_sparse(self, texts: Sequence[str], *, model: str | None = None,
                     input_type: InputType = "document") -> list[SparseVector]:
        """Sparse vectors (SPLADE, BGE-M3), one per text."""
        sparse = self.encode(texts, model=model, input_type=input_type, outputs=("sparse",)).sparse
        assert sparse is not None
        return sparse

    def embed_multivector(self, texts: Sequence[str], *, model: str | None = None,
                          input_type: InputType = "document") -> list[list[list[float]]]:
        """One [tokens][dim] matrix per text (ColBERT, BGE-M3)."""
        multi = self.encode(texts, model=model, input_type=input_type, outputs=("multivector",)).multivector
        assert multi is not None
        return multi

    def score(self, query: str, documents: Sequence[str], *, model: str | None = None) -> list[float]:
        """Relevance of each document to `query`, in input order (the model's activated score)."""
        documents = _texts(documents)
        scores: list[float] = []
        for chunk in _chunks(documents, self.batch_size):
            body: dict[str, Any] = {"query": query, "documents": chunk}
            if model is not None:
                body["model"] = model
            scores.extend(float(s) for s in _required(self.post("/v1/score", body), "scores", len(chunk), self.url))
        return scores

    def extract(self, texts: Sequence[str], *, model: str | None = None, labels: Sequence[str] | None = None,
                threshold: float | None = None) -> list[list[Entity]]:
        """Entities found in each text, in input order."""
        texts = _texts(texts)
        found: list[list[Entity]] = []
        for chunk in _chunks(texts, self.batch_size):
            body: dict[str, Any] = {"inputs": chunk}
            if model is not None:
                body["model"] = model
            if labels is not None:
                body["labels"] = list(labels)
            if threshold is not None:
                body["threshold"] = threshold
            for item in _required(self.post("/v1/extract", body), "results", len(chunk), self.url):
                found.append([Entity(e["text"], e["label"], float(e["score"]), int(e["start"]), int(e["end"]))
                              for e in item["entities"]])
        return found


def _texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("pass a list of texts, not one string")
    items = list(texts)
    for i, text in enumerate(items):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is {type(text).__name__}, not str")
    return items


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _required(data: dict[str, Any], key: str, count: int, url: str) -> list[Any]:
    value = data.get(key)
    if not isinstance(value, list) or len(value) != count:
        got = f"{len(value)} items" if isinstance(value, list) else repr(type(value).__name__)
        raise RemoraError(url, f"the answer's {key!r} should hold {count} items, got {got} (does the model give it?)")
    return value


def _error_of(response: httpx.Response) -> tuple[str | None, str]:
    """(code, message) from any of Remora's error bodies, or the raw text."""
    try:
        data = response.json()
    except ValueError:
        return None, response.text[:500] or response.reason_phrase
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        return error.get("code"), str(error.get("message", error))
    if isinstance(error, str):
        return data.get("code") or data.get("error_type"), error
    return None, str(data)[:500]
