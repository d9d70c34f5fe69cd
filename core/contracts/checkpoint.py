"""What a checkpoint ships beside ``config.json``, as an architecture reads it to recognise a
published layout (:meth:`poolkit.contracts.architecture.Architecture.inspect_checkpoint`): the hub
id it was fetched as, its model card, its sentence-transformers settings, any small file of its folder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping

if TYPE_CHECKING:
    from torch import nn

    from .sentence_transformers import STConfig

#: A hub id: ``org/name`` (letters, digits, ``-``, ``_``, ``.``).
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
#: A Hugging Face cache folder: ``models--org--name`` (``/snapshots/<revision>`` below it).
_CACHE_FOLDER = re.compile(r"^models--(?P<org>[^/]+?)--(?P<name>[^/]+)$")
#: Files larger than this are not read as text (a model card, a small JSON file).
MAX_TEXT_BYTES = 1 << 20


@dataclass(frozen=True)
class ModelCard:
    """A checkpoint's ``README.md``: the ``key: value`` lines of its front matter and its text.

    Attributes:
        metadata: the front matter's top-level scalar fields (``pipeline_tag``, ``library_name``, ...),
            values as written, quotes removed; list fields (``base_model``, ``tags``) as their items joined
            by ``,``.
        text: the whole file.
    """

    metadata: Mapping[str, str]
    text: str

    @classmethod
    def parse(cls, text: str) -> "ModelCard":
        """The card of ``text``: front matter between the first two ``---`` lines, when it opens with one."""
        metadata: dict[str, str] = {}
        lines = text.splitlines()
        if lines and lines[0].strip() == "---":
            key = None
            for line in lines[1:]:
                if line.strip() == "---":
                    break
                item = re.match(r"^\s*-\s*(.+)$", line)
                if item and key is not None:
                    value = item.group(1).strip().strip("'\"")
                    metadata[key] = f"{metadata[key]},{value}" if metadata[key] else value
                    continue
                field = re.match(r"^([\w-]+):\s*(.*)$", line)
                if field:
                    key = field.group(1)
                    metadata[key] = field.group(2).strip().strip("'\"")
        return cls(metadata, text)


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint's folder and what it ships there, as the load found them.

    Attributes:
        name: the model as the user named it (a hub id, a path).
        path: the folder ``poolkit_resolve_model`` answered.
        st: its sentence-transformers settings (``modules.json``), or ``None`` when it ships none.
    """

    name: str
    path: Path
    st: STConfig | None = None

    @cached_property
    def hub_id(self) -> str | None:
        """The hub id (``org/name``) the checkpoint was fetched as: the name the user gave, when that is
        a hub id and not a local folder, else the Hugging Face cache folder holding it
        (``models--org--name/snapshots/...``); ``None`` for a folder of its own."""
        if _HUB_ID.match(self.name) and not Path(self.name).expanduser().exists():
            return self.name
        for part in reversed(self.path.parts):
            found = _CACHE_FOLDER.match(part)
            if found:
                return f"{found['org']}/{found['name']}"
        return None

    @property
    def folder_name(self) -> str:
        """The folder's own name (a local download names it after the hub repository, mostly)."""
        return self.path.name

    def read_text(self, relative: str) -> str | None:
        """A small text file of the folder (``README.md``), or ``None`` when it is missing, outside
        the folder, larger than :data:`MAX_TEXT_BYTES` or not UTF-8."""
        try:
            file = (self.path / relative).resolve()
            if not file.is_relative_to(self.path.resolve()) or not file.is_file() or file.stat().st_size > MAX_TEXT_BYTES:
                return None
            return file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError, ValueError):
            return None

    @cached_property
    def model_card(self) -> ModelCard | None:
        """The folder's ``README.md`` (a hub download fetches none), or ``None``."""
        text = self.read_text("README.md")
        return ModelCard.parse(text) if text is not None else None


@dataclass(frozen=True)
class Layout:
    """Where a model folder keeps what the loader reads, when that is not a plain Hugging Face
    folder (``config.json``, the weights and the tokenizer at its top): what a
    ``poolkit_checkpoint_layout`` hook answers for a folder it recognises.

    Attributes:
        name: what was recognised, as ``poolkit info`` shows it (``"sentence-transformers
            StaticEmbedding"``).
        source: from what (``"modules.json: 0_StaticEmbedding"``).
        weights: the folder of the weight files (``model.safetensors``, shards, an index).
        tokenizer: the tokenizer's folder.
        config: the config ``config.json`` would hold, for a folder that has none; ``None`` reads
            ``config.json`` of :attr:`config_dir`.
        config_dir: the folder of ``config.json`` (default: :attr:`weights`).
        st_dir: the folder whose sentence-transformers files (``modules.json``) and companion files
            are read (default: the model folder itself).
        merge: what to do to the architecture (a ``torch.nn.Module``) once its weights are loaded, before it is cast or
            quantized (an adapter repository's PEFT adapter merged into them), or ``None``.
    """

    name: str
    source: str
    weights: Path
    tokenizer: Path
    config: Mapping[str, object] | None = None
    config_dir: Path | None = None
    st_dir: Path | None = None
    merge: Callable[[nn.Module], None] | None = field(default=None, compare=False)

    @classmethod
    def plain(cls, path: Path) -> "Layout":
        """A Hugging Face folder: everything at its top."""
        return cls("Hugging Face folder", "config.json", path, path)

    def shown(self) -> dict[str, str]:
        """``poolkit info``'s ``layout`` entry."""
        return {"value": self.name, "source": self.source}
