"""The text IO processor: strings (or token ids) in, one prompt per input."""

from __future__ import annotations

from typing import Any, Sequence

from poolkit.errors import InvalidRequest
from poolkit.hookspecs import hookimpl
from poolkit.io import IOProcessor, Prompt


def _describe(value: Any) -> str:
    return "None" if value is None else type(value).__name__


class TextProcessor(IOProcessor):
    """Accepts what ``LLM.embed`` accepts in vLLM.

    A string, a ``{"prompt": str}`` dict, a ``{"prompt_token_ids": [int, ...]}`` dict, or a
    list of those. A single input gives a one-element list of prompts.
    """

    def parse_data(self, data: Any) -> list[Any]:
        if isinstance(data, (str, dict)):
            return [data]
        if data is None:
            raise InvalidRequest("prompts must be a string or a list of strings, got None")
        if not isinstance(data, (list, tuple)):
            raise InvalidRequest(f"prompts must be a string or a list of strings, got {_describe(data)}")
        if not data:
            raise InvalidRequest("no prompts given: the list of prompts is empty")
        return list(data)

    def pre_process(self, data: Any, request_id: str | None = None) -> Sequence[Prompt]:
        return [self._prompt(i, item) for i, item in enumerate(self.parse_data(data))]

    @staticmethod
    def _prompt(index: int, item: Any) -> Prompt:
        if isinstance(item, str):
            return Prompt(text=item)
        if isinstance(item, dict):
            if isinstance(item.get("prompt"), str):
                return Prompt(text=item["prompt"])
            ids = item.get("prompt_token_ids")
            if isinstance(ids, (list, tuple)) and all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
                if not ids:
                    raise InvalidRequest(f"prompt {index} has an empty prompt_token_ids list")
                return Prompt(token_ids=list(ids))
            raise InvalidRequest(
                f"prompt {index} must have a string 'prompt' or a list of integer 'prompt_token_ids'"
            )
        raise InvalidRequest(
            f"prompt {index} must be a string (or a dict with 'prompt' or 'prompt_token_ids'), got {_describe(item)}"
        )


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
