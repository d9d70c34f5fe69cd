"""Index jobs: a corpus file encoded on a model's document side into a late-interaction index.

An index job is a corpus job (:func:`poolkit.entrypoints.jobs.run_job`) of the ``token_embed``
task whose rows go into a :class:`poolkit.api.index.LateInteractionIndex` instead of a file: the
same chunk files in ``INDEX.parts/``, the same manifest and the same resume rules (a killed job
run again keeps the chunks it finished; a changed input or other settings are an error unless
``overwrite``), and ``INDEX.job`` beside the index records what made it. The index's table is
written once every chunk is done, so a kill while it is written leaves the chunks, and the next
run writes the table again from them.

The job holds ``INDEX.lock`` while it runs (a second job into the same index is refused at once,
:class:`poolkit.api.index.IndexBusy`); ``overwrite`` replaces only what an index job makes (its
table, its chunks and record), never the directory or a file at that path; a finished index is
called complete only once every row reads back as written (their count and digest, recorded in
``INDEX.job``), and is named damaged otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterator

from ..api.index import (
    LAYOUT,
    PRECISIONS,
    UNPOOLED,
    LateInteractionIndex,
    check_index_path,
    document_pooling,
    drop_index,
    has_sides,
    index_lock,
    table_digest,
    token_vectors,
)
from ..contracts.errors import InvalidRequest
from ..contracts.params import PoolingParams
from ..inputs.request import side_kwargs
from .jobs import JobSummary, run_job

if TYPE_CHECKING:
    from ..api.llm import LLM

#: Documents written to the index's table at a time.
WRITE_ROWS = 512


@dataclass
class IndexSink:
    """A corpus job's sink (:class:`poolkit.entrypoints.jobs.JobSink`) that writes a new index.

    Args:
        path: the index's directory.
        llm: the model the documents were encoded with (its identity goes into the index).
        token_pool_factor: the pool factor the documents were encoded with.
        ann: build LanceDB's ANN index once written (``None``: when the collection is large enough,
            :data:`poolkit.api.index.AUTO_ANN_ROWS`).
        precision: how the index stores token vectors (:data:`poolkit.api.index.PRECISIONS`).
    """

    name: ClassVar[str] = "lancedb-index"

    path: Path
    llm: LLM
    token_pool_factor: float | None
    ann: bool | None = None
    precision: str = "float32"

    def __post_init__(self) -> None:
        self.pooling = document_pooling(self.llm, self.token_pool_factor)

    def values(self, outputs: list[Any]) -> list[Any]:
        """A chunk's (unpooled) outputs as the index keeps them: less the skiplist's tokens, then pooled."""
        return token_vectors(self.llm, outputs, "document", self.pooling)

    def exists(self) -> bool:
        """Whether the directory holds the index's table."""
        return self.path.is_dir() and LateInteractionIndex.exists(self.path)

    def clear(self) -> None:
        """Drop the index's table (``overwrite``), never the directory or another table in it."""
        drop_index(self.path)

    def write(self, rows: Iterator[dict[str, Any]], value_key: str) -> None:
        """Write every row into the index, replacing a table an interrupted write left."""
        index = LateInteractionIndex.create(
            self.path, self.llm, token_pool_factor=self.token_pool_factor, overwrite=True, precision=self.precision
        )
        index.auto_ann = self.ann is not False
        ids: list[Any] = []
        vectors: list[Any] = []
        for row in rows:
            ids.append(row["id"])
            vectors.append(row[value_key])
            if len(ids) >= WRITE_ROWS:
                index.add_vectors(ids, vectors)
                ids, vectors = [], []
        index.add_vectors(ids, vectors)
        if self.ann and not index.has_ann_index():
            index.create_ann_index()
        index.settle()

    def digest(self) -> tuple[int, str] | None:
        """Every document read back: how many, and their digest (``None``: the index cannot be read)."""
        try:
            return table_digest(LateInteractionIndex.open(self.path, self.llm).table)
        except (InvalidRequest, OSError, RuntimeError, ValueError):  # LanceDB's IO errors: a cut or missing file
            return None


def run_index_job(
    llm: "LLM",
    input_path: str | Path,
    index_path: str | Path,
    *,
    token_pool_factor: float | None = None,
    ann: bool | None = None,
    precision: str = "float32",
    truncate_prompt_tokens: int | None = None,
    **job_options: Any,
) -> JobSummary:
    """Encode every row of ``input_path`` on ``llm``'s document side into the index at ``index_path``.

    Args:
        token_pool_factor: pool each document's token vectors by this factor (``None``: keep them all).
        ann: build LanceDB's ANN index (``None``: once the collection is large enough).
        precision: how the index stores token vectors: ``float32``, ``binary`` or ``int8``
            (:data:`poolkit.api.index.PRECISIONS`); part of the job's settings.
        truncate_prompt_tokens: cut inputs to this many tokens (default: the model's limit, as jobs do).
        job_options: :func:`poolkit.entrypoints.jobs.run_job`'s ``text_field``, ``id_field``,
            ``skip_bad_lines``, ``overwrite``, ``chunk_rows`` and ``progress``.

    Raises:
        InvalidRequest: bad input (an empty corpus, a missing file), a bad ``token_pool_factor``, an
            existing index of another job or settings (unless ``overwrite``), a changed input, a
            file at ``index_path``, a finished index that no longer reads back as written.
        IndexBusy: another job is writing the index.
    """
    params = PoolingParams(token_pool_factor=token_pool_factor, truncate_prompt_tokens=truncate_prompt_tokens)
    llm.check_params(params, 1, "token_embed")  # a bad factor is refused before the input is read
    if precision not in PRECISIONS:
        raise InvalidRequest(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    check_index_path(index_path)
    sink = IndexSink(Path(index_path), llm, token_pool_factor, ann, precision)
    pooling = sink.pooling.pool_factor if sink.pooling is not None else None
    # The engine hands back every token's vector (a factor of 1); the sink drops the skiplist's, then pools.
    unpooled = params.model_copy(update={"token_pool_factor": UNPOOLED})
    with index_lock(index_path):
        return run_job(
            llm, input_path, index_path, task="token_embed", pooling_params=unpooled,
            tokenization_kwargs=side_kwargs("document", has_sides(llm)),
            settings={"precision": precision, "token_pool_factor": pooling, "index_layout": LAYOUT}, sink=sink,
            **job_options,
        )
