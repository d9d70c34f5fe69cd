"""A late-interaction index: a collection's token vectors in a LanceDB table, searched by MaxSim.

Documents are encoded on the model's document side (``token_embed``, where the model has query
and document sides: a ColBERT's markers, say), optionally token-pooled
(``token_pool_factor``), and stored one row per document: its id and its ``[tokens, dim]`` matrix
in a multivector column (``list<fixed_size_list<float32, dim>>``). A search encodes the queries on
the query side and lets LanceDB rank the documents by MaxSim; the hits are scored again with
:func:`poolkit.api.st_functions.maxsim` on the stored vectors, so a score is the MaxSim that
function gives (positive; LanceDB reports ``query tokens - MaxSim`` as its distance).

LanceDB searches multivector columns with the cosine metric only, so vectors are stored unit
length; a model whose token vectors are normalised already (ColBERT's, a sentence-transformers
model's token embeddings) is stored as it encodes.

A document's stored vectors are the ones ``LLM.score`` scores for it: its token vectors on the
document side less those of the model's skiplist (a ColBERT's punctuation, as ``LLM.score`` and
``MultiVectorEncoder`` leave them out), then pooled by the index's factor (after the skiplist, as
sentence-transformers' pipeline pools). Queries lose their side's skiplist tokens alike.

What makes the index's identity (the model's load settings, the folder it was loaded from and a
digest of its files, the vector width, the pool factor and whether the sides were used) is kept in
the table's schema metadata; opening the index with another model (other weights under the same
name included) or width is an :class:`IndexMismatch`.

Writes are safe to run beside each other and to repeat: a writer holds ``INDEX.lock`` (another is
refused with :class:`IndexBusy`), an overwrite replaces the index's own table only (never the
directory, another table in it, or a file at that path), and once a write is done LanceDB's older
versions are removed, so replaced documents leave nothing on disk. :func:`table_digest` reads every
row back, which is how a corpus job tells a finished index from a damaged one
(:class:`IndexDamaged`).

Large collections get LanceDB's IVF_PQ index on the multivector column: built automatically once
the table holds :data:`AUTO_ANN_ROWS` documents, or on request with
:meth:`LateInteractionIndex.create_ann_index` (at least :data:`ANN_MIN_ROWS`, what LanceDB needs to
train it); below that a search is exhaustive, and ``exact=True`` makes it so at any size.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import warnings
from dataclasses import asdict, dataclass
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from ..contracts.errors import InvalidRequest, MissingDependency
from ..contracts.params import PoolingParams
from ..contracts.sentence_transformers import TokenPoolingSpec
from ..inputs.pairs import skiplist
from ..inputs.request import side_kwargs
from ..loading.token_pooling import kept, pool_tokens
from .st_functions import compact_tokens, maxsim_compact

if TYPE_CHECKING:
    from .llm import LLM

#: The table that holds the documents, in the index's LanceDB directory.
TABLE = "documents"
#: The schema metadata key under which the index's identity is kept.
METADATA_KEY = b"poolkit.index"
#: The layout of the table; part of the identity, so a future layout refuses an old index. Layout 2
#: leaves the skiplist's tokens out and records the model's folder and digest.
LAYOUT = 2
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


class IndexBusy(InvalidRequest):
    """Another writer (a ``poolkit index`` job, a build) holds the index."""


class IndexDamaged(InvalidRequest):
    """An index whose files cannot be read back (a cut data file, say): build it again."""


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
    #: Which model that was, wherever it is named from: the folder it was loaded from (absolute) and
    #: a digest of its files (:func:`model_source`).
    source: dict[str, str] | None = None
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
    """Whether ``llm`` encodes queries and documents differently (``token_embed``'s retrieval sides)."""
    return llm.task("token_embed").has_roles(llm.model)


def _unit(matrix: torch.Tensor) -> np.ndarray:
    """A token matrix as float32 rows of unit length (LanceDB's multivector metric is cosine)."""
    matrix = matrix.detach().to("cpu", torch.float32)
    return torch.nn.functional.normalize(matrix, dim=-1).numpy()


#: Files of a model folder that no poolkit load reads (other runtimes' exports, docs, images): left
#: out of its digest, which would otherwise read them all.
_NOT_LOADED = (".onnx", ".h5", ".msgpack", ".ot", ".gguf", ".tflite", ".md", ".png", ".jpg", ".gif")


def model_source(llm: "LLM") -> dict[str, str]:
    """Which model ``llm`` is, whatever name it was typed as: the folder it was loaded from
    (absolute) and a SHA-256 of the files there that a load reads (weights, configs, tokenizer).

    A name relative to one folder (``enc``) is another model in another folder; a hub id's folder
    is its snapshot of one revision. The digest is what an index compares, so a copy of the same
    model elsewhere matches and a retrained one under the same name does not.
    """
    folder = Path(llm.model.path).resolve()
    files = sorted(
        f for f in folder.rglob("*")
        if f.is_file() and not any(part.startswith(".") for part in f.relative_to(folder).parts)
        and f.suffix.lower() not in _NOT_LOADED
    )
    signature = tuple((str(f.relative_to(folder)), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    return {"path": str(folder), "digest": _files_digest(str(folder), signature)}


@lru_cache(maxsize=16)
def _files_digest(folder: str, signature: tuple[tuple[str, int, int], ...]) -> str:
    """SHA-256 of the named files' names and bytes (cached while their sizes and times stay)."""
    digest = hashlib.sha256()
    for name, _, _ in signature:
        digest.update(name.encode() + b"\0")
        with open(Path(folder) / name, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


_HELD = threading.local()  # the lock files this thread holds, and how many holders each has


@contextlib.contextmanager
def index_lock(path: str | Path) -> Iterator[None]:
    """Hold the index at ``path`` for writing: ``INDEX.lock`` beside it, locked by the OS (so a
    killed holder frees it) and removed when released. Re-entrant within a thread (a build's adds).

    Raises:
        IndexBusy: another process or thread holds it, in one line that names its process id.
    """
    lock = Path(path).with_name(Path(path).name + ".lock")
    key = str(lock.resolve())
    held: dict[str, int] = _HELD.__dict__.setdefault("counts", {})
    fd = None if key in held else _acquire(lock, path)
    held[key] = held.get(key, 0) + 1
    try:
        yield
    finally:
        held[key] -= 1
        if not held[key]:
            del held[key]
            _release(lock, fd)


def _acquire(lock: Path, path: str | Path) -> int:
    """Open and lock ``lock`` (the file at that path now, not one a releasing holder removed)."""
    import fcntl

    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidRequest(f"cannot write to '{lock.parent}': {exc.strerror}") from None
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise IndexBusy(
                f"index '{path}' is being written by another process (pid {holder}); wait for it to finish, then run again"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            return fd
        os.close(fd)  # its holder removed it as we opened it: lock the new one


def _release(lock: Path, fd: int | None) -> None:
    if fd is None:
        return
    with contextlib.suppress(OSError):
        lock.unlink()
    os.close(fd)


def token_vectors(
    llm: "LLM", outputs: Sequence[Any], side: str, pooling: TokenPoolingSpec | None = None
) -> list[torch.Tensor]:
    """Encoded ``token_embed`` outputs as an index keeps them for ``side``: less the tokens of the
    model's skiplist for that side (``LLM.score``'s, the one :func:`poolkit.inputs.pairs.skiplist`
    gives) unless the engine left them out already (its rows are then fewer than the tokens), then
    pooled by ``pooling``: the one rule every surface pools by (:mod:`poolkit.loading.token_pooling`)."""
    skip = skiplist(llm.model, side)
    out = []
    for o in outputs:
        vectors, ids = o.outputs.data, o.prompt_token_ids
        if pooling is not None:
            out.append(pool_tokens(vectors, pooling.pool_factor, pooling, ids, skip))
        elif skip is not None and len(vectors) == len(ids):
            out.append(vectors[kept(ids, skip)])
        else:
            out.append(vectors)
    return out


#: What a document side is encoded with so that its vectors come back unpooled: the index pools
#: them itself, after the skiplist (a factor of 1 clusters nothing).
UNPOOLED = 1.0


def document_pooling(llm: "LLM", token_pool_factor: float | None) -> TokenPoolingSpec | None:
    """How an index pools its documents: by ``token_pool_factor`` (with the protected tokens and
    normalisation of the model's own pooling, as the engine's heads do), else the model's own
    document pooling (a checkpoint's module, ``--token-pool-factor``), else not at all."""
    spec = llm.model.token_pooling
    if token_pool_factor is None:
        return spec if spec is not None and "document" in spec.tasks else None
    if spec is None:
        return TokenPoolingSpec(float(token_pool_factor))
    return TokenPoolingSpec(float(token_pool_factor), protected=spec.protected, normalize=spec.normalize)


def table_digest(table: Any) -> tuple[int, str]:
    """Every row of an index's table read back: how many, and a SHA-256 of their ids, token counts
    and vector bytes in the table's order.

    Raises:
        OSError, RuntimeError, ValueError: a file of the table cannot be read (LanceDB's IO errors).
    """
    import pyarrow.compute as pc

    ids, lengths, values = hashlib.sha256(), hashlib.sha256(), hashlib.sha256()
    rows = 0
    for batch in table.search().limit(None).to_batches(4096):
        column = batch.column("vector")
        ids.update("".join(json.dumps(i) + "\n" for i in batch.column("id").to_pylist()).encode())
        lengths.update(pc.list_value_length(column).to_numpy(zero_copy_only=False).astype("<i8").tobytes())
        values.update(column.flatten().flatten().to_numpy(zero_copy_only=False).tobytes())
        rows += batch.num_rows
    return rows, hashlib.sha256(ids.digest() + lengths.digest() + values.digest()).hexdigest()


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
        self, table: Any, identity: IndexIdentity, llm: "LLM | None", db: Any = None, overwrite: bool = False,
        path: str | Path | None = None,
    ) -> None:
        #: The LanceDB table (``None`` until :meth:`create`'s index gets its first documents).
        self.table = table
        self.identity = identity
        self.llm = llm
        self._db = db  # where create() writes the table, replacing one there if overwrite
        self._overwrite = overwrite
        #: The index's directory (named in errors).
        self.path = path
        #: Build the ANN index once the table holds :data:`AUTO_ANN_ROWS` documents (``False``: never by itself).
        self.auto_ann = True

    @staticmethod
    def exists(path: str | Path) -> bool:
        """Whether the LanceDB directory ``path`` holds an index's table (poolkit's or not)."""
        return Path(path).is_dir() and _table_in(_lancedb().connect(str(path))) is not None

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
        source = model_source(llm)
        if identity.source is None or identity.source.get("digest") != source["digest"]:
            built = (identity.source or {}).get("path", identity.model)
            raise IndexMismatch(
                f"index '{path}' was built with model '{identity.model}' ({built}), not '{llm.model.name}' "
                f"({source['path']}, other files): search it with that model"
            )
        return cls(table, identity, llm, path=path)

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
        with index_lock(path):
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
            InvalidRequest: a bad ``token_pool_factor`` or ``precision``, an index already at
                ``path`` (unless ``overwrite``), a file at ``path``, or a table of that name that
                poolkit did not write (never overwritten).
        """
        if precision not in PRECISIONS:
            raise InvalidRequest(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        lancedb = _lancedb()
        if token_pool_factor is not None:  # refused here, with the task's one-line message, not after a first batch
            llm.check_params(PoolingParams(token_pool_factor=token_pool_factor), 1, "token_embed")
        check_index_path(path)
        db = lancedb.connect(str(path))
        table = _table_in(db)
        if table is not None and not overwrite:
            raise InvalidRequest(f"index '{path}' already exists; pass overwrite=True (--overwrite) to build it again")
        if table is not None:
            _check_ours(table, path)
        pooling = document_pooling(llm, token_pool_factor)
        identity = IndexIdentity(
            model=llm.model.name, load=llm.args.identity(), dim=0,
            token_pool_factor=pooling.pool_factor if pooling is not None else None, sides=has_sides(llm),
            precision=precision, source=model_source(llm),
        )
        return cls(None, identity, llm, db, overwrite, path)

    def __len__(self) -> int:
        return 0 if self.table is None else self.table.count_rows()

    def encode(self, texts: Sequence[str], side: str) -> list[torch.Tensor]:
        """``texts``' token vectors on the model's ``side`` (``query`` or ``document``) as the index
        keeps them: the skiplist's tokens left out, and documents pooled by the index's factor
        (:func:`token_vectors`), so a document's are the vectors ``LLM.score`` scores."""
        llm = self._model()
        kwargs = side_kwargs(side, self.identity.sides)
        params = PoolingParams(token_pool_factor=UNPOOLED)  # pooled below, after the skiplist; queries never
        outputs = llm.encode(list(texts), params, pooling_task="token_embed", tokenization_kwargs=kwargs)
        factor = self.identity.token_pool_factor
        pooling = document_pooling(llm, factor) if side == "document" and factor is not None else None
        return token_vectors(llm, outputs, side, pooling)

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
        with index_lock(self.path) if self.path is not None else contextlib.nullcontext():
            for start in range(0, len(texts), batch_size):
                batch = texts[start : start + batch_size]
                self.add_vectors(ids[start : start + batch_size], self.encode(batch, "document"))
            self.settle()
        return len(self)

    def settle(self) -> None:
        """Compact the table and remove LanceDB's older versions, so what an overwrite replaced (or
        a failed write left) is gone from disk. Readers of an older version (a search running in
        another process at that moment) fail; writers are kept out by :func:`index_lock`."""
        if self.table is None:
            return
        with warnings.catch_warnings():  # LanceDB warns of a zero retention: the writer's lock is why it is safe
            warnings.simplefilter("ignore", UserWarning)
            self.table.optimize(cleanup_older_than=timedelta(0), delete_unverified=True)

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
            IndexDamaged: the index's files cannot be read.
        """
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise InvalidRequest(f"top_k must be a positive integer, got {top_k!r}")
        if not len(self):
            raise InvalidRequest("the index holds no documents")
        texts = [queries] if isinstance(queries, str) else list(queries)
        matrices = [_unit(matrix) for matrix in self.encode(texts, "query")]
        for query in matrices:
            if query.shape[-1] != self.identity.dim:
                raise IndexMismatch(f"the index holds {self.identity.dim}-wide token vectors, the model gives {query.shape[-1]}")
        try:
            return self._search(matrices, top_k, exact)
        except (OSError, RuntimeError) as exc:  # LanceDB's IO errors: a data file cut or gone
            raise IndexDamaged(
                f"index '{self.path}' is damaged ({str(exc).splitlines()[0][:160]}): build it again with --overwrite"
            ) from None

    def _search(self, matrices: list[np.ndarray], top_k: int, exact: bool) -> list[list[Hit]]:
        from .st_functions import maxsim

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


def check_index_path(path: str | Path) -> None:
    """Refuse a path that is a file (an index is a directory; a corpus there is never replaced)."""
    if Path(path).exists() and not Path(path).is_dir():
        raise InvalidRequest(f"'{path}' is a file, not an index directory: choose another --index (nothing was changed)")


def _check_ours(table: Any, path: str | Path) -> None:
    """Refuse to replace a table of the index's name that poolkit did not write (no identity)."""
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    try:
        ours = isinstance(json.loads(raw), dict)
    except (TypeError, ValueError):
        ours = False
    if not ours:
        raise InvalidRequest(
            f"'{path}' holds a '{TABLE}' table that poolkit did not write; refusing to overwrite it: choose another --index"
        )


def drop_index(path: str | Path) -> None:
    """Remove the index's table at ``path`` and nothing else: another table of the LanceDB
    directory, and the directory itself, stay (``--overwrite``).

    Raises:
        InvalidRequest: a file at ``path``, or a table of the index's name that poolkit did not write.
    """
    check_index_path(path)
    if not Path(path).is_dir():
        return
    db = _lancedb().connect(str(path))
    table = _table_in(db)
    if table is not None:
        _check_ours(table, path)
        db.drop_table(TABLE)


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
