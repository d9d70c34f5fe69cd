"""A late-interaction index: a collection's token vectors in a LanceDB table, searched by MaxSim.

Documents are encoded on the model's document side (``token_embed`` with ``input_type="document"``
where the model has query and document sides, a ColBERT's markers, say), optionally token-pooled
(``token_pool_factor``), and stored one row per document: its id and its ``[tokens, dim]`` matrix
in a multivector column (``list<fixed_size_list<float32, dim>>``). A search encodes the queries on
the query side and lets LanceDB rank the documents by MaxSim; the hits are scored again with
:func:`poolkit.api.st_functions.maxsim` on the stored vectors, so a score is the MaxSim that
function gives (positive; LanceDB reports ``query tokens - MaxSim`` as its distance).

LanceDB searches multivector columns with the cosine metric only, so vectors are stored unit
length; a model whose token vectors are normalised already (ColBERT's, a sentence-transformers
model's token embeddings) is stored as it encodes.

What makes the index's identity (the model's load settings, the vector width, the pool factor and
whether the sides were used) is kept in the table's schema metadata; opening the index with
another model or width is an :class:`IndexMismatch`.

Large collections get LanceDB's IVF_PQ index on the multivector column: built automatically once
the table holds :data:`AUTO_ANN_ROWS` documents, or on request with
:meth:`LateInteractionIndex.create_ann_index` (at least :data:`ANN_MIN_ROWS`, what LanceDB needs to
train it); below that a search is exhaustive, and ``exact=True`` makes it so at any size.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np
import torch

from ..contracts.errors import InvalidRequest, MissingDependency
from ..contracts.params import PoolingParams
from .st_functions import compact_tokens, maxsim_compact

if TYPE_CHECKING:
    from .llm import LLM

#: The table that holds the documents, in the index's LanceDB directory.
TABLE = "documents"
#: The schema metadata key under which the index's identity is kept.
METADATA_KEY = b"poolkit.index"
#: The layout of the table; part of the identity, so a future layout refuses an old index.
LAYOUT = 1
#: LanceDB's IVF_PQ trains 2**8 product-quantisation centroids on the rows: with fewer rows it
#: builds nothing (lance-format/lance issue 4034), so a requested ANN index needs this many documents.
ANN_MIN_ROWS = 256
#: Exhaustive MaxSim over the table is fast up to about 100K rows (LanceDB's vector-index guide);
#: beyond, the ANN index is built automatically.
AUTO_ANN_ROWS = 100_000


#: How an index stores token vectors: float32 (LanceDB's MaxSim search, an ANN index for large
#: collections), or a compact type (signs packed 8 to a byte, or int8 scaled by each vector's peak:
#: :func:`~poolkit.api.st_functions.compact_tokens`), scored exhaustively by Hamming or int8 MaxSim.
PRECISIONS = ("float32", "binary", "int8")


class IndexMismatch(InvalidRequest):
    """An index opened with a model (or vector width) other than the one that built it."""


@dataclass(frozen=True)
class IndexIdentity:
    """What an index was built with; a search must encode its queries the same way."""

    #: The model's name or path.
    model: str
    #: The model's load settings (``EngineArgs.identity()``), to load it again (``poolkit search``).
    load: dict[str, Any]
    #: The width of each token vector.
    dim: int
    #: The documents' token pooling factor (``None``: every token vector kept).
    token_pool_factor: float | None
    #: Whether documents and queries were encoded on the model's document and query sides.
    sides: bool
    layout: int = LAYOUT
    #: How each token vector is stored: ``float32``, or a compact type of :data:`PRECISIONS`
    #: (searched exhaustively by :func:`~poolkit.api.st_functions.maxsim_compact`).
    precision: str = "float32"

    def to_json(self) -> bytes:
        """The identity as the schema metadata value."""
        return json.dumps(asdict(self), sort_keys=True).encode()


@dataclass(frozen=True)
class Hit:
    """One search result: a document's id and its MaxSim with the query."""

    id: int | str
    score: float


def _lancedb() -> Any:
    try:
        import lancedb
    except ImportError:
        raise MissingDependency("the index needs LanceDB: pip install 'poolkit[index]'") from None
    return lancedb


def has_sides(llm: "LLM") -> bool:
    """Whether ``llm`` encodes queries and documents differently (``token_embed``'s ``input_type``)."""
    return llm.task("token_embed").has_roles(llm.model)


def _unit(matrix: torch.Tensor) -> np.ndarray:
    """A token matrix as float32 rows of unit length (LanceDB's multivector metric is cosine)."""
    matrix = matrix.detach().to("cpu", torch.float32)
    return torch.nn.functional.normalize(matrix, dim=-1).numpy()


def _id_type(ids: Sequence[Any]) -> str:
    """``int`` when every id is an integer, else ``str`` (mixed ids are written as strings)."""
    if all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        return "int"
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, (int, str)):
            raise InvalidRequest(f"index ids are strings or integers, got {type(i).__name__}")
    return "str"


class LateInteractionIndex:
    """A collection's token vectors on disk (a LanceDB directory), searched with a model's query side.

    Build it with :meth:`build`, open it again with :meth:`open`, add documents with :meth:`add`
    and search it with :meth:`search`.

    Example:
        >>> from poolkit import LLM, LateInteractionIndex
        >>> llm = LLM("answerdotai/answerai-colbert-small-v1")
        >>> index = LateInteractionIndex.build("my-index", llm, ["Paris is in France.", "Rome is in Italy."])
        >>> index.search("where is Paris?", top_k=1)[0]
        [Hit(id=0, score=...)]
    """

    def __init__(
        self, table: Any, identity: IndexIdentity, llm: "LLM | None", db: Any = None, overwrite: bool = False
    ) -> None:
        #: The LanceDB table (``None`` until :meth:`create`'s index gets its first documents).
        self.table = table
        self.identity = identity
        self.llm = llm
        self._db = db  # where create() writes the table, replacing one there if overwrite
        self._overwrite = overwrite
        #: Build the ANN index once the table holds :data:`AUTO_ANN_ROWS` documents (``False``: never by itself).
        self.auto_ann = True

    @staticmethod
    def read_identity(path: str | Path) -> IndexIdentity:
        """The identity recorded in the index at ``path`` (to load its model again).

        Raises:
            InvalidRequest: no index at ``path``.
        """
        return _identity_of(_open_table(path), path)

    @classmethod
    def open(cls, path: str | Path, llm: "LLM") -> "LateInteractionIndex":
        """The index at ``path``, searched (and added to) with ``llm``.

        Raises:
            InvalidRequest: no index at ``path``.
            IndexMismatch: ``llm`` is not the model the index was built with, or its vectors have
                another width.
        """
        table = _open_table(path)
        identity = _identity_of(table, path)
        if llm.model.name != identity.model:
            raise IndexMismatch(
                f"index '{path}' was built with model '{identity.model}', not '{llm.model.name}': search it with that model"
            )
        return cls(table, identity, llm)

    @classmethod
    def build(
        cls, path: str | Path, llm: "LLM", texts: Sequence[str], ids: Sequence[int | str] | None = None, *,
        token_pool_factor: float | None = None, overwrite: bool = False, batch_size: int = 256, precision: str = "float32",
    ) -> "LateInteractionIndex":
        """A new index at ``path`` of ``texts`` (ids: ``ids``, else their positions) encoded by ``llm``.

        Raises:
            InvalidRequest: no texts, ids that do not match the texts, a bad ``token_pool_factor``,
                or an index already at ``path`` (unless ``overwrite``).
        """
        if not texts:
            raise InvalidRequest("no documents to index: pass at least one text")
        index = cls.create(path, llm, token_pool_factor=token_pool_factor, overwrite=overwrite, precision=precision)
        index.add(texts, ids, batch_size=batch_size)
        return index

    @classmethod
    def create(
        cls, path: str | Path, llm: "LLM", *, token_pool_factor: float | None = None, overwrite: bool = False,
        precision: str = "float32",
    ) -> "LateInteractionIndex":
        """An index at ``path`` whose table is written by its first :meth:`add` (or :meth:`add_vectors`),
        storing token vectors in ``precision`` (:data:`PRECISIONS`).

        Raises:
            InvalidRequest: a bad ``token_pool_factor`` or ``precision``, or an index already at
                ``path`` (unless ``overwrite``).
        """
        if precision not in PRECISIONS:
            raise InvalidRequest(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        lancedb = _lancedb()
        if token_pool_factor is not None:  # refused here, with the task's one-line message, not after a first batch
            llm.check_params(PoolingParams(token_pool_factor=token_pool_factor), 1, "token_embed")
        db = lancedb.connect(str(path))
        if _table_in(db) is not None and not overwrite:
            raise InvalidRequest(f"index '{path}' already exists; pass overwrite=True (--overwrite) to build it again")
        if token_pool_factor is None:  # the model's own document pooling (a checkpoint's module, --token-pool-factor)
            spec = llm.model.token_pooling
            token_pool_factor = spec.pool_factor if spec is not None and "document" in spec.tasks else None
        identity = IndexIdentity(
            model=llm.model.name, load=llm.args.identity(), dim=0, token_pool_factor=token_pool_factor, sides=has_sides(llm),
            precision=precision,
        )
        return cls(None, identity, llm, db, overwrite)

    def __len__(self) -> int:
        return 0 if self.table is None else self.table.count_rows()

    def encode(self, texts: Sequence[str], side: str, params: PoolingParams | None = None) -> list[torch.Tensor]:
        """``texts``' token vectors on the model's ``side`` (``query`` or ``document``), as the index encodes them."""
        kwargs = {"input_type": side} if self.identity.sides else None
        outputs = self._model().encode(list(texts), params, pooling_task="token_embed", tokenization_kwargs=kwargs)
        return [o.outputs.data for o in outputs]

    def add(self, texts: Sequence[str], ids: Sequence[int | str] | None = None, *, batch_size: int = 256) -> int:
        """Encode ``texts`` on the document side and add them; returns the number of documents now held.

        Raises:
            InvalidRequest: ids that do not match the texts, repeat, are in the index already, or
                are of another type than the index's.
        """
        if ids is None:
            ids = list(range(len(self), len(self) + len(texts)))
        if len(ids) != len(texts):
            raise InvalidRequest(f"{len(ids)} ids for {len(texts)} texts")
        taken = {str(i) for i in self.ids()}
        again = next((i for i in ids if str(i) in taken), None)
        if again is not None or len({str(i) for i in ids}) != len(ids):
            which = f"id {again!r} is in the index already" if again is not None else "the ids repeat"
            raise InvalidRequest(f"{which}: every document needs its own id")
        factor = self.identity.token_pool_factor
        params = PoolingParams(token_pool_factor=factor) if factor is not None else None
        for start in range(0, len(texts), batch_size):
            batch = texts[start : start + batch_size]
            self.add_vectors(ids[start : start + batch_size], self.encode(batch, "document", params))
        return len(self)

    def add_vectors(self, ids: Sequence[int | str], vectors: Iterable[Any]) -> None:
        """Store documents' token vectors (``[tokens, dim]`` each, on the document side) under ``ids``.

        The corpus jobs (local and on Ray Data) write the index through this; the first call writes
        the table and its identity. The ids are not checked against the index's (the jobs' are
        unique already): :meth:`add` checks them.

        Raises:
            InvalidRequest: vectors of another width than the index's, a document without vectors,
                or ids of another type than the index's.
        """
        pa = _pyarrow()
        matrices = [  # arrays copied: Ray hands read-only ones
            _unit(v if isinstance(v, torch.Tensor) else torch.from_numpy(np.array(v, dtype=np.float32))) for v in vectors
        ]
        if len(matrices) != len(ids):
            raise InvalidRequest(f"{len(ids)} ids for {len(matrices)} documents")
        if not matrices:
            return
        dim = matrices[0].shape[-1] if matrices[0].ndim == 2 else -1
        for m in matrices:
            if m.ndim != 2 or m.shape[0] == 0 or m.shape[1] != dim:
                raise InvalidRequest(f"each document needs a [tokens, {dim}] matrix of token vectors, got {list(m.shape)}")
        if self.table is None:
            self._create_table(pa, dim, _id_type(ids))
        if dim != self.identity.dim:
            raise IndexMismatch(f"the index holds {self.identity.dim}-wide token vectors, these are {dim} wide")
        id_type = self.table.schema.field("id").type
        if pa.types.is_integer(id_type) and _id_type(ids) != "int":  # into a string column any id goes, as text
            raise InvalidRequest("the index's ids are integers; these include strings")
        id_array = pa.array([str(i) for i in ids] if pa.types.is_string(id_type) else list(ids), id_type)
        stored = [self._stored(m) for m in matrices]
        width = stored[0].shape[-1]
        flat = pa.array(np.concatenate(stored).ravel(), _value_type(pa, self.identity.precision))
        offsets = pa.array(np.concatenate([[0], np.cumsum([len(m) for m in stored])]).astype(np.int32))
        column = pa.ListArray.from_arrays(
            offsets, pa.FixedSizeListArray.from_arrays(flat, width), type=_vector_type(pa, width, self.identity.precision)
        )
        self.table.add(pa.Table.from_arrays([id_array, column], schema=self.table.schema))
        if self.auto_ann and self.identity.precision == "float32" and len(self) >= AUTO_ANN_ROWS and not self.has_ann_index():
            self.create_ann_index()

    def _stored(self, matrix: np.ndarray) -> np.ndarray:
        """A document's unit token vectors as the index stores them (its precision)."""
        if self.identity.precision == "float32":
            return matrix
        return compact_tokens(torch.from_numpy(matrix), self.identity.precision)

    def _create_table(self, pa: Any, dim: int, id_kind: str) -> None:
        self.identity = IndexIdentity(**{**asdict(self.identity), "dim": dim})
        width = dim // 8 if self.identity.precision == "binary" else dim
        schema = pa.schema(
            [
                pa.field("id", pa.int64() if id_kind == "int" else pa.string()),
                pa.field("vector", _vector_type(pa, width, self.identity.precision)),
            ],
            metadata={METADATA_KEY: self.identity.to_json()},
        )
        mode = "overwrite" if self._overwrite else "create"
        self.table = self._db.create_table(TABLE, schema=schema, mode=mode)

    def ids(self) -> list[int | str]:
        """The ids of the documents the index holds, in the table's order."""
        if self.table is None:
            return []
        return self.table.search().select(["id"]).limit(None).to_arrow().column("id").to_pylist()

    def has_ann_index(self) -> bool:
        """Whether the multivector column has LanceDB's IVF_PQ index."""
        return self.table is not None and any("vector" in i.columns for i in self.table.list_indices())

    def create_ann_index(self) -> None:
        """Build LanceDB's IVF_PQ index on the token vectors (replacing one built before).

        Searches then rank approximately (``search(..., exact=True)`` still ranks every document);
        documents added later are searched exhaustively until this is called again.

        Raises:
            InvalidRequest: fewer than :data:`ANN_MIN_ROWS` documents, too few to train it.
        """
        if self.identity.precision != "float32":
            raise InvalidRequest(f"an ANN index is for float32 token vectors; this index stores {self.identity.precision}")
        rows = len(self)
        if rows < ANN_MIN_ROWS:
            raise InvalidRequest(f"an ANN index needs at least {ANN_MIN_ROWS} documents to train on; this index has {rows}")
        from lancedb.index import IvfPq

        self.table.create_index("vector", config=IvfPq(distance_type="cosine"), replace=True)

    def search(self, queries: str | Sequence[str], top_k: int = 10, *, exact: bool = False) -> list[list[Hit]]:
        """The ``top_k`` documents of each query by MaxSim, best first (one list per query).

        Args:
            queries: a text or texts, encoded on the model's query side.
            top_k: how many documents per query.
            exact: rank every document even where the ANN index exists.

        Raises:
            InvalidRequest: ``top_k`` below 1, or an empty index.
        """
        from .st_functions import maxsim

        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise InvalidRequest(f"top_k must be a positive integer, got {top_k!r}")
        if not len(self):
            raise InvalidRequest("the index holds no documents")
        texts = [queries] if isinstance(queries, str) else list(queries)
        matrices = [_unit(matrix) for matrix in self.encode(texts, "query")]
        for query in matrices:
            if query.shape[-1] != self.identity.dim:
                raise IndexMismatch(f"the index holds {self.identity.dim}-wide token vectors, the model gives {query.shape[-1]}")
        if self.identity.precision != "float32":
            return self._search_compact(matrices, top_k)
        results = []
        for query in matrices:
            found = self.table.search(query, vector_column_name="vector").distance_type("cosine").limit(top_k)
            rows = (found.bypass_vector_index() if exact else found).to_arrow()
            docs = [np.asarray(v, dtype=np.float32) for v in rows.column("vector").to_pylist()]
            scores = maxsim(torch.from_numpy(query), [torch.from_numpy(d) for d in docs])[0].tolist()
            hits = [Hit(i, s) for i, s in zip(rows.column("id").to_pylist(), scores)]
            results.append(sorted(hits, key=lambda h: -h.score))
        return results

    def _search_compact(self, queries: list[np.ndarray], top_k: int) -> list[list[Hit]]:
        """Every document scored by compact MaxSim (Hamming on bits, cosine on int8) with each query's
        vectors in the index's precision, the ``top_k`` best first."""
        table = self.table.to_arrow()
        ids = table.column("id").to_pylist()
        docs = [np.asarray(v, dtype=np.int8) for v in table.column("vector").to_pylist()]
        kind = self.identity.precision  # "binary" (Cohere's: the sign bits' byte minus 128) or "int8"
        coded = [compact_tokens(torch.from_numpy(q), kind) for q in queries]
        scores = maxsim_compact(coded, docs, kind)
        results = []
        for row in scores:
            best = torch.topk(row, min(top_k, len(ids))).indices.tolist()
            results.append([Hit(ids[j], float(row[j])) for j in best])
        return results

    def _model(self) -> "LLM":
        if self.llm is None:
            raise InvalidRequest("this index was opened without a model: open it with LateInteractionIndex.open(path, llm)")
        return self.llm


def _pyarrow() -> Any:
    try:
        import pyarrow
    except ImportError:
        raise MissingDependency("the index needs pyarrow: pip install 'poolkit[index]'") from None
    return pyarrow


def _value_type(pa: Any, precision: str) -> Any:
    return pa.float32() if precision == "float32" else pa.int8()


def _vector_type(pa: Any, width: int, precision: str = "float32") -> Any:
    return pa.list_(pa.list_(_value_type(pa, precision), width))


def _open_table(path: str | Path) -> Any:
    lancedb = _lancedb()
    if not Path(path).is_dir():
        raise InvalidRequest(f"index '{path}' does not exist (build it with poolkit index)")
    table = _table_in(lancedb.connect(str(path)))
    if table is None:
        raise InvalidRequest(f"'{path}' is not a poolkit index (it has no '{TABLE}' table)")
    return table


def _table_in(db: Any) -> Any:
    """The index's table in the LanceDB directory ``db``, or ``None``."""
    try:
        return db.open_table(TABLE)
    except ValueError:  # LanceDB's "Table ... was not found"
        return None


def _identity_of(table: Any, path: str | Path) -> IndexIdentity:
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    try:
        identity = IndexIdentity(**json.loads(raw))
    except (TypeError, ValueError):
        raise InvalidRequest(f"'{path}' is not a poolkit index (its table records no index settings)") from None
    if identity.layout != LAYOUT:
        raise InvalidRequest(f"index '{path}' has layout {identity.layout}; this poolkit reads layout {LAYOUT}: build it again")
    return identity
