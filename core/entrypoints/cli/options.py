"""What every command shares: the error boundary, logging, output formats, and the load options.

The load options are not declared per command: :func:`engine_options` derives one option per
:class:`poolkit.config.settings.EngineArgs` field (its type, default and help text) and hands the command
the validated settings object.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import os
import re
import sys
import typing
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable, Iterator, Optional

import typer

from ...config.settings import IGNORED_ENGINE_ARGS, EngineArgs
from ...contracts.errors import PoolkitError


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


class JsonLines(logging.Formatter):
    """One JSON object a log record, for log collectors (TEI's ``--json-output`` fields: ``timestamp``
    (UTC, RFC 3339), ``level``, ``message``, ``target`` (the logger), ``filename``, ``line_number``;
    ``exception`` when the record holds a traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        import datetime
        import json

        entry = {
            "timestamp": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "message": record.getMessage(),
            "target": record.name,
            "filename": record.filename,
            "line_number": record.lineno,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(quiet: bool, verbose: bool, json_lines: bool = False) -> None:
    """Log to stderr at the level ``--quiet``/``--verbose`` ask, as text or as :class:`JsonLines`."""
    level = logging.ERROR if quiet else logging.INFO if verbose else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines() if json_lines else logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
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
EmbedDtypeOpt = typer.Option(
    None, "--embed-dtype",
    help="Corpus jobs: how vectors are stored: float32 (default), float16, bfloat16 (uint16 bit patterns), "
    "or Cohere's int8, uint8, binary, ubinary.",
)
EngineOpt = typer.Option("local", "--engine", help="Corpus jobs: local, or ray (Ray Data, the ray extra).")
ChatTemplateOpt = typer.Option(None, "--chat-template", help="Score template for LLM rerankers: a Jinja file or text.")
InstructionOpt = typer.Option(None, "--instruction", help="Task instruction shown by a score template.")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress bar, errors only.")
VerboseOpt = typer.Option(False, "--verbose", "-v", help="Log what poolkit decides.")

#: The metadata key under which a record's field keeps its command-line option (:func:`grouped`).
OPTION = "option"


def grouped(info: typer.models.OptionInfo) -> Any:
    """A record field that is a command-line option: its default is the option's (see :func:`option_groups`)."""
    return dataclasses.field(default=info.default, metadata={OPTION: info})


@dataclass
class RequestOptions:
    """What embed and encode ask of each input: the pooling parameters and the prompt."""

    dimensions: Optional[int] = grouped(DimensionsOpt)
    truncate_prompt_tokens: Optional[int] = grouped(TruncateOpt)
    truncation_side: Optional[str] = grouped(TruncationSideOpt)
    prompt_name: Optional[str] = grouped(PromptNameOpt)

    def params(self) -> dict[str, Any]:
        """The pooling parameters given (the prompt is not one)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None and k != "prompt_name"}


@dataclass
class JobOptions:
    """What makes a CLI call a file-to-file corpus job."""

    output: Optional[str] = grouped(OutputOpt)
    text_field: str = grouped(TextFieldOpt)
    id_field: str = grouped(IdFieldOpt)
    skip_bad_lines: bool = grouped(SkipBadOpt)
    overwrite: bool = grouped(OverwriteOpt)
    embed_dtype: Optional[str] = grouped(EmbedDtypeOpt)
    engine: str = grouped(EngineOpt)


@dataclass
class ScoringOptions:
    """The options score and rerank share: the output format, the score template (for LLM
    rerankers) and the logging."""

    fmt: Format = grouped(FormatOpt)
    chat_template: Optional[str] = grouped(ChatTemplateOpt)
    instruction: Optional[str] = grouped(InstructionOpt)
    quiet: bool = grouped(QuietOpt)
    verbose: bool = grouped(VerboseOpt)


def option_groups(command: Callable) -> Callable:
    """Give a command one option per field of each record it takes (:class:`JobOptions`, ...).

    A parameter annotated with a record whose fields are all :func:`grouped` options stands, in
    the command's signature, for those options in the record's field order, at its place, so
    ``--help`` lists them where the parameter is; the command receives the record (the
    parameter's own default only keeps the signature valid). Apply it below
    :func:`engine_options`, which then sees the options as the command's own.
    """
    signature = inspect.signature(command)
    hints = typing.get_type_hints(command)
    records: dict[str, type] = {}  # the parameter -> its record type
    parameters: list[inspect.Parameter] = []
    for p in signature.parameters.values():
        record = hints.get(p.name, p.annotation)
        fields = dataclasses.fields(record) if dataclasses.is_dataclass(record) else ()
        if not fields or not all(OPTION in f.metadata for f in fields):
            parameters.append(p.replace(annotation=record))
            continue
        records[p.name] = record
        field_types = typing.get_type_hints(record)
        parameters += [
            inspect.Parameter(f.name, p.kind, default=f.metadata[OPTION], annotation=field_types[f.name])
            for f in fields
        ]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        for name, record in records.items():
            kwargs[name] = record(**{f.name: kwargs.pop(f.name) for f in dataclasses.fields(record)})
        return command(**kwargs)

    wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    del wrapper.__wrapped__  # Typer and engine_options must read the new signature
    return wrapper


def flag(name: str) -> str:
    """The command-line flag of an :class:`EngineArgs` field."""
    return "--" + name.replace("_", "-")


#: vLLM's ``--task`` values (``TaskOption``; deprecated there) and what poolkit makes of them: the
#: ``--convert`` they ask for, ``None`` for nothing (every supported task is served anyway), or
#: ``False`` for a generative task poolkit does not run. The names are vLLM's spellings, data
#: (like the values of ``--convert``), not a branch on poolkit's tasks.
VLLM_TASKS: tuple[tuple[str, str | None | bool], ...] = (
    ("auto", None),
    ("embed", "embed"),
    ("embedding", "embed"),
    ("classify", "classify"),
    ("score", None),
    ("reward", None),
    ("generate", False),
    ("transcription", False),
    ("draft", False),
)
#: vLLM's deprecated spellings of load settings: the flag's setting -> the setting it stands for.
DEPRECATED_SETTINGS = {"override_pooler_config": "pooler_config"}
#: Which of vLLM's engine options that mean nothing here (``settings.IGNORED_ENGINE_ARGS``) are
#: on/off flags (``--enforce-eager``, ``--no-enable-chunked-prefill``); the others take a value.
VLLM_IGNORED_FLAGS = frozenset({"enforce_eager", "enable_chunked_prefill", "disable_log_stats"})
#: vLLM's options that take several values after one flag (``nargs="+"``) and that poolkit's commands
#: take. vLLM's parser gives every list-typed setting ``nargs="+"`` (``vllm/engine/arg_utils.py``,
#: ``collection_to_kwargs`` in ``_compute_kwargs``): ``--served-model-name``
#: (``served_model_name: str | list[str] | None``) and ``--allowed-media-domains`` (``list[str] | None``);
#: ``vllm/entrypoints/openai/cli_args.py``'s ``FrontendArgs`` too: ``--lora-modules``
#: (``list[LoRAModulePath] | None``, read by its ``LoRAParserAction``) and ``--api-key``
#: (``list[str] | None``). vLLM's other ones are not poolkit options (``--logits-processors``,
#: ``--ignore-patterns``, ``--collect-detailed-traces``, ``--cudagraph-capture-sizes``,
#: ``--lora-target-modules``); ``--middleware`` and ``--allowed-origins/-methods/-headers`` take one
#: value a flag there.
VLLM_MULTI_VALUE_FLAGS = frozenset({"--served-model-name", "--allowed-media-domains", "--lora-modules", "--api-key"})


def warn(message: str) -> None:
    """A one-line ``Warning: ...`` on stderr (before a command sets up logging)."""
    typer.echo(f"Warning: {message}", err=True)


def _long_flags(param: inspect.Parameter) -> list[str]:
    """The long flags of a command's option (``--top-k``), the name-derived one when none is declared."""
    info = param.default
    if not isinstance(info, typer.models.OptionInfo):
        return []
    decls = [d for decl in (info.param_decls or ()) for d in decl.split("/") if d.startswith("--")]
    decls = [d for d in decls if not d.startswith("--no-")] if decls else [flag(param.name)]
    return decls


def _underscored(flags: list[str]) -> list[str]:
    """vLLM's underscore spellings of dashed flags (``--max-model-len`` -> ``--max_model_len``)."""
    return ["--" + f[2:].replace("-", "_") for f in flags if "-" in f[2:]]


def _optional(annotation: Any) -> Any:
    return annotation if type(None) in typing.get_args(annotation) else Optional[annotation]


def task_to_convert(task: str, convert: str | None) -> str | None:
    """The ``--convert`` a vLLM ``--task`` stands for (``None``: keep ``convert``), with a warning.

    vLLM deprecated ``--task`` (its server then served one task); poolkit serves every task the
    model supports, so the option only matters where it asks for a conversion: ``embed`` /
    ``embedding`` -> ``--convert embed`` (a no-op for an embedding model; a classifier or a causal
    LM is then served as an embedding model), ``classify`` -> ``--convert classify``. Other
    pooling values are ignored. An explicit ``--convert`` wins.

    Raises:
        InvalidRequest: an unknown value, or a generative task.
    """
    from ...contracts.errors import InvalidRequest

    mapping = dict(VLLM_TASKS)
    if task not in mapping:
        raise InvalidRequest(f"--task '{task}' is not one of {', '.join(mapping)} (vLLM's deprecated option)")
    mapped = mapping[task]
    if mapped is False:
        raise InvalidRequest(f"--task {task}: poolkit runs pooling models only")
    if mapped is None:
        warn(f"--task is deprecated (vLLM) and ignored here: poolkit serves every task the model supports; remove --task {task}")
        return convert
    if convert is not None:
        warn(f"--task is deprecated (vLLM) and ignored here: --convert {convert} decides; remove --task {task}")
        return convert
    warn(f"--task is deprecated (vLLM); poolkit serves every task the model supports: use --convert {mapped} instead of --task {task}")
    return mapped


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

    vLLM's spellings are accepted too, for every command at once (hidden from ``--help``): the
    underscore form of every dashed option (``--max_model_len``, ``--hf_overrides``,
    ``--served_model_name``, ...), ``--override-pooler-config`` (deprecated in vLLM: a warning,
    then ``--pooler-config``) and, where the command has no ``--task`` of its own, vLLM's
    deprecated ``--task`` (:func:`task_to_convert`).
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
                decl = f"{flag(name)}/--no-{flag(name)[2:]}" if annotation is bool and field.default is None else flag(name)  # on, off, unset
                info = typer.Option(default, decl, *([short] if short else []), help=help_text, show_default=False)
            added.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=annotation))
        taken = {f for p in own + added for f in _long_flags(p)} | {
            d for p in own + added if isinstance(p.default, typer.models.OptionInfo) for d in (p.default.param_decls or ())
        }
        hidden: list[inspect.Parameter] = []
        aliases: dict[str, tuple[str, str, str, Any]] = {}  # hidden parameter -> (target, its flag, alias flag, default)

        def hide(name: str, flags: list[str], annotation: Any, help_text: str) -> None:
            hidden.append(
                inspect.Parameter(
                    name,
                    inspect.Parameter.KEYWORD_ONLY,
                    default=typer.Option(None, *flags, hidden=True, help=help_text, show_default=False),
                    annotation=_optional(annotation),
                )
            )
            taken.update(flags)

        for p in own + added:
            flags = _long_flags(p)
            for alias in _underscored(flags):
                if alias not in taken:
                    key = f"vllm_alias__{alias[2:]}"
                    hide(key, [alias], p.annotation, f"vLLM's spelling of {flags[0]}.")
                    default = p.default.default if isinstance(p.default, typer.models.OptionInfo) else None
                    aliases[key] = (p.name, flags[0], alias, default)
        for old_name, new_name in DEPRECATED_SETTINGS.items():
            flags = [f for f in (flag(old_name), "--" + old_name) if f not in taken]
            if flags and any(p.name == new_name for p in added):
                hide(f"vllm_deprecated__{old_name}", flags, Optional[str], f"Deprecated (vLLM): use {flag(new_name)}.")
        vllm_task = "--task" not in taken
        if vllm_task:
            hide("vllm_deprecated__task", ["--task"], Optional[str], "Deprecated (vLLM): every supported task is served.")
        ignored: dict[str, str] = {}  # hidden parameter -> the flag vLLM users give
        for name in sorted(IGNORED_ENGINE_ARGS - {"task"}):
            flags = list(dict.fromkeys(f for f in (flag(name), "--" + name) if f not in taken))
            if not flags:
                continue
            key = f"vllm_ignored__{name}"
            if name in VLLM_IGNORED_FLAGS:
                decls = [f"{flags[0]}/--no-{flags[0][2:]}"] + flags[1:]
                hide(key, decls, bool, "vLLM engine option with no meaning here (ignored).")
            else:
                hide(key, flags, str, "vLLM engine option with no meaning here (ignored).")
            ignored[key] = flags[0]
        engine_names = {p.name for p in added}

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            with errors():
                _apply_aliases(kwargs, aliases)
                for old_name, new_name in DEPRECATED_SETTINGS.items():
                    value = kwargs.pop(f"vllm_deprecated__{old_name}", None)
                    if value is None:
                        continue
                    if kwargs.get(new_name) is not None:
                        from ...contracts.errors import InvalidRequest

                        raise InvalidRequest(f"{flag(old_name)} and {flag(new_name)} are the same setting; give only {flag(new_name)}")
                    warn(f"{flag(old_name)} is deprecated (vLLM); use {flag(new_name)}")
                    kwargs[new_name] = value
                dropped = [ignored[key] for key in ignored if kwargs.pop(key, None) is not None]
                if dropped:
                    warn(f"{', '.join(dropped)}: vLLM engine option(s) with no meaning for poolkit, ignored")
                task = kwargs.pop("vllm_deprecated__task", None) if vllm_task else None
                if task is not None:
                    kwargs["convert"] = task_to_convert(task, kwargs.get("convert"))
                given = {name: kwargs.pop(name) for name in engine_names}
                args = settings_from_cli(given)
            return command(args=args, **kwargs)

        parameters = own + added + hidden
        wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        del wrapper.__wrapped__  # Typer must read the new signature, not the command's
        return wrapper

    return decorate


def _apply_aliases(kwargs: dict[str, Any], aliases: dict[str, tuple[str, str, str, Any]]) -> None:
    """Move the values given under vLLM's underscore spellings to their options."""
    from ...contracts.errors import InvalidRequest

    for key, (target, target_flag, alias_flag, default) in aliases.items():
        value = kwargs.pop(key, None)
        if value is None or value == [] or value == ():
            continue
        if kwargs.get(target) not in (default, value, None, [], ()):
            raise InvalidRequest(f"{target_flag} and {alias_flag} are the same option with two values; give it once")
        kwargs[target] = value


def spread_values(command: Any, args: list[str]) -> list[str]:
    """A command's arguments with vLLM's several values after one flag given as the repeated flag.

    ``--lora-modules a=/p/a b=/p/b`` becomes ``--lora-modules a=/p/a --lora-modules b=/p/b`` for
    each flag of :data:`VLLM_MULTI_VALUE_FLAGS` the command takes (or its underscore spelling), so
    vLLM's spelling and poolkit's repeated flag mean the same and add up. As in vLLM's parser, a
    flag's values run to the next option (a word that starts with ``-``) or to ``--``: a MODEL
    after them is one of them, so MODEL goes first (``poolkit serve MODEL --served-model-name a
    b``), as vLLM's docs write it. The first value is taken whatever it looks like (click's rule),
    ``--flag=value`` is one value (argparse's), and the values of the command's other options are
    never read as flags.

    Raises:
        InvalidRequest: several values for an option that takes one in poolkit (``--api-key``).
    """
    takes: dict[str, Any] = {}  # each flag of the command -> its option
    for param in command.params:
        if isinstance(param, typer.core.TyperOption):
            takes.update(dict.fromkeys([*param.opts, *param.secondary_opts], param))
    spread: list[str] = []
    i = 0
    while i < len(args):
        token = args[i]
        if token == "--":
            return spread + args[i:]
        option = takes.get(token)
        if option is None or option.is_flag or option.count:  # not an option, a flag, or --flag=value
            spread.append(token)
            i += 1
            continue
        if "--" + token[2:].replace("_", "-") not in VLLM_MULTI_VALUE_FLAGS:
            spread += args[i : i + 1 + max(option.nargs, 1)]  # another option and its value(s)
            i += 1 + max(option.nargs, 1)
            continue
        end = i + 2
        while end < len(args) and not (args[end].startswith("-") and args[end] != "-"):
            end += 1
        values = args[i + 1 : end]
        if len(values) > 1 and not option.multiple:
            from ...contracts.errors import InvalidRequest

            raise InvalidRequest(
                f"{token} takes one value in poolkit {command.name}, got {len(values)}: vLLM's list of several is not "
                f"supported here (a flag's values run to the next option, so MODEL goes before them)"
            )
        spread += [part for value in values for part in (token, value)] or [token]
        i = end
    return spread


def settings_from_cli(given: dict[str, Any]) -> EngineArgs:
    """:class:`EngineArgs` from option values; errors name the flag (``--pooler-config is not valid JSON``)."""
    from ...contracts.errors import InvalidRequest

    values = {k: v for k, v in given.items() if v is not None}
    try:
        return EngineArgs(**values)
    except InvalidRequest as exc:
        message = str(exc)
        for name in values:  # the whole name: quantization_budget's message is not quantization's
            if re.match(rf"{name}\b", message):
                message = flag(name) + message[len(name) :]
                break
        raise InvalidRequest(message) from None
