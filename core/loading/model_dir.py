"""What a model directory may hold: files, and symlinks that stay inside it.

A model directory is data the user points poolkit at, often downloaded from somewhere. A symlink
in it that leads elsewhere (``config.json -> /etc/...``, ``model.safetensors -> ~/other/...``)
would make poolkit read files the user never named, so such links are refused unless the user
opts in (``allow_external_symlinks``). Links inside the directory are fine, and so are those of a
Hugging Face hub cache snapshot (``models--org--name/snapshots/<revision>/``), whose files link to
the repository's own ``../../blobs/`` folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..contracts.errors import ModelLoadError


def allowed_roots(model_dir: Path) -> list[Path]:
    """The folders links in ``model_dir`` may point into: itself, and for a hub cache snapshot
    the ``blobs`` folder of its repository."""
    root = Path(model_dir).resolve()
    roots = [root]
    blobs = root.parent.parent / "blobs"
    if root.parent.name == "snapshots" and blobs.is_dir():
        roots.append(blobs)
    return roots


def check_symlinks(model_dir: Path, what: str = "model") -> None:
    """Refuse a directory holding a symlink that points outside it (see the module docstring).

    Hidden folders (``.git``, ``.cache``) are not looked into: the loader reads nothing there.

    Args:
        model_dir: the directory to check.
        what: what the directory holds, for the message (``"model"``, ``"tokenizer"``).

    Raises:
        ModelLoadError: naming the first such link, where it leads, and the way out.
    """
    roots = allowed_roots(model_dir)
    root = roots[0]
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        for name in sorted(subfolders + files):
            entry = Path(folder) / name
            if not entry.is_symlink():
                continue
            try:
                target = entry.resolve()
            except (OSError, RuntimeError):  # a symlink loop
                target = Path(os.readlink(entry))
            if not any(target == r or r in target.parents for r in roots):
                raise ModelLoadError(
                    f"{entry.relative_to(root)} in the {what} directory {root} is a symlink to {target}, outside "
                    "the directory; poolkit does not follow it unless you allow it with "
                    "allow_external_symlinks=True (--allow-external-symlinks)"
                )
