"""``poolkit plugins new NAME``: write a pip-installable plugin project to start from.

The project comes from the template in ``plugin-template/``: package data, so a non-editable
install carries it, in a folder whose name is no identifier, so no tool takes it for a package.
Each ``*.tmpl`` file becomes the file at the same relative path, ``PACKAGE`` replaced by the
plugin's package name, rendered with :class:`string.Template` (``${package}``, ``${snake}``, ...
from :meth:`PluginNames.substitutions`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING, Iterator

from ...contracts.errors import InvalidRequest

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

#: The template folder, next to this module.
TEMPLATE = "plugin-template"
#: The suffix of template files, dropped in the project.
SUFFIX = ".tmpl"
#: The path component that stands for the plugin's package folder.
PACKAGE_DIR = "PACKAGE"
#: What a distribution name's prefix is: add-on distributions are named ``poolkit-<name>``.
DIST_PREFIX = "poolkit-"
_NAME = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")


@dataclass(frozen=True)
class PluginNames:
    """The spellings of one plugin's name in its project.

    Attributes:
        name: the normalised name, ``"my-pooler"``.
        dist: the distribution, ``"poolkit-my-pooler"``.
        package: the import package, ``"poolkit_my_pooler"``.
        snake: the entry-point name, and the prefix of every name the plugin registers
            (``"my_pooler"``), so that it clashes with no other plugin.
        class_prefix: the prefix of its class names, ``"MyPooler"``.
    """

    name: str
    dist: str
    package: str
    snake: str
    class_prefix: str

    @classmethod
    def parse(cls, raw: str) -> "PluginNames":
        """Normalise what the user typed: ``"My_Pooler"``, ``"poolkit-my-pooler"`` and
        ``"poolkit_my_pooler"`` all give ``"my-pooler"``.

        Raises:
            InvalidRequest: the name is empty or not letters, digits and separators starting with
                a letter.
        """
        name = re.sub(r"[-_.\s]+", "-", raw.strip().lower())
        if name.startswith(DIST_PREFIX):
            name = name[len(DIST_PREFIX):]
        name = name.strip("-")
        if not _NAME.fullmatch(name):
            raise InvalidRequest(
                f"invalid plugin name {raw!r}: use letters, digits and hyphens, starting with a letter "
                "(NAME 'my-pooler' makes the distribution poolkit-my-pooler)"
            )
        snake = name.replace("-", "_")
        return cls(
            name=name,
            dist=DIST_PREFIX + name,
            package=f"poolkit_{snake}",
            snake=snake,
            class_prefix="".join(word.capitalize() for word in name.split("-")),
        )

    def substitutions(self) -> dict[str, str]:
        """The template's placeholders: ``${name}``, ``${dist}``, ``${package}``, ``${snake}``,
        ``${SNAKE}`` (upper case, for pooler names and environment variables), ``${Class}`` and
        ``${poolkit_version}`` (the running poolkit's, the least the project depends on)."""
        from ... import __version__

        return {
            "name": self.name,
            "dist": self.dist,
            "package": self.package,
            "snake": self.snake,
            "SNAKE": self.snake.upper(),
            "Class": self.class_prefix,
            "poolkit_version": __version__,
        }


def _templates(folder: "Traversable", parts: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], str]]:
    """``(relative path parts, template text)`` of every template file under ``folder``, sorted."""
    for item in sorted(folder.iterdir(), key=lambda i: i.name):
        if item.is_dir():
            yield from _templates(item, (*parts, item.name))
        elif item.name.endswith(SUFFIX):
            yield (*parts, item.name[: -len(SUFFIX)]), item.read_text(encoding="utf-8")


def render_plugin(names: PluginNames) -> dict[str, str]:
    """The project's files, relative POSIX path -> text, rendered for ``names``."""
    values = names.substitutions()
    return {
        "/".join(names.package if p == PACKAGE_DIR else p for p in parts): Template(text).substitute(values)
        for parts, text in _templates(files(__package__) / TEMPLATE)
    }


def new_plugin(name: str, directory: Path | str | None = None) -> Path:
    """Write a new plugin project: one example of each hook, its entry point and passing tests.

    Args:
        name: the plugin's name (``"my-pooler"``; see :meth:`PluginNames.parse`).
        directory: the project folder to write, which must not exist or be empty; default
            ``poolkit-<name>`` in the current directory.

    Returns:
        The project folder.

    Raises:
        InvalidRequest: an invalid name, or a target that is a file or a non-empty folder.

    Example:
        >>> new_plugin("my-pooler")
        PosixPath('poolkit-my-pooler')
    """
    names = PluginNames.parse(name)
    root = Path(directory) if directory is not None else Path(names.dist)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise InvalidRequest(f"{root} already exists and is not an empty folder; choose another --dir")
    rendered = render_plugin(names)
    for relative, text in rendered.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root
