"""Packed batches: every sequence of a batch concatenated, with its offsets, no padding."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Protocol, Sequence, TypeVar

import numpy as np
import torch


T = TypeVar("T")


class cached_property(Generic[T]):
    """``functools.cached_property`` without its lock: computed on the first read, then an instance
    attribute. Python 3.11's takes a lock on every first read, which costs a batch's host path a
    few calls for each of its derived tensors; a batch is read by one thread (two threads racing
    would compute the same value twice, which is harmless)."""

    def __init__(self, fn: Callable[[Any], T]) -> None:
        self.fn = fn
        self.__doc__ = fn.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> T:
        if obj is None:
            return self  # type: ignore[return-value]
        value = obj.__dict__[self.name] = self.fn(obj)
        return value


def device_tensor(data: Sequence | np.ndarray, dtype: torch.dtype, device: torch.device | str | None) -> torch.Tensor:
    """A tensor of host data (a sequence, or a NumPy array of ``dtype``) on ``device``, without
    making the host wait for the device.

    ``torch.tensor(data, device="cuda")`` copies from pageable memory and then waits for
    everything queued on the device; the copy from pinned memory here is queued behind that work
    instead, so the host can prepare the next batch while the device computes this one.
    """
    host = torch.from_numpy(data) if isinstance(data, np.ndarray) else torch.tensor(data, dtype=dtype)
    kind = "cpu" if device is None else torch.device(device).type
    if kind == "cpu":
        return host
    return (host.pin_memory() if kind == "cuda" else host).to(device, non_blocking=True)


def flatten_ids(sequences: Sequence[Sequence[int]], total: int) -> np.ndarray:
    """The sequences' integers one after another, as int64: read in C, four times faster than
    a flattened Python list handed to ``torch.tensor``."""
    return np.fromiter(itertools.chain.from_iterable(sequences), dtype=np.int64, count=total)


class BatchPrefix(Protocol):
    """What :attr:`PackedBatch.prefix` holds: the shared prefixes a batch's sequences continue
    (:mod:`poolkit.runtime.prefix` makes it), as an architecture's attention reads them."""

    def attention(self, op: Callable[..., torch.Tensor], device: torch.device) -> Callable[..., torch.Tensor]:
        """The attention of one forward pass: ``op`` (the architecture's varlen attention) where a
        sequence has no prefix, attention over its prefix's keys and values where it has one."""
        ...

    def with_fillers(self, count: int) -> BatchPrefix:
        """The same prefixes for the batch padded with ``count`` one-token filler sequences."""
        ...


@dataclass(eq=False)
class PackedBatch:
    """Token sequences concatenated into one flat batch.

    Sequence ``i`` owns the tokens ``cu_seqlens[i]:cu_seqlens[i + 1]`` of every ``[T, ...]``
    tensor. Architectures compute on ``[T, H]`` hidden states; attention is restricted to
    tokens of the same sequence.

    Attributes:
        input_ids: ``[T]`` token ids.
        seq_lens: tokens per sequence.
        token_type_ids: ``[T]`` segment ids, or ``None`` (all zero).
        pool_skip: per sequence, how many leading tokens pooling leaves out (a prompt excluded
            with sentence-transformers' ``include_prompt=false``); positions still count them.
        key_lens: per sequence, how many leading tokens the sequence's tokens attend to; the
            tokens after them attend and have outputs, but nothing attends to them (ColBERT's
            query expansion, which colbert-ai and PyLate leave out of attention). ``None``: every
            token is attended to.
    """

    input_ids: torch.Tensor
    seq_lens: list[int]
    token_type_ids: torch.Tensor | None = None
    pool_skip: list[int] | None = None
    #: Free-form per-batch data an architecture or IO processor may need (pixel values, ...).
    extras: dict = field(default_factory=dict)
    key_lens: list[int] | None = None
    #: Per sequence, the position of its first token: a suffix whose prefix's states come from
    #: :attr:`prefix` starts after it; ``None``: every sequence starts at 0.
    starts: list[int] | None = None
    #: The keys and values of the prefixes the sequences continue (:mod:`poolkit.runtime.prefix`),
    #: which an architecture with ``shares_prefixes`` lets its attention read; ``None``: none.
    prefix: BatchPrefix | None = None

    @classmethod
    def from_sequences(
        cls,
        sequences: Sequence[Sequence[int]],
        token_type_ids: Sequence[Sequence[int]] | None = None,
        pool_skip: Sequence[int] | None = None,
        device: torch.device | str | None = None,
    ) -> "PackedBatch":
        """Pack lists of token ids (and optional segment ids) into one batch."""
        lens = [len(s) for s in sequences]
        ids = device_tensor(flatten_ids(sequences, sum(lens)), torch.long, device)
        types = None
        if token_type_ids is not None and any(any(t) for t in token_type_ids):
            types = device_tensor(flatten_ids(token_type_ids, sum(lens)), torch.long, device)
        skip = list(pool_skip) if pool_skip is not None and any(pool_skip) else None
        return cls(ids, lens, types, skip)

    @property
    def device(self) -> torch.device:
        """The device of ``input_ids`` (the model's, for the batches poolkit builds)."""
        return self.input_ids.device

    @property
    def num_seqs(self) -> int:
        """``B``: how many sequences."""
        return len(self.seq_lens)

    @property
    def num_tokens(self) -> int:
        """``T``: how many tokens, all sequences together."""
        return int(self.input_ids.shape[0])

    @cached_property
    def max_len(self) -> int:
        """The longest sequence's length (``0`` for an empty batch)."""
        return max(self.seq_lens) if self.seq_lens else 0

    @cached_property
    def lens(self) -> torch.Tensor:
        """``[B]`` sequence lengths."""
        return device_tensor(self.seq_lens, torch.long, self.device)

    @cached_property
    def cu_seqlens(self) -> torch.Tensor:
        """``[B + 1]`` cumulative offsets: sequence ``i`` is ``cu_seqlens[i]:cu_seqlens[i+1]``."""
        out = torch.zeros(self.num_seqs + 1, dtype=torch.long, device=self.device)
        torch.cumsum(self.lens, 0, out=out[1:])
        return out

    @cached_property
    def cu_seqlens_int32(self) -> torch.Tensor:
        """:attr:`cu_seqlens` as int32, the offsets' type FlashAttention kernels take."""
        return self.cu_seqlens.to(torch.int32)

    @cached_property
    def seq_ids(self) -> torch.Tensor:
        """``[T]`` index of the sequence each token belongs to."""
        sequences = torch.arange(self.num_seqs, device=self.device)
        return torch.repeat_interleave(sequences, self.lens, output_size=self.num_tokens)

    @cached_property
    def positions(self) -> torch.Tensor:
        """``[T]`` position of each token inside its own sequence, from 0 or its :attr:`starts` (counted on the host from
        the lengths, which are there already: a few microseconds, where torch's ``repeat_interleave``
        took a tenth of a small batch's host time)."""
        lens = np.asarray(self.seq_lens, dtype=np.int64)
        starts = np.repeat(np.cumsum(lens) - lens, lens)
        if self.starts is not None:
            starts = starts - np.repeat(np.asarray(self.starts, dtype=np.int64), lens)
        return device_tensor(np.arange(self.num_tokens, dtype=np.int64) - starts, torch.long, self.device)

    @cached_property
    def first_indices(self) -> torch.Tensor:
        """``[B]`` flat index of each sequence's first token."""
        return self.cu_seqlens[:-1]

    @cached_property
    def last_indices(self) -> torch.Tensor:
        """``[B]`` flat index of each sequence's last token."""
        return self.cu_seqlens[1:] - 1

    @cached_property
    def pool_mask(self) -> torch.Tensor | None:
        """``[T]`` bool, False for the tokens pooling leaves out; ``None`` when it keeps all."""
        if self.pool_skip is None:
            return None
        skip = device_tensor(self.pool_skip, torch.long, self.device)
        return self.positions >= torch.repeat_interleave(skip, self.lens, output_size=self.num_tokens)

    @cached_property
    def key_mask(self) -> torch.Tensor | None:
        """``[T]`` bool, False for the tokens nothing attends to (see :attr:`key_lens`); ``None``
        when every token is attended to."""
        if self.key_lens is None:
            return None
        keys = device_tensor(self.key_lens, torch.long, self.device)
        return self.positions < torch.repeat_interleave(keys, self.lens, output_size=self.num_tokens)

    @cached_property
    def length_runs(self) -> list[tuple[int, int, int]]:
        """Maximal runs of consecutive sequences of equal length: ``(length, first token, count)``.

        A run's tokens are one contiguous ``[count * length]`` slice, a dense ``[count, length]``
        grid without any gathering; in length-sorted batches each length is exactly one run.
        """
        runs: list[tuple[int, int, int]] = []
        start = 0
        for n in self.seq_lens:
            if runs and runs[-1][0] == n:
                runs[-1] = (n, runs[-1][1], runs[-1][2] + 1)
            else:
                runs.append((n, start, 1))
            start += n
        return runs

    @cached_property
    def length_groups(self) -> list[tuple[int, torch.Tensor]]:
        """Sequences grouped by length: ``(length, [n, length] flat token indices)`` per group.

        Attention over a group is one dense batched call with no padding at all.
        """
        by_len: dict[int, list[int]] = {}
        for i, n in enumerate(self.seq_lens):
            by_len.setdefault(n, []).append(i)
        starts = self.cu_seqlens[:-1]
        groups = []
        for n, members in sorted(by_len.items()):
            idx = device_tensor(members, torch.long, self.device)
            tok = starts[idx].unsqueeze(1) + torch.arange(n, device=self.device).unsqueeze(0)
            groups.append((n, tok))
        return groups

    def with_filler(self, rows: int) -> "PackedBatch":
        """This batch followed by one-token filler sequences (token id 0, segment 0) up to ``rows``
        tokens; the batch itself when it has that many already.

        Each filler token is a sequence of its own, so it attends to nothing else and nothing
        attends to it: the first :attr:`num_tokens` rows of any forward pass over the padded
        batch are those of this batch alone. The engine pads to :func:`poolkit.kernel_rows`
        and drops the filler rows before pooling.
        """
        extra = rows - self.num_tokens
        if extra <= 0:
            return self
        pad = lambda t: torch.cat([t, t.new_zeros(extra)])  # noqa: E731
        types = None if self.token_type_ids is None else pad(self.token_type_ids)
        skip = None if self.pool_skip is None else [*self.pool_skip, *[0] * extra]
        keys = None if self.key_lens is None else [*self.key_lens, *[1] * extra]
        return PackedBatch(pad(self.input_ids), [*self.seq_lens, *[1] * extra], types, skip, self.extras, keys)

    def split(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Split a ``[T, ...]`` tensor into per-sequence views."""
        return list(torch.split(tensor, self.seq_lens))

    def to(self, device: torch.device | str) -> "PackedBatch":
        """The same batch with its tensors on ``device`` (``extras`` are shared, not moved)."""
        types = None if self.token_type_ids is None else self.token_type_ids.to(device)
        return PackedBatch(self.input_ids.to(device), self.seq_lens, types, self.pool_skip, self.extras, self.key_lens)
