"""Fake third-party plugins for the plugin tests: plugin bodies, and ``install`` to put one in a
``fresh_plugins`` sandbox as a distribution with an entry point."""

from __future__ import annotations

import textwrap

from poolkit.plugins.testing import PluginSandbox

BROKEN = """
raise RuntimeError("boom: libfoo is missing")
"""

PLAIN_POOLER = """
from poolkit import hookimpl


@hookimpl
def poolkit_register_poolers(register):
    register("{name}", lambda hidden, batch: hidden[batch.last_indices])
"""


def plugin_source(body: str) -> str:
    return "from poolkit import hookimpl\n\n" + textwrap.dedent(body)


def install(sandbox: PluginSandbox, plugin: str, source: str, dist: str | None = None, version: str = "1.0") -> None:
    """Install plugin ``plugin`` (module ``poolkit_fake_<plugin>``) from ``dist`` (``poolkit-<plugin>``)."""
    module = f"poolkit_fake_{plugin}"
    sandbox.install(dist or f"poolkit-{plugin}", version, {plugin: module}, {module: source})
