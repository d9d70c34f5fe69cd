"""The text IO processor: strings (or token ids) in, one prompt per input."""

from __future__ import annotations

import itertools
from typing import Any, Sequence

from poolkit.contracts.errors import InvalidRequest
from poolkit.contracts.hookspecs import hookimpl
from poolkit.contracts.io import IOProcessor, Prompt, PromptBatch

#: The ``multi_modal_data`` keys a prompt may have (vLLM's names).
MEDIA_KINDS = ("image", "video")


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _all_tokens(values: Sequence[Any]) -> bool:
    """Whether every value is an integer token id (``bool`` is not); plain ints are checked in C."""
    return set(map(type, values)) <= {int} or all(_is_token(t) for t in values)


def _columns(items: list[Any]) -> PromptBatch | None:
    """``items`` as columns when they are all texts or all token-id lists (bare, or alone in a
    ``{"prompt": ...}`` / ``{"prompt_token_ids": ...}`` dict), checked in bulk; ``None`` for any
    other mix, and for anything wrong, which the per-item path then names."""
    kinds = set(map(type, items))
    if kinds == {str}:
        return PromptBatch(texts=items)
    if kinds == {dict}:
        if any(len(item) != 1 for item in items):
            return None
        texts = [item.get("prompt") for item in items]
        if set(map(type, texts)) == {str}:
            return PromptBatch(texts=texts)
        items = [item.get("prompt_token_ids") for item in items]
        kinds = set(map(type, items))
    if kinds == {list} and all(items) and set(map(type, itertools.chain.from_iterable(items))) == {int}:
        return PromptBatch(token_ids=items)
    return None


def _describe(value: Any) -> str:
    return "None" if value is None else type(value).__name__


class TextProcessor(IOProcessor):
    """Accepts what ``LLM.embed`` accepts in vLLM.

    A string, a list of token ids, a ``{"prompt": str}`` dict, a ``{"prompt_token_ids": [int, ...]}``
    dict, a prompt with media ``{"prompt": ..., "multi_modal_data": {"image": ..., "video": ...}}`` (its
    images and videos left in ``extras`` for the "image" IO processor), a :class:`~poolkit.contracts.io.Prompt` (taken as it
    is: a text pair, for one), or a list of those; a prompt dict may carry vLLM's ``cache_salt``
    (kept in the prompt's extras, read by ``LLM.prepare``). A single input (a
    string, a dict, or one flat list of token ids, as vLLM reads ``[101, 7592, 102]``) gives a
    one-element list of prompts.
    """

    def parse_data(self, data: Any) -> list[Any]:
        if isinstance(data, (str, dict, Prompt)) or (isinstance(data, (list, tuple)) and data and _all_tokens(data)):
            return [data]
        if data is None:
            raise InvalidRequest("prompts must be a string or a list of strings, got None")
        if not isinstance(data, (list, tuple)):
            raise InvalidRequest(f"prompts must be a string or a list of strings, got {_describe(data)}")
        if not data:
            raise InvalidRequest("no prompts given: the list of prompts is empty")
        return list(data)

    def pre_process(self, data: Any, request_id: str | None = None) -> PromptBatch:
        """The prompts, as columns when the inputs are all texts or all token ids (the engine's
        fast path, with the user's token-id lists shared, not copied), else as objects."""
        items = self.parse_data(data)
        columns = _columns(items)
        if columns is not None:
            return columns
        return PromptBatch(objects=[self._prompt(i, item) for i, item in enumerate(items)])

    @staticmethod
    def _prompt(index: int, item: Any) -> Prompt:
        if isinstance(item, str):
            return Prompt(text=item)
        if isinstance(item, Prompt):
            return item
        if isinstance(item, (list, tuple)):
            if not item:
                raise InvalidRequest(f"prompt {index} is an empty list of token ids")
            if not _all_tokens(item):
                raise InvalidRequest(f"prompt {index} must be a list of integer token ids")
            return Prompt(token_ids=list(item))
        if isinstance(item, dict):
            salt = TextProcessor._salt(index, item)
            if item.get("multi_modal_data") is not None:
                prompt = TextProcessor._media_prompt(index, item)
                prompt.extras.update(salt)
                return prompt
            if isinstance(item.get("prompt"), str):
                return Prompt(text=item["prompt"], extras=salt)
            ids = item.get("prompt_token_ids")
            if isinstance(ids, (list, tuple)) and _all_tokens(ids):
                if not ids:
                    raise InvalidRequest(f"prompt {index} has an empty prompt_token_ids list")
                return Prompt(token_ids=list(ids), extras=salt)
            raise InvalidRequest(
                f"prompt {index} must have a string 'prompt' or a list of integer 'prompt_token_ids'"
            )
        raise InvalidRequest(
            f"prompt {index} must be a string (or a dict with 'prompt' or 'prompt_token_ids'), got {_describe(item)}"
        )

    @staticmethod
    def _salt(index: int, item: dict) -> dict:
        """A prompt dict's ``cache_salt`` (vLLM's prompt field: the prompt shares prefix states only
        with prompts of the same salt) as the prompt's extras, ``{}`` without one.

        Raises:
            InvalidRequest: a salt that is not a non-empty string.
        """
        salt = item.get("cache_salt")
        if salt is None:
            return {}
        if not isinstance(salt, str) or not salt:
            raise InvalidRequest(f"prompt {index}: cache_salt must be a non-empty string, got {salt!r}")
        return {"cache_salt": salt}

    @staticmethod
    def _media_prompt(index: int, item: dict) -> Prompt:
        """``{"prompt": ..., "multi_modal_data": {"image": X, "video": V}}``: a prompt with media.

        ``X`` is one image or a list of them (``V`` likewise, each video a list of frames); they
        are decoded later, with the model known, by the "image" IO processor, which also says
        what the model accepts: a dual encoder (CLIP, SigLIP) takes one image and no text, a
        vision-language model text with images where its prompt has their placeholders.
        """
        media = item["multi_modal_data"]
        if not isinstance(media, dict):
            raise InvalidRequest(f"prompt {index}: multi_modal_data must be a dict such as {{'image': ...}}")
        unknown = sorted(str(k) for k in media if k not in MEDIA_KINDS)
        if unknown:
            raise InvalidRequest(
                f"prompt {index}: unsupported multi_modal_data {', '.join(unknown)}; only {' and '.join(map(repr, MEDIA_KINDS))} are supported"
            )
        extras = {kind: media[kind] for kind in MEDIA_KINDS if media.get(kind) is not None}
        if not extras:
            raise InvalidRequest(f"prompt {index}: multi_modal_data has no image")
        for kind, value in extras.items():
            if isinstance(value, (list, tuple)) and not value:
                raise InvalidRequest(f"prompt {index}: multi_modal_data has an empty list of {kind}s")
        text = item.get("prompt", "")
        if text is not None and not isinstance(text, str):
            raise InvalidRequest(f"prompt {index}: 'prompt' must be a string, got {_describe(text)}")
        if item.get("prompt_token_ids"):
            raise InvalidRequest(f"prompt {index}: a prompt with multi_modal_data takes a text 'prompt', not prompt_token_ids")
        return Prompt(text=text or None, extras=extras)


class TextPairProcessor(IOProcessor):
    """Pairs of texts for cross-encoders: ``(firsts, seconds)`` of equal length in, one prompt each."""

    def parse_data(self, data: Any) -> tuple[list[str], list[str]]:
        if not (isinstance(data, (tuple, list)) and len(data) == 2):
            raise InvalidRequest("text pairs must be given as (first texts, second texts)")
        first, second = (list(side) for side in data)
        if len(first) != len(second):
            raise InvalidRequest("Input lengths must be either 1:1, 1:N or N:N")
        for name, side in (("text", first), ("text_pair", second)):
            for i, item in enumerate(side):
                if not isinstance(item, str):
                    raise InvalidRequest(f"{name} {i} must be a string, got {_describe(item)}")
        return first, second

    def pre_process(self, data: Any, request_id: str | None = None) -> Sequence[Prompt]:
        first, second = self.parse_data(data)
        return [Prompt(text=a, text_pair=b) for a, b in zip(first, second)]


@hookimpl
def poolkit_register_io_processors(register):
    register("text", TextProcessor)
    register("text_pair", TextPairProcessor)
