"""The ``poolkit`` command line.

Data goes to stdout (JSON Lines, a JSON array or a table); logs, progress and errors go to
stderr. A user's mistake prints ``Error: <message>`` and exits 1; ``POOLKIT_DEBUG=1`` shows the
traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Iterator, List, Optional

import typer

from .errors import InvalidRequest, PoolkitError

app = typer.Typer(
    name="poolkit",
    help="Run pooling models: embeddings, token embeddings, and more through plugins.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class Format(str, Enum):
    auto = "auto"
    jsonl = "jsonl"
    json = "json"
    table = "table"


@contextmanager
def _errors() -> Iterator[None]:
    """The CLI's one error boundary."""
    try:
        yield
    except typer.Exit:
        raise
    except Exception as exc:
        if os.environ.get("POOLKIT_DEBUG", "") not in ("", "0"):
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if not isinstance(exc, PoolkitError):
            message = f"{type(exc).__name__}: {message}"
        typer.echo(f"Error: {message}", err=True)
        typer.echo("(set POOLKIT_DEBUG=1 to see the traceback)", err=True)
        raise typer.Exit(1) from None


def _setup_logging(quiet: bool, verbose: bool) -> None:
    level = logging.ERROR if quiet else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s", force=True)
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def _read_records(texts: list[str], input_file: str | None) -> list[dict[str, Any]]:
    """Input records ``{"id"?, "text"}`` from arguments, a file, or stdin."""
    if texts and input_file:
        raise InvalidRequest("pass TEXT arguments or -i FILE, not both")
    if texts:
        return [{"text": t} for t in texts]
    if input_file is None:
        if sys.stdin is None or sys.stdin.isatty():
            raise InvalidRequest("no input: pass TEXT arguments, -i FILE, or pipe lines on stdin (-i -)")
        input_file = "-"
    if input_file == "-":
        lines = sys.stdin.read().splitlines()
    else:
        path = Path(input_file)
        if not path.is_file():
            raise InvalidRequest(f"input file '{input_file}' does not exist")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidRequest(f"cannot read input file '{input_file}': {exc}") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidRequest(f"line {number} is not valid JSON: {exc.msg}") from None
            if not isinstance(obj.get("text"), str):
                raise InvalidRequest(f"line {number}: a JSON record needs a string 'text' field")
            record = {"text": obj["text"]}
            if "id" in obj:
                record["id"] = obj["id"]
            records.append(record)
        else:
            records.append({"text": line})
    if not records:
        raise InvalidRequest("no input: the input is empty")
    return records


def _emit(rows: list[dict[str, Any]], fmt: Format, value_key: str) -> None:
    if fmt is Format.auto:
        fmt = Format.table if sys.stdout.isatty() else Format.jsonl
    if fmt is Format.json:
        typer.echo(json.dumps(rows))
    elif fmt is Format.jsonl:
        for row in rows:
            typer.echo(json.dumps(row))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table()
        key = "id" if rows and "id" in rows[0] else "index"
        for column in (key, "shape", value_key):
            table.add_column(column)
        for row in rows:
            value = row[value_key]
            shape = _shape(value)
            flat = value if shape.count("x") == 0 else value[0]
            preview = ", ".join(f"{v:.4f}" for v in flat[:4]) + (", ..." if len(flat) > 4 else "")
            table.add_row(str(row[key]), shape, f"[{preview}]")
        Console(file=sys.stdout).print(table)


def _shape(value: Any) -> str:
    dims = []
    while isinstance(value, list):
        dims.append(str(len(value)))
        value = value[0] if value else None
    return "x".join(dims)


def _json_option(value: Optional[str], name: str) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"{name} is not valid JSON: {exc.msg}") from None


# Options shared by the commands that load a model; they mirror the LLM constructor.
ModelOpt = typer.Option(None, "--model", "-m", help="Model directory, Hugging Face id or packaged model (default: all-MiniLM-L6-v2).")
PoolerConfigOpt = typer.Option(None, "--pooler-config", help="PoolerConfig as JSON.")
HfOverridesOpt = typer.Option(None, "--hf-overrides", help="config.json overrides as JSON.")
RunnerOpt = typer.Option("auto", "--runner", help="auto or pooling.")
ConvertOpt = typer.Option("auto", "--convert", help="auto, none, embed or classify.")
DtypeOpt = typer.Option("auto", "--dtype", help="auto, float32, bfloat16, float16.")
DeviceOpt = typer.Option(None, "--device", help="cpu, cuda, ... (default: GPU if present).")
AllowPickleOpt = typer.Option(False, "--allow-pickle", help="Load pickle (pytorch_model.bin) weights, with weights_only.")
InputOpt = typer.Option(None, "--input", "-i", help="Input file (text lines or JSON Lines with id/text); - for stdin.")
FormatOpt = typer.Option(Format.auto, "--format", "-f", help="auto (table on a terminal, else jsonl), jsonl, json, table.")
DimensionsOpt = typer.Option(None, "--dimensions", help="Matryoshka output dimensions.")
TruncateOpt = typer.Option(None, "--truncate-prompt-tokens", help="Keep at most N tokens (-1: the model's limit).")
TruncationSideOpt = typer.Option(None, "--truncation-side", help="left or right.")
PromptNameOpt = typer.Option(None, "--prompt-name", help="A prompt of the model's sentence-transformers config.")
OutputOpt = typer.Option(None, "--output", "-o", help="Write results to a file (JSON Lines, Parquet or .npy): a resumable corpus job.")
TextFieldOpt = typer.Option("text", "--text-field", help="Corpus jobs: the field (column) holding the text.")
IdFieldOpt = typer.Option("id", "--id-field", help="Corpus jobs: the field (column) holding the id.")
SkipBadOpt = typer.Option(False, "--skip-bad-lines", help="Corpus jobs: skip malformed lines (reported) instead of stopping.")
OverwriteOpt = typer.Option(False, "--overwrite", help="Corpus jobs: replace an existing output or unfinished job.")
EngineOpt = typer.Option("local", "--engine", help="Corpus jobs: local, or ray (Ray Data, the ray extra).")
ChatTemplateOpt = typer.Option(None, "--chat-template", help="Score template for LLM rerankers: a Jinja file or text.")
InstructionOpt = typer.Option(None, "--instruction", help="Task instruction shown by a score template.")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress bar, errors only.")
VerboseOpt = typer.Option(False, "--verbose", "-v", help="Log what poolkit decides.")


def _load(model, pooler_config, hf_overrides, runner, convert, dtype, device, allow_pickle, io_processor_plugin=None,
          **extra):
    from .llm import LLM

    return LLM(
        model,
        **extra,
        io_processor_plugin=io_processor_plugin,
        runner=runner,
        convert=convert,
        pooler_config=_json_option(pooler_config, "--pooler-config"),
        hf_overrides=_json_option(hf_overrides, "--hf-overrides"),
        dtype=dtype,
        device=device,
        allow_pickle=allow_pickle,
    )


def _plugin_data(texts: list[str], input_file: str | None) -> list[Any]:
    """``pooling_task="plugin"`` inputs: each argument or line is JSON data (or a plain string)."""
    if texts and input_file:
        raise InvalidRequest("pass DATA arguments or -i FILE, not both")
    if not texts:
        if input_file in (None, "-"):
            if input_file is None and (sys.stdin is None or sys.stdin.isatty()):
                raise InvalidRequest("no input: pass DATA arguments, -i FILE, or pipe JSON lines on stdin (-i -)")
            texts = sys.stdin.read().splitlines()
        else:
            path = Path(input_file)
            if not path.is_file():
                raise InvalidRequest(f"input file '{input_file}' does not exist")
            texts = path.read_text(encoding="utf-8").splitlines()
    items = []
    for text in texts:
        if not text.strip():
            continue
        try:
            items.append(json.loads(text))
        except json.JSONDecodeError:
            items.append(text)
    if not items:
        raise InvalidRequest("no input: the input is empty")
    return items


def _run_plugin(texts, input_file, llm, fmt, quiet) -> None:
    rows = []
    for i, data in enumerate(_plugin_data(texts, input_file)):
        (out,) = llm.encode({"data": data}, pooling_task="plugin", use_tqdm=not quiet)
        rows.append({"index": i, "data": out.outputs})
    if fmt is Format.table:
        fmt = Format.jsonl
    _emit(rows, Format.jsonl if fmt is Format.auto else fmt, "data")


@dataclass
class JobOptions:
    """What makes a CLI call a file-to-file corpus job."""

    output: Optional[str] = None
    text_field: str = "text"
    id_field: str = "id"
    skip_bad_lines: bool = False
    overwrite: bool = False
    engine: str = "local"


def _run_job(task, texts, input_file, llm, params, job: JobOptions, quiet: bool, settings: dict) -> None:
    """``-o OUTPUT``: a resumable corpus job, locally or on Ray Data."""
    from .config import PoolingParams

    if texts or not input_file or input_file == "-":
        raise InvalidRequest("a corpus job (-o OUTPUT) reads its input from a file: pass -i INPUT")
    if job.engine == "ray":
        from .integrations.ray import run_ray_job

        rows = run_ray_job(llm, input_file, job.output, task=task, text_field=job.text_field, overwrite=job.overwrite)
        typer.echo(f"{rows} rows -> {job.output} (ray)", err=True)
        return
    if job.engine != "local":
        raise InvalidRequest(f"unknown engine '{job.engine}': use local or ray")
    from .jobs import run_job
    from .progress import progress_bar

    with progress_bar(None, enabled=not quiet, label="embedding") as advance:
        summary = run_job(
            llm, input_file, job.output, task=task, text_field=job.text_field, id_field=job.id_field,
            skip_bad_lines=job.skip_bad_lines, overwrite=job.overwrite, settings=settings,
            pooling_params=PoolingParams(**params), progress=advance,
        )
    if summary.already_complete:
        typer.echo(f"{job.output} is already complete; nothing to do (--overwrite to redo it)", err=True)
        return
    extra = [f"{summary.resumed_rows} resumed"] if summary.resumed_rows else []
    if summary.skipped_lines:
        extra.append(f"{len(summary.skipped_lines)} bad lines skipped ({', '.join(map(str, summary.skipped_lines[:10]))})")
    if summary.duplicate_ids:
        extra.append(f"{summary.duplicate_ids} duplicate ids skipped")
    note = f" ({'; '.join(extra)})" if extra else ""
    typer.echo(f"{summary.rows} rows, {summary.written} embedded{note} -> {job.output}", err=True)


def _run_task(task, texts, input_file, model, pooler_config, hf_overrides, runner, convert, dtype, device,
              allow_pickle, dimensions, truncate_prompt_tokens, truncation_side, prompt_name, fmt, quiet, verbose,
              io_processor_plugin=None, top_k=None, threshold=None, job: Optional[JobOptions] = None):
    from .config import PoolingParams
    from .sparse import check_pruning

    if task != "sparse_embed" and (top_k is not None or threshold is not None):
        raise InvalidRequest("--top-k and --threshold apply to --task sparse_embed only")
    check_pruning(top_k, threshold)

    _setup_logging(quiet, verbose)
    if task == "plugin":
        llm = _load(model, pooler_config, hf_overrides, runner, convert, dtype, device, allow_pickle, io_processor_plugin)
        _run_plugin(texts, input_file, llm, fmt, quiet)
        return
    params = {
        k: v
        for k, v in dict(
            dimensions=dimensions, truncate_prompt_tokens=truncate_prompt_tokens, truncation_side=truncation_side
        ).items()
        if v is not None
    }
    if job is not None and job.output:
        llm = _load(model, pooler_config, hf_overrides, runner, convert, dtype, device, allow_pickle)
        settings = {"model": llm.model.name, "pooler_config": pooler_config, "hf_overrides": hf_overrides,
                    "dtype": str(llm.model.dtype), "params": params, "prompt_name": prompt_name}
        _run_job(task, texts, input_file, llm, params, job, quiet, settings)
        return
    records = _read_records(texts, input_file)
    llm = _load(model, pooler_config, hf_overrides, runner, convert, dtype, device, allow_pickle)
    outputs = llm.encode(
        [r["text"] for r in records],
        PoolingParams(**params),
        pooling_task=task,
        use_tqdm=not quiet,
        prompt_name=prompt_name,
    )
    if task == "sparse_embed":
        _emit_sparse(records, outputs, llm.get_tokenizer(), top_k, threshold, fmt)
        return
    value_key = {"embed": "embedding", "classify": "probs"}.get(task, "data")
    labels = llm.model.id2label if task == "classify" else {}
    rows = []
    for i, (record, out) in enumerate(zip(records, outputs)):
        row = {"id": record["id"]} if "id" in record else {"index": i}
        row[value_key] = out.outputs.data.tolist()
        if labels:
            row["label"] = labels.get(int(out.outputs.data.argmax()))
        rows.append(row)
    _emit(rows, fmt, value_key)


def _emit_sparse(records, outputs, tokenizer, top_k, threshold, fmt) -> None:
    """``--task sparse_embed``: per input its id, then indices, values and tokens, strongest first."""
    from .sparse import SparseEmbedding

    rows = []
    for i, (record, out) in enumerate(zip(records, outputs)):
        row = {"id": record["id"]} if "id" in record else {"index": i}
        sparse = SparseEmbedding.from_dense(out.outputs.data, top_k=top_k, threshold=threshold, tokenizer=tokenizer)
        row.update(sparse.to_dict())
        rows.append(row)
    _emit(rows, fmt, "values")


def _embed_images(images, texts, input_file, model, pooler_config, hf_overrides, runner, convert, dtype, device,
                  allow_pickle, dimensions, fmt, quiet, verbose) -> None:
    """``poolkit embed --image FILE ...``: one record per image, with its index and embedding."""
    from .config import PoolingParams

    _setup_logging(quiet, verbose)
    if texts or input_file:
        raise InvalidRequest("pass --image files or texts (arguments or -i FILE), not both")
    llm = _load(model, pooler_config, hf_overrides, runner, convert, dtype, device, allow_pickle)
    params = PoolingParams(dimensions=dimensions) if dimensions is not None else None
    prompts = [{"prompt": "", "multi_modal_data": {"image": image}} for image in images]
    outputs = llm.embed(prompts, params, use_tqdm=not quiet)
    _emit([{"index": i, "embedding": out.outputs.embedding} for i, out in enumerate(outputs)], fmt, "embedding")


@app.command()
def embed(
    texts: List[str] = typer.Argument(None, help="Texts to embed."),
    images: List[str] = typer.Option(None, "--image", help="An image file to embed (repeatable; models that read images, such as CLIP)."),
    input_file: Optional[str] = InputOpt,
    model: Optional[str] = ModelOpt,
    fmt: Format = FormatOpt,
    pooler_config: Optional[str] = PoolerConfigOpt,
    hf_overrides: Optional[str] = HfOverridesOpt,
    runner: str = RunnerOpt,
    convert: str = ConvertOpt,
    dtype: str = DtypeOpt,
    device: Optional[str] = DeviceOpt,
    allow_pickle: bool = AllowPickleOpt,
    dimensions: Optional[int] = DimensionsOpt,
    truncate_prompt_tokens: Optional[int] = TruncateOpt,
    truncation_side: Optional[str] = TruncationSideOpt,
    prompt_name: Optional[str] = PromptNameOpt,
    output: Optional[str] = OutputOpt,
    text_field: str = TextFieldOpt,
    id_field: str = IdFieldOpt,
    skip_bad_lines: bool = SkipBadOpt,
    overwrite: bool = OverwriteOpt,
    engine: str = EngineOpt,
    quiet: bool = QuietOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Embed texts, or images with --image: one record per input with its index (or id) and embedding.

    With -o OUTPUT, a resumable corpus job: -i INPUT (JSON Lines, text, CSV or Parquet) is embedded
    into OUTPUT (JSON Lines, Parquet or .npy); run the same command again after a kill to resume.
    """
    with _errors():
        if images:
            _embed_images(images, texts, input_file, model, pooler_config, hf_overrides, runner, convert, dtype,
                          device, allow_pickle, dimensions, fmt, quiet, verbose)
            return
        job = JobOptions(output, text_field, id_field, skip_bad_lines, overwrite, engine)
        _run_task("embed", texts, input_file, model, pooler_config, hf_overrides, runner, convert, dtype, device,
                  allow_pickle, dimensions, truncate_prompt_tokens, truncation_side, prompt_name, fmt, quiet, verbose,
                  job=job)


@app.command()
def encode(
    texts: List[str] = typer.Argument(None, help="Texts to encode."),
    task: str = typer.Option(..., "--task", "-t", help="Pooling task: embed, classify, token_embed, token_classify, plugin, or one a plugin adds."),
    input_file: Optional[str] = InputOpt,
    model: Optional[str] = ModelOpt,
    fmt: Format = FormatOpt,
    pooler_config: Optional[str] = PoolerConfigOpt,
    hf_overrides: Optional[str] = HfOverridesOpt,
    runner: str = RunnerOpt,
    convert: str = ConvertOpt,
    dtype: str = DtypeOpt,
    device: Optional[str] = DeviceOpt,
    allow_pickle: bool = AllowPickleOpt,
    dimensions: Optional[int] = DimensionsOpt,
    truncate_prompt_tokens: Optional[int] = TruncateOpt,
    truncation_side: Optional[str] = TruncationSideOpt,
    prompt_name: Optional[str] = PromptNameOpt,
    io_processor_plugin: Optional[str] = typer.Option(None, "--io-processor-plugin", help="IO processor for --task plugin."),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="sparse_embed: keep the K strongest weights per input."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="sparse_embed: drop weights below this."),
    output: Optional[str] = OutputOpt,
    text_field: str = TextFieldOpt,
    id_field: str = IdFieldOpt,
    skip_bad_lines: bool = SkipBadOpt,
    overwrite: bool = OverwriteOpt,
    engine: str = EngineOpt,
    quiet: bool = QuietOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Run any pooling task: one record per input with its index (or id) and data.

    With --task plugin, each argument or input line is JSON data for the IO processor plugin.
    With -o OUTPUT, a resumable corpus job over -i INPUT, as for embed.
    """
    with _errors():
        job = JobOptions(output, text_field, id_field, skip_bad_lines, overwrite, engine)
        _run_task(task, texts, input_file, model, pooler_config, hf_overrides, runner, convert, dtype, device,
                  allow_pickle, dimensions, truncate_prompt_tokens, truncation_side, prompt_name, fmt, quiet, verbose,
                  io_processor_plugin, top_k, threshold, job=job)


@app.command()
def classify(
    texts: List[str] = typer.Argument(None, help="Texts to classify."),
    input_file: Optional[str] = InputOpt,
    model: Optional[str] = ModelOpt,
    fmt: Format = FormatOpt,
    pooler_config: Optional[str] = PoolerConfigOpt,
    hf_overrides: Optional[str] = HfOverridesOpt,
    runner: str = RunnerOpt,
    convert: str = ConvertOpt,
    dtype: str = DtypeOpt,
    device: Optional[str] = DeviceOpt,
    allow_pickle: bool = AllowPickleOpt,
    truncate_prompt_tokens: Optional[int] = TruncateOpt,
    truncation_side: Optional[str] = TruncationSideOpt,
    quiet: bool = QuietOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Classify texts: one record per input with its probabilities and top label."""
    with _errors():
        _run_task("classify", texts, input_file, model, pooler_config, hf_overrides, runner, convert, dtype, device,
                  allow_pickle, None, truncate_prompt_tokens, truncation_side, None, fmt, quiet, verbose)


@app.command()
def score(
    text_1: str = typer.Argument(..., help="The first text (a query)."),
    texts_2: List[str] = typer.Argument(None, help="Texts to score against it."),
    input_file: Optional[str] = InputOpt,
    model: Optional[str] = ModelOpt,
    fmt: Format = FormatOpt,
    pooler_config: Optional[str] = PoolerConfigOpt,
    hf_overrides: Optional[str] = HfOverridesOpt,
    runner: str = RunnerOpt,
    convert: str = ConvertOpt,
    dtype: str = DtypeOpt,
    device: Optional[str] = DeviceOpt,
    allow_pickle: bool = AllowPickleOpt,
    chat_template: Optional[str] = ChatTemplateOpt,
    instruction: Optional[str] = InstructionOpt,
    quiet: bool = QuietOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Score TEXT_1 against each text: cross-encoder relevance, or cosine for embedding models."""
    with _errors():
        _setup_logging(quiet, verbose)
        records = _read_records(texts_2, input_file)
        llm = _load(model, pooler_config, hf_overrides, runner, convert, dtype, device, allow_pickle)
        scores = llm.score(
            text_1, [r["text"] for r in records], use_tqdm=not quiet, chat_template=chat_template, instruction=instruction
        )
        rows = []
        for i, (record, out) in enumerate(zip(records, scores)):
            row = {"id": record["id"]} if "id" in record else {"index": i}
            row["score"] = out.outputs.score
            rows.append(row)
        _emit_scores(rows, fmt)


@app.command()
def rerank(
    documents: List[str] = typer.Argument(None, help="Documents to rank."),
    query: str = typer.Option(..., "--query", help="The query."),
    input_file: Optional[str] = InputOpt,
    top_n: Optional[int] = typer.Option(None, "--top-n", help="Keep the best N documents."),
    model: Optional[str] = ModelOpt,
    fmt: Format = FormatOpt,
    pooler_config: Optional[str] = PoolerConfigOpt,
    hf_overrides: Optional[str] = HfOverridesOpt,
    runner: str = RunnerOpt,
    convert: str = ConvertOpt,
    dtype: str = DtypeOpt,
    device: Optional[str] = DeviceOpt,
    allow_pickle: bool = AllowPickleOpt,
    chat_template: Optional[str] = ChatTemplateOpt,
    instruction: Optional[str] = InstructionOpt,
    quiet: bool = QuietOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Rank documents by relevance to a query, best first, each with its original index (or id)."""
    with _errors():
        _setup_logging(quiet, verbose)
        records = _read_records(documents, input_file)
        llm = _load(model, pooler_config, hf_overrides, runner, convert, dtype, device, allow_pickle)
        ranked = llm.rerank(
            query,
            [r["text"] for r in records],
            top_n=top_n,
            use_tqdm=not quiet,
            chat_template=chat_template,
            instruction=instruction,
        )
        rows = []
        for result in ranked:
            record = records[result.index]
            row = {"id": record["id"]} if "id" in record else {}
            row.update(index=result.index, relevance_score=result.relevance_score, document=result.document)
            rows.append(row)
        _emit_scores(rows, fmt)


def _emit_scores(rows: list[dict[str, Any]], fmt: Format) -> None:
    if fmt is Format.auto:
        fmt = Format.table if sys.stdout.isatty() else Format.jsonl
    if fmt is not Format.table:
        _emit(rows, fmt, "score")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table()
    columns = list(rows[0]) if rows else []
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values()))
    Console(file=sys.stdout).print(table)


@app.command()
def serve(
    model: Optional[str] = typer.Argument(None, help="Model directory, Hugging Face id or packaged model (default: all-MiniLM-L6-v2)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; 0.0.0.0 listens on every interface."),
    port: int = typer.Option(8000, "--port", help="Port to bind."),
    served_model_name: Optional[str] = typer.Option(None, "--served-model-name", help="The name requests give in 'model' (default: MODEL as given)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="POOLKIT_API_KEY", help="Require 'Authorization: Bearer KEY' on every inference route (or set POOLKIT_API_KEY)."),
    max_batch_tokens: Optional[int] = typer.Option(None, "--max-batch-tokens", help="Token budget of one batch: concurrent requests are merged up to it."),
    max_queue_tokens: int = typer.Option(1_000_000, "--max-queue-tokens", help="Estimated tokens allowed to wait for the model; beyond it 429."),
    max_concurrent_requests: int = typer.Option(512, "--max-concurrent-requests", help="Requests handled at once; beyond it 429."),
    max_inputs_per_request: int = typer.Option(2048, "--max-inputs-per-request", help="Inputs (texts, documents, images) in one request."),
    max_request_tokens: int = typer.Option(300_000, "--max-request-tokens", help="Tokens in one request (estimated before tokenizing)."),
    max_body_bytes: int = typer.Option(16 * 1024 * 1024, "--max-body-bytes", help="Largest request body; beyond it 413."),
    shutdown_timeout: float = typer.Option(30.0, "--shutdown-timeout", help="Seconds to finish in-flight work on SIGTERM."),
    pooler_config: Optional[str] = PoolerConfigOpt,
    hf_overrides: Optional[str] = HfOverridesOpt,
    runner: str = RunnerOpt,
    convert: str = ConvertOpt,
    dtype: str = DtypeOpt,
    device: Optional[str] = DeviceOpt,
    allow_pickle: bool = AllowPickleOpt,
    chat_template: Optional[str] = typer.Option(None, "--chat-template", help="Score template for /score and /rerank with LLM rerankers: a Jinja file or text."),
    io_processor_plugin: Optional[str] = typer.Option(None, "--io-processor-plugin", help="IO processor for /pooling with task 'plugin'."),
    quiet: bool = QuietOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Serve MODEL over HTTP: OpenAI /v1/embeddings, /pooling, /classify, /score, /rerank, Cohere /v2/embed.

    Every task the model supports is served; each request chooses its own. Binds 127.0.0.1
    unless --host says otherwise. SIGTERM drains in-flight requests and exits 0.
    """
    with _errors():
        try:
            import fastapi  # noqa: F401
            import uvicorn  # noqa: F401
        except ImportError:
            from .errors import MissingDependency

            raise MissingDependency("poolkit serve needs FastAPI and uvicorn: pip install 'poolkit[serve]'") from None
        from .llm import DEFAULT_MODEL
        from .server import ServerLimits, run

        limits = ServerLimits(
            max_inputs_per_request=max_inputs_per_request,
            max_request_tokens=max_request_tokens,
            max_body_bytes=max_body_bytes,
            max_concurrent_requests=max_concurrent_requests,
            max_queue_tokens=max_queue_tokens,
            shutdown_timeout=shutdown_timeout,
            **({"max_batch_tokens": max_batch_tokens} if max_batch_tokens is not None else {}),
        )
        if chat_template is not None and Path(chat_template).is_file():
            chat_template = Path(chat_template).read_text(encoding="utf-8")
        _json_option(pooler_config, "--pooler-config")  # bad JSON fails now, not after the server started
        _json_option(hf_overrides, "--hf-overrides")
        name = model or DEFAULT_MODEL
        _setup_logging(quiet, verbose)
        if not quiet:
            for logger_name in ("uvicorn", "uvicorn.error", "poolkit.server"):
                logging.getLogger(logger_name).setLevel(logging.INFO)

        def load():
            return _load(name, pooler_config, hf_overrides, runner, convert, dtype, device, allow_pickle,
                         io_processor_plugin, max_batch_tokens=max_batch_tokens)

        logging.getLogger("poolkit.server").info("serving %s as '%s' on http://%s:%d", name, served_model_name or name, host, port)
        run(load, host=host, port=port, served_model_name=served_model_name or name, api_key=api_key, limits=limits,
            chat_template=chat_template, log_level="warning" if quiet else "info", access_log=verbose)


@app.command()
def info(
    model: Optional[str] = typer.Argument(None, help="Model (default: all-MiniLM-L6-v2)."),
    pooler_config: Optional[str] = PoolerConfigOpt,
    hf_overrides: Optional[str] = HfOverridesOpt,
    runner: str = RunnerOpt,
    convert: str = ConvertOpt,
    dtype: str = DtypeOpt,
    device: Optional[str] = DeviceOpt,
    allow_pickle: bool = AllowPickleOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Show a model's resolved settings, each with where it came from, and its tasks."""
    with _errors():
        _setup_logging(False, verbose)
        llm = _load(model, pooler_config, hf_overrides, runner, convert, dtype, device, allow_pickle)
        typer.echo(json.dumps(llm.model.describe(), indent=2))


@app.command()
def plugins(
    show_all: bool = typer.Option(False, "--all", help="Include the built-in plugins."),
) -> None:
    """List the loaded plugins as JSON: distribution, version, what each provides, status."""
    with _errors():
        from .plugins import get_manager

        infos = [i.as_dict() for i in get_manager().plugin_infos() if show_all or not i.builtin]
        typer.echo(json.dumps(infos, indent=2))


def main() -> None:
    """Console-script entry point: plugins may add commands before the CLI runs."""
    from .plugins import get_manager

    try:
        with _errors():
            get_manager().register_commands(app)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
