"""Weaviate integration: Weaviate's transformers modules, backed by a Remora sidecar.

The sidecar answers what Weaviate's `text2vec-transformers`, `reranker-transformers` and
`ner-transformers` modules send, so Weaviate itself vectorizes objects and queries, reranks and
tags entities through Remora; this package builds the configuration that points them there:

    import weaviate
    from weaviate.classes.config import DataType, Property
    from remora.integrations.weaviate import reranker, server_env, text2vec

    server_env("http://remora:8080", reranker_model="my-reranker")  # the Weaviate server's env
    client = weaviate.connect_to_local()
    client.collections.create(
        "Docs",
        properties=[Property(name="body", data_type=DataType.TEXT)],
        vector_config=text2vec("http://remora:8080", "all-MiniLM-L6-v2"),
        reranker_config=reranker(),
    )

Nothing here imports torch; `weaviate-client` is the `weaviate` extra.
"""

from remora.integrations.client import RemoraError, RemoraUnavailable
from remora.integrations.weaviate.check import check_inference_url
from remora.integrations.weaviate.config import (
    ALL_MODULES,
    NER,
    RERANKER,
    TEXT2VEC,
    Module,
    module_url,
    reranker,
    server_env,
    text2vec,
)

__all__ = [
    "ALL_MODULES",
    "NER",
    "RERANKER",
    "TEXT2VEC",
    "Module",
    "RemoraError",
    "RemoraUnavailable",
    "check_inference_url",
    "module_url",
    "reranker",
    "server_env",
    "text2vec",
]
