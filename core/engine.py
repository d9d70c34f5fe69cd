"""The engine: batch tokenization, truncation, length-sorted token-budget batches, pooling.

Inputs are tokenized in batches with the fast tokenizer, truncated (the model's limit by
default, as sentence-transformers does; ``truncate_prompt_tokens`` and ``truncation_side`` per
request), sorted by length and packed into batches under a token budget with no padding. Results
come back in input order.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, Sequence

import torch

from .allocator import tune_allocator
from .batch import PackedBatch
from .config import PoolingParams
from .errors import InvalidRequest
from .estimates import CHARS_PER_TOKEN_GUESS
from .io import Prompt
from .lookup import kernel_rows
from .model import PoolingModel
from .tasks import Task

logger = logging.getLogger(__name__)

#: Default token budget of one packed batch, by device type.
MAX_BATCH_TOKENS = {"cpu": 8192, "cuda": 65536}
#: Texts longer than this many characters per allowed token are cut before tokenizing.
CHARS_PER_TOKEN = 24
#: On an accelerator, prompts are tokenized in slices of about this many token budgets of text,
#: each while the device runs the one before (:meth:`Engine.slices`).
OVERLAP_BATCHES = 8
_CUT_MARGIN = 256
_WHITESPACE_SEARCH = 1000


@dataclass
class Encoded:
    """A tokenized prompt."""

    token_ids: list[int]
    token_type_ids: list[int] | None = None
    pool_skip: int = 0
    #: Whether tokens were cut off to honour a truncation limit.
    truncated: bool = False


def _cut_index(text: str, budget: int, side: str) -> int:
    """Where to cut ``text`` to about ``budget`` characters, at a whitespace when there is one."""
    if side == "right":
        for i in range(budget, max(budget - _WHITESPACE_SEARCH, 0), -1):
            if text[i].isspace():
                return i
        return budget
    start = len(text) - budget
    for i in range(start, min(start + _WHITESPACE_SEARCH, len(text))):
        if text[i].isspace():
            return i
    return start


def _text_beyond(text: str, spans: Sequence[tuple[int, int]], side: str) -> bool:
    """Whether ``text`` goes on past its tokens' character ``spans`` on the truncated ``side``."""
    covered = [(a, b) for a, b in spans if b > a]  # special tokens span nothing
    if not covered:
        return bool(text.strip())
    if side == "right":
        return bool(text[max(b for _, b in covered) :].strip())
    return bool(text[: min(a for a, _ in covered)].strip())


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
        self._tokenizer_lock = threading.Lock()
        self._prompt_lengths: dict[tuple[str, bool], int] = {}
        #: Inputs cut to a truncation limit so far (the CLI and corpus jobs report it).
        self.truncated_inputs = 0
        self._single_types: bool | None = None

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

    def _text(self, prompt: Prompt) -> str:
        text = (prompt.prompt_prefix or "") + (prompt.text or "")
        return text.lower() if self.model.do_lower_case else text

    def tokenize(
        self,
        prompts: Sequence[Prompt],
        params: Sequence[PoolingParams],
        chunked: bool = False,
        cap: int | None = None,
        first: int = 0,
    ) -> list[Encoded]:
        """Tokenize and truncate every prompt, batching tokenizer calls by truncation settings.

        A prompt with ``add_special_tokens=False`` is tokenized without the tokenizer's special tokens.
        A truncated prompt with ``keep_suffix`` ends with those tokens, written over its last ones.
        ``first``: the number of ``prompts[0]`` in the request, for error messages.
        """
        out: list[Encoded | None] = [None] * len(prompts)
        groups: dict[tuple[int | None, str, bool], list[int]] = {}
        default_side = getattr(self.model.tokenizer, "truncation_side", "right") or "right"
        vocab = getattr(self.model.hf_config, "vocab_size", None)
        limits: dict[int, int | None] = {}  # by params object: most requests share one
        for i, (prompt, p) in enumerate(zip(prompts, params)):
            if id(p) not in limits:
                limits[id(p)] = self.limit(p, chunked, cap)
            limit, side = limits[id(p)], p.truncation_side or default_side
            if prompt.token_ids is not None:
                ids = prompt.token_ids
                if ids and (min(ids) < 0 or (vocab is not None and max(ids) >= vocab)):
                    bad = next(t for t in ids if t < 0 or (vocab is not None and t >= vocab))
                    raise InvalidRequest(f"prompt {first + i} has token id {bad}, outside the vocabulary (0..{vocab - 1})")
                cut = limit is not None and len(ids) > limit
                if cut:
                    ids = ids[:limit] if side == "right" else ids[len(ids) - limit :]
                out[i] = Encoded(list(ids), truncated=cut)
            else:
                groups.setdefault((limit, side, prompt.add_special_tokens), []).append(i)
        for (limit, side, special), members in groups.items():
            encoded = self._encode_texts([prompts[i] for i in members], limit, side, special)
            for i, enc in zip(members, encoded):
                out[i] = enc
        model_max = self._input_max(cap)
        for i, (enc, p) in enumerate(zip(out, params)):
            asked = p.truncate_prompt_tokens is not None or p.truncation_side is not None
            if not asked and not chunked and model_max is not None and len(enc.token_ids) > model_max:
                raise InvalidRequest(
                    f"This model's maximum context length is {model_max} tokens. However, input {first + i} has more "
                    "tokens than that. Please reduce the length of the input prompt "
                    "(or set truncate_prompt_tokens: -1 truncates it to the model's limit)."
                )
        for prompt, enc in zip(prompts, out):
            if prompt.keep_suffix and enc.truncated:  # a chat template's closing tokens, cut off
                keep = min(len(prompt.keep_suffix), len(enc.token_ids))
                enc.token_ids[len(enc.token_ids) - keep :] = prompt.keep_suffix[-keep:]
        self.truncated_inputs += sum(1 for enc in out if enc.truncated)
        if not self.model.include_prompt:
            for prompt, enc in zip(prompts, out):
                if prompt.prompt_prefix and enc is not None:
                    skip = self._prompt_length(prompt.prompt_prefix, prompt.add_special_tokens)
                    enc.pool_skip = min(skip, len(enc.token_ids) - 1)
        return out  # type: ignore[return-value]

    def _encode_texts(self, prompts: Sequence[Prompt], limit: int | None, side: str, special: bool = True) -> list[Encoded]:
        texts = [self._text(p) for p in prompts]
        pairs = [p.text_pair for p in prompts]
        has_pairs = any(t is not None for t in pairs)
        # Character spans of the kept tokens tell whether text was cut off (single texts only).
        spans_wanted = limit is not None and not has_pairs
        cut: list[int] = []
        if spans_wanted:
            budget = limit * CHARS_PER_TOKEN + _CUT_MARGIN
            cut = [i for i, t in enumerate(texts) if len(t) > budget]
            for i in cut:
                at = _cut_index(texts[i], budget, side)
                texts[i] = texts[i][:at] if side == "right" else texts[i][at:]
        encoded, spans = self._call_tokenizer(texts, pairs if has_pairs else None, limit, side, special, spans_wanted)
        cut_off = set(cut)
        if spans_wanted:
            short = [i for i in cut if len(encoded[i].token_ids) < limit]
            if short:  # the cut kept fewer tokens than the limit: tokenize the whole text instead
                full, full_spans = self._call_tokenizer([self._text(prompts[i]) for i in short], None, limit, side, special, True)
                for i, enc, span in zip(short, full, full_spans):
                    encoded[i], spans[i], texts[i] = enc, span, self._text(prompts[i])
                    cut_off.discard(i)
        if limit is not None:
            at_limit = [i for i, enc in enumerate(encoded) if len(enc.token_ids) == limit]
            if spans_wanted:
                for i in at_limit:
                    encoded[i].truncated = i in cut_off or _text_beyond(texts[i], spans[i], side)
            elif at_limit:  # a pair at the limit: one token more tells (rare: cross-encoder inputs)
                longer, _ = self._call_tokenizer(
                    [texts[i] for i in at_limit], [pairs[i] for i in at_limit], limit + 1, side, special
                )
                for i, enc in zip(at_limit, longer):
                    encoded[i].truncated = len(enc.token_ids) > limit
        return encoded

    def _call_tokenizer(
        self,
        texts: list[str],
        pairs: list[str | None] | None,
        limit: int | None,
        side: str,
        special: bool = True,
        spans: bool = False,
    ) -> tuple[list[Encoded], list[list[tuple[int, int]] | None] | None]:
        """The encodings, and with ``spans`` the character span of each token of the encodings
        that reach ``limit`` (the only ones whose truncation is in question; ``None`` for the rest)."""
        tok = self.model.tokenizer
        want_types = self.uses_token_type_ids
        backend = self._backend
        with self._tokenizer_lock:
            if backend is not None:
                # a single text's segment ids are all 0 (BERT's family): not read text by text
                read_types = want_types and (pairs is not None or self._single_text_types(backend))
                return self._call_backend(backend, texts, pairs, limit, side, special, spans, read_types)
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
                    return_offsets_mapping=spans,
                )
            finally:
                tok.truncation_side = previous
        types = result.get("token_type_ids") if want_types else None
        encoded = [Encoded(ids, types[i] if types is not None else None) for i, ids in enumerate(result["input_ids"])]
        return encoded, (result["offset_mapping"] if spans else None)

    @staticmethod
    def _call_backend(
        backend: Any,
        texts: list[str],
        pairs: list[str | None] | None,
        limit: int | None,
        side: str,
        special: bool,
        spans: bool,
        want_types: bool,
    ) -> tuple[list[Encoded], list[list[tuple[int, int]] | None] | None]:
        """:meth:`_call_tokenizer` on the Rust tokenizer itself, set as transformers sets it for the
        same call, without building transformers' per-text dictionaries: token ids are read from
        each encoding, offsets only where they are needed."""
        if backend.padding is not None:
            backend.no_padding()
        if limit is None:
            backend.no_truncation()
        else:
            backend.enable_truncation(limit, stride=0, strategy="longest_first", direction=side)
        inputs = texts if pairs is None else [(t, p) if p is not None else t for t, p in zip(texts, pairs)]
        encodings = backend.encode_batch(inputs, add_special_tokens=special)
        encoded = [Encoded(e.ids, e.type_ids if want_types else None) for e in encodings]
        if not spans:
            return encoded, None
        return encoded, [e.offsets if len(e) == limit else None for e in encodings]

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

    def batches(self, encoded: Sequence[Encoded]) -> list[list[int]]:
        """Indices of ``encoded``, longest first, packed into batches under the token budget."""
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i].token_ids))
        batches: list[list[int]] = []
        current: list[int] = []
        tokens = 0
        for i in order:
            n = len(encoded[i].token_ids)
            if current and tokens + n > self.max_batch_tokens:
                batches.append(current)
                current, tokens = [], 0
            current.append(i)
            tokens += n
        if current:
            batches.append(current)
        return batches

    def run(
        self,
        task: Task,
        prompts: Sequence[Prompt],
        params: Sequence[PoolingParams],
        progress: Callable[[int, int], None] | None = None,
    ) -> list[tuple[torch.Tensor, list[int]]]:
        """Pool every prompt for ``task``; returns ``(result, prompt token ids)`` in input order.

        Args:
            task: a task the model supports.
            prompts: the inputs.
            params: one verified :class:`PoolingParams` per prompt.
            progress: called with ``(items done, tokens done)`` after each batch.
        """
        head = self.model.head(task)
        if head is None:
            raise InvalidRequest(f"model '{self.model.name}' does not support task '{task.name}'")
        media = [i for i, p in enumerate(prompts) if p.text is None and p.token_ids is None]
        if media:
            return self._run_mixed(task, prompts, params, media, progress)
        chunked = task.chunkable and self.model.pooler_config.enable_chunked_processing
        if not chunked:
            return self._run_overlapped(head, prompts, params, self.input_cap(task), progress)
        encoded = self._tokenized(prompts, params, chunked, self.input_cap(task))
        max_embed_len = self.model.pooler_config.max_embed_len
        pieces: list[Encoded] = []
        owners: list[int] = []
        weights: list[int] = []
        spans: list[tuple[int, int]] = []  # each prompt's chunks are consecutive in ``pieces``
        for i, enc in enumerate(encoded):
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
        results = self._run(head, pieces, [params[i] for i in owners], progress)
        renormalize = self.model.pooler_config.renormalize_chunked_mean
        return [
            (self._mean(results[a:b], weights[a:b], renormalize), enc.token_ids)
            for (a, b), enc in zip(spans, encoded)
        ]

    def _tokenized(
        self, prompts: Sequence[Prompt], params: Sequence[PoolingParams], chunked: bool, cap: int | None, first: int = 0
    ) -> list[Encoded]:
        encoded = self.tokenize(prompts, params, chunked, cap, first)
        for i, enc in enumerate(encoded):
            if not enc.token_ids:
                raise InvalidRequest(f"prompt {first + i} has no tokens")
        return encoded

    def slices(self, prompts: Sequence[Prompt]) -> list[tuple[int, int]]:
        """``(start, stop)`` ranges of ``prompts`` tokenized one after another while the device
        computes the previous one: about :data:`OVERLAP_BATCHES` token budgets of text each, by
        character count. One range on the CPU, where both would share the same cores."""
        if self.model.device.type == "cpu" or len(prompts) < 2:
            return [(0, len(prompts))]
        budget = OVERLAP_BATCHES * self.max_batch_tokens * CHARS_PER_TOKEN_GUESS
        ranges, start, chars = [], 0, 0
        for i, prompt in enumerate(prompts):
            chars += len(prompt.text or "") + len(prompt.text_pair or "") + len(prompt.token_ids or ()) * CHARS_PER_TOKEN_GUESS
            if chars >= budget:
                ranges.append((start, i + 1))
                start, chars = i + 1, 0
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
    ) -> list[tuple[torch.Tensor, list[int]]]:
        """Tokenize each slice of the prompts on a worker thread while the previous slice runs.

        A bad prompt in a later slice is found once the earlier slices have run; its error ends
        the call all the same, and nothing is returned.
        """
        ranges = self.slices(prompts)
        if len(ranges) == 1:
            encoded = self._tokenized(prompts, params, False, cap)
            return [(r, e.token_ids) for r, e in zip(self._run(head, encoded, params, progress), encoded)]
        out: list[tuple[torch.Tensor, list[int]]] = []
        with ThreadPoolExecutor(1, thread_name_prefix="poolkit-tokenize") as pool:
            submit = lambda a, b: pool.submit(self._tokenized, prompts[a:b], params[a:b], False, cap, a)  # noqa: E731
            future = submit(*ranges[0])
            for k, (a, b) in enumerate(ranges):
                encoded = future.result()
                if k + 1 < len(ranges):
                    future = submit(*ranges[k + 1])
                results = self._run(head, encoded, params[a:b], progress)
                out.extend((r, e.token_ids) for r, e in zip(results, encoded))
        return out

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
    ) -> list[tuple[torch.Tensor, list[int]]]:
        """Run prompts of text and prompts of tensors (images, ...) apart, results in input order."""
        results: list[tuple[torch.Tensor, list[int]] | None] = [None] * len(prompts)
        is_media = set(media)
        texts = [i for i in range(len(prompts)) if i not in is_media]
        if texts:
            for i, r in zip(texts, self.run(task, [prompts[i] for i in texts], [params[i] for i in texts], progress)):
                results[i] = r
        for i, r in zip(media, self._run_tensors(self.model.head(task), [prompts[i] for i in media], [params[i] for i in media], progress)):
            results[i] = (r, [])
        return results  # type: ignore[return-value]

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

    def _run(
        self,
        head: Callable,
        encoded: Sequence[Encoded],
        params: Sequence[PoolingParams],
        progress: Callable[[int, int], None] | None,
    ) -> list[torch.Tensor]:
        """Run the batches, each one queued on the device before the previous one's results are
        read back: on a GPU the host packs batch ``k + 1`` while the device computes batch ``k``,
        and each batch costs one device-to-host copy and one wait."""
        results: list[torch.Tensor | None] = [None] * len(encoded)
        arch = self.model.architecture
        pending: tuple[list[int], Callable[[], list[torch.Tensor]], int] | None = None
        for members in self.batches(encoded):
            batch = PackedBatch.from_sequences(
                [encoded[i].token_ids for i in members],
                token_type_ids=[encoded[i].token_type_ids or [0] * len(encoded[i].token_ids) for i in members]
                if self.uses_token_type_ids and any(encoded[i].token_type_ids is not None for i in members)
                else None,
                pool_skip=[encoded[i].pool_skip for i in members],
                device=self.model.device,
            )
            rows = kernel_rows(batch.num_tokens, batch.device) if arch.accepts_filler else batch.num_tokens
            with torch.inference_mode():
                hidden = arch(batch.with_filler(rows))[: batch.num_tokens]
                outputs = head(hidden, batch, [params[i] for i in members])
                fetch = to_host(outputs)
            if pending is not None:
                self._collect(results, *pending, progress)
            pending = (members, fetch, batch.num_tokens)
        if pending is not None:
            self._collect(results, *pending, progress)
        return results  # type: ignore[return-value]

    @staticmethod
    def _collect(
        results: list,
        members: list[int],
        fetch: Callable[[], list[torch.Tensor]],
        tokens: int,
        progress: Callable[[int, int], None] | None,
    ) -> None:
        for i, out in zip(members, fetch()):
            results[i] = out
        if progress is not None:
            progress(len(members), tokens)


def to_host(outputs: Sequence[torch.Tensor]) -> Callable[[], list[torch.Tensor]]:
    """Start copying a batch's outputs to the host; the returned call waits for them.

    On CPU the outputs are returned as they are. On a GPU, outputs of one dtype are copied in a
    single transfer into pinned memory that the host waits for only when it calls; the results
    are views of that host buffer.
    """
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

    def wait() -> list[torch.Tensor]:
        done.synchronize()
        if shapes is None:
            return list(host.unbind(0))
        pieces = host.split([shape.numel() for shape in shapes])
        return [piece.view(shape) for piece, shape in zip(pieces, shapes)]

    return wait
