"""A run's columns: tokenized prompts and their results, one array per column, not an object per input.

The engine's hot path works on these: token ids as one flat array with offsets, results as one
tensor of rows, truncation as one boolean array. Items are made only where a caller asks for one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..contracts.architecture import Architecture
from ..contracts.batch import cached_property, flatten_ids
from ..contracts.capabilities import SkipsInstruction, capable


@dataclass
class Encoded:
    """A tokenized prompt."""

    token_ids: list[int]
    token_type_ids: list[int] | None = None
    pool_skip: int = 0
    #: Whether tokens were cut off to honour a truncation limit.
    truncated: bool = False


class Collector:
    """A run's batch results put back in input order: one tensor while every batch gives a
    tensor of rows of one shape and dtype, one tensor per prompt otherwise."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.blocks: list[tuple[np.ndarray, torch.Tensor | list[torch.Tensor]]] = []

    def add(
        self, members: np.ndarray, fetch: Callable[[], Any], tokens: int, progress: Callable[[int, int], None] | None
    ) -> None:
        self.blocks.append((members, fetch()))
        if progress is not None:
            progress(len(members), tokens)

    def result(self) -> torch.Tensor | list[torch.Tensor]:
        blocks = self.blocks
        first = blocks[0][1] if blocks else None
        if isinstance(first, torch.Tensor) and all(
            isinstance(b, torch.Tensor) and b.shape[1:] == first.shape[1:] and b.dtype == first.dtype for _, b in blocks
        ):
            if len(blocks) == 1 and len(blocks[0][0]) == self.n and bool((blocks[0][0] == np.arange(self.n)).all()):
                return first
            data = first.new_empty((self.n, *first.shape[1:]))
            for members, block in blocks:
                data[torch.from_numpy(members)] = block
            return data
        results: list[Any] = [None] * self.n
        for members, block in blocks:
            for i, row in zip(members.tolist(), block.unbind(0) if isinstance(block, torch.Tensor) else block):
                results[i] = row
        return results


def skip_instructions(arch: Architecture, tokens: "Tokens") -> "Tokens":
    """``tokens`` with each prompt's leading tokens that ``arch`` leaves out of pooling
    (:class:`~poolkit.contracts.capabilities.SkipsInstruction`, GritLM's instruction) added
    to :attr:`Tokens.pool_skip`; unchanged for an architecture that leaves none out. The last
    token is always pooled."""
    if not capable(arch, SkipsInstruction):
        return tokens
    known = tokens.pool_skip or [0] * len(tokens)
    skip = [max(k, min(arch.pool_start(ids), len(ids) - 1)) for k, ids in zip(known, tokens.ids)]
    tokens.pool_skip = skip if any(skip) else None
    return tokens


def gather_index(starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Flat indices of the tokens of sequences at ``starts`` of these ``lens``, one after another."""
    ends = lens.cumsum()  # the arrays' methods: one Python call each where numpy's functions make three
    return (starts - (ends - lens)).repeat(lens) + np.arange(int(ends[-1]) if len(ends) else 0)


class Tokens:
    """Tokenized prompts as columns, in prompt order: the engine makes no object per prompt.

    Attributes:
        ids: each prompt's token ids (a token-id prompt's own list when it was not cut).
        truncated: per prompt, whether tokens were cut off to honour a truncation limit.
        type_ids: each prompt's segment ids (``None`` for a prompt without), or ``None`` when no
            prompt has any.
        pool_skip: per prompt, the leading tokens pooling leaves out, or ``None`` when it keeps all.
        key_lens: per prompt, the leading tokens attention sees (:attr:`poolkit.Prompt.attended`),
            or ``None`` when it sees all.
        media: per prompt, the tensors its sequence carries to the forward pass
            (:attr:`poolkit.Prompt.media`, ``None`` for a prompt without), or ``None`` when no
            prompt has any.
    """

    def __init__(
        self,
        ids: list[list[int]],
        truncated: np.ndarray,
        type_ids: list[list[int] | None] | None = None,
        pool_skip: list[int] | None = None,
        *,
        key_lens: list[int] | None = None,
        lens: np.ndarray | None = None,
        flat: np.ndarray | None = None,
        media: list[dict | None] | None = None,
    ) -> None:
        self.ids = ids
        self.truncated = np.asarray(truncated, dtype=bool)
        self.type_ids = type_ids
        self.pool_skip = pool_skip
        self.key_lens = key_lens
        self.media = media
        self._lens = lens
        self._flat = flat
        #: Per prompt, how many of its tokens' states came from a shared prefix (:mod:`.prefix`), or ``None``.
        self.cached: np.ndarray | None = None

    def note_cached(self, members: np.ndarray, counts: Sequence[int] | None) -> None:
        """Record how many tokens' states the prompts ``members`` took from a shared prefix."""
        if counts is None:
            return
        if self.cached is None:
            self.cached = np.zeros(len(self.ids), dtype=np.int64)
        self.cached[members] = counts

    @classmethod
    def of(cls, encoded: Sequence[Encoded]) -> "Tokens":
        """Columns of :class:`Encoded` prompts (the chunks of long inputs)."""
        types = [e.token_type_ids for e in encoded]
        skip = [e.pool_skip for e in encoded]
        return cls(
            [e.token_ids for e in encoded], np.array([e.truncated for e in encoded], dtype=bool),
            types if any(t is not None for t in types) else None, skip if any(skip) else None,
        )

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> Encoded:
        return Encoded(
            self.ids[i], self.type_ids[i] if self.type_ids is not None else None,
            self.pool_skip[i] if self.pool_skip is not None else 0, bool(self.truncated[i]),
        )

    @property
    def num_truncated(self) -> int:
        """How many prompts were cut to a limit."""
        return int(self.truncated.sum())

    @cached_property
    def lens(self) -> np.ndarray:
        """``[N]`` tokens per prompt."""
        return self._lens if self._lens is not None else np.fromiter(map(len, self.ids), dtype=np.int64, count=len(self.ids))

    @cached_property
    def starts(self) -> np.ndarray:
        """``[N]`` where each prompt's tokens start in :attr:`flat`."""
        return self.lens.cumsum() - self.lens

    @cached_property
    def flat(self) -> np.ndarray:
        """Every prompt's token ids one after another, int64."""
        return self._flat if self._flat is not None else flatten_ids(self.ids, int(self.lens.sum()))

    @cached_property
    def flat_types(self) -> np.ndarray | None:
        """The segment ids laid out as :attr:`flat` (0 for prompts without), or ``None`` when all are 0."""
        if self.type_ids is None or not any(any(t) for t in self.type_ids if t is not None):
            return None
        return flatten_ids([t if t is not None else [0] * n for t, n in zip(self.type_ids, self.lens.tolist())], int(self.lens.sum()))


class Results(Sequence):
    """What one run gives back, in input order; item ``i`` is ``(result i, token ids i)``.

    Attributes:
        data: one ``[N, ...]`` tensor when every result has one shape (one row per input, read
            without an object per input), else a list of ``N`` tensors.
        token_ids: each input's token ids as the model read them (``[]`` for an image).
        truncated: per input, whether it was cut to a truncation limit.
    """

    def __init__(
        self, data: torch.Tensor | list[torch.Tensor], token_ids: list[list[int]], truncated: np.ndarray,
        cached: np.ndarray | None = None,
    ) -> None:
        self.data = data
        self.token_ids = token_ids
        self.truncated = np.asarray(truncated, dtype=bool)
        #: Per input, how many of its tokens' states came from a shared prefix (vLLM's ``num_cached_tokens``).
        self.cached = np.zeros(len(token_ids), dtype=np.int64) if cached is None else np.asarray(cached, dtype=np.int64)

    @staticmethod
    def rows_of(data: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
        """``data`` as one tensor per input."""
        return list(data.unbind(0)) if isinstance(data, torch.Tensor) else list(data)

    def rows(self) -> list[torch.Tensor]:
        """The results as one tensor per input (views of :attr:`data` when it is one tensor)."""
        return self.rows_of(self.data)

    @classmethod
    def concat(cls, parts: Sequence["Results"]) -> "Results":
        """The results of ``parts`` one after another."""
        if all(isinstance(p.data, torch.Tensor) for p in parts) and len({(p.data.shape[1:], p.data.dtype) for p in parts}) == 1:
            data: Any = torch.cat([p.data for p in parts])
        else:
            data = [row for p in parts for row in p.rows()]
        return cls(
            data, [ids for p in parts for ids in p.token_ids], np.concatenate([p.truncated for p in parts]),
            np.concatenate([p.cached for p in parts]) if parts else None,
        )

    @property
    def num_tokens(self) -> int:
        """Tokens of every input together (the usage a response reports)."""
        return sum(map(len, self.token_ids))

    @property
    def num_truncated(self) -> int:
        """How many inputs were cut to a truncation limit."""
        return int(self.truncated.sum())

    def __len__(self) -> int:
        return len(self.token_ids)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return Results(self.data[index], self.token_ids[index], self.truncated[index], self.cached[index])
        return self.data[index], self.token_ids[index]

    def __iter__(self) -> Any:
        # not Sequence's index-until-IndexError walk: a tensor's IndexError costs more than its rows
        return zip(self.rows(), self.token_ids)


def to_host(outputs: torch.Tensor | Sequence[torch.Tensor]) -> Callable[[], Any]:
    """Start copying a batch's outputs to the host; the returned call waits for them.

    ``outputs`` is one tensor of rows (one per sequence) or one tensor per sequence. On CPU they
    are returned as they are. On a GPU, outputs of one dtype are copied in a single transfer into
    pinned memory that the host waits for only when it calls; the results are views of that host
    buffer.
    """
    if isinstance(outputs, torch.Tensor):
        if outputs.device.type != "cuda":
            host = outputs if outputs.device.type == "cpu" else outputs.cpu()
            return lambda: host
        pinned = torch.empty(outputs.shape, dtype=outputs.dtype, pin_memory=True)
        pinned.copy_(outputs, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return lambda: (event.synchronize(), pinned)[1]
    outputs = list(outputs)
    if not outputs or all(o.device.type == "cpu" for o in outputs):
        return lambda: outputs
    device = outputs[0].device
    if device.type != "cuda" or any(o.dtype != outputs[0].dtype or o.device != device for o in outputs):
        copies = [o.cpu() for o in outputs]
        return lambda: copies
    shape = outputs[0].shape
    same = all(o.shape == shape for o in outputs)  # one row per sequence: a single stack, a single unbind
    flat = torch.stack(outputs) if same else torch.cat([o.reshape(-1) for o in outputs])
    host = torch.empty(flat.shape, dtype=flat.dtype, pin_memory=True)
    host.copy_(flat, non_blocking=True)
    done = torch.cuda.Event()
    done.record()
    shapes = None if same else [o.shape for o in outputs]

    def wait() -> torch.Tensor | list[torch.Tensor]:
        done.synchronize()
        if shapes is None:
            return host
        pieces = host.split([shape.numel() for shape in shapes])
        return [piece.view(shape) for piece, shape in zip(pieces, shapes)]

    return wait
