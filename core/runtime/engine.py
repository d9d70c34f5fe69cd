"""The engine: batch tokenization, truncation, length-sorted token-budget batches, pooling.

Inputs are tokenized in batches with the fast tokenizer, truncated (the model's limit by
default, as sentence-transformers does; ``truncate_prompt_tokens`` and ``truncation_side`` per
request), sorted by length and packed into batches under a token budget with no padding. Results
come back in input order.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from ..contracts.batch import PackedBatch, device_tensor, flatten_ids
from ..contracts.errors import InvalidRequest
from ..contracts.io import Prompt, PromptBatch
from ..contracts.params import PoolingParams
from ..contracts.tasks import Task
from ..loading.model import PoolingModel
from ..plugins.lookup import row_planner
from .allocator import tune_allocator
from . import prefix
from .columns import Collector, Encoded, Results, Tokens, gather_index, skip_instructions, to_host
from .inflight import InFlight, Staged
from .estimates import CHARS_PER_TOKEN_GUESS, char_budget, cut_index
from .standin import StandInDevice, from_environment
from .threads import one_thread

logger = logging.getLogger(__name__)

#: Default token budget of one packed batch, by device type.
MAX_BATCH_TOKENS = {"cpu": 8192, "cuda": 65536}
#: On an accelerator, prompts are tokenized in slices of about this many token budgets of text,
#: each while the device runs the one before (:meth:`Engine.slices`).
OVERLAP_BATCHES = 8
#: A CPU batch whose tokens × hidden size² (its linear layers' work, up to a constant) is below
#: this runs on one thread: the other threads' start and finish around each operation cost more
#: than they save there, and a server of single-text requests, whose batches are that small,
#: keeps the cores for its event loop and tokenizer instead (issue 29, docs/performance.md).
ONE_THREAD_WORK = 1 << 22
class Engine:
    """Runs a :class:`PoolingModel` over prompts for one task at a time.

    Args:
        model: the loaded model.
        max_batch_tokens: token budget of one packed batch (default by device type).
    """

    def __init__(self, model: PoolingModel, max_batch_tokens: int | None = None) -> None:
        self.model = model
        self.max_batch_tokens = max_batch_tokens or MAX_BATCH_TOKENS.get(model.device.type, 8192)
        if self.max_batch_tokens < 1:
            raise InvalidRequest("max_batch_tokens must be positive")
        if model.device.type == "cpu":
            tune_allocator()
        #: A CPU stand-in for an accelerator (:mod:`poolkit.runtime.standin`), or ``None``.
        self.standin: StandInDevice | None = from_environment()
        self._tokenizer_lock = threading.Lock()
        self._prompt_lengths: dict[tuple[str, bool], int] = {}
        #: Inputs cut to a truncation limit so far.
        self.truncated_inputs = 0
        #: Seconds spent in the model's forward passes and heads so far (on a GPU, queueing them):
        #: a run's wall time less this is its host work (``poolkit bench``'s workload H).
        self.compute_seconds = 0.0
        self._single_types: bool | None = None
        #: Shared prefixes computed once (:mod:`poolkit.runtime.prefix`), or ``None`` for a model that cannot share them.
        self.prefixes = prefix.PrefixSharing.for_model(model, model.args.enable_prefix_caching if model.args else None)
        if self.prefixes is not None and getattr(model, "adapters", None) is not None:
            model.adapters.forgotten.append(self.prefixes.forget)  # an unloaded adapter's states go with it

    # -- tokenization --------------------------------------------------------------------------

    @property
    def uses_token_type_ids(self) -> bool:
        """Segment ids are fed when the model takes them and its tokenizer produces them."""
        names = getattr(self.model.tokenizer, "model_input_names", None) or []
        return bool(self.model.architecture.uses_token_type_ids) and "token_type_ids" in names

    def limit(self, params: PoolingParams, chunked: bool = False, cap: int | None = None) -> int | None:
        """Most tokens (special tokens included) a prompt with ``params`` keeps.

        ``cap`` lowers the model's limit for the task (``max_embed_len`` of an embedding task
        without chunked processing, as in vLLM).

        Unless truncation is asked for (``truncate_prompt_tokens``, or a ``truncation_side``), an
        input longer than the model's limit is an error, as in vLLM: it is read up to one token past
        the limit, so :meth:`tokenize` can refuse it. ``-1`` truncates to the model's limit. With chunked processing, an input is not truncated to
        the model's limit: it is read up to one token past ``max_embed_len`` (so a longer one can be
        refused), or whole.
        """
        model_max = self._input_max(cap)
        requested = params.truncate_prompt_tokens
        if chunked and requested is None:
            max_embed_len = self.model.pooler_config.max_embed_len
            return max_embed_len + 1 if max_embed_len else None
        if requested is None and params.truncation_side is None:
            return model_max + 1 if model_max is not None else None
        if requested is None or requested == -1:
            return model_max
        self.check_truncation(requested)
        return requested

    def _input_max(self, cap: int | None) -> int | None:
        """The model's limit, lowered to ``cap`` when one is given."""
        model_max = self.model.max_model_len.value
        if cap is None:
            return model_max
        return cap if model_max is None else min(cap, model_max)

    def input_cap(self, task: Task) -> int | None:
        """``max_embed_len`` for a chunkable (embedding) task run without chunked processing: vLLM
        caps such inputs at it, below the model's limit; ``None`` otherwise."""
        config = self.model.pooler_config
        if task.chunkable and not config.enable_chunked_processing:
            return config.max_embed_len
        return None

    def check_truncation(self, truncate_prompt_tokens: int | None) -> None:
        """Refuse a truncation longer than the model's limit (vLLM's wording).

        Raises:
            InvalidRequest: ``truncate_prompt_tokens`` exceeds ``max_model_len``.
        """
        model_max = self.model.max_model_len.value
        if truncate_prompt_tokens is not None and model_max is not None and truncate_prompt_tokens > model_max:
            raise InvalidRequest(
                "truncate_prompt_tokens value is greater than max_model_len. "
                "Please request a smaller truncation size."
            )

    def _prompt_length(self, prefix: str, special: bool = True) -> int:
        """Tokens of an instruction prefix, less a trailing special token (sentence-transformers).

        ``special=False``: the prefix of a prompt tokenized without special tokens.
        """
        key = (prefix, special)
        if key not in self._prompt_lengths:
            tok = self.model.tokenizer
            ids = tok(prefix, add_special_tokens=special)["input_ids"]
            n = len(ids) - (1 if special and ids and ids[-1] in set(tok.all_special_ids) else 0)
            self._prompt_lengths[key] = n
        return self._prompt_lengths[key]

    def _texts(self, texts: list[str], prefix: str | None) -> list[str]:
        """What the tokenizer reads of ``texts``: the instruction prefix, then lower case if the model wants it."""
        if prefix:
            texts = [prefix + t for t in texts]
        return [t.lower() for t in texts] if self.model.do_lower_case else texts

    def _text(self, prompt: Prompt) -> str:
        return self._texts([prompt.text or ""], prompt.prompt_prefix)[0]

    def tokenize(
        self,
        prompts: Sequence[Prompt],
        params: Sequence[PoolingParams],
        chunked: bool = False,
        cap: int | None = None,
        first: int = 0,
    ) -> Tokens:
        """Tokenize and truncate every prompt, batching tokenizer calls by truncation settings.

        A columnar :class:`PromptBatch` with one parameters object for all its prompts (what
        ``LLM.embed(texts)`` and a server request make) is read as columns: one tokenizer call for
        its texts, or its token ids checked and cut as one array, with no object per prompt.

        A prompt with ``add_special_tokens=False`` is tokenized without the tokenizer's special tokens.
        A truncated prompt with ``keep_suffix`` ends with those tokens, written over its last ones.
        ``first``: the number of ``prompts[0]`` in the request, for error messages.
        """
        n = len(prompts)
        default_side = getattr(self.model.tokenizer, "truncation_side", "right") or "right"
        distinct = [params[0]] if n and all(p is params[0] for p in params) else list({id(p): p for p in params}.values())
        settings: dict[int, tuple[int | None, str]] = {}  # by params object: most requests share one
        asked: dict[int, bool] = {}
        for p in distinct:
            settings[id(p)] = (self.limit(p, chunked, cap), p.truncation_side or default_side)
            asked[id(p)] = p.truncate_prompt_tokens is not None or p.truncation_side is not None
        if isinstance(prompts, PromptBatch) and prompts.columnar and len({*settings.values()}) == 1 and len({*asked.values()}) == 1:
            (limit, side), special = settings[id(params[0])], prompts.add_special_tokens
            if prompts.token_ids is not None:
                tokens = self._take_ids(prompts.token_ids, limit, side, first)
            else:
                tokens = self._encode_texts(self._texts(prompts.texts, prompts.prompt_prefix), None, limit, side, special)
            if prompts.prompt_prefix and not self.model.include_prompt:
                skip = self._prompt_length(prompts.prompt_prefix, special)
                tokens.pool_skip = np.minimum(skip, tokens.lens - 1).tolist()
            not_asked = None if asked[id(params[0])] else np.ones(n, dtype=bool)
        else:
            tokens = self._tokenize_objects(list(prompts), params, settings, first)
            not_asked = np.fromiter((not asked[id(p)] for p in params), dtype=bool, count=n)
        model_max = self._input_max(cap)
        if not_asked is not None and not chunked and model_max is not None:
            over = np.flatnonzero(not_asked & (tokens.lens > model_max))
            if over.size:
                raise InvalidRequest(
                    f"This model's maximum context length is {model_max} tokens. However, input {first + int(over[0])} has more "
                    "tokens than that. Please reduce the length of the input prompt "
                    "(or set truncate_prompt_tokens: -1 truncates it to the model's limit)."
                )
        self.truncated_inputs += tokens.num_truncated
        return skip_instructions(self.model.architecture, tokens)

    def _tokenize_objects(
        self,
        prompts: list[Prompt],
        params: Sequence[PoolingParams],
        settings: dict[int, tuple[int | None, str]],
        first: int,
    ) -> Tokens:
        """:meth:`tokenize` for prompts of mixed kinds or parameters: one tokenizer call per
        truncation setting, token-id prompts checked one by one."""
        n = len(prompts)
        ids: list[list[int] | None] = [None] * n
        types: list[list[int] | None] = [None] * n
        truncated = np.zeros(n, dtype=bool)
        groups: dict[tuple[int | None, str, bool], list[int]] = {}
        for i, (prompt, p) in enumerate(zip(prompts, params)):
            limit, side = settings[id(p)]
            if prompt.token_ids is not None:
                taken = self._take_ids([prompt.token_ids], limit, side, first + i)
                asked = p.truncate_prompt_tokens is not None or p.truncation_side is not None
                if prompt.media is not None and asked and taken.truncated[0]:  # unasked: the context-length error below
                    raise InvalidRequest(
                        f"prompt {first + i} has {len(prompt.token_ids)} tokens with its images, more than the truncation limit of {limit}; "
                        "a prompt with images is not truncated (its image tokens would be cut): use fewer or smaller images, or less text"
                    )
                ids[i], truncated[i] = list(taken.ids[0]), taken.truncated[0]
            else:
                groups.setdefault((limit, side, prompt.add_special_tokens), []).append(i)
        for (limit, side, special), members in groups.items():
            group = self._encode_texts(
                [self._text(prompts[i]) for i in members], [prompts[i].text_pair for i in members], limit, side, special
            )
            for k, i in enumerate(members):
                ids[i] = group.ids[k]
                truncated[i] = group.truncated[k]
                if group.type_ids is not None:
                    types[i] = group.type_ids[k]
        for prompt, enc_ids, cut in zip(prompts, ids, truncated):
            if prompt.keep_suffix and cut:  # a chat template's closing tokens, cut off
                keep = min(len(prompt.keep_suffix), len(enc_ids))
                enc_ids[len(enc_ids) - keep :] = prompt.keep_suffix[-keep:]
        skip = None
        if not self.model.include_prompt and any(p.prompt_prefix for p in prompts):
            skip = [
                min(self._prompt_length(p.prompt_prefix, p.add_special_tokens), len(i) - 1) if p.prompt_prefix else 0
                for p, i in zip(prompts, ids)
            ]
        keys = None
        if any(p.attended is not None for p in prompts):
            keys = [len(i) if p.attended is None else max(1, min(p.attended, len(i))) for p, i in zip(prompts, ids)]
        media = [p.media for p in prompts] if any(p.media is not None for p in prompts) else None
        return Tokens(ids, truncated, types if any(t is not None for t in types) else None, skip, key_lens=keys, media=media)  # type: ignore[arg-type]

    def _take_ids(self, token_ids: list[list[int]], limit: int | None, side: str, first: int) -> Tokens:
        """Token-id prompts checked against the vocabulary and cut to ``limit``, as one array."""
        lens = np.fromiter(map(len, token_ids), dtype=np.int64, count=len(token_ids))
        flat = flatten_ids(token_ids, int(lens.sum()))
        vocab = getattr(self.model.hf_config, "vocab_size", None)
        if flat.size and (flat.min() < 0 or (vocab is not None and flat.max() >= vocab)):
            bad = np.flatnonzero((flat < 0) | (flat >= vocab) if vocab is not None else flat < 0)[0]
            i = int(np.searchsorted(np.cumsum(lens), bad, side="right"))
            raise InvalidRequest(f"prompt {first + i} has token id {int(flat[bad])}, outside the vocabulary (0..{vocab - 1})")
        truncated = lens > limit if limit is not None else np.zeros(len(lens), dtype=bool)
        if not truncated.any():
            return Tokens(token_ids, truncated, lens=lens, flat=flat)
        ids = list(token_ids)
        for i in np.flatnonzero(truncated):
            ids[i] = ids[i][:limit] if side == "right" else ids[i][len(ids[i]) - limit :]
        return Tokens(ids, truncated)

    def _encode_texts(
        self, texts: list[str], pairs: list[str | None] | None, limit: int | None, side: str, special: bool = True
    ) -> Tokens:
        """``texts`` (with their ``pairs``) in one tokenizer call, cut to ``limit``, each cut told."""
        full = texts
        texts = list(texts)
        has_pairs = pairs is not None and any(t is not None for t in pairs)
        cut: list[int] = []
        if limit is not None and not has_pairs:  # a long single text is cut to a budget of characters first
            budget = char_budget(limit)
            cut = [i for i, t in enumerate(texts) if len(t) > budget]
            for i in cut:
                at = cut_index(texts[i], budget, side)
                texts[i] = texts[i][:at] if side == "right" else texts[i][at:]
        ids, types, beyond = self._call_tokenizer(texts, pairs if has_pairs else None, limit, side, special, limit is not None)
        cut_off = set(cut)
        short = [i for i in cut if len(ids[i]) < limit]
        if short:  # the cut kept fewer tokens than the limit: tokenize the whole text instead
            again, again_types, again_beyond = self._call_tokenizer([full[i] for i in short], None, limit, side, special, True)
            for k, i in enumerate(short):
                ids[i], beyond[i], texts[i] = again[k], again_beyond[k], full[i]
                if types is not None:
                    types[i] = again_types[k]
                cut_off.discard(i)
        truncated = np.array(beyond, dtype=bool) if beyond is not None else np.zeros(len(texts), dtype=bool)
        truncated[sorted(cut_off)] = True  # a text cut to the budget and still at the limit
        return Tokens(ids, truncated, types)

    def _call_tokenizer(
        self,
        texts: list[str],
        pairs: list[str | None] | None,
        limit: int | None,
        side: str,
        special: bool = True,
        tell: bool = False,
    ) -> tuple[list[list[int]], list[list[int]] | None, list[bool] | None]:
        """The token ids, the segment ids (``None`` unless the model reads them) and, with
        ``tell``, whether each input at ``limit`` had tokens cut off (``False`` for the rest)."""
        tok = self.model.tokenizer
        want_types = self.uses_token_type_ids
        backend = self._backend
        beyond: list[bool] | None = None
        with self._tokenizer_lock:
            if backend is not None:
                # a single text's segment ids are all 0 (BERT's family): not read text by text
                read_types = want_types and (pairs is not None or self._single_text_types(backend))
                ids, types, beyond = self._call_backend(backend, texts, pairs, limit, side, special, tell and pairs is None, read_types)
            else:
                previous = tok.truncation_side
                tok.truncation_side = side
                try:
                    result = tok(
                        texts,
                        text_pair=pairs,
                        add_special_tokens=special,
                        truncation=limit is not None,
                        max_length=limit,
                        return_attention_mask=False,
                        return_token_type_ids=want_types,
                    )
                finally:
                    tok.truncation_side = previous
                types = result.get("token_type_ids") if want_types else None
                ids = result["input_ids"]
        if not tell or beyond is not None:
            return ids, types, beyond
        # pairs, and tokenizers without a Rust backend, tell by one token more (rare: cross-encoder inputs)
        at_limit = [i for i, one in enumerate(ids) if len(one) == limit]
        beyond = [False] * len(ids)
        if at_limit:
            longer, _, _ = self._call_tokenizer(
                [texts[i] for i in at_limit], None if pairs is None else [pairs[i] for i in at_limit], limit + 1, side, special
            )
            for i, more in zip(at_limit, longer):
                beyond[i] = len(more) > limit
        return ids, types, beyond

    @staticmethod
    def _call_backend(
        backend: Any,
        texts: list[str],
        pairs: list[str | None] | None,
        limit: int | None,
        side: str,
        special: bool,
        tell: bool,
        want_types: bool,
    ) -> tuple[list[list[int]], list[list[int]] | None, list[bool] | None]:
        """:meth:`_call_tokenizer` on the Rust tokenizer itself, set as transformers sets it for the
        same call, without building transformers' per-text dictionaries or character offsets: a
        text at the limit was cut when the tokenizer kept tokens past it (its ``overflowing``
        encodings), which is what a count of the whole text's tokens would say."""
        if backend.padding is not None:
            backend.no_padding()
        if limit is None:
            backend.no_truncation()
        else:
            backend.enable_truncation(limit, stride=0, strategy="longest_first", direction=side)
        inputs = texts if pairs is None else [(t, p) if p is not None else t for t, p in zip(texts, pairs)]
        encode = getattr(backend, "encode_batch_fast", None) or backend.encode_batch  # tokenizers >= 0.20: no offsets
        encodings = encode(inputs, add_special_tokens=special)
        ids = [e.ids for e in encodings]
        types = [e.type_ids for e in encodings] if want_types else None
        if not tell:
            return ids, types, None
        return ids, types, [len(i) == limit and bool(e.overflowing) for i, e in zip(ids, encodings)]

    def _single_text_types(self, backend: Any) -> bool:
        """Whether the tokenizer gives a single text segment ids other than 0 (asked once)."""
        if self._single_types is None:
            self._single_types = any(backend.encode("a b", add_special_tokens=True).type_ids)
        return self._single_types

    @cached_property
    def _backend(self) -> Any:
        """The tokenizer's Rust backend when the tokenizer is a transformers fast tokenizer that
        encodes exactly as its backend does (its class changes none of the encoding methods);
        ``None`` otherwise (slow tokenizers, classes with their own encoding code)."""
        tok = self.model.tokenizer
        backend = getattr(tok, "backend_tokenizer", None)
        if backend is None or getattr(tok, "split_special_tokens", False) or backend.encode_special_tokens:
            return None
        try:
            from transformers import tokenization_utils_tokenizers as fast
        except ImportError:  # transformers 4: tokenization_utils_fast
            from transformers import tokenization_utils_fast as fast
        bases = [cls for cls in type(tok).__mro__ if cls.__module__ == fast.__name__]
        if not bases:
            return None
        methods = ("__call__", "_call_one", "encode_plus", "batch_encode_plus", "_encode_plus", "_batch_encode_plus")
        overridden = any(getattr(type(tok), name, None) is not getattr(bases[0], name, None) for name in methods)
        return None if overridden else backend

    def cut_text(self, text: str, max_tokens: int) -> str:
        """``text`` cut after its first ``max_tokens`` tokens (special tokens not counted), at the
        exact character where the last kept token ends: no decode round trip changes the text."""
        with self._tokenizer_lock:
            enc = self.model.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        if len(enc["input_ids"]) <= max_tokens:
            return text
        return text[: enc["offset_mapping"][max_tokens - 1][1]]

    def char_spans(self, prompt: Prompt, token_ids: Sequence[int]) -> list[tuple[int, int] | None] | None:
        """Each token's character span in the prompt's text (``None`` for a token that covers no
        text: special tokens, the instruction prefix), or ``None`` when that cannot be told (a
        token-id prompt, a pair, tokens that are not the text's own)."""
        if prompt.text is None or prompt.text_pair is not None:
            return None
        prefix = len(prompt.prompt_prefix or "")
        with self._tokenizer_lock:
            enc = self.model.tokenizer(
                self._text(prompt), add_special_tokens=prompt.add_special_tokens, return_offsets_mapping=True
            )
        ids, offsets, n = enc["input_ids"], enc["offset_mapping"], len(token_ids)
        if list(ids[:n]) == list(token_ids):
            offsets = offsets[:n]
        elif list(ids[len(ids) - n :]) == list(token_ids):
            offsets = offsets[len(ids) - n :]
        else:
            return None
        return [(a - prefix, b - prefix) if a < b and a >= prefix else None for a, b in offsets]

    # -- running -------------------------------------------------------------------------------

    def batches(self, lengths: Sequence[int] | np.ndarray) -> list[np.ndarray]:
        """Indices of sequences of these ``lengths``, longest first, packed into batches under the
        token budget (a sequence over the budget is a batch of its own)."""
        lens = np.asarray(lengths, dtype=np.int64)
        order = np.argsort(-lens, kind="stable")
        ends = np.cumsum(lens[order])
        batches: list[np.ndarray] = []
        start, done = 0, 0
        while start < len(order):
            stop = max(int(np.searchsorted(ends, done + self.max_batch_tokens, side="right")), start + 1)
            batches.append(order[start:stop])
            done = int(ends[stop - 1])
            start = stop
        return batches

    def run(
        self,
        task: Task,
        prompts: Sequence[Prompt],
        params: Sequence[PoolingParams],
        progress: Callable[[int, int], None] | None = None,
    ) -> Results:
        """Pool every prompt for ``task``: the results, their token ids and truncation, in input order.

        Args:
            task: a task the model supports.
            prompts: the inputs (a columnar :class:`PromptBatch` takes the fast path).
            params: one verified :class:`PoolingParams` per prompt.
            progress: called with ``(items done, tokens done)`` after each batch.
        """
        head = self.model.head(task)
        if head is None:
            raise InvalidRequest(f"model '{self.model.name}' does not support task '{task.name}'")
        if not (isinstance(prompts, PromptBatch) and prompts.columnar):
            media = [i for i, p in enumerate(prompts) if p.text is None and p.token_ids is None]
            if media:
                return self._run_mixed(task, prompts, params, media, progress)
        chunked = task.chunkable and self.model.pooler_config.enable_chunked_processing
        if not chunked:
            return self._run_overlapped(head, prompts, params, self.input_cap(task), progress)
        tokens = self._tokenized(prompts, params, chunked, self.input_cap(task))
        max_embed_len = self.model.pooler_config.max_embed_len
        pieces: list[Encoded] = []
        owners: list[int] = []
        weights: list[int] = []
        spans: list[tuple[int, int]] = []  # each prompt's chunks are consecutive in ``pieces``
        for i in range(len(tokens)):
            enc = tokens[i]
            if max_embed_len and len(enc.token_ids) > max_embed_len:
                raise InvalidRequest(
                    f"prompt {i} is longer than max_embed_len ({max_embed_len} tokens); "
                    "shorten it, raise max_embed_len, or set truncate_prompt_tokens"
                )
            start = len(pieces)
            for chunk, weight in self.chunks(enc):
                pieces.append(chunk)
                owners.append(i)
                weights.append(weight)
            spans.append((start, len(pieces)))
        results = Results.rows_of(self._run(head, Tokens.of(pieces), [params[i] for i in owners], progress))
        renormalize = self.model.pooler_config.renormalize_chunked_mean
        means = [self._mean(results[a:b], weights[a:b], renormalize) for a, b in spans]
        return Results(means, tokens.ids, tokens.truncated)

    def staged(self, task: Task, prompts: Sequence[Prompt], params: Sequence[PoolingParams]) -> Callable[[], Results]:
        """:meth:`run` in two steps: tokenize the prompts now, on the calling thread, and return
        the call that runs their batches (a :class:`Staged`, whose device work can also be
        launched behind another's, when the prompts are plain texts or token ids). A server on an accelerator tokenizes its next merged
        batch this way while the device runs the one before (:class:`poolkit.runtime.batching.Batcher`).
        Inputs that are not plain text or token ids, and chunked processing, are tokenized in the
        returned call, as :meth:`run` does them.

        Raises:
            PoolkitError: a prompt the tokenizer or the model's limits refuse (here, not later).
        """
        head = self.model.head(task)
        plain = isinstance(prompts, PromptBatch) and prompts.columnar or all(
            p.text is not None or p.token_ids is not None for p in prompts
        )
        if head is None or not plain or (task.chunkable and self.model.pooler_config.enable_chunked_processing):
            return lambda: self.run(task, prompts, params)
        return Staged(self, head, self._tokenized(prompts, params, False, self.input_cap(task)), params)

    def _tokenized(
        self, prompts: Sequence[Prompt], params: Sequence[PoolingParams], chunked: bool, cap: int | None, first: int = 0
    ) -> Tokens:
        tokens = self.tokenize(prompts, params, chunked, cap, first)
        empty = np.flatnonzero(tokens.lens == 0)
        if empty.size:
            raise InvalidRequest(f"prompt {first + int(empty[0])} has no tokens")
        return tokens

    @property
    def asynchronous(self) -> bool:
        """Whether the device runs batches while the host goes on: an accelerator, or the CPU
        with a stand-in device (:mod:`poolkit.runtime.standin`)."""
        return self.model.device.type != "cpu" or self.standin is not None

    def slices(self, prompts: Sequence[Prompt]) -> list[tuple[int, int]]:
        """``(start, stop)`` ranges of ``prompts`` tokenized one after another while the device
        computes the previous one: the first about one token budget of text, so that the device
        starts early, the rest about :data:`OVERLAP_BATCHES` budgets each, by character count.
        One range on the CPU, where both would share the same cores."""
        if not self.asynchronous or len(prompts) < 2:
            return [(0, len(prompts))]
        budget = self.max_batch_tokens * CHARS_PER_TOKEN_GUESS
        ranges, start, chars = [], 0, 0
        for i, prompt in enumerate(prompts):
            chars += len(prompt.text or "") + len(prompt.text_pair or "") + len(prompt.token_ids or ()) * CHARS_PER_TOKEN_GUESS
            if chars >= budget:
                ranges.append((start, i + 1))
                start, chars = i + 1, 0
                budget = OVERLAP_BATCHES * self.max_batch_tokens * CHARS_PER_TOKEN_GUESS
        if start < len(prompts):
            ranges.append((start, len(prompts)))
        return ranges

    def _run_overlapped(
        self,
        head: Callable,
        prompts: Sequence[Prompt],
        params: Sequence[PoolingParams],
        cap: int | None,
        progress: Callable[[int, int], None] | None,
    ) -> Results:
        """Tokenize each slice of the prompts on a worker thread while the previous slice runs.

        A bad prompt in a later slice is found once the earlier slices have run; its error ends
        the call all the same, and nothing is returned.
        """
        ranges = self.slices(prompts)
        if len(ranges) == 1:
            tokens = self._tokenized(prompts, params, False, cap)
            return Results(self._run(head, tokens, params, progress), tokens.ids, tokens.truncated, tokens.cached)
        tokenized: list[Tokens] = []
        with ThreadPoolExecutor(1, thread_name_prefix="poolkit-tokenize") as pool:
            submit = lambda a, b: pool.submit(self._tokenized, prompts[a:b], params[a:b], False, cap, a)  # noqa: E731

            def parts() -> Iterator[tuple[Tokens, Sequence[PoolingParams]]]:
                # the next slice's tokens are awaited while the device runs this one's last batch
                future = submit(*ranges[0])
                for k, (a, b) in enumerate(ranges):
                    tokens = future.result()
                    if k + 1 < len(ranges):
                        future = submit(*ranges[k + 1])
                    tokenized.append(tokens)
                    yield tokens, params[a:b]

            results = self._run_parts(head, parts(), progress)
        return Results.concat([Results(r, t.ids, t.truncated, t.cached) for r, t in zip(results, tokenized)])

    def chunks(self, encoded: Encoded) -> list[tuple[Encoded, int]]:
        """Split an over-long input into model-sized chunks, each with the input's special tokens.

        Returns ``(chunk, weight)`` pairs; the weight is the chunk's share of the input's tokens.
        """
        ids = encoded.token_ids
        limit = self.model.max_model_len.value
        if limit is None or len(ids) <= limit:
            return [(encoded, len(ids))]
        special = set(self.model.tokenizer.all_special_ids)
        start, end = 0, len(ids)
        while start < end and ids[start] in special:
            start += 1
        while end > start and ids[end - 1] in special:
            end -= 1
        prefix, body, suffix = ids[:start], ids[start:end], ids[end:]
        size = limit - len(prefix) - len(suffix)
        if size < 1:
            raise InvalidRequest(f"the model's limit of {limit} tokens leaves no room for text between special tokens")
        return [(Encoded(prefix + body[k : k + size] + suffix), len(body[k : k + size])) for k in range(0, len(body), size)]

    @staticmethod
    def _mean(parts: list[torch.Tensor], weights: list[int], renormalize: bool) -> torch.Tensor:
        """Token-weighted mean of chunk results (fp32), L2-normalised again if asked."""
        if len(parts) == 1:
            return parts[0]
        stacked = torch.stack([p.float() for p in parts])
        w = torch.tensor(weights, dtype=torch.float32).unsqueeze(1)
        mean = (stacked * w).sum(0) / w.sum()
        return torch.nn.functional.normalize(mean, dim=-1) if renormalize else mean

    def _run_mixed(
        self,
        task: Task,
        prompts: Sequence[Prompt],
        params: Sequence[PoolingParams],
        media: list[int],
        progress: Callable[[int, int], None] | None,
    ) -> Results:
        """Run prompts of text and prompts of tensors (images, ...) apart, results in input order."""
        data: list[torch.Tensor | None] = [None] * len(prompts)
        ids: list[list[int]] = [[] for _ in prompts]
        truncated = np.zeros(len(prompts), dtype=bool)
        is_media = set(media)
        texts = [i for i in range(len(prompts)) if i not in is_media]
        if texts:
            done = self.run(task, [prompts[i] for i in texts], [params[i] for i in texts], progress)
            rows = done.rows()
            for k, i in enumerate(texts):
                data[i], ids[i], truncated[i] = rows[k], done.token_ids[k], done.truncated[k]
        for i, r in zip(media, self._run_tensors(self.model.head(task), [prompts[i] for i in media], [params[i] for i in media], progress)):
            data[i] = r
        return Results(data, ids, truncated)  # type: ignore[arg-type]

    def _run_tensors(
        self,
        head: Callable,
        prompts: Sequence[Prompt],
        params: Sequence[PoolingParams],
        progress: Callable[[int, int], None] | None,
    ) -> list[torch.Tensor]:
        """Prompts that carry tensors in ``extras`` instead of text: each is a one-token sequence.

        Prompts with the same tensor keys and shapes are stacked into one batch's ``extras``
        (``batch.extras["pixel_values"]`` is ``[n, 3, H, W]``, say); the architecture returns one
        row per prompt, which the head pools like any sequence.
        """
        groups: dict[tuple, list[int]] = {}
        for i, prompt in enumerate(prompts):
            tensors = {k: v for k, v in prompt.extras.items() if isinstance(v, torch.Tensor)}
            if not tensors:
                raise InvalidRequest(f"prompt {i} has neither text, token ids nor data the model can read")
            key = tuple(sorted((k, tuple(v.shape)) for k, v in tensors.items()))
            groups.setdefault(key, []).append(i)
        results: list[torch.Tensor | None] = [None] * len(prompts)
        step = max(1, self.max_batch_tokens // 128)
        for members in groups.values():
            for start in range(0, len(members), step):
                chunk = members[start : start + step]
                batch = PackedBatch(
                    torch.zeros(len(chunk), dtype=torch.long, device=self.model.device),
                    [1] * len(chunk),
                    extras={
                        k: torch.stack([prompts[i].extras[k] for i in chunk]).to(self.model.device)
                        for k, v in prompts[chunk[0]].extras.items()
                        if isinstance(v, torch.Tensor)
                    },
                )
                with torch.inference_mode():
                    outputs = head(self.model.architecture(batch), batch, [params[i] for i in chunk])
                for i, out in zip(chunk, to_host(outputs)()):
                    results[i] = out
                if progress is not None:
                    progress(len(chunk), 0)
        return results  # type: ignore[return-value]

    def _threads_for(self, num_tokens: int) -> Any:
        """The intra-op threads of a batch of ``num_tokens`` on this thread: one for a small CPU
        batch (:data:`ONE_THREAD_WORK`), else as they are."""
        hidden = getattr(self.model.architecture, "hidden_size", None)
        if self.model.device.type != "cpu" or not hidden or num_tokens * hidden**2 >= ONE_THREAD_WORK:
            return contextlib.nullcontext()
        return one_thread()

    def _run(
        self,
        head: Callable,
        tokens: Tokens,
        params: Sequence[PoolingParams],
        progress: Callable[[int, int], None] | None,
    ) -> torch.Tensor | list[torch.Tensor]:
        """Run the batches of ``tokens``: :meth:`_run_parts` of one part."""
        (result,) = self._run_parts(head, [(tokens, params)], progress)
        return result

    def _run_parts(
        self,
        head: Callable,
        parts: Iterable[tuple[Tokens, Sequence[PoolingParams]]],
        progress: Callable[[int, int], None] | None,
    ) -> list[torch.Tensor | list[torch.Tensor]]:
        """Run the batches of each part in turn (:meth:`_launch`), the last batch of a part still
        on the device while the next part's first one is queued; each part's results come back as
        one ``[N, ...]`` tensor when every batch's head gives one tensor of rows of a shape, else
        one tensor per prompt."""
        collectors: list[Collector] = []
        last: InFlight | None = None
        for tokens, params in parts:
            collected, last = self._launch(head, tokens, params, progress, last)
            collectors.append(collected)
        if last is not None:
            last.read()
        return [c.result() for c in collectors]

    def _launch(
        self,
        head: Callable,
        tokens: Tokens,
        params: Sequence[PoolingParams],
        progress: Callable[[int, int], None] | None,
        behind: InFlight | None = None,
    ) -> tuple[Collector, InFlight | None]:
        """Queue the batches of ``tokens`` on the device, each one before the previous one's
        results are read back (``behind``: a batch of an earlier part still in flight, read once
        this part's first batch is queued): on a GPU the host packs batch ``k + 1`` (or waits for
        the next part's tokens) while the device computes batch ``k``, and each batch costs one
        device-to-host copy and one wait. Returns the part's collector, whose results are complete
        once the returned last batch in flight is read.

        Each batch is gathered from the part's one flat array of token ids.
        """
        arch = self.model.architecture
        if arch.accepts_filler and "_rows_for" not in self.__dict__:  # planned once, as layers pick kernels once:
            self._rows_for = row_planner(self.model.device)  # asking the registry was ~0.1 ms of every batch
        rows_for = self._rows_for if arch.accepts_filler else None
        shared = params[0] if params and all(p is params[0] for p in params) else None
        types = tokens.flat_types if self.uses_token_type_ids else None
        skip = np.asarray(tokens.pool_skip, dtype=np.int64) if tokens.pool_skip is not None else None
        keys = np.asarray(tokens.key_lens, dtype=np.int64) if tokens.key_lens is not None else None
        collected = Collector(len(tokens))
        adapters, batches = self.model.adapters, self.batches(tokens.lens)
        for members, slots in adapters.plan(batches, params) if adapters is not None else ((m, None) for m in batches):
            seq_lens = tokens.lens[members]
            index = gather_index(tokens.starts[members], seq_lens)
            batch_skip = skip[members].tolist() if skip is not None else None
            batch = PackedBatch(
                device_tensor(tokens.flat[index], torch.long, self.model.device),
                seq_lens.tolist(),
                device_tensor(types[index], torch.long, self.model.device) if types is not None else None,
                batch_skip if batch_skip is not None and any(batch_skip) else None,
                key_lens=keys[members].tolist() if keys is not None and (keys[members] < seq_lens).any() else None,
            )
            if tokens.media is not None:
                batch.extras["media"] = [_on_device(tokens.media[i], self.model.device) for i in members.tolist()]
            started = time.perf_counter()
            active = adapters.active(seq_lens.tolist(), slots) if slots is not None else contextlib.nullcontext()
            members_params = [shared] * len(members) if shared is not None else [params[i] for i in members]
            with torch.inference_mode(), self._threads_for(batch.num_tokens), active:
                hidden, cached = prefix.forward(self.prefixes, arch, batch, rows_for, tokens.flat[index], members_params, adapters, slots)
                tokens.note_cached(members, cached)
                fetch = to_host(head(hidden, batch, members_params))
            if self.standin is not None:
                fetch = self.standin.delayed(fetch, self.standin.launch(batch.num_tokens, started))
            self.compute_seconds += time.perf_counter() - started
            if behind is not None:
                behind.read()
            behind = InFlight(collected, members, fetch, batch.num_tokens, progress)
        return collected, behind


def _on_device(media: dict | None, device: torch.device) -> dict | None:
    """A sequence's media tensors on ``device`` (other values as they are)."""
    if media is None:
        return None
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in media.items()}
