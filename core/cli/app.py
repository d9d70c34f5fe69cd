"""The ``poolkit`` Typer application that every command module adds itself to."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="poolkit",
    help="Run pooling models: embeddings, token embeddings, and more through plugins.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
