"""Helpers for testing poolkit plugins, shipped so plugin authors test the way poolkit does.

Three ways to put a plugin in front of poolkit, from lightest to most real:

- :func:`plugin_registered` registers a plugin object (a module, class or instance with
  ``@poolkit.hookimpl`` functions) for the duration of a ``with`` block.
- :func:`fake_distribution` writes an installed-looking ``*.dist-info`` directory and the
  plugin's modules into a folder, so entry-point discovery finds them for real: broken imports,
  duplicate names and the environment switches behave exactly as for a ``pip install``.
- :class:`PluginSandbox` puts such folders on ``sys.path`` and gives every test a freshly
  discovered plugin manager, undoing it all afterwards.

With pytest installed this module also provides the ``fresh_plugins`` fixture; enable it with
``pytest_plugins = ["poolkit.plugins.testing"]`` in a ``conftest.py``. Importing this module never
requires pytest.

Example:
    >>> def test_my_pooler(fresh_plugins):
    ...     fresh_plugins.install(
    ...         "poolkit-mine", "1.0", {"mine": "poolkit_mine"},
    ...         {"poolkit_mine": "from poolkit import hookimpl\\n..."},
    ...     )
    ...     assert fresh_plugins.infos()["mine"].status == "ok"
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Iterator

from .manager import GROUP, PluginInfo, PluginManager, get_manager, reset_manager

#: The environment switches that change which plugins load.
ENV_VARS = ("POOLKIT_PLUGINS", "POOLKIT_DISABLE_PLUGINS", "POOLKIT_STRICT_PLUGINS")


@contextmanager
def plugin_registered(plugin: object, name: str) -> Iterator[PluginInfo]:
    """Register ``plugin`` under ``name`` for the duration of the block.

    Registration goes through :meth:`PluginManager.add_plugin`, so it is validated exactly like
    an installed plugin, except that any failure raises :class:`poolkit.PluginError` at once.

    Args:
        plugin: a module, class or instance whose ``@poolkit.hookimpl`` functions are hooks.
        name: the plugin name ``poolkit plugins`` shows.

    Yields:
        The plugin's :class:`~poolkit.plugins.PluginInfo` (what it provides).

    Example:
        >>> with plugin_registered(my_plugin_module, "mine"):
        ...     assert "FIRST_LAST_AVG" in poolkit.plugins.registry("pooler")
    """
    manager = get_manager()
    info = manager.add_plugin(plugin, name)
    try:
        yield info
    finally:
        manager.remove_plugin(name)


def fake_distribution(
    tmp_path: Path | str,
    name: str,
    version: str,
    entry_points: dict[str, str],
    modules: dict[str, str],
) -> Path:
    """Write an installed distribution (metadata and modules) into ``tmp_path``.

    Once ``tmp_path`` is on ``sys.path``, ``importlib.metadata`` discovers the distribution and
    its entry points in the ``poolkit.plugins`` group like any installed one. Several
    distributions may share one ``tmp_path``.

    Args:
        tmp_path: the folder to write into (it plays the part of ``site-packages``).
        name: the distribution name (``"poolkit-mine"``).
        version: its version.
        entry_points: entry-point name -> object reference (``{"mine": "poolkit_mine"}``).
        modules: dotted module name -> source. Parent packages get an empty ``__init__.py``
            unless given themselves.

    Returns:
        The ``*.dist-info`` directory that was written.
    """
    root = Path(tmp_path)
    root.mkdir(parents=True, exist_ok=True)
    dist_info = root / f"{re.sub(r'[-_.]+', '_', name)}-{version}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = [f"[{GROUP}]"] + [f"{ep} = {target}" for ep, target in entry_points.items()]
    (dist_info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    packages = {".".join(m.split(".")[:i]) for m in modules for i in range(1, m.count(".") + 1)}
    for module in sorted(packages | set(modules)):
        parts = module.split(".")
        if module in packages:
            path = root.joinpath(*parts, "__init__.py")
        else:
            path = root.joinpath(*parts[:-1], f"{parts[-1]}.py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(modules.get(module, ""))
    importlib.invalidate_caches()
    return dist_info


class PluginSandbox:
    """A clean plugin world: a fresh manager, and fake distributions that leave no trace.

    On entry and exit the process-wide plugin manager is reset, so the next lookup discovers
    plugins again; on exit the folders :meth:`install` put on ``sys.path`` and the modules
    imported from them are removed. The environment switches are left to the caller (the
    ``fresh_plugins`` fixture clears them with ``monkeypatch``).

    Args:
        root: the folder fake distributions are written into.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).absolute()
        self._added_paths: list[str] = []

    def __enter__(self) -> "PluginSandbox":
        reset_manager()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        reset_manager()
        for path in self._added_paths:
            while path in sys.path:
                sys.path.remove(path)
            sys.path_importer_cache.pop(path, None)
        prefix = os.path.join(self.root, "")
        for name, module in list(sys.modules.items()):
            if (getattr(module, "__file__", None) or "").startswith(prefix):
                del sys.modules[name]
        importlib.invalidate_caches()

    def install(self, name: str, version: str, entry_points: dict[str, str], modules: dict[str, str]) -> Path:
        """Write a fake distribution (see :func:`fake_distribution`) and make it discoverable.

        Call before the first plugin lookup of the test, or :func:`reset_manager` afterwards:
        plugins are discovered once per manager.
        """
        dist_info = fake_distribution(self.root, name, version, entry_points, modules)
        path = str(self.root)
        if path not in sys.path:
            sys.path.insert(0, path)
            self._added_paths.append(path)
        return dist_info

    def manager(self) -> PluginManager:
        """The process-wide plugin manager (plugins load on its first lookup)."""
        return get_manager()

    def infos(self) -> dict[str, PluginInfo]:
        """Every plugin the manager knows, loading plugins if not done yet.

        Keyed by plugin name; an entry point whose name another distribution already took is
        keyed ``"<name> (<distribution>)"``.
        """
        manager = get_manager()
        manager.load()
        return dict(manager.infos)


try:
    import pytest
except ImportError:  # pragma: no cover - pytest is only needed to use the fixture
    pytest = None

if pytest is not None:

    @pytest.fixture
    def fresh_plugins(tmp_path: Path, monkeypatch: "pytest.MonkeyPatch") -> Iterator[PluginSandbox]:
        """A :class:`PluginSandbox` in ``tmp_path``, with the plugin environment switches unset.

        Set switches in the test with ``monkeypatch.setenv`` before the first plugin lookup.
        """
        for var in ENV_VARS:
            monkeypatch.delenv(var, raising=False)
        with PluginSandbox(tmp_path / "site-packages") as sandbox:
            yield sandbox
