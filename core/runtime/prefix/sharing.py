"""The shared-prefix forward pass: the prefixes not known yet run first, then the prompts from
where their prefixes end, reading the prefixes' keys and values, and the prompts' states are put
back together whole.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch

from ...config.environment import env_number
from ...contracts.batch import PackedBatch, device_tensor
from ...contracts.capabilities import MediaPlaceholders, SharesPrefixes
from ...plugins.lookup import kernel_for
from .. import adapter_runs
from .cache import BLOCK, DEFAULT_CACHE_BYTES, Entry, PrefixCache, Reuse, Scope, scope_of
from .media import PromptMedia, media_part
from .plan import Kept, PrefixKey, key_of, kept, lookup, token_bytes, within

if TYPE_CHECKING:
    from ...contracts.architecture import Architecture, LoadedModel
    from ...contracts.params import PoolingParams
    from ...lora.manager import Adapters

#: ``active(lens, order)``: the context under which a pass over sequences of ``lens`` tokens, those
#: of the prompts ``order``, runs (their LoRA adapters).
Active = Callable[[list[int], list[int]], Any]
#: ``run(step)``: a pass of the architecture over ``step``, padded as the engine pads (:func:`forward`).
Run = Callable[[PackedBatch], torch.Tensor]


@dataclass(eq=False)
class PrefixState:
    """What :attr:`PackedBatch.prefix` holds for an architecture's attention: the prefixes' keys
    and values per layer (``None`` in step 1), each sequence's offset into them, which rows' keys
    and values to keep (``keep``) and, once a pass ran, those kept per layer (``kept``)."""

    keys: list[torch.Tensor] | None = None
    values: list[torch.Tensor] | None = None
    offsets: list[int] | None = None
    keep: torch.Tensor | None = None
    kept: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)

    def with_fillers(self, count: int) -> "PrefixState":
        """The state of this step padded with ``count`` one-token filler sequences, which read no
        prefix (offset 0); the rows a pass keeps land in this state's :attr:`kept` too."""
        if self.offsets is None:
            return self
        return dataclasses.replace(self, offsets=[*self.offsets, *[0] * count])

    def attention(self, op: Callable, device: torch.device) -> Callable:
        """The attention of one forward pass: ``op`` (the architecture's varlen attention) for
        sequences without a prefix, the ``prefix_attention`` op where they have one; each layer's
        keys and values of the :attr:`keep` rows kept, in layer order."""
        layers = iter(range(1 << 30))
        prefixed = kernel_for(self, "prefix_attention", device) if self.keys is not None else None

        def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: PackedBatch, causal: bool = False,
                   scale: float | None = None, window: int | None = None, **kwargs: Any) -> torch.Tensor:
            layer = next(layers)
            if self.keep is not None:
                self.kept.append((k.index_select(0, self.keep), v.index_select(0, self.keep)))
            if prefixed is None:
                return op(q, k, v, batch, causal=causal, scale=scale, window=window, **kwargs)
            return prefixed(q, k, v, batch, self.keys[layer], self.values[layer], self.offsets, scale=scale)

        return attend


def _joined(parts: list[torch.Tensor]) -> torch.Tensor:
    """The prefixes' keys (or values) of one layer one after another; one prefix's as it is."""
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def forward(
    sharing: "PrefixSharing | None", arch: Architecture, batch: PackedBatch, rows_for: Callable[[int], int] | None,
    flat: np.ndarray, params: Sequence[PoolingParams], adapters: Adapters | None, slots: Sequence[int] | None,
) -> tuple[torch.Tensor, list[int] | None]:
    """The engine's forward pass of ``batch`` (token ids ``flat``, one ``params`` per prompt, the
    adapters in ``slots``): shared prefixes computed once where ``sharing`` finds any, else the
    plain pass. Every pass runs padded with one-token filler sequences to ``rows_for(tokens)``
    rows (the kernels' row bucket, :func:`poolkit.kernel_rows`; ``None``: none), so that no kernel
    copies its rows to pad them. Returns the states and, per prompt, how many of its tokens'
    states came from a shared prefix (``None``: none)."""

    def run(step: PackedBatch) -> torch.Tensor:
        padded = step.with_filler(rows_for(step.num_tokens)) if rows_for is not None else step
        if padded is not step and step.prefix is not None:  # the filler sequences start at 0 and read no prefix
            extra = padded.num_seqs - step.num_seqs
            padded.starts = None if step.starts is None else [*step.starts, *[0] * extra]
            padded.prefix = step.prefix.with_fillers(extra)
        return arch(padded)[: step.num_tokens]

    if sharing is not None:
        ids = np.split(flat, np.cumsum(batch.seq_lens)[:-1])

        def active(lens: list[int], order: list[int]) -> Any:
            return adapter_runs.active(adapters, lens, [slots[i] for i in order]) if slots is not None else contextlib.nullcontext()

        shared = sharing.forward(arch, batch, ids, [scope_of(p) for p in params], active, run)
        if shared is not None:
            return shared
    return run(batch), None


class PrefixSharing:
    """The shared-prefix forward pass of one loaded model (:func:`for_model`); ``cache`` keeps
    prefix states across calls, or is ``None``."""

    def __init__(self, cache: PrefixCache | None) -> None:
        self.cache = cache
        #: Prompts run, and tokens whose states came from a shared prefix, so far.
        self.prompts = self.shared_tokens = 0

    @classmethod
    def for_model(cls, model: LoadedModel, enabled: bool | None) -> "PrefixSharing | None":
        """Sharing for ``model``: ``None`` when its architecture cannot share prefixes (is no
        :class:`~poolkit.contracts.capabilities.SharesPrefixes`, or says so for its config), or
        ``enabled`` is ``False`` (``enable_prefix_caching=False``); on by default otherwise, as
        vLLM turns prefix caching on for decoders."""
        arch = model.architecture
        if enabled is False or not (isinstance(arch, SharesPrefixes) and arch.shares_prefixes):
            return None
        budget = int(env_number("POOLKIT_PREFIX_CACHE_BYTES", DEFAULT_CACHE_BYTES))
        return cls(PrefixCache(budget) if budget > 0 else None)

    def reset(self) -> None:
        """Forget every kept prefix state (:meth:`poolkit.LLM.reset_prefix_cache`)."""
        if self.cache is not None:
            self.cache.clear()

    def forget(self, identity: int) -> None:
        """Drop the kept states that the adapter load ``identity`` computed (it was unloaded)."""
        if self.cache is not None:
            self.cache.drop_adapter(identity)

    def forward(
        self, arch: Architecture, batch: PackedBatch, ids: list[np.ndarray], scopes: list[Scope], active: Active, run: Run,
    ) -> tuple[torch.Tensor, list[int]] | None:
        """The last layer's states ``[T, H]`` of ``batch`` (whose prompts' token ids are ``ids``,
        each in its ``scopes``), shared prefixes computed once, and per prompt how many of its
        tokens' states came from a shared prefix; ``None`` when nothing is shared or
        kept, for the caller's plain forward pass. ``active(lens, order)`` is the context under which
        a pass over sequences of ``lens`` tokens, those of the prompts ``order``, runs (their LoRA adapters);
        ``run(step)`` runs a pass of ``arch``, padded as the engine pads (:func:`forward`)."""
        if batch.prefix is not None or batch.key_lens is not None:
            return None
        media = batch.extras.get("media")
        spans: list[PromptMedia | None] | None = None
        if media is not None and any(m is not None for m in media):
            placeholders = frozenset(arch.placeholder_tokens) if isinstance(arch, MediaPlaceholders) else frozenset()
            if not placeholders:  # an architecture that cannot say where its media lie shares none
                return None
            spans = [PromptMedia.of(seq, m, placeholders) if m is not None else None for seq, m in zip(ids, media)]
            if any(s is None and m is not None for s, m in zip(spans, media)):
                return None
        shared = within(ids, scopes, spans)
        self.prompts += len(ids)
        plan: list[Reuse | None] = [None] * len(ids)
        missing: dict[PrefixKey, list[int]] = {}
        for i, seq in enumerate(ids):
            if i in shared:
                prefix = shared[i]
                key = PrefixKey(prefix.scope, key_of(prefix.keys[: prefix.length]))
                entry = self.cache.exact(key.scope, key.ids) if self.cache is not None else None
                if entry is None:
                    missing.setdefault(key, []).append(i)
                else:
                    plan[i] = Reuse(entry, prefix.length)
            elif self.cache is not None and len(seq) > BLOCK and scopes[i] is not None:
                plan[i] = lookup(self.cache, scopes[i], seq, spans[i] if spans is not None else None)
        if missing:
            self._compute(run, batch.device, missing, ids, scopes, spans, plan, active)
        keep: list[Kept] = []
        if self.cache is not None:
            for i, p in enumerate(plan):
                k = kept(i, ids[i], scopes[i], spans[i] if spans is not None else None, p.length if p else 0)
                if k is not None:
                    keep.append(k)
        if keep:  # no more than the cache holds: a batch of long documents keeps some, not all
            room = self.cache.max_bytes // token_bytes(arch)
            keep = keep[: int(np.searchsorted(np.cumsum([len(k.keys) for k in keep]), room, side="right"))]
        if all(p is None for p in plan) and not keep:
            return None
        cached = [p.length if p is not None else 0 for p in plan]
        self.shared_tokens += sum(cached)
        return self._continue(run, batch, ids, spans, plan, keep, active), cached

    def _compute(
        self, run: Run, device: torch.device, missing: dict[PrefixKey, list[int]], ids: list[np.ndarray], scopes: list[Scope],
        spans: list[PromptMedia | None] | None, plan: list[Reuse | None], active: Active,
    ) -> None:
        """Step 1: the prefixes not known yet, as sequences of their own (with the media of those
        that hold them), their states kept."""
        keys = list(missing)
        lens = [len(key.ids) for key in keys]
        firsts = [members[0] for members in missing.values()]
        step = PackedBatch(device_tensor(np.concatenate([ids[i][:n] for i, n in zip(firsts, lens)]), torch.long, device), lens)
        if spans is not None:
            parts = [media_part(s.media, 0, n, True) if (s := spans[i]) is not None and s.holds_media(n) else None
                     for i, n in zip(firsts, lens)]
            if any(m is not None for m in parts):
                step.extras["media"] = parts
        step.prefix = PrefixState(keep=torch.arange(step.num_tokens, device=device))
        with active(lens, firsts):
            hidden = run(step)
        bounds = np.cumsum([0, *lens])
        for n, key in enumerate(keys):
            a, b = int(bounds[n]), int(bounds[n + 1])
            entry = Entry(key.ids, [k[a:b].clone() for k, _ in step.prefix.kept], [v[a:b].clone() for _, v in step.prefix.kept],
                          hidden[a:b].clone())
            if self.cache is not None:
                span = spans[firsts[n]] if spans is not None else None
                # a prefix that holds media is scoped (scope, digest): its text blocks go under the prompt's scope
                text = span.text_blocks(scopes[firsts[n]]) if span is not None and span.holds_media(b - a) else None
                self.cache.put(key.scope, entry, text)
            for i in missing[key]:
                plan[i] = Reuse(entry, b - a)

    def _continue(
        self, run: Run, batch: PackedBatch, ids: list[np.ndarray], spans: list[PromptMedia | None] | None,
        plan: list[Reuse | None], keep: list[Kept], active: Active,
    ) -> torch.Tensor:
        """Step 2: every prompt from where its prefix ends (with the part of its media that
        describes its rest: no pixels where the prefix held them), then the prompts' states whole."""
        device = batch.device
        starts = [p.length if p is not None else 0 for p in plan]
        used: list[Entry] = []  # the prefixes read, each once, in the order the prompts first read them
        offset_of: dict[int, int] = {}  # by entry: where its keys begin among the used prefixes'
        offsets = []
        for p in plan:
            if p is not None and id(p.entry) not in offset_of:
                offset_of[id(p.entry)] = sum(len(e.ids) for e in used)
                used.append(p.entry)
            offsets.append(offset_of[id(p.entry)] if p is not None else 0)
        suffixes = [seq[start:] for seq, start in zip(ids, starts)]
        lens = [len(s) for s in suffixes]
        step = PackedBatch(device_tensor(np.concatenate(suffixes), torch.long, device), lens, starts=starts)
        if spans is not None:
            step.extras["media"] = [
                None if s is None else s.media if start == 0 else media_part(s.media, start, None, not s.holds_media(start))
                for s, start in zip(spans, starts)
            ]
        bounds = np.cumsum([0, *lens])
        kept_rows = np.concatenate([np.arange(bounds[k.prompt], bounds[k.prompt] + len(k.keys) - starts[k.prompt]) for k in keep]) if keep else None
        layers = len(used[0].keys) if used else 0
        step.prefix = PrefixState(
            [_joined([e.keys[layer] for e in used]) for layer in range(layers)] if used else None,
            [_joined([e.values[layer] for e in used]) for layer in range(layers)] if used else None,
            offsets,
            device_tensor(kept_rows, torch.long, device) if kept_rows is not None and kept_rows.size else None,
        )
        with active(lens, list(range(len(ids)))):
            hidden = run(step)
        if step.prefix.kept and self.cache is not None:
            self._put_kept(step.prefix.kept, hidden, bounds, starts, plan, keep)
        if not used:
            return hidden
        sources = torch.cat([hidden, *(e.hidden for e in used)])  # a prefix's rows follow the prompts' own
        base = {key: hidden.shape[0] + offset for key, offset in offset_of.items()}
        index = np.concatenate([
            np.concatenate([np.arange(base[id(p.entry)], base[id(p.entry)] + p.length) if p is not None else np.zeros(0, np.int64),
                            np.arange(bounds[i], bounds[i + 1])])
            for i, p in enumerate(plan)
        ])
        return sources.index_select(0, device_tensor(index, torch.long, device))

    def _put_kept(
        self, rows: list[tuple[torch.Tensor, torch.Tensor]], hidden: torch.Tensor, bounds: np.ndarray, starts: list[int],
        plan: list[Reuse | None], keep: list[Kept],
    ) -> None:
        """Leave in the cache what step 2 kept of each prompt in ``keep`` (``rows``: each layer's
        keys and values of those prompts' tokens, one prompt after another): the states of the
        prefix it read (text before its media) followed by its own."""
        at = 0
        for k in keep:
            s, n = starts[k.prompt], len(k.keys) - starts[k.prompt]  # the rows of its prefix (text before its media), then its own
            own = slice(at, at + n)
            a = int(bounds[k.prompt])
            keys, values, states = [t[own] for t, _ in rows], [v[own] for _, v in rows], hidden[a : a + n]
            reused = plan[k.prompt]
            if reused is None:
                keys, values, states = [t.clone() for t in keys], [v.clone() for v in values], states.clone()
            else:
                head = reused.entry
                keys = [torch.cat([h[:s], t]) for h, t in zip(head.keys, keys)]
                values = [torch.cat([h[:s], v]) for h, v in zip(head.values, values)]
                states = torch.cat([head.hidden[:s], states])
            self.cache.put(k.scope, Entry(key_of(k.keys), keys, values, states), k.text)
            at += n
