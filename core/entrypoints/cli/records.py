"""Reading the CLI's input records and writing its output rows (JSON Lines, JSON or a table).

An input text follows the server's and corpus jobs' rule (:func:`poolkit.contracts.io.text_problem`): an
empty TEXT argument or JSON record text, or a lone surrogate, is an error naming the input.
Blank lines of plain-text input separate texts and are skipped. The Python ``LLM`` API keeps
vLLM's behaviour instead: an empty string is embedded as its special tokens.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from ...contracts.errors import InvalidRequest
from ...contracts.io import check_text
from .options import Format

#: What a command that reads texts takes, for every "no input" error.
TEXT_INPUTS = "pass TEXT arguments, -i FILE, or pipe lines on stdin (-i -)"
#: What ``--task plugin`` takes.
DATA_INPUTS = "pass DATA arguments, -i FILE, or pipe JSON lines on stdin (-i -)"


def read_records(texts: list[str], input_file: str | None, first: int = 1) -> list[dict[str, Any]]:
    """Input records ``{"id"?, "text"}`` from arguments, a file, or stdin.

    Args:
        texts: the command's TEXT arguments.
        input_file: ``-i FILE``, ``-`` for stdin.
        first: the number of ``texts[0]`` among the command's TEXT arguments, for errors.

    Raises:
        InvalidRequest: no input, an unreadable file, a bad JSON line, or an invalid text.
    """
    if texts and input_file:
        raise InvalidRequest("pass TEXT arguments or -i FILE, not both")
    if texts:
        for number, text in enumerate(texts, first):
            check_text(text, f"TEXT argument {number}")
        return [{"text": t} for t in texts]
    if input_file is None:
        if sys.stdin is None or sys.stdin.isatty():
            raise InvalidRequest(f"no input: {TEXT_INPUTS}")
        input_file = "-"
    if input_file == "-":
        source = "stdin"
        lines = sys.stdin.read().splitlines()
    else:
        source = f"'{input_file}'"
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
        else:
            record = {"text": line}
        check_text(record["text"], f"line {number} of {source}")
        records.append(record)
    if not records:
        raise InvalidRequest(f"no input: {source} is empty; {TEXT_INPUTS}")
    return records


def emit(rows: list[dict[str, Any]], fmt: Format, value_key: str) -> None:
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
            dims = shape(value)
            flat = value if dims.count("x") == 0 else value[0]
            preview = ", ".join(f"{v:.4f}" for v in flat[:4]) + (", ..." if len(flat) > 4 else "")
            table.add_row(str(row[key]), dims, f"[{preview}]")
        Console(file=sys.stdout).print(table)


def shape(value: Any) -> str:
    dims = []
    while isinstance(value, list):
        dims.append(str(len(value)))
        value = value[0] if value else None
    return "x".join(dims)


def plugin_data(texts: list[str], input_file: str | None) -> list[Any]:
    """``pooling_task="plugin"`` inputs: each argument or line is JSON data (or a plain string)."""
    if texts and input_file:
        raise InvalidRequest("pass DATA arguments or -i FILE, not both")
    if not texts:
        if input_file in (None, "-"):
            if input_file is None and (sys.stdin is None or sys.stdin.isatty()):
                raise InvalidRequest(f"no input: {DATA_INPUTS}")
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
        raise InvalidRequest(f"no input: the input is empty; {DATA_INPUTS}")
    return items


def emit_scores(rows: list[dict[str, Any]], fmt: Format) -> None:
    if fmt is Format.auto:
        fmt = Format.table if sys.stdout.isatty() else Format.jsonl
    if fmt is not Format.table:
        emit(rows, fmt, "score")
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
