"""vLLM's tokenization work (``/tokenize``, ``/detokenize``), whatever door asks for it: vLLM's HTTP
routes (:mod:`poolkit.entrypoints.server.routes_vllm`) parse their JSON into a :class:`Tokenize`
or a :class:`Detokenize`, call :func:`tokenize` or :func:`detokenize` with the
:class:`~poolkit.entrypoints.serving.call.Call` and the served model, and write what they return.
TEI's ``/tokenize`` and ``/decode`` answer in TEI's form (:mod:`poolkit.entrypoints.serving.tei`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

from ...inputs.chat import chat_of, checked_text
from ...inputs.content import media_cost
from ...inputs.request import PoolRequest
from ...runtime.estimates import tokens_of_text
from .call import Call
from .errors import ApiError
from .inputs import accepted, check_token_ids
from .state import ModelState
from .work import check_tokens, until_done


@dataclasses.dataclass(frozen=True)
class Tokenize:
    """``/tokenize``: a ``prompt``, or chat ``messages`` rendered with the chat template, and vLLM's
    switches for each."""

    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    #: The tokenizer's special tokens: ``None`` is vLLM's default (added to a prompt, not to messages).
    add_special_tokens: bool | None = None
    #: messages: the generation prompt (``None``: unless ``continue_final_message``).
    add_generation_prompt: bool | None = None
    continue_final_message: bool = False
    return_token_strs: bool | None = False

    @classmethod
    def of(cls, body: Any) -> Tokenize:
        """The request of a body with the same fields (an HTTP route's parsed JSON)."""
        return cls(**{f.name: getattr(body, f.name) for f in dataclasses.fields(cls)})


class Tokens(NamedTuple):
    """What ``/tokenize`` computed: the ids, and their strings where they were asked for."""

    ids: list[int]
    strs: list[str] | None


async def tokenize(req: Tokenize, call: Call, st: ModelState) -> Tokens:
    """``/tokenize``: the ids the model's tokenizer makes of the prompt (special tokens by default),
    or of the messages rendered with the chat template (none added by default)."""
    renderer, batcher = st.renderer, st.batcher
    assert renderer is not None and batcher is not None  # set when the model loads, before any request
    if (req.prompt is None) == (req.messages is None):
        raise ApiError(400, "send either 'prompt' or 'messages'", param="prompt")
    if req.prompt is not None:
        text = req.prompt
        checked_text(text, "prompt")
        tokens = tokens_of_text(len(text))
        check_tokens(st, tokens, "prompt")
        add_special = req.add_special_tokens is not False
        ids = await until_done(call, st, batcher.call(lambda: renderer.tokenize(text, add_special_tokens=add_special)["input_ids"], tokens))
    else:
        continuing = req.continue_final_message
        chat = chat_of(req.messages, {
            "add_generation_prompt": (not continuing) if req.add_generation_prompt is None else req.add_generation_prompt,
            "continue_final_message": continuing, "add_special_tokens": bool(req.add_special_tokens),
        }, instead="prompt")
        (prompt,) = (await accepted(call, st, PoolRequest([chat]))).inputs
        if isinstance(prompt, dict):
            ids = prompt["prompt_token_ids"]
        else:  # with media: their placeholders expanded as the model's media processor does
            cost = media_cost([prompt])
            ids = await until_done(call, st, batcher.call(lambda: renderer.tokenize(prompt)["input_ids"], cost))
    return Tokens(ids, renderer.detokenize(ids, each=True) if req.return_token_strs else None)


@dataclasses.dataclass(frozen=True)
class Detokenize:
    """``/detokenize``: token ids."""

    tokens: list[int]

    @classmethod
    def of(cls, body: Any) -> Detokenize:
        """The request of a body with the same fields (an HTTP route's parsed JSON)."""
        return cls(list(body.tokens))


async def detokenize(req: Detokenize, call: Call, st: ModelState) -> str:
    """``/detokenize``: the token ids decoded by the model's tokenizer."""
    renderer, batcher = st.renderer, st.batcher
    assert renderer is not None and batcher is not None  # set when the model loads, before any request
    ids = req.tokens
    check_token_ids(st, ids, "tokens")
    check_tokens(st, len(ids), "tokens")
    return await until_done(call, st, batcher.call(lambda: renderer.detokenize(ids), max(1, len(ids))))
