"""Media spans: where a vision-language prompt's media lie, as prefix sharing reads them.

A shared prefix never splits a prompt's media: it ends before the prompt's first placeholder (text
alone), or holds every placeholder (kept apart by a digest of the media, its tokens compared with
their :data:`PER_TOKEN` positions). Each step's sequences read the part of their media that
describes their tokens (:func:`media_part`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from .cache import BLOCK, Scope, TextBlocks

#: The media tensor that describes each token (``[..., tokens]``, a multimodal model's rotary
#: positions): a part of a prompt reads its own columns of it; the other tensors describe the media.
PER_TOKEN = "positions"


@dataclass
class PromptMedia:
    """What prefix sharing reads off a prompt's media: a text-only prefix ends at or before
    ``first`` (its first placeholder row, or its first position that is not the plain one); a
    prefix that holds the media goes past ``last`` (its last placeholder row, ``-1``: none) and
    is kept apart by ``digest`` (its media tensors'), its tokens compared by ``keys`` (each
    token's id, and its :data:`PER_TOKEN` positions where the media has them)."""

    media: dict
    first: int
    last: int
    digest: str
    keys: np.ndarray

    @classmethod
    def of(cls, ids: np.ndarray, media: dict, placeholders: frozenset[int]) -> "PromptMedia | None":
        """The prompt's media as prefix sharing reads them; ``None`` where they do not describe
        its tokens (a :data:`PER_TOKEN` tensor of another length)."""
        rows = np.flatnonzero(np.isin(ids, np.fromiter(placeholders, dtype=np.int64)))
        first = int(rows[0]) if rows.size else len(ids)
        keys = ids
        positions = media.get(PER_TOKEN)
        if isinstance(positions, torch.Tensor):
            if positions.ndim == 0 or positions.shape[-1] != len(ids):
                return None
            per_token = positions.detach().to("cpu", torch.int64).reshape(-1, len(ids)).T.numpy()
            keys = np.ascontiguousarray(np.column_stack([ids, per_token]))
            plain = np.flatnonzero((per_token != np.arange(len(ids))[:, None]).any(axis=1))
            first = min(first, int(plain[0]) if plain.size else first)
        return cls(media, first, int(rows[-1]) if rows.size else -1, _digest(media), keys)

    def text_blocks(self, scope: Scope) -> TextBlocks | None:
        """For a kept prefix that holds the media: its whole blocks before them, found as text of ``scope``."""
        n = self.first // BLOCK * BLOCK
        return TextBlocks(scope, n) if n else None

    def holds_media(self, length: int) -> bool:
        """Whether a prefix of ``length`` tokens holds the media (else it ends before them)."""
        return self.last >= 0 and length > self.last


def _digest(media: dict) -> str:
    """A digest of a prompt's media tensors (bytes, dtype and shape, by name) but the per-token one."""
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(media):
        if name == PER_TOKEN:
            continue
        value = media[name]
        h.update(name.encode() + b"\0")
        if isinstance(value, torch.Tensor):
            flat = value.detach().to("cpu").contiguous().reshape(-1)
            h.update(f"{flat.dtype}{tuple(value.shape)}".encode())
            h.update(flat.view(torch.uint8).numpy().tobytes())
        else:
            h.update(repr(value).encode())
    return h.hexdigest()


def media_part(media: dict | None, start: int, stop: int | None, pixels: bool) -> dict | None:
    """The media of a prompt's tokens ``start:stop``: its :data:`PER_TOKEN` tensor's columns, and
    the other tensors where ``pixels`` (the part holds the placeholders); ``None`` for none."""
    if media is None:
        return None
    out = {name: value[..., start:stop] if name == PER_TOKEN else value for name, value in media.items() if pixels or name == PER_TOKEN}
    return out or None

