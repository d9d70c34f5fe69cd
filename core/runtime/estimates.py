"""Token counts estimated before tokenizing: one rule for every place that sizes work from text.

Admission (``--max-request-tokens``), the batcher's merging, the score routes' limits and the
engine's tokenize-while-computing slices all need a text's tokens before the tokenizer has run;
they take them from here, so the rule is written once.
"""

from __future__ import annotations

from typing import Sequence

from ..contracts.io import Prompt, PromptBatch

#: Characters per token assumed for text (English through WordPiece/BPE is about 4).
CHARS_PER_TOKEN_GUESS = 4


def tokens_of_text(chars: int) -> int:
    """The tokens of a text of ``chars`` characters, estimated (at least 1)."""
    return max(1, chars // CHARS_PER_TOKEN_GUESS)


def estimate_cost(prompt: "Prompt") -> int:
    """A prompt's tokens, estimated: its token ids when it has them, else its text's (pair
    included) plus the special tokens (2)."""
    if prompt.token_ids is not None:
        return len(prompt.token_ids)
    return (len(prompt.text or "") + len(prompt.text_pair or "")) // CHARS_PER_TOKEN_GUESS + 2


def estimate_costs(prompts: Sequence["Prompt"]) -> list[int]:
    """:func:`estimate_cost` of each prompt, read from the columns of a columnar
    :class:`~poolkit.contracts.io.PromptBatch` without an object per prompt."""
    if isinstance(prompts, PromptBatch) and prompts.columnar:
        if prompts.token_ids is not None:
            return list(map(len, prompts.token_ids))
        return [len(text) // CHARS_PER_TOKEN_GUESS + 2 for text in prompts.texts]
    return [estimate_cost(p) for p in prompts]


def estimate_pair_tokens(first: Sequence[str], second: Sequence[str], limit: int | None) -> int:
    """Tokens of scoring each text of ``first`` with its text of ``second`` (broadcast when
    ``first`` has one), each pair cut at ``limit``: the texts' estimates plus 3 special tokens."""
    if len(first) == 1:
        first = list(first) * len(second)
    total = 0
    for a, b in zip(first, second):
        n = len(a) // CHARS_PER_TOKEN_GUESS + len(b) // CHARS_PER_TOKEN_GUESS + 3
        total += min(n, limit) if limit else n
    return total


#: Texts longer than this many characters per allowed token are cut before tokenizing.
CHARS_PER_TOKEN = 24
_CUT_MARGIN = 256
_WHITESPACE_SEARCH = 1000


def char_budget(tokens: int) -> int:
    """The characters a text may have before it is cut ahead of tokenizing to ``tokens`` tokens:
    far more than those tokens can hold, so a cut text still fills them."""
    return tokens * CHARS_PER_TOKEN + _CUT_MARGIN


def cut_index(text: str, budget: int, side: str) -> int:
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
