"""What every command shares: the error boundary, logging, output formats, and the load options.

The load options are not declared per command: :func:`engine_options` derives one option per
:class:`poolkit.settings.EngineArgs` field (its type, default and help text) and hands the command
the validated settings object.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import sys
import typing
from contextlib import contextmanager
from enum import Enum
from typing import Any, Callable, Iterator, Optional

import typer

from ..errors import PoolkitError
from ..settings import EngineArgs


class Format(str, Enum):
    auto = "auto"
    jsonl = "jsonl"
    json = "json"
    table = "table"


@contextmanager
def errors() -> Iterator[None]:
    """The CLI's one error boundary: ``Error: <message>`` on stderr and exit code 1."""
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


def setup_logging(quiet: bool, verbose: bool) -> None:
    level = logging.ERROR if quiet else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s", force=True)
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


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


def flag(name: str) -> str:
    """The command-line flag of an :class:`EngineArgs` field."""
    return "--" + name.replace("_", "-")


def _cli_type(annotation: Any) -> Any:
    """The type Typer parses a setting as: structured settings arrive as JSON text."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    base = args[0] if len(args) == 1 else annotation
    if base is bool:
        return bool
    return Optional[base] if base in (int, float) else Optional[str]


def engine_options(*, model_argument: bool = False, help_overrides: dict[str, str] | None = None) -> Callable:
    """Give a command one option per load setting; the command receives ``args: EngineArgs``.

    Args:
        model_argument: take the model as the command's positional argument (``serve``, ``info``)
            rather than ``--model``.
        help_overrides: help texts that differ for this command (the bench's presets).

    The command's own parameters come first; unset options leave the setting's default, and a bad
    value is the usual ``Error: ...`` naming the flag.
    """

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command)
        hints = typing.get_type_hints(command)  # the command module's names, before they travel here
        own = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in signature.parameters.values() if p.name != "args"]
        added: list[inspect.Parameter] = []
        for name, field in EngineArgs.model_fields.items():
            annotation = _cli_type(field.annotation)
            help_text = (help_overrides or {}).get(name, field.description)
            if name == "model" and model_argument:
                info = typer.Argument(None, help=help_text, show_default=False)
                annotation = Optional[str]
            else:
                default = field.default if annotation is bool or field.default is None else None
                short = EngineArgs.short_flags.get(name)
                info = typer.Option(default, flag(name), *([short] if short else []), help=help_text, show_default=False)
            added.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=annotation))

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            given = {p.name: kwargs.pop(p.name) for p in added}
            with errors():
                args = settings_from_cli(given)
            return command(args=args, **kwargs)

        wrapper.__signature__ = signature.replace(parameters=own + added)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in own + added}
        del wrapper.__wrapped__  # Typer must read the new signature, not the command's
        return wrapper

    return decorate


def settings_from_cli(given: dict[str, Any]) -> EngineArgs:
    """:class:`EngineArgs` from option values; errors name the flag (``--pooler-config is not valid JSON``)."""
    from ..errors import InvalidRequest

    values = {k: v for k, v in given.items() if v is not None}
    try:
        return EngineArgs(**values)
    except InvalidRequest as exc:
        message = str(exc)
        for name in values:
            if message.startswith(name):
                message = flag(name) + message[len(name) :]
                break
        raise InvalidRequest(message) from None
