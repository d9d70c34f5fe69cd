"""Request inputs in the server, shared by the routes of every protocol: the checks of what is
wrong with a request as such (another model's name, too many inputs, a token id outside the
vocabulary) with the field at fault as ``param``, and the record of an ``input`` or ``messages``
request handed to the renderer (:func:`run_inputs`); what the model makes of a valid request is
the :class:`poolkit.LLM`'s decision.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

from ...contracts.errors import InvalidRequest, short
from ...contracts.params import PoolingParams
from ...inputs import chat as chats
from ...inputs import shapes
from ...inputs.renderer import Renderer
from ...inputs.request import Accepted, PoolRequest
from ..protocol import record_of
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
    try:
        shapes.check_token_ids(ids, st.vocab, where)
    except InvalidRequest as exc:
        raise ApiError(400, str(exc), param=where) from None


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


def check_bit_width(width: int | None, types: Sequence[str], where: str) -> None:
    """Refuse the bit-packed embedding types (``binary``, ``ubinary``) for rows of a ``width`` that is
    not a multiple of 8 (Cohere's and Jina's words)."""
    if width and width % 8 and {"binary", "ubinary"} & set(types):
        raise ApiError(400, f"Embedding dimension must be a multiple of 8 for binary embedding types, but got {width}.", param=where)


def pooling_params(**fields: Any) -> PoolingParams:
    """:class:`PoolingParams` of the fields a request set (``None``: unset)."""
    return PoolingParams(**{k: v for k, v in fields.items() if v is not None})


async def run_inputs(
    call: Call | Request, st: ModelState, llm: LLM, body: Any, task_name: str, number_bytes: float = JSON_NUMBER_BYTES,
    prompt_name: str | None = None, **fields: Any
) -> tuple[Any, Any]:
    """A request of ``input`` or chat ``messages`` (``/v1/embeddings``, ``/pooling``, ``/classify``) run
    for ``task_name``: its parameters of the fields those requests share (``dimensions`` where the
    body has it, ``use_activation``, the truncation) and ``fields``, its record
    (:func:`poolkit.entrypoints.protocol.record_of`) with the prompt of the model's
    sentence-transformers config named ``prompt_name`` (Jina's ``task``), run by :func:`run_request`.

    Returns:
        :func:`~poolkit.entrypoints.serving.work.run_task`'s task and results.
    """
    dimensions = getattr(body, "dimensions", None)
    check_dimensions(st, dimensions, "dimensions")
    params = pooling_params(
        dimensions=dimensions, use_activation=body.use_activation, truncate_prompt_tokens=body.truncate_prompt_tokens,
        truncation_side=body.truncation_side, **fields,
    )
    llm.task(task_name)  # a task the model lacks is refused before any input is read or rendered
    return await run_request(call, st, llm, record_of(body, task_name, params, prompt_name, st.input_limits), number_bytes)


async def run_request(
    call: Call | Request, st: ModelState, llm: LLM, request: PoolRequest, number_bytes: float, check: Callable[[Any], None] | None = None
) -> tuple[Any, Any]:
    """A server's request record accepted by the renderer (:meth:`poolkit.inputs.Renderer.accept`:
    its inputs checked, its conversations rendered on the worker thread, its side read),
    then run (:func:`~poolkit.entrypoints.serving.work.run_task`); texts keep the tokenizer's special
    tokens unless the request says ``add_special_tokens: false`` (vLLM's default); ``check`` sees the
    prepared prompts before they run."""
    ready = await accepted(call, st, request)
    return await run_task(
        call, st, llm, ready.task, ready.inputs, ready.params, ready.prompt_name,
        add_special_tokens=ready.add_special_tokens is not False, number_bytes=number_bytes, check=check, side=ready.side,
    )


class BatcherWorker:
    """The renderer's :class:`~poolkit.inputs.chat.Worker` in the server: a rendering runs on the
    batcher's worker thread, admitted by its cost, and is dropped when the client goes."""

    def __init__(self, call: Call | Request, st: ModelState) -> None:
        self.call, self.st = call, st

    async def run(self, work: Callable[[], Any], cost: int) -> Any:
        return await until_done(self.call, self.st, self.st.batcher.call(work, cost))


async def accepted(call: Call | Request, st: ModelState, request: PoolRequest) -> Accepted:
    """``request`` as the model's renderer accepts it (:meth:`poolkit.inputs.Renderer.accept`):
    remote media fetched under ``--allowed-media-domains``, templates rendered and tokenized on the
    worker thread, dropped when the client goes."""
    renderer: Renderer = st.renderer
    return await renderer.accept(request, BatcherWorker(call, st))
