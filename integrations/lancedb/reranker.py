"""A LanceDB reranker that scores candidates with a Remora sidecar's `/v1/score`.

    from remora.integrations.lancedb import RemoraReranker

    reranker = RemoraReranker(model="my-cross-encoder", column="text")
    table.search("which fish ride on sharks?", query_type="hybrid").rerank(reranker).limit(5).to_list()

It works on vector, full-text and hybrid searches alike: each candidate's `column` is scored
against the query text and the results come back sorted by a float32 `_relevance_score`, highest
first. As with LanceDB's own rerankers, `return_score="relevance"` keeps only that score and
`"all"` also keeps the search's `_distance` / `_score`.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from lancedb.rerankers import Reranker

from remora.integrations.client import RemoraClient

SCORE = "_relevance_score"


class RemoraReranker(Reranker):
    """Rerank through the sidecar's score route: a cross-encoder, or cosine for an embedding model.

    `model=None` uses the sidecar's `default_reranker`. `url` defaults to `$REMORA_URL`, the API
    key to `$REMORA_API_KEY`; pass `client` to share one connection pool. A sidecar that is down or
    refuses the request raises `RemoraError` from the search call.
    """

    def __init__(
        self,
        model: str | None = None,
        column: str = "text",
        *,
        url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        return_score: str = "relevance",
        client: RemoraClient | None = None,
    ) -> None:
        super().__init__(return_score)
        self.model = model
        self.column = column
        if client is None:
            kwargs: dict[str, Any] = {"timeout": timeout}
            if url is not None:
                kwargs["url"] = url
            if api_key is not None:
                kwargs["api_key"] = api_key
            client = RemoraClient(**kwargs)
        self.client = client

    def __str__(self) -> str:
        return f"RemoraReranker(model={self.model}, url={self.client.url})"

    def _rerank(self, results: pa.Table, query: object) -> pa.Table:
        """`results` with `_relevance_score` appended (in their order; sorting is the caller's)."""
        results = self._handle_empty_results(results)
        if len(results) == 0:
            return results
        if not isinstance(query, str):
            raise TypeError(f"RemoraReranker scores against the query text; got {type(query).__name__}")
        if self.column not in results.column_names:
            raise ValueError(f"the results have no column {self.column!r} to score "
                             f"(RemoraReranker(column=...); columns: {results.column_names})")
        texts = ["" if text is None else str(text) for text in results[self.column].to_pylist()]
        scores = self.client.score(query, texts, model=self.model)
        if SCORE in results.column_names:  # a second rerank replaces the first one's score
            results = results.drop_columns([SCORE])
        return results.append_column(SCORE, pa.array(scores, type=pa.float32()))

    def rerank_hybrid(self, query: str, vector_results: pa.Table, fts_results: pa.Table) -> pa.Table:
        if self.score == "all":
            combined = self._merge_and_keep_scores(vector_results, fts_results)
        else:
            combined = self.merge_results(vector_results, fts_results)
        combined = self._keep_relevance_score(self._rerank(combined, query))
        return combined.sort_by([(SCORE, "descending")])

    def rerank_vector(self, query: str, vector_results: pa.Table) -> pa.Table:
        results = self._rerank(vector_results, query)
        if self.score == "relevance" and "_distance" in results.column_names:
            results = results.drop_columns(["_distance"])
        return results.sort_by([(SCORE, "descending")])

    def rerank_fts(self, query: str, fts_results: pa.Table) -> pa.Table:
        results = self._rerank(fts_results, query)
        if self.score == "relevance" and "_score" in results.column_names:
            results = results.drop_columns(["_score"])
        return results.sort_by([(SCORE, "descending")])
