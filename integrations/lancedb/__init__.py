"""LanceDB through a Remora sidecar: embedding functions and a reranker.

Importing this package registers two functions in LanceDB's embedding registry (LanceDB's
`@register` is how a table reopened in another process finds its function again):

- `remora`: dense vectors (`RemoraEmbeddings`);
- `remora-multivector`: ColBERT-style token vectors (`RemoraMultivectorEmbeddings`).

`RemoraReranker` reranks vector, full-text and hybrid search results with the sidecar's score.
"""

from remora.integrations.client import RemoraError, RemoraUnavailable
from remora.integrations.lancedb.embeddings import RemoraEmbeddings, RemoraMultivectorEmbeddings
from remora.integrations.lancedb.reranker import RemoraReranker

__all__ = [
    "RemoraEmbeddings",
    "RemoraError",
    "RemoraMultivectorEmbeddings",
    "RemoraReranker",
    "RemoraUnavailable",
]
