"""Where a command's settings come from besides its command line, as deployments give them: a
``POOLKIT_<FLAG>`` environment variable for every option (TEI's and Kubernetes' way) and a
``--config`` YAML file (vLLM's: its keys are the options' long names).

The command line wins, then the environment, then the file, then the defaults (click's order:
``default_map`` under ``envvar``). A bad value from the environment or the file is ``Error: ...``
naming the variable or the key, exit code 1, before anything loads.
"""

from __future__ import annotations

import copy
import functools
import inspect
import os
from pathlib import Path
from typing import Any, Callable, Optional

import typer

#: The prefix of the environment variables (``POOLKIT_MAX_BATCH_TOKENS`` for ``--max-batch-tokens``).
PREFIX = "POOLKIT_"
#: The context's metadata key holding the ``--config`` file a command read.
CONFIG_FILE = "poolkit.config_file"


def variable(name: str) -> str:
    """The environment variable of a parameter: ``max_batch_tokens`` -> ``POOLKIT_MAX_BATCH_TOKENS``."""
    return PREFIX + name.upper()


def from_environment(command: Callable) -> Callable:
    """Let every visible option and argument of ``command`` be set from its :func:`variable` (shown
    in ``--help``); an option's own variables (``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) still work,
    after poolkit's. Apply it above the decorators that build the signature (:func:`engine_options`)."""
    signature = inspect.signature(command)
    parameters = []
    for p in signature.parameters.values():
        info = p.default
        if isinstance(info, (typer.models.OptionInfo, typer.models.ArgumentInfo)) and not getattr(info, "hidden", False):
            info = copy.copy(info)  # options are shared between commands
            own = [info.envvar] if isinstance(info.envvar, str) else list(info.envvar or ())
            info.envvar = list(dict.fromkeys([variable(p.name), *own]))
            info.show_envvar = True
            p = p.replace(default=info)
        parameters.append(p)

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        kwargs.pop("config", None)
        return command(**kwargs)

    config = inspect.Parameter(
        "config", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[str],
        default=typer.Option(
            None, "--config", envvar=variable("config"), is_eager=True, callback=_read_config, show_default=False,
            help="A YAML file of settings (vLLM's format: the options' long names as keys, e.g. 'port: 8000', "
            "'served-model-name: minilm'); the command line and the environment win over it.",
        ),
    )
    wrapper.__signature__ = signature.replace(parameters=[*parameters, config])  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in [*parameters, config]}
    del wrapper.__wrapped__
    return wrapper


def _fail(message: str) -> None:
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(1)


def _read_config(ctx: typer.Context, param: typer.CallbackParam, value: str | None) -> str | None:
    """Read ``--config`` into the command's defaults (``ctx.default_map``), before any other option
    is read. A key names an option by its long name, dashes or underscores (``max-model-len``,
    ``max_model_len``); ``model`` is the model to serve, as in vLLM's file."""
    if value is None or ctx.resilient_parsing:
        return value
    import yaml

    path = Path(value).expanduser()
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        _fail(f"--config {value}: cannot read it ({exc.strerror or exc})")
    except yaml.YAMLError as exc:
        mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None) or str(exc).splitlines()[0]
        _fail(f"--config {value}: not YAML{f' (line {mark.line + 1}, column {mark.column + 1})' if mark else ''}: {problem}")
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        _fail(f"--config {value}: must hold a mapping of option names to values, got {type(loaded).__name__}")
    params = _long_names(ctx.command)
    defaults: dict[str, Any] = {}
    for key, setting in loaded.items():
        target = params.get(str(key).replace("_", "-"))
        if target is None:
            _fail(f"--config {value}: unknown key '{key}' (not an option of poolkit {ctx.command.name})")
        if isinstance(setting, bool) and not getattr(target, "is_flag", False):
            setting = str(setting).lower()
        if isinstance(setting, list):
            setting = [str(v) for v in setting]
        elif getattr(target, "multiple", False):
            setting = [setting]
        defaults[target.name] = setting
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    ctx.meta[CONFIG_FILE] = value
    return value


def _long_names(command: Any) -> dict[str, Any]:
    """Each visible long option name of ``command`` (without ``--``) -> its parameter; ``model``
    -> the model argument where the command takes one (vLLM's file names the model to serve so,
    where ``--model`` here adds another)."""
    names: dict[str, Any] = {}
    for param in command.params:
        if param.name == "config" or getattr(param, "hidden", False):
            continue
        if isinstance(param, typer.core.TyperArgument):
            names[param.name.replace("_", "-")] = param
            continue
        for opt in param.opts:
            if opt.startswith("--"):
                names.setdefault(opt[2:], param)
    names.update({p.name: p for p in command.params if isinstance(p, typer.core.TyperArgument) and p.name == "model"})
    return names


def _flag(param: Any) -> str:
    return next((opt for opt in getattr(param, "opts", ()) if opt.startswith("--")), param.name.upper())


class SourcedCommand(typer.core.TyperCommand):
    """A command whose settings may come from the environment or a ``--config`` file
    (:func:`from_environment`): a bad value from either is ``Error: ...`` naming its source and
    exit code 1, where a bad command-line value is click's usage error."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except typer.BadParameter as exc:
            param = exc.param
            source = ctx.get_parameter_source(param.name) if param is not None and param.name else None
            source = getattr(source, "name", None)  # click's ParameterSource (Typer carries its own click)
            if source == "ENVIRONMENT":
                envvars = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar or ())
                name = next((v for v in envvars if v in os.environ), envvars[0] if envvars else "?")
                _fail(f"environment variable {name}={os.environ.get(name, '')!r} ({_flag(param)}): {exc.message}")
            if source == "DEFAULT_MAP":
                _fail(f"--config {ctx.meta.get(CONFIG_FILE)}: the value of {_flag(param)}: {exc.message}")
            raise
