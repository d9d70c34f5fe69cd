"""The source folders of the package and the ``poolkit.*`` names pyproject.toml maps them to
(its ``package-dir``), for the tests of the code's shape."""

from __future__ import annotations

from pathlib import Path

#: The repository's root.
ROOT = Path(__file__).resolve().parents[2]
#: Source folder -> import name, as pyproject.toml maps them (tests, plugins and .ci are not the package).
PACKAGES = {
    "core": "poolkit",
    "builtin_models": "poolkit.builtin_models",
    "builtin_poolers": "poolkit.builtin_poolers",
    "io_processors": "poolkit.io_processors",
    "kernels": "poolkit.kernels",
}
