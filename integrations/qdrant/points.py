"""qdrant-client collections and points from `VectorSpec`s: vector parameters sized by the
sidecar's models, and `PointStruct`s whose named vectors the sidecar computed from text.

    specs = [VectorSpec("dense", "minilm"), VectorSpec("sparse", "splade", "sparse"),
             VectorSpec("colbert", "colbert", "multivector")]
    create_collection(qdrant, "docs", remora, specs)
    upsert_texts(qdrant, "docs", remora, ["a passage", "another"], specs)

Works the same against a Qdrant server and qdrant-client's local mode (`QdrantClient(":memory:")`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Unpack

from qdrant_client import QdrantClient, models

from remora.integrations.client import RemoraClient, SparseVector

from .shared import PointOptions, TextPoint, embed_points, vector_params, write_points
from .vectors import PointId, Vector, VectorSpec


def to_qdrant(vector: Vector) -> list[float] | models.SparseVector | list[list[float]]:
    """A sidecar vector as qdrant-client takes it (sparse vectors become models.SparseVector)."""
    if isinstance(vector, SparseVector):
        return models.SparseVector(indices=vector.indices, values=vector.values)
    return vector


def point_struct(point: TextPoint) -> models.PointStruct:
    """A TextPoint as qdrant-client's PointStruct."""
    vectors: dict[str, models.Vector] = {name: to_qdrant(v) for name, v in point.vectors.items()}
    return models.PointStruct(id=point.id, vector=vectors, payload=point.payload)


def collection_vectors(
    remora: RemoraClient,
    specs: Sequence[VectorSpec],
    *,
    distance: models.Distance = models.Distance.COSINE,
) -> tuple[dict[str, models.VectorParams], dict[str, models.SparseVectorParams]]:
    """(vectors_config, sparse_vectors_config) for `create_collection`.

    Dense vectors use `distance` (cosine by default: MiniLM-style models are trained for it);
    multi-vectors compare with MaxSim (ColBERT's late interaction) over the same distance;
    sparse vectors score by dot product, as SPLADE's weights are meant to be.
    """

    def dense(size: int, multivector: bool) -> models.VectorParams:
        maxsim = models.MultiVectorConfig(comparator=models.MultiVectorComparator.MAX_SIM)
        return models.VectorParams(size=size, distance=distance, multivector_config=maxsim if multivector else None)

    return vector_params(remora, specs, dense, models.SparseVectorParams)


def create_collection(
    qdrant: QdrantClient,
    collection_name: str,
    remora: RemoraClient,
    specs: Sequence[VectorSpec],
    *,
    distance: models.Distance = models.Distance.COSINE,
    **kwargs: Any,
) -> None:
    """Create `collection_name` with one named vector per spec; `kwargs` go to qdrant-client's
    `create_collection` (hnsw_config, quantization_config, ...)."""
    dense, sparse = collection_vectors(remora, specs, distance=distance)
    qdrant.create_collection(collection_name, vectors_config=dense, sparse_vectors_config=sparse or None, **kwargs)


def text_points(
    remora: RemoraClient, texts: Sequence[str], specs: Sequence[VectorSpec], **options: Unpack[PointOptions]
) -> list[models.PointStruct]:
    """One PointStruct per text with every spec's vector; `options` (`ids`, `payloads`,
    `text_field`) as `PointOptions` says: by default a UUID derived from the text, and the text
    in the payload's "text" field."""
    return [point_struct(point) for point in embed_points(remora, texts, specs, **options)]


def upsert_texts(
    qdrant: QdrantClient,
    collection_name: str,
    remora: RemoraClient,
    texts: Sequence[str],
    specs: Sequence[VectorSpec],
    *,
    wait: bool = True,
    **options: Unpack[PointOptions],
) -> list[PointId]:
    """Embed `texts` through the sidecar and upsert them; the ids written. `options` (`ids`,
    `payloads`, `text_field`) as for `text_points`.

    Every vector is computed before the first write, so a sidecar that is down or refuses
    raises `RemoraError` and leaves the collection as it was. For a corpus too big to hold its
    vectors in memory, call it per chunk.
    """

    def write(points: list[TextPoint]) -> None:
        qdrant.upsert(collection_name, points=[point_struct(point) for point in points], wait=wait)

    return write_points(remora, texts, specs, write, **options)
