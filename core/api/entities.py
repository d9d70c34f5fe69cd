"""Entity spans from per-token class probabilities (NER), with character offsets.

vLLM returns per-token probabilities and leaves spans to the client; this groups them the way
transformers' token-classification pipeline does with ``aggregation_strategy="simple"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

#: Tag prefixes of the IOB / IOBES / BILOU schemes: the tags that begin an entity.
_BEGIN = {"B", "S", "U"}
_INSIDE = {"I", "E", "L"}


@dataclass
class Entity:
    """One entity: its label, its character span in the input, the text, and a mean score."""

    label: str
    start: int
    end: int
    text: str
    score: float


class Entities(list):
    """The entities of one input, a list of :class:`Entity`; ``truncated`` says whether the
    input was cut to a truncation limit (its entities then end where the kept tokens end)."""

    truncated: bool = False


def _split(tag: str) -> tuple[str | None, str | None]:
    """``"B-PER"`` -> ``("B", "PER")``; ``"O"`` -> ``(None, None)``; ``"PER"`` -> ``(None, "PER")``."""
    if tag in ("O", ""):
        return None, None
    prefix, sep, rest = tag.partition("-")
    if sep and prefix in _BEGIN | _INSIDE and rest:
        return prefix, rest
    return None, tag


def group_entities(
    text: str,
    probs: torch.Tensor,
    offsets: Sequence[tuple[int, int]],
    id2label: dict[int, str],
) -> list[Entity]:
    """Group consecutive tokens of one entity type into spans.

    Args:
        text: the input text.
        probs: ``[n_tokens, num_labels]`` probabilities of every token.
        offsets: each token's ``(start, end)`` characters; special tokens have ``start == end``.
        id2label: label names by class index.
    """
    entities: list[Entity] = []
    current: tuple[str, int, int, list[float]] | None = None

    def close() -> None:
        if current is not None:
            label, start, end, scores = current
            entities.append(Entity(label, start, end, text[start:end], sum(scores) / len(scores)))

    best = probs.float().max(dim=-1)
    for (start, end), score, index in zip(offsets, best.values.tolist(), best.indices.tolist()):
        if start == end:
            continue
        prefix, label = _split(id2label.get(index, str(index)))
        if label is None:
            close()
            current = None
        elif current is not None and current[0] == label and prefix not in _BEGIN:
            current = (label, current[1], end, current[3] + [score])
        else:
            close()
            current = (label, start, end, [score])
    close()
    return entities
