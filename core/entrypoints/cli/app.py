"""The ``poolkit`` Typer application that every command module adds itself to.

Help screens are plain (``rich_markup_mode=None``): Typer's Rich panels show a ``<bool>`` type
after every flag (``--quiet <bool>``, even ``--help <bool>``), as if the flag took a value.

Every command's arguments pass through :class:`Commands` before they are parsed: click takes one
value a flag, vLLM's ``serve`` several (``--lora-modules a=/p/a b=/p/b``).
"""

from __future__ import annotations

from typing import Any

import typer


class Commands(typer.core.TyperGroup):
    """poolkit's commands, built-in or a plugin's, each parsed with vLLM's multi-value flags spread out
    (:func:`poolkit.entrypoints.cli.options.spread_values`)."""

    def resolve_command(self, ctx: Any, args: list[str]) -> tuple[Any, Any, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        if command is not None and not isinstance(command, typer.core.TyperGroup):
            from .options import errors, spread_values

            with errors():
                rest = spread_values(command, rest)
        return name, command, rest


app = typer.Typer(
    name="poolkit",
    cls=Commands,
    help="Run pooling models: embeddings, token embeddings, and more through plugins.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    if value:
        from ... import __version__

        typer.echo(f"poolkit {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Show poolkit's version and exit."
    ),
) -> None:
    """``poolkit --version``: the options of ``poolkit`` itself, before a command."""
