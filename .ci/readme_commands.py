"""The README's fresh-machine commands, as .ci/run runs them and the suite checks them.

The section headed ``## Fresh machine`` of README.md holds exactly two fenced ``bash`` blocks of
one command each: the first installs poolkit and embeds a text with the embedded default model,
the second installs the test dependencies and runs the suite. ``.ci/run`` runs what this prints,
so CI can never install more (or other) than a new user is told to.

Usage: ``python3 .ci/readme_commands.py [README.md]`` prints the commands, one per line.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

SECTION = "## Fresh machine"
_FENCE = re.compile(r"^```bash\n(.*?)^```", re.M | re.S)


def readme_commands(readme: str) -> list[str]:
    """The fresh-machine commands of ``readme`` (its text), in order.

    Raises:
        ValueError: the section is missing, or does not hold exactly two one-line bash blocks.
    """
    start = readme.find(f"\n{SECTION}\n")
    if start < 0:
        raise ValueError(f"README.md has no '{SECTION}' section")
    body = readme[start + len(SECTION) + 2 :]
    end = re.search(r"^## ", body, re.M)
    body = body[: end.start()] if end else body
    blocks = [block.strip() for block in _FENCE.findall(body)]
    if len(blocks) != 2 or any("\n" in block or not block for block in blocks):
        raise ValueError(f"'{SECTION}' must hold exactly two one-line bash blocks, found {blocks!r}")
    return blocks


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "README.md")
    print("\n".join(readme_commands(path.read_text(encoding="utf-8"))))
