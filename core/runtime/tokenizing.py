"""Prompts to token ids: batch tokenization and truncation, the engine's first step.

Inputs are tokenized in batches with the fast tokenizer (its Rust backend itself where that
encodes exactly as transformers would) and truncated: to the model's limit by default, as
sentence-transformers does, or per request (``truncate_prompt_tokens``, ``truncation_side``); an
over-long input that asks for no truncation is refused, as vLLM refuses it. Token-id prompts are
checked against the vocabulary and cut as one array. :class:`PromptTokenizer` is the one place
that calls the model's tokenizer for the engine (:attr:`poolkit.runtime.engine.Engine.tokenizer`).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, NamedTuple, Sequence

import numpy as np

from ..contracts.batch import cached_property, flatten_ids
from ..contracts.capabilities import TakesTokenTypes, capable
from ..contracts.errors import InputTooLong, InvalidRequest
from ..contracts.io import Prompt, PromptBatch
from ..contracts.model import ModelInfo
from ..contracts.params import PoolingParams
from ..contracts.tasks import Task
from ..loading.model import PoolingModel
from .columns import Tokens, skip_instructions
from .estimates import char_budget, cut_index

if TYPE_CHECKING:
    from tokenizers import Tokenizer as RustTokenizer


class Encoding(NamedTuple):
    """What one tokenizer call gives: the token ids, the segment ids (``None`` unless the model
    reads them) and, where asked, whether each input at the limit had tokens cut off."""

    ids: list[list[int]]
    types: list[list[int]] | None
    beyond: list[bool] | None


#: Set on a thread while :meth:`PromptTokenizer._whole_length` reads an input whole.
_MEASURING = threading.local()


def as_read(model: ModelInfo, texts: list[str], prefix: str | None = None) -> list[str]:
    """What a model's tokenizer reads of ``texts``: the instruction prefix, then lower case if the
    model wants it. The one home of that rule: the engine's tokenizer and the renderer's tokenize
    door (:meth:`poolkit.inputs.Renderer.tokenize`, vLLM's and TEI's ``/tokenize``) read it here."""
    if prefix:
        texts = [prefix + t for t in texts]
    return [t.lower() for t in texts] if model.do_lower_case else texts


class PromptTokenizer:
    """Tokenizes and truncates prompts for one loaded model, under one lock (a tokenizer is not
    safe to share across threads, and the engine tokenizes on a worker thread while it runs).

    Args:
        model: the loaded model, whose tokenizer, limits and pooling settings it reads.
    """

    def __init__(self, model: PoolingModel) -> None:
        self.model = model
        self._lock = threading.Lock()
        self._prompt_lengths: dict[tuple[str, bool], int] = {}
        self._single_types: bool | None = None
        #: Inputs cut to a truncation limit so far.
        self.truncated_inputs = 0

    @property
    def uses_token_type_ids(self) -> bool:
        """Segment ids are fed when the model takes them
        (:class:`~poolkit.contracts.capabilities.TakesTokenTypes`) and its tokenizer produces them."""
        arch = self.model.architecture
        names = getattr(self.model.tokenizer, "model_input_names", None) or []
        return capable(arch, TakesTokenTypes) and bool(arch.uses_token_type_ids) and "token_type_ids" in names

    # -- limits ----------------------------------------------------------------------------------

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
        if getattr(_MEASURING, "on", False):
            return None
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

    # -- texts -----------------------------------------------------------------------------------

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

    def texts(self, texts: list[str], prefix: str | None = None) -> list[str]:
        """What the tokenizer reads of ``texts`` (:func:`as_read`).

        Applied here, to every prompt that reaches the engine, rather than where prompts are made:
        prompts come from several places besides the renderer (score pairs, templates, the
        server's and the sentence-transformers classes' own), and the prompt's ``text`` without its
        prefix is what token estimates and a retrieval role's prompts read.
        """
        return as_read(self.model, texts, prefix)

    def _text(self, prompt: Prompt) -> str:
        return self.texts([prompt.text or ""], prompt.prompt_prefix)[0]

    # -- tokenizing ------------------------------------------------------------------------------

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
        settings: dict[int, tuple[int | None, str]] = {}  # by params object, its limit and side: most requests share one
        asked: dict[int, bool] = {}
        for p in distinct:
            settings[id(p)] = (self.limit(p, chunked, cap), p.truncation_side or default_side)
            asked[id(p)] = p.truncate_prompt_tokens is not None or p.truncation_side is not None
        if isinstance(prompts, PromptBatch) and prompts.columnar and len({*settings.values()}) == 1 and len({*asked.values()}) == 1:
            (limit, side), special = settings[id(params[0])], prompts.add_special_tokens
            if prompts.token_ids is not None:
                tokens = self._take_ids(prompts.token_ids, limit, side, first)
            else:
                tokens = self._encode_texts(self.texts(prompts.texts, prompts.prompt_prefix), None, limit, side, special)
            if prompts.prompt_prefix and not self.model.include_prompt:
                skip = self._prompt_length(prompts.prompt_prefix, special)
                tokens.pool_skip = np.minimum(skip, tokens.lens - 1).tolist()
            not_asked = None if asked[id(params[0])] else np.ones(n, dtype=bool)
        else:
            tokens = self._tokenize_objects(list(prompts), params, settings, first)
            not_asked = np.fromiter((not asked[id(p)] for p in params), dtype=bool, count=n)
        model_max = self._input_max(cap)
        if not_asked is not None and not chunked and model_max is not None and not getattr(_MEASURING, "on", False):
            over = (not_asked & (tokens.lens > model_max)).nonzero()[0]
            if over.size:
                index = first + int(over[0])
                raise InputTooLong(limit=model_max, given=self._whole_length(prompts, params, int(over[0])), index=index)
        self.truncated_inputs += tokens.num_truncated
        return skip_instructions(self.model.architecture, tokens)

    def _whole_length(self, prompts: Sequence[Prompt], params: Sequence[PoolingParams], i: int) -> int:
        """The tokens of ``prompts[i]`` read whole (an input over the limit is read only one token past
        it): for the error that refuses it, which says how long it is, as TEI's does."""
        _MEASURING.on = True
        try:
            return int(self.tokenize(prompts[i : i + 1], params[i : i + 1]).lens[0])
        finally:
            _MEASURING.on = False

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
            again = self._call_tokenizer([full[i] for i in short], None, limit, side, special, True)
            for k, i in enumerate(short):
                ids[i], beyond[i], texts[i] = again.ids[k], again.beyond[k], full[i]
                if types is not None:
                    types[i] = again.types[k]
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
    ) -> Encoding:
        """The token ids, the segment ids (``None`` unless the model reads them) and, with
        ``tell``, whether each input at ``limit`` had tokens cut off (``False`` for the rest)."""
        tok = self.model.tokenizer
        want_types = self.uses_token_type_ids
        backend = self._backend
        beyond: list[bool] | None = None
        with self._lock:
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
            return Encoding(ids, types, beyond)
        # pairs, and tokenizers without a Rust backend, tell by one token more (rare: cross-encoder inputs)
        at_limit = [i for i, one in enumerate(ids) if len(one) == limit]
        beyond = [False] * len(ids)
        if at_limit:
            longer = self._call_tokenizer(
                [texts[i] for i in at_limit], None if pairs is None else [pairs[i] for i in at_limit], limit + 1, side, special
            )
            for i, more in zip(at_limit, longer.ids):
                beyond[i] = len(more) > limit
        return Encoding(ids, types, beyond)

    @staticmethod
    def _call_backend(
        backend: RustTokenizer,
        texts: list[str],
        pairs: list[str | None] | None,
        limit: int | None,
        side: str,
        special: bool,
        tell: bool,
        want_types: bool,
    ) -> Encoding:
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
            return Encoding(ids, types, None)
        return Encoding(ids, types, [len(i) == limit and bool(e.overflowing) for i, e in zip(ids, encodings)])

    def _single_text_types(self, backend: RustTokenizer) -> bool:
        """Whether the tokenizer gives a single text segment ids other than 0 (asked once)."""
        if self._single_types is None:
            self._single_types = any(backend.encode("a b", add_special_tokens=True).type_ids)
        return self._single_types

    @cached_property
    def _backend(self) -> RustTokenizer | None:
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

    # -- a text's own tokens -------------------------------------------------------------------

    def cut_text(self, text: str, max_tokens: int) -> str:
        """``text`` cut after its first ``max_tokens`` tokens (special tokens not counted), at the
        exact character where the last kept token ends: no decode round trip changes the text."""
        with self._lock:
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
        with self._lock:
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
