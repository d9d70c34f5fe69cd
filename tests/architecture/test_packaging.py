"""The built distribution holds every package of the tree.

pyproject.toml maps each source folder to its ``poolkit.*`` name (``package-dir``) and setup.py
lists the packages found under those folders, so a new folder with an ``__init__.py`` is in the
wheel without an edit. CI installs the project non-editable, where a package left out of the wheel
is a missing module; this asks setuptools for the package list the build would use, in a second.
"""

from __future__ import annotations

import runpy
import shutil
from pathlib import Path

import pytest
from layout import PACKAGES

ROOT = Path(__file__).resolve().parents[2]
#: The names pyproject.toml maps to source folders (its ``package-dir``).
FOLDERS = {name: folder for folder, name in PACKAGES.items()}


def _configured(root: Path, monkeypatch: pytest.MonkeyPatch):
    """setuptools' distribution for the project at ``root``, configured as its build configures it:
    ``setup(packages=packages())`` of setup.py, then pyproject.toml read over it; nothing is built."""
    from setuptools.dist import Distribution

    monkeypatch.chdir(root)
    setup_py = runpy.run_path(str(root / "setup.py"))  # not as __main__: setup() is not called
    dist = Distribution({"packages": setup_py["packages"]()})
    dist.parse_config_files()
    return dist


def _package_folders(root: Path) -> dict[str, Path]:
    """Every folder with an ``__init__.py`` under the mapped folders, by its ``poolkit.*`` name."""
    return {
        ".".join([name, *init.parent.relative_to(root / folder).parts]): init.parent
        for name, folder in FOLDERS.items()
        for init in (root / folder).rglob("__init__.py")
    }


def test_the_distribution_holds_every_package_folder_and_no_other(monkeypatch) -> None:
    dist = _configured(ROOT, monkeypatch)
    assert dist.package_dir == FOLDERS
    assert sorted(dist.packages) == sorted(_package_folders(ROOT))


def test_a_new_package_folder_is_in_the_distribution_without_an_edit(tmp_path, monkeypatch) -> None:
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    for folder in (*FOLDERS.values(), "core/runtime", "core/runtime/newly_added", "kernels/newly_added"):
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / "__init__.py").touch()
    dist = _configured(tmp_path, monkeypatch)
    assert {"poolkit.runtime.newly_added", "poolkit.kernels.newly_added"} <= set(dist.packages)
    assert sorted(dist.packages) == sorted(_package_folders(tmp_path))
