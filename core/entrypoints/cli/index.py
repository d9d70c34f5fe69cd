"""``poolkit index`` and ``poolkit search``: a late-interaction index on disk, built and queried.

``index`` is a corpus job (:func:`poolkit.entrypoints.index_job.run_index_job`, or Ray Data with
``--engine ray``): run it again after a kill and it resumes. ``search`` encodes its queries on the
query side of the model that built the index (the index records its folder and a digest of its
files, so it loads that model from any folder; another ``MODEL`` is refused) and prints the hits,
best first.
"""

from __future__ import annotations

from typing import List, Optional

import typer

from ...config.settings import EngineArgs
from ...contracts.errors import InvalidRequest
from .app import app
from .commands import load
from .options import (
    EngineOpt,
    Format,
    FormatOpt,
    IdFieldOpt,
    OverwriteOpt,
    QuietOpt,
    SkipBadOpt,
    TextFieldOpt,
    TruncateOpt,
    VerboseOpt,
    engine_options,
    errors,
    setup_logging,
)
from .records import emit_scores

IndexDirOpt = typer.Option(..., "--index", help="The index's directory (LanceDB).")
CorpusOpt = typer.Option(
    ..., "--input", "--input-file", "-i", help="The corpus: JSON Lines (id/text), text lines, CSV or Parquet."
)
PrecisionOpt = typer.Option(
    "float32", "--precision",
    help="How token vectors are stored: float32, binary (signs, 1/32 of the bytes) or int8 (1/4); compact ones are searched exhaustively.",
)
AnnOpt = typer.Option(
    None, "--ann/--no-ann",
    help="Build LanceDB's ANN (IVF_PQ) index on the token vectors (default: when the collection has 100,000 documents).",
)


@app.command()
@engine_options(model_argument=True)
def index(
    args: EngineArgs,
    input_file: str = CorpusOpt,
    index_dir: str = IndexDirOpt,
    ann: Optional[bool] = AnnOpt,
    precision: str = PrecisionOpt,
    text_field: str = TextFieldOpt,
    id_field: str = IdFieldOpt,
    skip_bad_lines: bool = SkipBadOpt,
    overwrite: bool = OverwriteOpt,
    truncate_prompt_tokens: Optional[int] = TruncateOpt,
    engine: str = EngineOpt,
    quiet: bool = QuietOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Encode a corpus on MODEL's document side into a late-interaction index (resumable: run it again after a kill)."""
    with errors():
        setup_logging(quiet, verbose)
        llm = load(args)
        # what both engines take; the documents' factor is --token-pool-factor, which the index records
        common = {
            "token_pool_factor": args.token_pool_factor, "ann": ann, "precision": precision, "text_field": text_field,
            "id_field": id_field, "overwrite": overwrite,
        }
        if engine == "ray":
            from ...api.index import index_lock
            from ..integrations.ray import run_ray_index_job

            with index_lock(index_dir):
                summary = run_ray_index_job(llm, input_file, index_dir, **common)
            typer.echo(f"{summary.rows} documents -> {index_dir} (ray)", err=True)
            return
        if engine != "local":
            raise InvalidRequest(f"unknown engine '{engine}': use local or ray")
        from ...runtime.progress import LOG_EVERY, progress_bar
        from ..index_job import run_index_job

        with progress_bar(None, enabled=not quiet, label="index", every=LOG_EVERY) as advance:
            summary = run_index_job(
                llm, input_file, index_dir, skip_bad_lines=skip_bad_lines, truncate_prompt_tokens=truncate_prompt_tokens,
                progress=advance, **common,
            )
        if summary.already_complete:
            typer.echo(f"{index_dir} is already complete; nothing to do (--overwrite to build it again)", err=True)
            return
        resumed = f" ({summary.resumed_rows} resumed)" if summary.resumed_rows else ""
        typer.echo(f"{summary.rows} documents, {summary.written} encoded{resumed} -> {index_dir}", err=True)


@app.command()
@engine_options(model_argument=True, help_overrides={"model": "The model to encode the queries with (default: the index's own)."})
def search(
    args: EngineArgs,
    index_dir: str = IndexDirOpt,
    queries: List[str] = typer.Option(..., "--query", help="A query (repeatable)."),
    top_k: int = typer.Option(10, "--top-k", help="Documents per query."),
    exact: bool = typer.Option(False, "--exact", help="Rank every document even where the ANN index exists."),
    fmt: Format = FormatOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Search an index: one record per hit (query, rank, id, MaxSim score), best first.

    MODEL defaults to the model that built the index, loaded from the folder it was built from
    (recorded there with its load settings), wherever the search runs.
    """
    with errors():
        from ...api.index import LateInteractionIndex

        setup_logging(True, verbose)
        identity = LateInteractionIndex.read_identity(index_dir)
        if "model" not in args.model_fields_set:
            built = {"model": identity.source["path"]} if identity.source else {}
            args = EngineArgs(**{**identity.load, **built, **args.model_dump(exclude_unset=True)})
        found = LateInteractionIndex.open(index_dir, load(args)).search(queries, top_k=top_k, exact=exact)
        rows = [
            {"query": q, "rank": rank, "id": hit.id, "score": hit.score}
            for q, hits in enumerate(found)
            for rank, hit in enumerate(hits, 1)
        ]
        emit_scores(rows, fmt)
