"""The build's package list, found rather than written down.

Every folder with an ``__init__.py`` under a folder that ``[tool.setuptools] package-dir`` in
pyproject.toml maps to a ``poolkit.*`` name is a package, named by that mapping, so a new folder
needs no edit. pyproject.toml holds everything else about the build; this is the one thing its
``packages.find`` cannot say: setuptools' discovery names a package by its folder (``core.api``),
not by the mapping (``poolkit.api``).
"""

from __future__ import annotations

from pathlib import Path

from setuptools import find_packages, setup
from setuptools.config.pyprojecttoml import read_configuration

ROOT = Path(__file__).resolve().parent


def packages() -> list[str]:
    """The packages of the folders pyproject.toml's ``package-dir`` maps, and of every package
    folder inside them, by their ``poolkit.*`` names."""
    config = read_configuration(ROOT / "pyproject.toml", expand=False)
    return sorted(
        f"{name}.{sub}" if sub else name
        for name, folder in config["tool"]["setuptools"]["package-dir"].items()
        for sub in ("", *find_packages(ROOT / folder))
    )


if __name__ == "__main__":
    setup(packages=packages())
