"""Corpus jobs: embed a file into a file, in chunks, resumable after any kill.

The input (JSON Lines, text lines, CSV or Parquet) is read as a stream. Results go to numbered
chunk files in ``OUTPUT.parts/``, each written to a temporary name and renamed into place, so a
chunk either exists whole or not at all; ``manifest.json`` there records the settings. Running
the same command again skips the finished chunks. When every row is done the chunks are joined
into ``OUTPUT`` (again written aside and renamed) and the parts are removed. A finished output
is left alone; different settings against an existing job are an error unless ``overwrite``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import InvalidRequest, MissingDependency

logger = logging.getLogger(__name__)

INPUT_FORMATS = ("jsonl", "txt", "csv", "parquet")
OUTPUT_FORMATS = ("jsonl", "parquet", "npy")
CHUNK_ROWS = 512
_MANIFEST = "manifest.json"


@dataclass
class JobSummary:
    """What a job did."""

    rows: int = 0
    written: int = 0
    resumed_rows: int = 0
    skipped_lines: list[int] = field(default_factory=list)
    duplicate_ids: int = 0
    #: Rows cut to the truncation limit (jobs truncate to the model's limit unless told otherwise).
    truncated: int = 0
    already_complete: bool = False
    output: str = ""


_FORMAT_ALIASES = {"json": "jsonl", "ndjson": "jsonl", "text": "txt", "pq": "parquet"}


def _format(path: Path, given: str | None, choices: tuple[str, ...], what: str) -> str:
    fmt = (given or path.suffix.lstrip(".")).lower()
    fmt = _FORMAT_ALIASES.get(fmt, fmt)
    if fmt not in choices:
        raise InvalidRequest(f"cannot tell the {what} format of '{path.name}'; use one of: {', '.join(choices)}")
    return fmt


def read_rows(
    path: Path, fmt: str | None = None, text_field: str = "text", id_field: str = "id", skip_bad_lines: bool = False,
    skipped: list[int] | None = None,
) -> Iterator[tuple[Any, str]]:
    """Stream ``(id, text)`` pairs; rows without an id get their 0-based row number.

    Raises:
        InvalidRequest: an unreadable file, a malformed line (with its number) unless
            ``skip_bad_lines``, a row without the text field.
    """
    if not path.is_file():
        raise InvalidRequest(f"input file '{path}' does not exist or is not a file")
    fmt = _format(path, fmt, INPUT_FORMATS, "input")
    if fmt == "parquet":
        yield from _read_parquet(path, text_field, id_field)
        return
    try:
        handle = path.open("r", encoding="utf-8", newline="")
    except OSError as exc:
        raise InvalidRequest(f"cannot read input file '{path}': {exc.strerror}") from None
    with handle:
        if fmt == "csv":
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or text_field not in reader.fieldnames:
                raise InvalidRequest(f"CSV file '{path.name}' has no '{text_field}' column")
            for row_no, row in enumerate(reader):
                yield row.get(id_field) if id_field in reader.fieldnames else row_no, row[text_field] or ""
            return
        row_no = 0
        try:
            for line_no, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                if fmt == "txt":
                    yield row_no, line.rstrip("\r\n")
                    row_no += 1
                    continue
                try:
                    obj = json.loads(line)
                    if not isinstance(obj, dict):
                        raise ValueError("not a JSON object")
                    text = obj[text_field]
                    if not isinstance(text, str):
                        raise ValueError(f"'{text_field}' is not a string")
                except (ValueError, KeyError) as exc:
                    reason = f"missing field '{text_field}'" if isinstance(exc, KeyError) else str(exc).split(":")[0]
                    if not skip_bad_lines:
                        raise InvalidRequest(
                            f"line {line_no} of '{path.name}' is not a valid record ({reason}); fix it or pass --skip-bad-lines"
                        ) from None
                    if skipped is not None:
                        skipped.append(line_no)
                    continue
                yield obj.get(id_field, row_no), text
                row_no += 1
        except UnicodeDecodeError:
            raise InvalidRequest(f"input file '{path.name}' is not UTF-8 text") from None


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise MissingDependency("Parquet needs pyarrow: pip install 'poolkit[parquet]'") from None
    return pyarrow


def _read_parquet(path: Path, text_field: str, id_field: str) -> Iterator[tuple[Any, str]]:
    pa = _pyarrow()
    try:
        reader = pa.parquet.ParquetFile(str(path))
    except Exception as exc:
        raise InvalidRequest(f"cannot read Parquet file '{path.name}': {exc}") from None
    names = reader.schema_arrow.names
    if text_field not in names:
        raise InvalidRequest(f"Parquet file '{path.name}' has no '{text_field}' column")
    columns = [text_field] + ([id_field] if id_field in names else [])
    row_no = 0
    for batch in reader.iter_batches(columns=columns, batch_size=4096):
        texts = batch.column(text_field).to_pylist()
        ids = batch.column(id_field).to_pylist() if id_field in names else range(row_no, row_no + len(texts))
        for row_id, text in zip(ids, texts):
            yield row_id, text if isinstance(text, str) else ""
        row_no += len(texts)


def _fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_chunk(path: Path, rows: list[dict[str, Any]]) -> None:
    _atomic_write(path, lambda tmp: tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8"))


def _finish(output: Path, fmt: str, parts: list[Path], value_key: str) -> None:
    """Join the chunk files into ``output`` (written aside, then renamed)."""

    def rows() -> Iterator[dict[str, Any]]:
        for part in parts:
            with part.open(encoding="utf-8") as f:
                for line in f:
                    yield json.loads(line)

    def write(tmp: Path) -> None:
        if fmt == "jsonl":
            with tmp.open("w", encoding="utf-8") as f:
                for row in rows():
                    f.write(json.dumps(row) + "\n")
        elif fmt == "npy":
            import numpy as np

            vectors = [row[value_key] for row in rows()]
            with tmp.open("wb") as f:
                np.save(f, np.asarray(vectors, dtype=np.float32))
        else:
            pa = _pyarrow()
            writer = None
            try:
                for part in parts:
                    chunk = [json.loads(line) for line in part.open(encoding="utf-8")]
                    table = pa.Table.from_pylist(chunk)
                    if writer is None:
                        writer = pa.parquet.ParquetWriter(str(tmp), table.schema)
                    writer.write_table(table)
            finally:
                if writer is not None:
                    writer.close()

    _atomic_write(output, write)


def run_job(
    llm: Any,
    input_path: str | Path,
    output_path: str | Path,
    *,
    task: str = "embed",
    input_format: str | None = None,
    output_format: str | None = None,
    text_field: str = "text",
    id_field: str = "id",
    skip_bad_lines: bool = False,
    overwrite: bool = False,
    chunk_rows: int = CHUNK_ROWS,
    settings: dict[str, Any] | None = None,
    pooling_params: Any = None,
    prompt_name: str | None = None,
    options: dict[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> JobSummary:
    """Embed (or encode for ``task``) every row of ``input_path`` into ``output_path``, resumably.

    Args:
        llm: the loaded :class:`poolkit.LLM`; its load settings (``llm.args``), the task, the
            pooling parameters, the prompt and the output options make the job's identity,
            recorded in the manifest and compared on resume.
        settings: more of what makes two runs the same job, if any.
        options: the task's output options (``top_k`` of sparse vectors, say).

    Raises:
        InvalidRequest: bad input, an unwritable output, or an existing job with other settings.
    """
    source, output = Path(input_path), Path(output_path)
    out_fmt = _format(output, output_format, OUTPUT_FORMATS, "output")
    task_obj = llm.task(task)
    options = {k: v for k, v in (options or {}).items() if v is not None}
    task_obj.check_options(options)
    if out_fmt == "npy" and (task_obj.granularity != "sequence" or not task_obj.tensor_output):
        raise InvalidRequest(".npy output holds one vector per row: use it with a task that gives one, such as embed")
    params = llm.check_params(pooling_params, 1, task_obj.name)[0]
    if params.truncate_prompt_tokens is None and params.truncation_side is None:
        # A week-long job does not stop at one long row: it is truncated, and counted.
        params = params.model_copy(update={"truncate_prompt_tokens": -1})
    parts_dir = output.with_name(output.name + ".parts")
    manifest_path = parts_dir / _MANIFEST
    job = {
        "input": str(source.resolve()),
        "input_size": source.stat().st_size if source.is_file() else None,
        "task": task,
        "text_field": text_field,
        "id_field": id_field,
        "output_format": out_fmt,
        "chunk_rows": chunk_rows,
        "skip_bad_lines": skip_bad_lines,
        "model": llm.args.identity(),
        "params": params.model_dump(mode="json", exclude_none=True),
        "prompt_name": prompt_name,
        "options": options,
        "settings": settings or {},
    }
    job_id = _fingerprint(job)
    summary = JobSummary(output=str(output))
    if overwrite:
        shutil.rmtree(parts_dir, ignore_errors=True)
        output.unlink(missing_ok=True)
        output.with_name(output.name + ".job").unlink(missing_ok=True)
    unfinished = json.loads(manifest_path.read_text()).get("job_id") if manifest_path.is_file() else None
    if output.exists() and not overwrite:
        marker = output.with_name(output.name + ".job")
        if marker.is_file() and marker.read_text().strip() == job_id:
            shutil.rmtree(parts_dir, ignore_errors=True)
            summary.already_complete = True
            return summary
        if unfinished != job_id:  # killed while finishing: the parts are still there, finish again
            raise InvalidRequest(
                f"output '{output}' already exists from another job or different settings; pass --overwrite to replace it"
            )
    if unfinished is not None:
        if unfinished != job_id:
            raise InvalidRequest(
                f"'{parts_dir}' holds an unfinished job with different settings; pass --overwrite to start again"
            )
    try:
        parts_dir.mkdir(parents=True, exist_ok=True)
        if not manifest_path.is_file():
            _atomic_write(manifest_path, lambda tmp: tmp.write_text(json.dumps({"job_id": job_id, **job}, indent=2)))
    except OSError as exc:
        raise InvalidRequest(f"cannot write to '{parts_dir.parent}': {exc.strerror}") from None

    value_key = task_obj.output_field
    seen: set[str] = set()
    chunk: list[tuple[Any, str]] = []
    chunk_no = 0

    def flush() -> None:
        nonlocal chunk, chunk_no
        part = parts_dir / f"part-{chunk_no:08d}.jsonl"
        if part.is_file():
            summary.resumed_rows += len(chunk)
        elif chunk:
            before = llm.engine.truncated_inputs
            outputs = llm.encode([text for _, text in chunk], params, pooling_task=task, prompt_name=prompt_name)
            summary.truncated += llm.engine.truncated_inputs - before
            rows = [
                {"id": row_id, **task_obj.record(out.outputs.data, llm.model, options)}
                for (row_id, _), out in zip(chunk, outputs)
            ]
            _write_chunk(part, rows)
            summary.written += len(rows)
            if progress is not None:
                progress(len(rows), sum(len(o.prompt_token_ids) for o in outputs))
        chunk, chunk_no = [], chunk_no + 1

    for row_id, text in read_rows(source, input_format, text_field, id_field, skip_bad_lines, summary.skipped_lines):
        key = json.dumps(row_id)
        if key in seen:
            summary.duplicate_ids += 1
            continue
        seen.add(key)
        summary.rows += 1
        chunk.append((row_id, text))
        if len(chunk) >= chunk_rows:
            flush()
    if chunk:
        flush()
    if summary.rows == 0:
        raise InvalidRequest(f"input file '{source.name}' has no rows")
    if summary.duplicate_ids:
        logger.warning("%d duplicate id(s) in '%s' were skipped (the first row of each id is kept)", summary.duplicate_ids, source.name)
    parts = sorted(parts_dir.glob("part-*.jsonl"))
    _finish(output, out_fmt, parts, value_key)
    _atomic_write(output.with_name(output.name + ".job"), lambda tmp: tmp.write_text(job_id))
    shutil.rmtree(parts_dir, ignore_errors=True)
    return summary
