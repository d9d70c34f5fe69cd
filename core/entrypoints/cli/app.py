"""The ``poolkit`` Typer application that every command module adds itself to.

Help screens are plain (``rich_markup_mode=None``): Typer's Rich panels show a ``<bool>`` type
after every flag (``--quiet <bool>``, even ``--help <bool>``), as if the flag took a value.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="poolkit",
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
