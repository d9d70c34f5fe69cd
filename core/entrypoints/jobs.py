"""Corpus jobs: embed a file into a file, in chunks, resumable after any kill.

The input (JSON Lines, text lines, CSV or Parquet) is read as a stream, twice: once to count its
rows and fingerprint its bytes, once to embed it. Results go to numbered chunk files in
``OUTPUT.parts/``, each named with a fingerprint of the rows it was computed from and written to
a temporary name and renamed into place, so a chunk either exists whole or not at all;
``manifest.json`` there records the settings. Running the same command again keeps the chunks
whose rows are unchanged and computes the others. When every row is done the chunks are joined
into ``OUTPUT`` (again written aside and renamed), ``OUTPUT.job`` records what made it (job,
input fingerprint, rows, bytes, stored dtype) and the parts are removed. A finished output is
left alone while it and its input are as the job left them; different settings against an
existing job are an error unless ``overwrite``.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Protocol

from ..contracts.errors import InvalidRequest, MissingDependency
from ..contracts.io import text_problem
from ..contracts.params import PoolingParams
from .encodings import FLOAT_DTYPES, STORED_DTYPES, check_stored_dtype, stored_values

if TYPE_CHECKING:
    from ..api.llm import LLM

logger = logging.getLogger(__name__)

INPUT_FORMATS = ("jsonl", "txt", "csv", "parquet")
OUTPUT_FORMATS = ("jsonl", "parquet", "npy")
CHUNK_ROWS = 512
#: How embeddings are stored unless ``embed_dtype`` says otherwise.
DEFAULT_EMBED_DTYPE = "float32"
_MANIFEST = "manifest.json"
#: The layout of ``OUTPUT.parts/`` (chunk files named with their rows' fingerprint); part of a job's identity.
_LAYOUT = 2
_PART = re.compile(r"part-(\d{8})-([0-9a-f]{16})\.jsonl")


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
    #: Chunks computed again because their input rows changed since they were computed.
    recomputed_chunks: int = 0
    #: Chunk files found damaged (truncated, say) and computed again.
    repaired_chunks: int = 0
    #: Whether the ids mixed strings and integers, so every id was written as a string.
    ids_as_strings: bool = False
    #: How the task's vectors are stored (``None``: the task's results are not vectors).
    embed_dtype: str | None = None


class JobSink(Protocol):
    """Where a job's rows go instead of an output file (a late-interaction index's table, say).

    The job keeps its chunk files, manifest and resume rules; once every chunk is done it hands
    the sink every row, in order, and records the job beside the output as for a file, with the
    sink's digest of what it holds, which a later run compares before calling the job complete.
    """

    #: What the manifest records as the output's format.
    name: str

    def values(self, outputs: list[Any]) -> list[Any]:
        """A chunk's encoded outputs as the sink stores them (one value per output)."""

    def exists(self) -> bool:
        """Whether the sink's output is there (other things at the output path are not its own)."""

    def clear(self) -> None:
        """Remove the sink's output (``overwrite``) and nothing else; refuse (``InvalidRequest``)
        where what is there is not what the sink writes."""

    def write(self, rows: Iterator[dict[str, Any]], value_key: str) -> None:
        """Store every row (``id`` and ``value_key``), replacing whatever an interrupted write left."""

    def digest(self) -> tuple[int, str] | None:
        """Every row of the finished output read back: how many, and a digest of them (``None``:
        it cannot be read)."""


#: Truncation to the model's limit: what the CLI and corpus jobs (local and on Ray Data) ask for
#: when the caller chose none.
TRUNCATE_TO_LIMIT: dict[str, Any] = {"truncate_prompt_tokens": -1}


def truncating(params: PoolingParams | dict[str, Any] | None) -> PoolingParams:
    """``params``, truncating over-long inputs to the model's limit unless they choose a truncation.

    The Python API and the server refuse an input longer than the model's limit, as vLLM does; a
    week-long job (or a CLI call) does not stop at one long row: it truncates it and counts it.
    The caller's ``truncate_prompt_tokens`` or ``truncation_side`` wins.
    """
    params = PoolingParams.coerce(params) or PoolingParams()
    if params.truncate_prompt_tokens is not None or params.truncation_side is not None:
        return params
    return params.model_copy(update=TRUNCATE_TO_LIMIT)


_FORMAT_ALIASES = {"json": "jsonl", "ndjson": "jsonl", "text": "txt", "pq": "parquet"}


def _format(path: Path, given: str | None, choices: tuple[str, ...], what: str) -> str:
    fmt = (given or path.suffix.lstrip(".")).lower()
    fmt = _FORMAT_ALIASES.get(fmt, fmt)
    if fmt not in choices:
        raise InvalidRequest(f"cannot tell the {what} format of '{path.name}'; use one of: {', '.join(choices)}")
    return fmt


def _id_problem(row_id: Any, id_field: str) -> str | None:
    """Ids are strings or integers (JSON Lines): anything else makes a bad line."""
    if isinstance(row_id, bool) or not isinstance(row_id, (str, int)):
        return f"'{id_field}' must be a string or an integer"
    if isinstance(row_id, str) and not row_id.isascii():
        try:
            row_id.encode("utf-8")
        except UnicodeEncodeError:
            return f"'{id_field}' has invalid Unicode: a lone surrogate"
    return None


def read_rows(
    path: Path, fmt: str | None = None, text_field: str = "text", id_field: str = "id", skip_bad_lines: bool = False,
    skipped: list[int] | None = None,
) -> Iterator[tuple[Any, str]]:
    """Stream ``(id, text)`` pairs; rows without an id get their 0-based row number.

    A bad line is one that is not a record, has no text, an empty text or a lone surrogate in
    it, or (JSON Lines) an id that is neither a string nor an integer: the server's rule for
    inputs. It is an error naming its line (Parquet: its 1-based row) unless ``skip_bad_lines``,
    which skips it and appends its number to ``skipped``.

    Raises:
        InvalidRequest: an unreadable file, or a bad line unless ``skip_bad_lines``.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidRequest(f"input file '{path}' does not exist or is not a file")
    fmt = _format(path, fmt, INPUT_FORMATS, "input")

    def bad(where: str, number: int, reason: str) -> None:
        if not skip_bad_lines:
            raise InvalidRequest(
                f"{where} {number} of '{path.name}' is not a valid record ({reason}); fix it or pass --skip-bad-lines"
            )
        if skipped is not None:
            skipped.append(number)

    if fmt == "parquet":
        yield from _read_parquet(path, text_field, id_field, bad)
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
            has_id = id_field in reader.fieldnames
            for row_no, row in enumerate(reader):
                text = row.get(text_field)
                row_id = row.get(id_field) if has_id else row_no
                problem = text_problem(text) or (f"no '{id_field}'" if row_id is None else None)
                if problem:
                    bad("line", reader.line_num, problem)
                    continue
                yield row_id, text
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
                    bad("line", line_no, reason)
                    continue
                row_id = obj.get(id_field, row_no)
                problem = text_problem(text) or (_id_problem(row_id, id_field) if id_field in obj else None)
                if problem:
                    bad("line", line_no, problem)
                    continue
                yield row_id, text
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


def _parquet_file(path: Path) -> Any:
    pa = _pyarrow()
    try:
        return pa.parquet.ParquetFile(str(path))
    except Exception as exc:
        raise InvalidRequest(f"cannot read Parquet file '{path.name}': {exc}") from None


def _read_parquet(path: Path, text_field: str, id_field: str, bad: Callable[[str, int, str], None]) -> Iterator[tuple[Any, str]]:
    reader = _parquet_file(path)
    names = reader.schema_arrow.names
    if text_field not in names:
        raise InvalidRequest(f"Parquet file '{path.name}' has no '{text_field}' column")
    columns = [text_field] + ([id_field] if id_field in names else [])
    row_no = 0
    for batch in reader.iter_batches(columns=columns, batch_size=4096):
        texts = batch.column(text_field).to_pylist()
        ids = batch.column(id_field).to_pylist() if id_field in names else range(row_no, row_no + len(texts))
        for offset, (row_id, text) in enumerate(zip(ids, texts)):
            problem = text_problem(text) or (f"no '{id_field}'" if row_id is None else None)
            if problem:
                bad("row", row_no + offset + 1, problem)
                continue
            yield row_id, text
        row_no += len(texts)


def scan_input(path: Path, fmt: str) -> tuple[str, int | None]:
    """The input's fingerprint (SHA-256 of its bytes) and its number of rows, read as a stream.

    The count is the file's lines (less CSV's header line), so blank lines, bad lines and line
    breaks inside quoted CSV fields make it an upper bound; a Parquet file's is exact.
    """
    digest, lines, last = hashlib.sha256(), 0, b""
    try:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
                lines += block.count(b"\n")
                last = block[-1:]
    except OSError as exc:
        raise InvalidRequest(f"cannot read input file '{path}': {exc.strerror}") from None
    if last not in (b"", b"\n"):
        lines += 1
    if fmt == "parquet":
        rows: int | None = _parquet_file(path).metadata.num_rows
    elif fmt == "csv":
        rows = max(lines - 1, 0)
    else:
        rows = lines
    return digest.hexdigest(), rows


def _fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _id_key(row_id: Any) -> str:
    """What makes two ids the same: ``7`` and ``"7"`` are (they are written alike when ids mix)."""
    if isinstance(row_id, (str, int)) and not isinstance(row_id, bool):
        return str(row_id)
    return json.dumps(row_id, sort_keys=True, default=str)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _write_error(path: Path, exc: OSError) -> InvalidRequest:
    text = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC or (exc.errno is None and "No space left" in text):
        reason = "no space left on the device"
    elif exc.errno == getattr(errno, "EDQUOT", -1):
        reason = "disk quota exceeded"
    else:
        return InvalidRequest(f"cannot write '{path}': {text}")
    return InvalidRequest(
        f"{reason} writing '{path}'; free some space and run the same command again (finished chunks are kept)"
    )


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` aside and rename it into place; on any failure the temporary file is removed.

    Raises:
        InvalidRequest: the file cannot be written (a full disk, say), in one line.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _write_error(path, exc) from None
        raise


def _write_lines(handle: Any, lines: Iterable[str]) -> None:
    """Write text ``lines`` to an open file (where a full disk shows)."""
    for line in lines:
        handle.write(line)


def _write_text(path: Path, lines: Iterable[str]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        _write_lines(handle, lines)


def _write_chunk(path: Path, rows: list[dict[str, Any]]) -> None:
    _atomic_write(path, lambda tmp: _write_text(tmp, (json.dumps(r, default=str) + "\n" for r in rows)))


def _part_problem(part: Path, ids: list[Any]) -> str | None:
    """What is wrong with a finished chunk file that should hold the rows ``ids``, if anything.

    A cheap check of what a crash leaves (a short or cut file): the number of rows, the first
    and the last row; damage inside is found when the chunks are joined.
    """
    try:
        data = part.read_bytes()
    except OSError as exc:
        return f"unreadable: {exc.strerror}"
    if not data.endswith(b"\n"):
        return "cut short"
    count = data.count(b"\n")
    if count != len(ids):
        return f"{count} rows instead of {len(ids)}"
    first, last = data[: data.index(b"\n")], data[data.rfind(b"\n", 0, len(data) - 1) + 1 : -1]
    try:
        head, tail = json.loads(first), json.loads(last)
    except ValueError:
        return "not valid JSON"
    if not isinstance(head, dict) or not isinstance(tail, dict):
        return "not result rows"
    if head.get("id") != _jsonable(ids[0]) or tail.get("id") != _jsonable(ids[-1]):
        return "rows of other ids"
    return None


def _part_rows(part: Path, value_key: str, ids_as_str: bool) -> Iterator[dict[str, Any]]:
    """The rows of a chunk file; a damaged one is removed and named in the error."""
    number = 0
    try:
        with part.open(encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                row = json.loads(line)
                if not isinstance(row, dict) or "id" not in row or value_key not in row:
                    raise ValueError("not a result row")
                if ids_as_str:
                    row["id"] = str(row["id"])
                yield row
    except (ValueError, OSError) as exc:
        with contextlib.suppress(OSError):
            part.unlink()
        what = f"line {number} is not a result row" if isinstance(exc, ValueError) else exc.strerror
        raise InvalidRequest(
            f"chunk file '{part}' is damaged ({what}); it was removed: run the same command again to compute it again"
        ) from None


def _leaf_type(pa: Any, inferred: Any, leaf: Any) -> Any:
    if pa.types.is_list(inferred) or pa.types.is_large_list(inferred):
        return pa.list_(_leaf_type(pa, inferred.value_type, leaf))
    return leaf


def _arrow_schema(pa: Any, inferred: Any, value_key: str, dtype: str | None) -> Any:
    """The output schema: the task's field holds ``dtype`` values, recorded in the metadata."""
    if dtype is None:
        return inferred
    leaf = pa.from_numpy_dtype(STORED_DTYPES[dtype])
    fields = [f.with_type(_leaf_type(pa, f.type, leaf)) if f.name == value_key else f for f in inferred]
    return pa.schema(fields, metadata={b"embed_dtype": dtype.encode(), b"embed_field": value_key.encode()})


def _finish(
    output: Path, fmt: str, parts: list[Path], value_key: str, dtype: str | None, ids_as_str: bool, rows: int
) -> None:
    """Join the chunk files into ``output`` (written aside, then renamed)."""

    def all_rows() -> Iterator[dict[str, Any]]:
        for part in parts:
            yield from _part_rows(part, value_key, ids_as_str)

    def write_jsonl(tmp: Path) -> None:
        def lines() -> Iterator[str]:
            for row in all_rows():
                if dtype is not None:
                    row["embed_dtype"] = dtype
                yield json.dumps(row, default=str) + "\n"

        _write_text(tmp, lines())

    def write_npy(tmp: Path) -> None:
        import numpy as np

        np_dtype = np.dtype(STORED_DTYPES[dtype or DEFAULT_EMBED_DTYPE])
        width, done = None, 0
        with tmp.open("wb") as f:
            for part in parts:
                values = [row[value_key] for row in _part_rows(part, value_key, False)]
                try:
                    array = np.asarray(values, dtype=np_dtype)
                except (ValueError, TypeError):
                    array = np.empty(0)
                if array.ndim != 2 or (width is not None and array.shape[1] != width):
                    raise InvalidRequest(".npy output needs vectors of one length; these differ: write Parquet or JSON Lines")
                if width is None:
                    width = array.shape[1]
                    header = {"descr": np.lib.format.dtype_to_descr(np_dtype), "fortran_order": False, "shape": (rows, width)}
                    np.lib.format.write_array_header_1_0(f, header)
                f.write(array.tobytes())
                done += len(array)
        if done != rows:
            raise InvalidRequest(f"the chunk files hold {done} rows, not {rows}: run the same command again")

    def write_parquet(tmp: Path) -> None:
        pa = _pyarrow()
        writer, schema = None, None
        try:
            for part in parts:
                table = pa.Table.from_pylist(list(_part_rows(part, value_key, ids_as_str)))
                if schema is None:
                    schema = _arrow_schema(pa, table.schema, value_key, dtype)
                    writer = pa.parquet.ParquetWriter(str(tmp), schema)
                writer.write_table(table.cast(schema))
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise InvalidRequest(
                f"cannot write the results as Parquet ({str(exc).splitlines()[0]}); write JSON Lines instead (-o OUTPUT.jsonl)"
            ) from None
        finally:
            if writer is not None:
                writer.close()

    _atomic_write(output, {"jsonl": write_jsonl, "npy": write_npy, "parquet": write_parquet}[fmt])


def _output_rows(output: Path, fmt: str) -> int:
    if fmt == "parquet":
        return _parquet_file(output).metadata.num_rows
    if fmt == "npy":
        import numpy as np

        return int(np.load(output, mmap_mode="r").shape[0])
    lines = 0
    with output.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            lines += block.count(b"\n")
    return lines


def _check_finished(
    output: Path, fmt: str, made: dict[str, Any], source: Path, digest: str, sink: JobSink | None = None
) -> None:
    """Refuse to call a finished output complete when its input changed or it was damaged since."""
    if made.get("input_sha256") != digest:
        raise InvalidRequest(
            f"input '{source.name}' has changed since '{output}' was made from it; pass --overwrite to embed it again"
        )
    size = None if sink is not None else output.stat().st_size  # a sink's output is checked by its rows
    problem = None
    if sink is not None:
        found = sink.digest()
        if found is None:
            problem = "it cannot be read"
        elif found[0] != made.get("rows"):
            problem = f"it has {found[0]} rows"
        elif found[1] != made.get("digest"):
            problem = "its rows differ from those written"
    elif size != made.get("bytes"):
        problem = f"it has {size} bytes"
    else:
        try:
            rows = _output_rows(output, fmt)
        except (OSError, ValueError):  # a damaged file fails in its reader's own way
            rows = None
        if rows != made.get("rows"):
            problem = "it cannot be read" if rows is None else f"it has {rows} rows"
    if problem:
        raise InvalidRequest(
            f"output '{output}' is damaged ({problem}; the job wrote {made.get('rows')} rows, {made.get('bytes')} bytes); "
            "pass --overwrite to embed it again"
        )


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _job_dtype(task_obj: Any, embed_dtype: str | None) -> str | None:
    """How the task's results are stored: ``None`` where they are not tensors."""
    if not task_obj.tensor_output:
        if embed_dtype is not None:
            raise InvalidRequest(f"embed_dtype applies to tasks whose results are vectors, not to '{task_obj.name}'")
        return None
    dtype = check_stored_dtype(embed_dtype or DEFAULT_EMBED_DTYPE)
    if dtype not in FLOAT_DTYPES and task_obj.granularity != "sequence":
        raise InvalidRequest(
            f"embed_dtype {dtype} quantises one vector per input: use it with a task that gives one, such as embed "
            f"(not {task_obj.name})"
        )
    return dtype


def _sweep(parts_dir: Path, output: Path) -> None:
    """Remove the temporary files a killed run of this job left behind."""
    ours = (f".{output.name}.tmp-", f".{output.name}.job.tmp-")
    for folder, prefixes in ((parts_dir, (".",)), (output.parent, ours)):
        with contextlib.suppress(OSError):
            for path in folder.iterdir():
                if path.name.startswith(prefixes) and ".tmp-" in path.name:
                    path.unlink(missing_ok=True)


def run_job(
    llm: "LLM",
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
    embed_dtype: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    tokenization_kwargs: dict[str, Any] | None = None,
    sink: JobSink | None = None,
) -> JobSummary:
    """Embed (or encode for ``task``) every row of ``input_path`` into ``output_path``, resumably.

    Args:
        llm: the loaded :class:`poolkit.LLM`; its load settings (``llm.args``), the task, the
            pooling parameters, the prompt, the output options and ``embed_dtype`` make the
            job's identity, recorded in the manifest and compared on resume.
        settings: more of what makes two runs the same job, if any.
        options: the task's output options (``top_k`` of sparse vectors, say).
        embed_dtype: how vectors are stored: ``float32`` (the default), ``float16``,
            ``bfloat16`` (uint16 bit patterns), or Cohere's quantised ``int8``, ``uint8``,
            ``binary``, ``ubinary`` (one vector per input); see
            :func:`poolkit.entrypoints.encodings.stored_values`.
        progress: called as ``progress(rows, tokens)`` after each chunk (rows of chunks finished
            by an earlier run come with 0 tokens); if it has ``set_total`` (a
            :class:`poolkit.runtime.progress.Meter`), that is called first with the input's row count.
        tokenization_kwargs: passed to ``llm.encode`` (a late-interaction model's query or
            document side: :func:`poolkit.inputs.request.side_kwargs`); part of the job's identity.
        sink: where the rows go instead of a file at ``output_path`` (which then names the sink's
            output, for the job's records beside it).

    Raises:
        InvalidRequest: bad input, an unwritable output (a full disk), an existing job with other
            settings, a finished output whose input changed or that was damaged since.
    """
    source, output = Path(input_path), Path(output_path)
    out_fmt = sink.name if sink is not None else _format(output, output_format, OUTPUT_FORMATS, "output")
    task_obj = llm.task(task)
    options = {k: v for k, v in (options or {}).items() if v is not None}
    task_obj.check_options(options)
    if out_fmt == "npy" and (task_obj.granularity != "sequence" or not task_obj.tensor_output):
        raise InvalidRequest(".npy output holds one vector per row: use it with a task that gives one, such as embed")
    dtype = _job_dtype(task_obj, embed_dtype)
    params = truncating(llm.check_params(pooling_params, 1, task_obj.name)[0])
    if not source.is_file():
        raise InvalidRequest(f"input file '{source}' does not exist or is not a file")
    if output.exists() and output.resolve() == source.resolve():
        raise InvalidRequest(f"output '{output}' is the input file: write the results to another file")
    if sink is None and output.is_dir():  # a job writes a file: a folder there is not its output to replace
        raise InvalidRequest(f"output '{output}' is a folder: name a file to write the results to")
    in_fmt = _format(source, input_format, INPUT_FORMATS, "input")
    parts_dir = output.with_name(output.name + ".parts")
    manifest_path = parts_dir / _MANIFEST
    marker_path = output.with_name(output.name + ".job")
    job = {
        "input": str(source.resolve()),
        "task": task,
        "text_field": text_field,
        "id_field": id_field,
        "output_format": out_fmt,
        "chunk_rows": chunk_rows,
        "embed_dtype": dtype,
        "layout": _LAYOUT,
        "model": llm.args.identity(),
        "params": params.model_dump(mode="json", exclude_none=True),
        "prompt_name": prompt_name,
        "options": options,
        "settings": settings or {},
        **({"tokenization_kwargs": tokenization_kwargs} if tokenization_kwargs else {}),  # older jobs keep their id
    }
    job_id = _fingerprint(job)
    summary = JobSummary(output=str(output), embed_dtype=dtype)
    digest, total = scan_input(source, in_fmt)
    set_total = getattr(progress, "set_total", None)
    if set_total is not None:
        set_total(total)
    if overwrite:
        if sink is not None:  # what the sink writes, and nothing else that is there
            sink.clear()
        else:
            output.unlink(missing_ok=True)
        shutil.rmtree(parts_dir, ignore_errors=True)
        marker_path.unlink(missing_ok=True)
    manifest = _read_json(manifest_path) if manifest_path.is_file() else None
    unfinished = (manifest or {}).get("job_id")
    if (sink.exists() if sink is not None else output.exists()) and not overwrite:
        made = _read_json(marker_path) if marker_path.is_file() else None
        if made is not None and made.get("job_id") == job_id:
            _check_finished(output, out_fmt, made, source, digest, sink)
            shutil.rmtree(parts_dir, ignore_errors=True)
            summary.already_complete = True
            return summary
        if unfinished != job_id:  # killed while finishing: the parts are still there, finish again
            raise InvalidRequest(
                f"output '{output}' already exists from another job or different settings; pass --overwrite to replace it"
            )
    if manifest_path.is_file() and unfinished != job_id:
        if manifest is None:
            raise InvalidRequest(f"'{manifest_path}' is damaged; pass --overwrite to start the job again")
        if manifest.get("layout") is None:
            raise InvalidRequest(
                f"'{parts_dir}' holds an unfinished job of an older poolkit, whose chunks do not record the input "
                "they were computed from; pass --overwrite to start again"
            )
        raise InvalidRequest(f"'{parts_dir}' holds an unfinished job with different settings; pass --overwrite to start again")
    try:
        parts_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidRequest(f"cannot write to '{parts_dir.parent}': {exc.strerror}") from None
    if not manifest_path.is_file():
        _atomic_write(manifest_path, lambda tmp: tmp.write_text(json.dumps({"job_id": job_id, **job}, indent=2)))
    _sweep(parts_dir, output)

    found: dict[int, list[Path]] = {}
    for path in parts_dir.iterdir():
        match = _PART.fullmatch(path.name)
        if match:
            found.setdefault(int(match.group(1)), []).append(path)
    value_key = task_obj.output_field
    seen: set[str] = set()
    kinds: set[type] = set()
    used: list[Path] = []
    chunk: list[tuple[Any, str]] = []
    rows_hash = hashlib.sha256()
    chunk_no = 0

    def compute(part: Path) -> None:
        outputs = llm.encode(
            [text for _, text in chunk], params, pooling_task=task, prompt_name=prompt_name, tokenization_kwargs=tokenization_kwargs
        )
        summary.truncated += sum(out.truncated for out in outputs)
        values = sink.values(outputs) if sink is not None else [out.outputs.data for out in outputs]
        rows = []
        for (row_id, _), value in zip(chunk, values):
            record = task_obj.record(value, llm.model, options)
            if dtype is not None:
                import torch

                record[value_key] = stored_values(torch.as_tensor(record[value_key], dtype=torch.float32), dtype)
            rows.append({"id": row_id, **record})
        _write_chunk(part, rows)
        summary.written += len(rows)
        if progress is not None:
            progress(len(rows), sum(len(o.prompt_token_ids) for o in outputs))

    def flush() -> None:
        nonlocal chunk, chunk_no, rows_hash
        part = parts_dir / f"part-{chunk_no:08d}-{rows_hash.hexdigest()[:16]}.jsonl"
        for stale in found.pop(chunk_no, []):
            if stale != part:  # computed from rows that have changed since
                stale.unlink(missing_ok=True)
                summary.recomputed_chunks += 1
                logger.warning("chunk %d of '%s' changed since it was embedded: embedding it again", chunk_no, source.name)
        problem = _part_problem(part, [row_id for row_id, _ in chunk]) if part.is_file() else "absent"
        if problem is None:
            summary.resumed_rows += len(chunk)
            if progress is not None:
                progress(len(chunk), 0)
        else:
            if problem != "absent":
                logger.warning("chunk file '%s' is damaged (%s): embedding its rows again", part.name, problem)
                part.unlink(missing_ok=True)
                summary.repaired_chunks += 1
            compute(part)
        used.append(part)
        chunk, chunk_no, rows_hash = [], chunk_no + 1, hashlib.sha256()

    for row_id, text in read_rows(source, in_fmt, text_field, id_field, skip_bad_lines, summary.skipped_lines):
        key = _id_key(row_id)
        if key in seen:
            summary.duplicate_ids += 1
            continue
        seen.add(key)
        kinds.add(type(row_id))
        summary.rows += 1
        chunk.append((row_id, text))
        rows_hash.update(json.dumps([row_id, text], default=str).encode() + b"\n")
        if len(chunk) >= chunk_rows:
            flush()
    if chunk:
        flush()
    if summary.rows == 0:
        raise InvalidRequest(f"input file '{source.name}' has no rows")
    if summary.duplicate_ids:
        logger.warning("%d duplicate id(s) in '%s' were skipped (the first row of each id is kept)", summary.duplicate_ids, source.name)
    summary.ids_as_strings = str in kinds and int in kinds
    if summary.ids_as_strings:
        logger.warning("the ids in '%s' mix strings and integers: every id is written as a string", source.name)
    if sink is not None:
        sink.write((row for part in used for row in _part_rows(part, value_key, summary.ids_as_strings)), value_key)
    else:
        _finish(output, out_fmt, used, value_key, dtype, summary.ids_as_strings, summary.rows)
    made = {
        "job_id": job_id, "input_sha256": digest, "rows": summary.rows,
        "bytes": None if sink is not None else output.stat().st_size,
        "output_format": out_fmt, "embed_dtype": dtype,
    }
    if sink is not None:
        written = sink.digest()
        made["digest"] = written[1] if written is not None else None
    _atomic_write(marker_path, lambda tmp: tmp.write_text(json.dumps(made, indent=2)))
    shutil.rmtree(parts_dir, ignore_errors=True)
    return summary
