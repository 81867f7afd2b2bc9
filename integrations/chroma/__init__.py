"""Chroma integration: embedding functions and a rerank step backed by a Remora sidecar.

    import chromadb
    from remora.integrations.chroma import RemoraEmbeddingFunction, query_and_rerank

    client = chromadb.PersistentClient("./chroma")
    docs = client.create_collection("docs", embedding_function=RemoraEmbeddingFunction("all-MiniLM-L6-v2"))
    docs.add(ids=["1", "2"], documents=["Remoras ride on sharks.", "Stocks closed higher."])
    docs.query(query_texts=["which fish rides a shark?"], n_results=1)

Importing this package registers both functions with Chroma's registry ("remora" and
"remora_sparse"), so a process that imports it reopens such a collection with
`client.get_collection("docs")` and gets the same function back from the persisted config.
"""

from remora.integrations.chroma.functions import (
    DEFAULT_MODEL,
    RemoraEmbeddingFunction,
    RemoraSparseEmbeddingFunction,
)
from remora.integrations.chroma.rerank import Reranked, query_and_rerank, rerank
from remora.integrations.client import RemoraError, RemoraUnavailable

__all__ = [
    "DEFAULT_MODEL",
    "RemoraEmbeddingFunction",
    "RemoraError",
    "RemoraSparseEmbeddingFunction",
    "RemoraUnavailable",
    "Reranked",
    "query_and_rerank",
    "rerank",
]
