"""The commands that run a model over inputs: embed, encode, classify, score, rerank, info, plugins.

Each takes the load options of :func:`engine_options` and decides nothing the ``LLM`` decides:
the task says which field holds its results and which output options it takes.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, List, Optional

import typer

from ...config.settings import EngineArgs
from ...contracts.errors import InvalidRequest
from ...contracts.io import check_text
from ...contracts.params import PoolingParams
from ..jobs import TRUNCATE_TO_LIMIT, truncating
from .app import app
from .options import (
    Format,
    FormatOpt,
    InputOpt,
    JobOptions,
    QuietOpt,
    RequestOptions,
    ScoringOptions,
    TruncateOpt,
    TruncationSideOpt,
    VerboseOpt,
    engine_options,
    errors,
    option_groups,
    setup_logging,
)
from .records import emit, emit_scores, plugin_data, read_records

if TYPE_CHECKING:
    from ...api.llm import LLM

#: The CLI's output options, by the task option they set (``--top-k`` sets ``top_k``).
OUTPUT_FLAGS = {"top_k": "--top-k", "threshold": "--threshold", "entities": "--entities"}


def load(args: EngineArgs) -> Any:
    from ...api.llm import LLM

    return LLM.from_args(args)


def report_truncated(llm: "LLM", count: int, total: int, params: PoolingParams | None = None) -> None:
    """Say on stderr that ``count`` of ``total`` inputs were cut to the truncation limit.

    The CLI truncates over-long inputs unless told otherwise (:func:`poolkit.entrypoints.jobs.truncating`),
    so it says how many it cut: to ``params``' ``truncate_prompt_tokens``, or the model's limit.
    """
    if not count:
        return
    limit = params.truncate_prompt_tokens if params is not None else None
    longer = f"longer than {limit} tokens" if limit and limit > 0 else (
        f"longer than the model's limit of {llm.model_config.max_model_len} tokens"
    )
    typer.echo(
        f"{count} of {total} inputs were {longer} and were truncated (--truncate-prompt-tokens N chooses the length)",
        err=True,
    )


@dataclass
class Request:
    """What one CLI call asks of the model besides loading it."""

    task: str
    params: dict[str, Any]
    prompt_name: Optional[str] = None
    options: Optional[dict[str, Any]] = None


def _check_output_options(task_name: str, options: dict[str, Any]) -> None:
    from ...contracts.tasks import stray_options
    from ...plugins.lookup import option_owners
    from ...plugins.manager import registry

    task = registry("task").get(task_name)
    stray = stray_options(task, options)
    if stray:
        owners = option_owners(stray)
        flags = [flag for key, flag in OUTPUT_FLAGS.items() if option_owners([key]) == owners]
        verb = "apply" if len(flags) > 1 else "applies"
        raise InvalidRequest(f"{' and '.join(flags)} {verb} to --task {' or '.join(owners) or 'no task'} only")
    task.check_options(options)


def _run_plugin(texts: list[str], input_file: Optional[str], llm: "LLM", fmt: Format, quiet: bool) -> None:
    rows = []
    for i, data in enumerate(plugin_data(texts, input_file)):
        (out,) = llm.encode({"data": data}, pooling_task=llm.plugin_task, use_tqdm=not quiet)
        rows.append({"index": i, "data": out.outputs})
    if fmt is Format.table:
        fmt = Format.jsonl
    emit(rows, Format.jsonl if fmt is Format.auto else fmt, "data")


def _run_job(texts: list[str], input_file: Optional[str], llm: "LLM", request: Request, job: JobOptions, quiet: bool) -> None:
    """``-o OUTPUT``: a resumable corpus job, locally or on Ray Data."""
    if texts or not input_file or input_file == "-":
        raise InvalidRequest("a corpus job (-o OUTPUT) reads its input from a file: pass -i INPUT")
    params = truncating(request.params)
    if job.engine == "ray":
        if job.embed_dtype is not None:
            raise InvalidRequest("--embed-dtype applies to the local engine only, not to --engine ray")
        from ..integrations.ray import run_ray_job

        ray_summary = run_ray_job(
            llm, input_file, job.output, task=request.task, text_field=job.text_field, overwrite=job.overwrite,
            pooling_params=params, prompt_name=request.prompt_name,
        )
        report_truncated(llm, ray_summary.truncated, ray_summary.rows, params)
        typer.echo(f"{ray_summary.rows} rows -> {job.output} (ray)", err=True)
        return
    if job.engine != "local":
        raise InvalidRequest(f"unknown engine '{job.engine}': use local or ray")
    from ...runtime.progress import LOG_EVERY, progress_bar
    from ..jobs import run_job

    with progress_bar(None, enabled=not quiet, label=request.task, every=LOG_EVERY) as advance:
        summary = run_job(
            llm, input_file, job.output, task=request.task, text_field=job.text_field, id_field=job.id_field,
            skip_bad_lines=job.skip_bad_lines, overwrite=job.overwrite, pooling_params=params,
            prompt_name=request.prompt_name, options=request.options, embed_dtype=job.embed_dtype, progress=advance,
        )
    if summary.already_complete:
        typer.echo(f"{job.output} is already complete; nothing to do (--overwrite to redo it)", err=True)
        return
    extra = [f"{summary.resumed_rows} resumed"] if summary.resumed_rows else []
    if summary.recomputed_chunks:
        extra.append(f"{summary.recomputed_chunks} chunks embedded again: their input changed")
    if summary.repaired_chunks:
        extra.append(f"{summary.repaired_chunks} damaged chunk files embedded again")
    if summary.ids_as_strings:
        extra.append("ids written as strings: they mix strings and integers")
    if summary.skipped_lines:
        extra.append(f"{len(summary.skipped_lines)} bad lines skipped ({', '.join(map(str, summary.skipped_lines[:10]))})")
    if summary.duplicate_ids:
        extra.append(f"{summary.duplicate_ids} duplicate ids skipped")
    if summary.truncated:
        limit = params.truncate_prompt_tokens
        extra.append(f"{summary.truncated} truncated to " + (f"{limit} tokens" if limit and limit > 0 else "the model's limit"))
    note = f" ({'; '.join(extra)})" if extra else ""
    stored = f" as {summary.embed_dtype}" if summary.embed_dtype else ""
    typer.echo(f"{summary.rows} rows, {summary.written} embedded{note} -> {job.output}{stored}", err=True)


def _run_task(
    args: EngineArgs, request: Request, texts: list[str], input_file: Optional[str], fmt: Format, quiet: bool,
    verbose: bool, job: Optional[JobOptions] = None,
) -> None:
    from ...contracts.tasks import PLUGIN
    from ...plugins.manager import registry

    options = request.options or {}
    _check_output_options(request.task, options)
    if job is not None and job.embed_dtype is not None and not job.output:
        raise InvalidRequest("--embed-dtype applies to corpus jobs (-o OUTPUT) only")
    setup_logging(quiet, verbose)
    if registry("task").get(request.task).granularity == PLUGIN:
        _run_plugin(texts, input_file, load(args), fmt, quiet)
        return
    if job is not None and job.output:
        _run_job(texts, input_file, load(args), request, job, quiet)
        return
    records = read_records(texts, input_file)
    llm = load(args)
    params = truncating(request.params)
    if options.get("entities"):
        found = llm.entities([r["text"] for r in records], params, use_tqdm=not quiet)
        rows = [
            {**({"id": r["id"]} if "id" in r else {"index": i}), "entities": [dataclasses.asdict(e) for e in spans]}
            for i, (r, spans) in enumerate(zip(records, found))
        ]
        report_truncated(llm, sum(spans.truncated for spans in found), len(records), params)
        emit(rows, Format.jsonl if fmt is Format.table else fmt, "entities")
        return
    outputs = llm.encode(
        [r["text"] for r in records],
        params,
        pooling_task=request.task,
        use_tqdm=not quiet,
        prompt_name=request.prompt_name,
    )
    report_truncated(llm, sum(out.truncated for out in outputs), len(records), params)
    task = llm.task(request.task)
    rows = []
    for i, (record, out) in enumerate(zip(records, outputs)):
        row = {"id": record["id"]} if "id" in record else {"index": i}
        row.update(task.record(out.outputs.data, llm.model, options))
        rows.append(row)
    emit(rows, fmt, task.output_field)


def _embed_images(args: EngineArgs, images: list[str], texts: list[str], input_file: Optional[str],
                  dimensions: Optional[int], fmt: Format, quiet: bool, verbose: bool) -> None:
    """``poolkit embed --image FILE ...``: one record per image, with its index and embedding; for a
    vision-language model (one whose renderer reads media) a text argument and the
    images form one prompt, the text carrying the model's image placeholders."""
    setup_logging(quiet, verbose)
    texts = list(texts or [])
    if input_file:
        raise InvalidRequest("pass --image files with at most one text argument, not -i FILE")
    if len(texts) > 1:
        raise InvalidRequest(f"--image takes at most one text argument (the prompt the images go in), got {len(texts)}")
    llm = load(args)
    if texts and not llm.renderer.reads.media:
        raise InvalidRequest(
            f"pass --image files or texts, not both: model '{llm.model.name}' embeds each image alone (one record per --image)"
        )
    params = PoolingParams(dimensions=dimensions) if dimensions is not None else None
    if texts:
        prompts: list[Any] = [{"prompt": texts[0], "multi_modal_data": {"image": list(images)}}]
    else:
        prompts = [{"prompt": "", "multi_modal_data": {"image": image}} for image in images]
    outputs = llm.embed(prompts, params, use_tqdm=not quiet)
    emit([{"index": i, "embedding": out.outputs.embedding} for i, out in enumerate(outputs)], fmt, "embedding")


@app.command()
@engine_options()
@option_groups
def embed(
    args: EngineArgs,
    texts: List[str] = typer.Argument(None, help="Texts to embed."),
    images: List[str] = typer.Option(None, "--image", help="An image file to embed (repeatable; models that read images): one record per image, or, for a vision-language model, one prompt of a text argument and every --image."),
    input_file: Optional[str] = InputOpt,
    fmt: Format = FormatOpt,
    request: RequestOptions = RequestOptions(),
    job: JobOptions = JobOptions(),
    quiet: bool = QuietOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Embed texts, or images with --image: one record per input with its index (or id) and embedding.

    A vision-language model takes one text argument with the images: one prompt, its image
    placeholders where the images go (no text: one record per image, as for CLIP).

    With -o OUTPUT, a resumable corpus job: -i INPUT (JSON Lines, text, CSV or Parquet) is embedded
    into OUTPUT (JSON Lines, Parquet or .npy); run the same command again after a kill to resume.
    """
    with errors():
        if images:
            if job.embed_dtype is not None:
                raise InvalidRequest("--embed-dtype applies to corpus jobs (-o OUTPUT) only")
            _embed_images(args, images, texts, input_file, request.dimensions, fmt, quiet, verbose)
            return
        _run_task(args, Request("embed", request.params(), request.prompt_name), texts, input_file, fmt, quiet, verbose, job)


@app.command()
@engine_options()
@option_groups
def encode(
    args: EngineArgs,
    texts: List[str] = typer.Argument(None, help="Texts to encode."),
    task: str = typer.Option(..., "--task", "-t", help="Pooling task: embed, classify, token_embed, token_classify, plugin, or one a plugin adds."),
    input_file: Optional[str] = InputOpt,
    fmt: Format = FormatOpt,
    request: RequestOptions = RequestOptions(),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="sparse_embed: keep the K strongest weights per input."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="sparse_embed: drop weights below this."),
    entities: bool = typer.Option(False, "--entities", help="token_classify on a NER model: entity spans (label, start, end, text, score) per input."),
    job: JobOptions = JobOptions(),
    quiet: bool = QuietOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Run any pooling task: one record per input with its index (or id) and data.

    With --task plugin, each argument or input line is JSON data for the IO processor plugin.
    With -o OUTPUT, a resumable corpus job over -i INPUT, as for embed.
    """
    with errors():
        options = {"top_k": top_k, "threshold": threshold, "entities": entities}
        _run_task(args, Request(task, request.params(), request.prompt_name, options), texts, input_file, fmt, quiet, verbose, job)


@app.command()
@engine_options()
def classify(
    args: EngineArgs,
    texts: List[str] = typer.Argument(None, help="Texts to classify."),
    input_file: Optional[str] = InputOpt,
    fmt: Format = FormatOpt,
    truncate_prompt_tokens: Optional[int] = TruncateOpt,
    truncation_side: Optional[str] = TruncationSideOpt,
    quiet: bool = QuietOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Classify texts: one record per input with its probabilities and top label."""
    with errors():
        params = RequestOptions(truncate_prompt_tokens=truncate_prompt_tokens, truncation_side=truncation_side).params()
        _run_task(args, Request("classify", params), texts, input_file, fmt, quiet, verbose)


def _scored(
    method: str, args: EngineArgs, query: str, label: str, texts: list[str], input_file: Optional[str], first: int,
    options: ScoringOptions, **extra: Any,
) -> tuple[list[dict[str, Any]], list[Any]]:
    """The records and the results of score or rerank (``method``) against the checked query.

    ``first`` is the number of ``texts[0]`` among the TEXT arguments, for errors; ``extra`` goes to
    the method (rerank's ``top_n``). Over-long inputs are cut to the model's limit, and said so.
    """
    setup_logging(options.quiet, options.verbose)
    check_text(query, label)
    records = read_records(texts, input_file, first=first)
    llm = load(args)
    results = getattr(llm, method)(
        query, [r["text"] for r in records], **extra, use_tqdm=not options.quiet, tokenization_kwargs=TRUNCATE_TO_LIMIT,
        chat_template=options.chat_template, instruction=options.instruction,
    )
    report_truncated(llm, sum(result.truncated for result in results), len(records))
    return records, results


@app.command()
@engine_options()
@option_groups
def score(
    args: EngineArgs,
    text_1: str = typer.Argument(..., help="The first text (a query)."),
    texts_2: List[str] = typer.Argument(None, help="Texts to score against it."),
    input_file: Optional[str] = InputOpt,
    options: ScoringOptions = ScoringOptions(),
) -> None:
    """Score TEXT_1 against each text: cross-encoder relevance, or cosine for embedding models."""
    with errors():
        records, scores = _scored("score", args, text_1, "TEXT_1", texts_2, input_file, 2, options)
        rows = []
        for i, (record, out) in enumerate(zip(records, scores)):
            row = {"id": record["id"]} if "id" in record else {"index": i}
            row["score"] = out.outputs.score
            rows.append(row)
        emit_scores(rows, options.fmt)


@app.command()
@engine_options()
@option_groups
def rerank(
    args: EngineArgs,
    documents: List[str] = typer.Argument(None, help="Documents to rank."),
    query: str = typer.Option(..., "--query", help="The query."),
    input_file: Optional[str] = InputOpt,
    top_n: Optional[int] = typer.Option(None, "--top-n", help="Keep the best N documents."),
    options: ScoringOptions = ScoringOptions(),
) -> None:
    """Rank documents by relevance to a query, best first, each with its original index (or id)."""
    with errors():
        records, ranked = _scored("rerank", args, query, "--query", documents, input_file, 1, options, top_n=top_n)
        rows = []
        for result in ranked:
            record = records[result.index]
            row = {"id": record["id"]} if "id" in record else {}
            row.update(index=result.index, relevance_score=result.relevance_score, document=result.document)
            rows.append(row)
        emit_scores(rows, options.fmt)


@app.command()
@engine_options(model_argument=True)
def info(args: EngineArgs, verbose: bool = VerboseOpt) -> None:
    """Show a model's resolved settings, each with where it came from, and its tasks."""
    with errors():
        setup_logging(False, verbose)
        typer.echo(json.dumps(load(args).model.describe(), indent=2))


#: ``poolkit plugins`` lists the plugins; its sub-command ``new`` starts one.
plugins_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
app.add_typer(plugins_app, name="plugins")


@plugins_app.callback(invoke_without_command=True)
def plugins(
    ctx: typer.Context,
    show_all: bool = typer.Option(False, "--all", help="Include the built-in plugins."),
) -> None:
    """List the loaded plugins as JSON: distribution, version, what each provides, status.

    A plugin that registered kernels also gets ``kernels``: for each, its device, priority,
    availability and the device types (``cpu``, ``cuda``) it is the selected kernel for.
    ``poolkit plugins new NAME`` writes a new plugin project instead.
    """
    if ctx.invoked_subcommand is not None:
        return
    with errors():
        from ...plugins.lookup import kernel_table
        from ...plugins.manager import get_manager

        infos = [i.as_dict() for i in get_manager().plugin_infos() if show_all or not i.builtin]
        kernels = _kernels_by_plugin(kernel_table(("cpu", "cuda")))
        for info in infos:
            if info["name"] in kernels:
                info["kernels"] = kernels[info["name"]]
        typer.echo(json.dumps(infos, indent=2))


@plugins_app.command("new")
def plugins_new(
    name: str = typer.Argument(
        ..., metavar="NAME", help="The plugin's name: my-pooler makes the distribution poolkit-my-pooler."
    ),
    directory: Optional[str] = typer.Option(
        None, "--dir", help="The project folder to write, new or empty (default: poolkit-NAME here)."
    ),
) -> None:
    """Write a pip-installable plugin project: one example of each hook, its entry point, its tests."""
    with errors():
        from .plugin_project import new_plugin

        root = new_plugin(name, directory)
        typer.echo(str(root))
        typer.echo(f'next: cd {root} && pip install -e ".[test]" && pytest', err=True)


def _kernels_by_plugin(table: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The rows of :func:`poolkit.plugins.lookup.kernel_table`, one per kernel, grouped by plugin."""
    kernels: dict[str, dict[str, dict[str, Any]]] = {}
    for row in table:
        kernel = kernels.setdefault(row["registered_by"], {}).setdefault(
            row["kernel"],
            {k: row[k] for k in ("kernel", "device", "priority", "available")} | {"selected_for": []},
        )
        if row["selected"]:
            kernel["selected_for"].append(row["for_device"])
    return {plugin: sorted(by_name.values(), key=lambda k: k["kernel"]) for plugin, by_name in kernels.items()}
