"""weaviate-client v4 configuration and Weaviate server environment pointing Weaviate's
`text2vec-transformers`, `reranker-transformers` and `ner-transformers` modules at a Remora sidecar.

The sidecar speaks those modules' inference-container contract (sidecar/routes/weaviate.py): at
its root for its default models, and under `/weaviate/<model>` for any registered model. Every
URL here is the sidecar's address *as the Weaviate server reaches it* (in docker-compose often
`http://remora:8080`, not the `localhost` a notebook sees): Weaviate, not this process, calls it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal
from urllib.parse import quote

from weaviate.classes.config import Configure
from weaviate.collections.classes.config import _RerankerProvider
from weaviate.collections.classes.config_vector_index import _QuantizerConfigCreate, _VectorIndexConfigCreate
from weaviate.collections.classes.config_vectors import _VectorConfigCreate

Module = Literal["text2vec-transformers", "reranker-transformers", "ner-transformers"]

TEXT2VEC: Module = "text2vec-transformers"
RERANKER: Module = "reranker-transformers"
NER: Module = "ner-transformers"
ALL_MODULES: tuple[Module, ...] = (TEXT2VEC, RERANKER, NER)


def module_url(sidecar_url: str, model: str | None = None) -> str:
    """The inference URL of `model` on the sidecar (`{sidecar}/weaviate/{model}`), or the
    sidecar's root, which serves its default model, reranker and extractor, when `model` is None.

    No trailing slash: Weaviate appends `/vectors`, `/rerank`, `/ner/` to it as they are."""
    base = sidecar_url.strip().rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise ValueError(f"sidecar_url must be an http(s) URL, got {sidecar_url!r}")
    if model is None:
        return base
    model = model.strip("/")
    if not model:
        raise ValueError("model must be a non-empty model id")
    return f"{base}/weaviate/{quote(model, safe='/')}"


def text2vec(
    sidecar_url: str,
    model: str | None = None,
    *,
    query_model: str | None = None,
    # Weaviate's own settings, passed to Configure.Vectors.text2vec_transformers as they are:
    name: str | None = None, dimensions: int | None = None, source_properties: list[str] | None = None,
    vector_index_config: _VectorIndexConfigCreate | None = None,
    quantizer: _QuantizerConfigCreate | None = None, vectorize_collection_name: bool = False,
) -> _VectorConfigCreate:
    """A `vector_config` entry whose vectors Weaviate gets from `model` on the sidecar: objects
    with the model's document prompt, `near_text` / hybrid queries with its query prompt.

    `query_model` embeds queries with a second model (the module's passage/query URL pair, for
    asymmetric encoder pairs). `dimensions` keeps the first N components (Matryoshka models).
    `vectorize_collection_name` defaults to False, unlike Weaviate's own default, so an object's
    vector is the embedding of its text alone rather than of "<CollectionName> <text>"."""
    url = module_url(sidecar_url, model)
    query_url = None if query_model is None else module_url(sidecar_url, query_model)
    return Configure.Vectors.text2vec_transformers(
        name=name, dimensions=dimensions, source_properties=source_properties,
        vector_index_config=vector_index_config, quantizer=quantizer,
        vectorize_collection_name=vectorize_collection_name,
        # Weaviate takes either inferenceUrl or the passage/query pair, never both.
        inference_url=url if query_url is None else None,
        passage_inference_url=url if query_url is not None else None,
        query_inference_url=query_url,
    )


def reranker() -> _RerankerProvider:
    """The collection's `reranker_config`. reranker-transformers has no per-collection URL:
    Weaviate calls the one in its RERANKER_INFERENCE_API (see `server_env`)."""
    return Configure.Reranker.transformers()


def server_env(
    sidecar_url: str,
    *,
    vectorizer_model: str | None = None,
    query_vectorizer_model: str | None = None,
    reranker_model: str | None = None,
    ner_model: str | None = None,
    modules: Sequence[Module] = ALL_MODULES,
    extra_modules: Sequence[str] = (),
    default_vectorizer: bool = True,
) -> dict[str, str]:
    """The Weaviate server's environment for the chosen modules backed by the sidecar (for
    docker-compose `environment:`, a Helm chart's `env:`, or `docker run -e`).

    A model left None is the sidecar's default (its root URL). With REMORA_API_KEY set on the
    sidecar, name every model: Weaviate sends no key, and only the `/weaviate/<model>` routes
    can be opened to it (REMORA_WEAVIATE_OPEN=1). `extra_modules` are added to ENABLE_MODULES
    (e.g. "backup-filesystem")."""
    unknown = [m for m in modules if m not in ALL_MODULES]
    if unknown or not modules:
        raise ValueError(f"modules must be some of {', '.join(ALL_MODULES)}; got {list(modules)}")
    env = {"ENABLE_MODULES": ",".join([*dict.fromkeys(modules), *extra_modules])}
    if TEXT2VEC in modules:
        if default_vectorizer:
            env["DEFAULT_VECTORIZER_MODULE"] = TEXT2VEC
        passage = module_url(sidecar_url, vectorizer_model)
        if query_vectorizer_model is None:
            env["TRANSFORMERS_INFERENCE_API"] = passage
        else:  # Weaviate refuses TRANSFORMERS_INFERENCE_API together with the pair
            env["TRANSFORMERS_PASSAGE_INFERENCE_API"] = passage
            env["TRANSFORMERS_QUERY_INFERENCE_API"] = module_url(sidecar_url, query_vectorizer_model)
    if RERANKER in modules:
        env["RERANKER_INFERENCE_API"] = module_url(sidecar_url, reranker_model)
    if NER in modules:
        env["NER_INFERENCE_API"] = module_url(sidecar_url, ner_model)
    return env
