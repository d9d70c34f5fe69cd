"""The ``poolkit`` command line.

Data goes to stdout (JSON Lines, a JSON array or a table); logs, progress and errors go to
stderr. A user's mistake prints ``Error: <message>`` and exits 1; ``POOLKIT_DEBUG=1`` shows the
traceback. Every command that loads a model takes the same load options, derived from
:class:`poolkit.config.settings.EngineArgs`.
"""

from __future__ import annotations

import sys

import typer

from .app import app
from .commands import classify, embed, encode, info, plugins, rerank, score
from .index import index, search
from .options import Format, engine_options, errors, setup_logging
from .serve import serve

__all__ = [
    "Format", "app", "classify", "embed", "encode", "engine_options", "errors", "index", "info", "main", "plugins",
    "rerank", "score", "search", "serve", "setup_logging",
]


def main() -> None:
    """Console-script entry point: plugins may add commands before the CLI runs."""
    from ...plugins.manager import get_manager

    try:
        with errors():
            get_manager().register_commands(app)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
