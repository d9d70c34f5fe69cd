"""``poolkit plugins new``: the project it writes installs as a plugin and its own tests pass.

The generated project's tests run in a subprocess, on the project as pip would install it: its
``src`` on ``PYTHONPATH`` and, for entry-point discovery, a fake ``*.dist-info`` written by
``poolkit.plugins.testing.fake_distribution`` with the entry points its ``pyproject.toml`` declares.
Nothing is installed into the environment.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from poolkit.entrypoints.cli import app
from poolkit.entrypoints.cli.plugin_project import TEMPLATE, PluginNames
from poolkit.plugins.testing import fake_distribution

try:
    import tomllib
except ImportError:  # Python < 3.11: pytest depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()

#: What ``poolkit plugins new my-pooler`` writes.
TREE = {
    "pyproject.toml",
    "README.md",
    "src/poolkit_my_pooler/__init__.py",
    "src/poolkit_my_pooler/commands.py",
    "src/poolkit_my_pooler/io_processor.py",
    "src/poolkit_my_pooler/kernels.py",
    "src/poolkit_my_pooler/models.py",
    "src/poolkit_my_pooler/poolers.py",
    "src/poolkit_my_pooler/tasks.py",
    "tests/conftest.py",
    "tests/test_plugin.py",
}
HOOKS = (
    "poolkit_register_poolers", "poolkit_register_activations", "poolkit_register_io_processors",
    "poolkit_register_tasks", "poolkit_register_kernels", "poolkit_register_architectures",
    "poolkit_resolve_model", "poolkit_register_commands",
)


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_new_writes_a_plugin_project_whose_own_tests_pass(tmp_path):
    project = tmp_path / "poolkit-my-pooler"
    result = runner.invoke(app, ["plugins", "new", "My_Pooler", "--dir", str(project)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(project)
    assert _files(project) == TREE

    for name in TREE:
        text = (project / name).read_text()
        assert "${" not in text and "PACKAGE" not in text, name
        if name.endswith(".py"):
            compile(text, name, "exec")
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    assert pyproject["project"]["name"] == "poolkit-my-pooler"
    assert any(dep.startswith("poolkit") for dep in pyproject["project"]["dependencies"])
    entry_points = pyproject["project"]["entry-points"]["poolkit.plugins"]
    assert entry_points == {"my_pooler": "poolkit_my_pooler"}
    hooks = (project / "src/poolkit_my_pooler/__init__.py").read_text()
    readme = (project / "README.md").read_text()
    for hook in HOOKS:
        assert f"def {hook}(" in hooks and f"`{hook}`" in readme, hook
    assert "docs/plugins.md" in readme

    site = tmp_path / "site-packages"
    fake_distribution(site, "poolkit-my-pooler", "0.1.0", entry_points, {})
    env = {k: v for k, v in os.environ.items() if not k.startswith("POOLKIT_MY_POOLER")}
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(project / "src"), env.get("PYTHONPATH", "")])
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=project, env=env, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "7 passed" in run.stdout


@pytest.mark.parametrize(
    ("raw", "dist", "package", "snake", "class_prefix"),
    [
        ("foo", "poolkit-foo", "poolkit_foo", "foo", "Foo"),
        ("poolkit-foo", "poolkit-foo", "poolkit_foo", "foo", "Foo"),
        (" Poolkit_My.Pooler ", "poolkit-my-pooler", "poolkit_my_pooler", "my_pooler", "MyPooler"),
        ("bge2-pool", "poolkit-bge2-pool", "poolkit_bge2_pool", "bge2_pool", "Bge2Pool"),
    ],
)
def test_names_are_normalised(raw, dist, package, snake, class_prefix):
    names = PluginNames.parse(raw)
    assert (names.dist, names.package, names.snake, names.class_prefix) == (dist, package, snake, class_prefix)


@pytest.mark.parametrize("raw", ["", "poolkit-", "9lives", "foo/bar", "über", "-"])
def test_an_invalid_name_is_an_error(tmp_path, raw):
    result = runner.invoke(app, ["plugins", "new", raw, "--dir", str(tmp_path / "project")])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: invalid plugin name {raw!r}"), result.stderr
    assert not (tmp_path / "project").exists()


def test_an_existing_folder_must_be_empty(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    result = runner.invoke(app, ["plugins", "new", "foo", "--dir", str(tmp_path / "taken")])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: {tmp_path / 'taken'} already exists and is not an empty folder")
    assert _files(tmp_path / "taken") == {"notes.txt"}

    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["plugins", "new", "foo", "--dir", str(tmp_path / "empty")])
    assert result.exit_code == 0, result.output
    assert "src/poolkit_foo/__init__.py" in _files(tmp_path / "empty")


def test_the_default_folder_is_the_distribution_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["plugins", "new", "foo"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "poolkit-foo"
    assert (tmp_path / "poolkit-foo" / "pyproject.toml").is_file()


def test_the_template_ships_as_package_data():
    """A non-editable install carries every template file: pyproject's package-data globs match them all."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    cli = ROOT / pyproject["tool"]["setuptools"]["package-dir"]["poolkit"] / "entrypoints" / "cli"
    shipped = {
        Path(found) for pattern in pyproject["tool"]["setuptools"]["package-data"]["poolkit.entrypoints.cli"]
        for found in glob.glob(str(cli / pattern), recursive=True)
    }
    templates = {p for p in (cli / TEMPLATE).rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert templates and templates <= shipped
