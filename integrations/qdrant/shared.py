"""What the qdrant-client helpers (points.py, search.py) and the qdrant-edge ones (edge.py) share,
backend-neutral: their keyword options, collection vectors and points built from text, and the
text-query and query-then-rerank flows (embed the query through the sidecar, ask the database for
candidates, rerank them through the sidecar). Each client passes in only its own calls: parameter
and point constructors, a write, and a `Searcher` for its nearest-neighbour and fusion queries."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, NamedTuple, Protocol, TypeAlias, TypedDict, TypeVar, Unpack

from remora.integrations.client import RemoraClient

from .rerank import Hit, Reranked, rerank_hits
from .vectors import (
    PointId,
    Vector,
    VectorSpec,
    check_specs,
    embed_named,
    embed_query,
    point_ids,
    point_payloads,
    vector_sizes,
)

Named: TypeAlias = tuple[str, Vector]  # (vector name in the collection, query vector)

D = TypeVar("D")  # a client's dense / multi-vector parameters
S = TypeVar("S")  # a client's sparse-vector parameters
F = TypeVar("F")  # a client's filter type
H = TypeVar("H", bound=Hit)
F_contra = TypeVar("F_contra", contravariant=True)
H_co = TypeVar("H_co", bound=Hit, covariant=True)


def check_options(options: Mapping[str, Any], accepted: Any) -> None:
    """Refuse a keyword the TypedDict `accepted` does not name, as an explicit signature would."""
    known = accepted.__required_keys__ | accepted.__optional_keys__
    unknown = [name for name in options if name not in known]
    if unknown:
        raise TypeError(f"unexpected keyword argument {unknown[0]!r}")


def vector_params(
    remora: RemoraClient,
    specs: Sequence[VectorSpec],
    dense: Callable[[int, bool], D],
    sparse: Callable[[], S],
) -> tuple[dict[str, D], dict[str, S]]:
    """A collection's named vectors in a client's own parameter types: `dense(size, multivector)`
    for each dense or multi-vector spec (its width from `vector_sizes`), `sparse()` for each sparse."""
    specs = check_specs(specs)
    sizes = vector_sizes(remora, specs)
    dense_params = {s.name: dense(sizes[s.name], s.kind == "multivector") for s in specs if s.kind != "sparse"}
    sparse_params = {s.name: sparse() for s in specs if s.kind == "sparse"}
    return dense_params, sparse_params


class PointOptions(TypedDict, total=False):
    """The keyword options of every helper that writes texts as points, for both clients.

    ids: one per text (default: a UUID derived from the text, see `point_ids`); payloads: one
    per text (default: empty), each stored with its text under text_field (default "text").
    """

    ids: Sequence[PointId] | None
    payloads: Sequence[Mapping[str, Any]] | None
    text_field: str


class TextPoint(NamedTuple):
    """A point before it takes a client's type: its id, {vector name: vector} and payload."""

    id: PointId
    vectors: dict[str, Vector]
    payload: dict[str, Any]


def embed_points(
    remora: RemoraClient, texts: Sequence[str], specs: Sequence[VectorSpec], **options: Unpack[PointOptions]
) -> list[TextPoint]:
    """One TextPoint per text, in input order. Ids and payloads are checked before the sidecar
    is asked, and every vector is computed before anything is returned (see `embed_named`)."""
    check_options(options, PointOptions)
    texts = list(texts)
    ids = point_ids(texts, options.get("ids"))
    payloads = point_payloads(texts, options.get("payloads"), options.get("text_field", "text"))
    vectors = embed_named(remora, texts, specs)
    return [TextPoint(*point) for point in zip(ids, vectors, payloads, strict=True)]


def write_points(
    remora: RemoraClient,
    texts: Sequence[str],
    specs: Sequence[VectorSpec],
    write: Callable[[list[TextPoint]], object],
    **options: Unpack[PointOptions],
) -> list[PointId]:
    """Embed `texts`, hand all their points to `write` (not called when there are none), and
    return the ids written. Nothing is written unless every vector was computed."""
    points = embed_points(remora, texts, specs, **options)
    if points:
        write(points)
    return [point.id for point in points]


class QueryOptions(TypedDict, Generic[F], total=False):
    """The keyword options of a text query: `limit` points (default 10), filtered by the
    client's `query_filter` (default none), with their payloads unless `with_payload` is False."""

    limit: int
    query_filter: F | None
    with_payload: bool


class RerankOptions(TypedDict, Generic[F], total=False):
    """The keyword options of query-then-rerank: `candidates` prefetched (default 50), the
    `limit` best kept (default 10), scored by the sidecar model `reranker` (default None: the
    sidecar's default reranker) on the payload's `text_field` (default "text"), and the
    client's `query_filter` applied to the candidates (default none)."""

    candidates: int
    limit: int
    reranker: str | None
    text_field: str
    query_filter: F | None


class Searcher(Protocol[F_contra, H_co]):
    """One collection (or shard) of one Qdrant client, asked for candidates."""

    def nearest(
        self, target: Named, limit: int, query_filter: F_contra | None, with_payload: bool
    ) -> Sequence[H_co]:
        """The `limit` nearest points to the query vector, by the vector it names."""
        ...

    def fused(self, targets: Sequence[Named], limit: int, query_filter: F_contra | None) -> Sequence[H_co]:
        """The `limit` best points after each target prefetches `limit` and their ranks are fused
        by reciprocal rank, with payloads."""
        ...


def nearest_text(
    searcher: Searcher[F, H], remora: RemoraClient, text: str, spec: VectorSpec, options: QueryOptions[F]
) -> list[H]:
    """The nearest points to `text` by the vector `spec` names (the model's query prompt applied)."""
    check_options(options, QueryOptions)
    target = (spec.name, embed_query(remora, text, [spec])[spec.name])
    limit, with_payload = options.get("limit", 10), options.get("with_payload", True)
    return list(searcher.nearest(target, limit, options.get("query_filter"), with_payload))


def rerank_text(
    searcher: Searcher[F, H],
    remora: RemoraClient,
    text: str,
    specs: VectorSpec | Sequence[VectorSpec],
    options: RerankOptions[F],
) -> list[Reranked[H]]:
    """Query-then-rerank: one spec prefetches its nearest candidates, several are fused by
    reciprocal rank; the candidates are then ordered by the sidecar's /v1/score."""
    check_options(options, RerankOptions)
    chosen = check_specs([specs] if isinstance(specs, VectorSpec) else specs)
    vectors = embed_query(remora, text, chosen)
    targets = [(spec.name, vectors[spec.name]) for spec in chosen]
    candidates, query_filter = options.get("candidates", 50), options.get("query_filter")
    if len(targets) == 1:
        hits = searcher.nearest(targets[0], candidates, query_filter, True)
    else:
        hits = searcher.fused(targets, candidates, query_filter)
    return rerank_hits(
        remora,
        text,
        list(hits),
        limit=options.get("limit", 10),
        model=options.get("reranker"),
        text_field=options.get("text_field", "text"),
    )
