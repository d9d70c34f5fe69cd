"""The README's two fresh-machine commands are what CI runs, and they say what they must.

``.ci/run`` runs the commands ``.ci/readme_commands.py`` reads from the README, verbatim, so CI
installs exactly what a new user is told to install: an extra package that only CI installed
once hid a test dependency missing from the ``test`` extra.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if not (ROOT / ".ci" / "readme_commands.py").is_file():  # an installed copy of the tests, without the checkout
    pytest.skip("needs the project's checkout (.ci/, README.md)", allow_module_level=True)

spec = importlib.util.spec_from_file_location("readme_commands", ROOT / ".ci" / "readme_commands.py")
readme_commands = importlib.util.module_from_spec(spec)
spec.loader.exec_module(readme_commands)

README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_readme_has_two_fresh_machine_commands():
    embed, tests = readme_commands.readme_commands(README)
    for command in (embed, tests):
        steps = [step.strip() for step in command.split("&&")]
        assert steps[:3] == ["python3 -m venv .venv", ". .venv/bin/activate", "pip install torch==2.13.0"], command
    assert re.fullmatch(r'poolkit embed ".+"', embed.split("&&")[-1].strip()), embed
    assert tests.split("&&")[-1].strip() == "python -m pytest", tests
    assert 'pip install ".[test' in tests and "./plugins/poolkit-example-plugin" in tests


def test_ci_runs_the_readme_commands_and_installs_nothing_else():
    run = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "python3 .ci/readme_commands.py README.md" in run
    assert "pip install" not in run  # no install of its own
    printed = subprocess.run(
        [sys.executable, str(ROOT / ".ci" / "readme_commands.py"), str(ROOT / "README.md")],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()
    assert printed == readme_commands.readme_commands(README)


@pytest.mark.parametrize(
    "section",
    [
        "## Fresh machine\n\nText only.\n",
        "## Fresh machine\n\n```bash\nonly one\n```\n",
        "## Fresh machine\n\n```bash\none\ntwo lines\n```\n\n```bash\nthree\n```\n",
        "## Elsewhere\n\n```bash\na\n```\n\n```bash\nb\n```\n",
    ],
)
def test_a_readme_without_exactly_two_commands_is_refused(section):
    with pytest.raises(ValueError):
        readme_commands.readme_commands("# poolkit\n\n" + section + "\n## Next\n\n```bash\nc\n```\n")
