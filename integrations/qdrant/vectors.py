"""Named vectors from text through the sidecar, in plain Python shapes both Qdrant clients take.

A collection's vectors are described once, as `VectorSpec`s (the vector's name in the collection,
the sidecar model that fills it, and whether it is dense, sparse or multi-vector); every helper of
this package then embeds, creates collections and queries from that list, so the model behind a
vector name is written down in one place.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from remora.integrations.client import InputType, RemoraClient, RemoraError, SparseVector

Kind = Literal["dense", "sparse", "multivector"]
KINDS: tuple[Kind, ...] = ("dense", "sparse", "multivector")

# dense: [dim] floats; sparse: ids and weights; multi-vector: [tokens][dim] floats.
Vector: TypeAlias = list[float] | SparseVector | list[list[float]]
PointId: TypeAlias = int | str

# Ids derived from the text: re-running an ingestion overwrites instead of duplicating.
ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/remora/integrations/qdrant")


@dataclass(frozen=True)
class VectorSpec:
    """One named vector of a collection and the sidecar model that fills it.

    `size` is the width of a dense vector (or of each row of a multi-vector); None asks the
    sidecar once, by embedding a probe text.
    """

    name: str
    model: str
    kind: Kind = "dense"
    size: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"VectorSpec {self.name!r}: kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        if self.size is not None and self.kind == "sparse":
            raise ValueError(f"VectorSpec {self.name!r}: a sparse vector has no size")


def check_specs(specs: Sequence[VectorSpec]) -> list[VectorSpec]:
    """The specs as a list, refusing none at all and repeated names (a point has one vector per name)."""
    if isinstance(specs, VectorSpec):
        return [specs]
    items = list(specs)
    if not items:
        raise ValueError("give at least one VectorSpec")
    names = [s.name for s in items]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"vector names must be unique; repeated: {', '.join(repeated)}")
    return items


def embed_named(
    remora: RemoraClient,
    texts: Sequence[str],
    specs: Sequence[VectorSpec],
    *,
    input_type: InputType = "document",
) -> list[dict[str, Vector]]:
    """One {vector name: vector} per text, in input order.

    Specs that share a model are filled from one request (BGE-M3 gives dense and sparse from
    one forward pass). Every vector is computed before anything is returned, so a failing
    sidecar raises `RemoraError` and no caller ever sees part of a batch.
    """
    specs = check_specs(specs)
    texts = list(texts)
    rows: list[dict[str, Vector]] = [{} for _ in texts]
    if not texts:
        return rows
    by_model: dict[str, list[VectorSpec]] = {}
    for spec in specs:
        by_model.setdefault(spec.model, []).append(spec)
    for model, group in by_model.items():
        kinds = tuple(dict.fromkeys(spec.kind for spec in group))
        encoded = remora.encode(texts, model=model, input_type=input_type, outputs=kinds)
        for spec in group:
            column: Sequence[Vector] | None = getattr(encoded, spec.kind)
            if column is None or len(column) != len(texts):
                raise RemoraError(remora.url, f"model {model!r} gave no {spec.kind} vectors for {spec.name!r}")
            for row, vector in zip(rows, column, strict=True):
                row[spec.name] = vector
    return rows


def embed_query(remora: RemoraClient, text: str, specs: Sequence[VectorSpec]) -> dict[str, Vector]:
    """{vector name: vector} for one query text, with each model's query prompt."""
    if not isinstance(text, str):
        raise TypeError(f"the query must be a str, not {type(text).__name__}")
    return embed_named(remora, [text], specs, input_type="query")[0]


def vector_sizes(remora: RemoraClient, specs: Sequence[VectorSpec]) -> dict[str, int]:
    """Width of every dense and multi-vector spec: its `size`, else measured on a probe text."""
    specs = check_specs(specs)
    unknown = [s for s in specs if s.kind != "sparse" and s.size is None]
    measured = embed_named(remora, ["probe"], unknown)[0] if unknown else {}
    sizes: dict[str, int] = {}
    for spec in specs:
        if spec.kind == "sparse":
            continue
        if spec.size is not None:
            sizes[spec.name] = spec.size
            continue
        vector = measured[spec.name]
        row: Any = vector[0] if spec.kind == "multivector" else vector
        sizes[spec.name] = len(row)
    return sizes


def point_ids(texts: Sequence[str], ids: Sequence[PointId] | None) -> list[PointId]:
    """The given ids, or one UUID per text derived from the text (identical texts share a point:
    pass ids to keep duplicates apart)."""
    if ids is None:
        return [str(uuid.uuid5(ID_NAMESPACE, text)) for text in texts]
    ids = list(ids)
    if len(ids) != len(texts):
        raise ValueError(f"{len(ids)} ids for {len(texts)} texts")
    return ids


def point_payloads(
    texts: Sequence[str], payloads: Sequence[Mapping[str, Any]] | None, text_field: str
) -> list[dict[str, Any]]:
    """Each payload with its text under `text_field`, where the rerank helpers read it back."""
    if payloads is not None and len(payloads) != len(texts):
        raise ValueError(f"{len(payloads)} payloads for {len(texts)} texts")
    base = payloads if payloads is not None else [{} for _ in texts]
    return [{**dict(payload), text_field: text} for payload, text in zip(base, texts, strict=True)]
