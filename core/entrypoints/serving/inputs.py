"""Shape checks of request inputs, shared by the routes of every protocol.

They refuse what is wrong with a request as such (an empty string, too many inputs, a token id
outside the vocabulary, another model's name) with the field at fault as ``param``; what the
model makes of a valid request is the :class:`poolkit.LLM`'s decision.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from ...contracts.errors import short
from ...contracts.params import PoolingParams
from ...inputs import chat as chats
from ...inputs.chat import checked_text
from ...inputs.renderer import Renderer
from .call import Call
from .door import served_model
from .errors import ApiError
from .state import ModelState
from .work import JSON_NUMBER_BYTES, run_task, until_done

if TYPE_CHECKING:
    from starlette.requests import Request

    from ...api.llm import LLM


def check_model(st: ModelState, name: str | None) -> None:
    """Refuse a body whose ``model`` is not the model the request was routed to: a 400 when it names
    another served model (the ``X-Model`` header chose this one), else the 404 of an unknown model
    (vLLM's words with one model, the served names listed with several)."""
    if name is None or name == st.served:
        return
    server = st.server
    if server.model(name) is not None:
        raise ApiError(
            400,
            f"The X-Model header names the model `{short(st.served)}` and the body's model is `{short(name)}`: "
            "name one model, or the same in both",
            param="model",
        )
    if len(server.models) > 1:
        served_model(server, name)
    raise ApiError(404, f"The model `{short(name)}` does not exist.", param="model")


def check_token_ids(st: ModelState, ids: list[int], where: str) -> None:
    """Refuse a token id outside the model's vocabulary, with the field at fault."""
    bad = next((t for t in ids if t < 0 or (st.vocab is not None and t >= st.vocab)), None)
    if bad is not None:
        vocab = f" (0..{st.vocab - 1})" if st.vocab is not None else ""
        raise ApiError(400, f"{where}: token id {short(bad, 24)} is out of vocabulary{vocab}", param=where)


def check_count(st: ModelState, n: int, where: str) -> None:
    """Refuse no inputs, and more than ``--max-inputs-per-request``."""
    chats.check_count(n, where, st.limits.max_inputs_per_request)


def check_dimensions(st: ModelState, dimensions: int | None, where: str) -> None:
    """Refuse ``dimensions`` below 1, or above a matryoshka model's embedding size."""
    if dimensions is None:
        return
    if dimensions < 1:
        raise ApiError(400, "Dimensions must be greater than 0", param=where)
    if st.embedding_size and dimensions > st.embedding_size and st.llm is not None and st.llm.model.is_matryoshka:
        raise ApiError(
            400, f"{where} ({dimensions}) is larger than the model's embedding size ({st.embedding_size})", param=where
        )


def prompt_items(st: ModelState, value: Any, where: str = "input") -> list[Any]:
    """The prompts of an ``input`` field, checked: strings or ``{"prompt_token_ids": [...]}``."""
    if value is None:
        raise ApiError(400, f"{where} is required", param=where)
    if isinstance(value, str):
        items: list[Any] = [value]
    elif value and all(isinstance(v, int) for v in value):
        items = [value]
    else:
        items = list(value)
    check_count(st, len(items), where)
    prompts = []
    for i, item in enumerate(items):
        name = f"{where}[{i}]" if len(items) > 1 or not isinstance(value, str) else where
        if isinstance(item, str):
            checked_text(item, name)
            prompts.append(item)
            continue
        if not item:
            raise ApiError(400, f"{name} is an empty list of token ids", param=name)
        check_token_ids(st, item, name)
        prompts.append({"prompt_token_ids": item})
    return prompts


def pooling_params(**fields: Any) -> PoolingParams:
    """:class:`PoolingParams` of the fields a request set (``None``: unset)."""
    return PoolingParams(**{k: v for k, v in fields.items() if v is not None})


async def prompts_of(call: Call | Request, st: ModelState, llm: LLM, body: Any) -> list[Any]:
    """The prompts of a request with ``input`` or chat ``messages`` (``/v1/embeddings``, ``/classify``, ``/pooling``),
    each conversation rendered by the model's renderer (:meth:`poolkit.inputs.Renderer.render_input`).

    ``add_special_tokens`` is vLLM's: with ``input`` it defaults to true, and ``false`` tokenizes
    the texts without the tokenizer's special tokens (see :func:`special_tokens`); with
    ``messages`` it defaults to false, as the chat template writes them.
    """
    chats.check_template_kwargs(body.chat_template_kwargs)
    if body.messages is not None:
        if body.input is not None:
            raise ApiError(400, "send either 'input' or 'messages', not both", param="messages")
        batched = bool(body.messages) and all(isinstance(m, list) for m in body.messages)
        conversations = body.messages if batched else [body.messages]
        check_count(st, len(conversations), "messages")
        fields = {
            "add_generation_prompt": body.add_generation_prompt, "continue_final_message": body.continue_final_message,
            "chat_template_kwargs": body.chat_template_kwargs, "add_special_tokens": bool(body.add_special_tokens),
        }
        return [
            await render_input(call, st, chats.chat_of(messages, fields, f"messages[{i}]" if batched else "messages"))
            for i, messages in enumerate(conversations)
        ]
    return prompt_items(st, body.input)


async def run_inputs(
    call: Call | Request, st: ModelState, llm: LLM, body: Any, task_name: str, number_bytes: float = JSON_NUMBER_BYTES,
    prompt_name: str | None = None, **fields: Any
) -> tuple[Any, Any]:
    """A request of ``input`` or chat ``messages`` (``/v1/embeddings``, ``/pooling``, ``/classify``) run
    for ``task_name``: its pooling parameters of the fields those requests share (``dimensions`` where
    the body has it, ``use_activation``, the truncation) and ``fields``, its prompts rendered, with the
    prompt of the model's sentence-transformers config named ``prompt_name`` (Jina's ``task``), the
    texts in the side the body's ``input_type`` names (:meth:`poolkit.inputs.Renderer.side`).

    Returns:
        :func:`~poolkit.entrypoints.serving.work.run_task`'s task and results.
    """
    dimensions = getattr(body, "dimensions", None)
    check_dimensions(st, dimensions, "dimensions")
    params = pooling_params(
        dimensions=dimensions, use_activation=body.use_activation, truncate_prompt_tokens=body.truncate_prompt_tokens,
        truncation_side=body.truncation_side, **fields,
    ).with_salt(body.cache_salt)
    llm.task(task_name)  # a task the model lacks is refused before any input is read or rendered
    resolved = st.renderer.side(task_name, getattr(body, "input_type", None), prompt_name=prompt_name)
    named, side = resolved.prompt_name, resolved.side
    raw = resolved.instructed(await prompts_of(call, st, llm, body))
    return await run_task(
        call, st, llm, task_name, raw, params, prompt_name or named, add_special_tokens=special_tokens(body),
        number_bytes=number_bytes, side=side,
    )


def special_tokens(body: Any) -> bool:
    """Whether the texts of an ``input`` request are tokenized with special tokens (vLLM's default: yes)."""
    return body.messages is not None or body.add_special_tokens is not False


class BatcherWorker:
    """The renderer's :class:`~poolkit.inputs.chat.Worker` in the server: a rendering runs on the
    batcher's worker thread, admitted by its cost, and is dropped when the client goes."""

    def __init__(self, call: Call | Request, st: ModelState) -> None:
        self.call, self.st = call, st

    async def run(self, work: Callable[[], Any], cost: int) -> Any:
        return await until_done(self.call, self.st, self.st.batcher.call(work, cost))


async def render_input(call: Call | Request, st: ModelState, item: Any, where: str = "input", system: str | None = None) -> Any:
    """One conversation, or one input's content parts, as a prompt (its token ids, or its text with its
    media), by the model's renderer (:meth:`poolkit.inputs.Renderer.render_input`): remote media fetched
    under ``--allowed-media-domains``, the template rendered and tokenized on the worker thread."""
    renderer: Renderer = st.renderer
    return await renderer.render_input(item, where, system=system, worker=BatcherWorker(call, st))
