"""Admitting and running a request's work: the token limit, the batcher, client disconnects.

The event loop only validates; tokenizing and running the model happen on the batcher's worker
thread. A client that goes away while its work waits cancels it before it runs.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Awaitable, Callable, NamedTuple

import numpy as np
import torch

from ...contracts.errors import InputTooLong, InvalidRequest
from ...contracts.io import Prompt
from ...contracts.params import PoolingParams
from ...inputs.content import guess_tokens
from ...inputs.request import PoolRequest
from ...runtime.columns import Results
from .cache import packed, unpacked
from .call import Call
from .errors import ApiError, ClientGone
from .state import ModelState

if TYPE_CHECKING:
    from starlette.requests import Request

    from ...api.llm import LLM
    from ...contracts.architecture import LoadedModel
    from ...contracts.tasks import Task

#: Bytes of one number in a JSON response, at most about: a float32 result written as the
#: shortest float64 that reads back the same (``-0.012345678901234567``) and its comma.
JSON_NUMBER_BYTES = 24


async def until_done(call: Call | Request, st: ModelState, awaitable: Awaitable[Any]) -> Any:
    """Await work for a call (or an HTTP request's, :meth:`Call.of`); if the client goes away
    first, cancel it (dropping queued work).

    Raises:
        ClientGone: the client went away (counted in ``poolkit_client_disconnects_total``).
    """
    work = asyncio.ensure_future(awaitable)
    left, watcher = Call.of(call).watch()
    waiters = {work, left} if st.give_up is None else {work, left, st.give_up}
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        work.cancel()
        if watcher is not None:
            watcher.cancel()
        raise
    client_gone = left.done() and not left.cancelled()
    if watcher is not None:
        watcher.cancel()
    if work.done():
        return work.result()
    work.cancel()
    if client_gone:
        st.metrics.disconnects.inc()
        raise ClientGone()
    raise ApiError(
        503, "the server is shutting down: the request did not finish within --shutdown-timeout", headers={"Retry-After": "5"}
    )


def check_tokens(st: ModelState, tokens: int, where: str = "input") -> None:
    """Refuse a request estimated at more than ``--max-request-tokens`` before any tokenizing."""
    if tokens > st.limits.max_request_tokens:
        raise ApiError(
            400,
            f"the request has about {tokens} tokens (estimated), more than the limit of "
            f"{st.limits.max_request_tokens} per request (--max-request-tokens); send fewer or shorter inputs",
            param=where,
        )


def check_response(st: ModelState, numbers: int, per_number: float, estimated: bool) -> None:
    """Refuse a response of more than ``--max-response-bytes``: ``numbers`` numbers of
    ``per_number`` bytes each, estimated before the work or counted once its results are in."""
    size = int(numbers * per_number)
    limit = st.limits.max_response_bytes
    if size > limit:
        when = "would be about" if estimated else "is about"
        raise ApiError(
            413,
            f"the response {when} {size} bytes, more than the limit of {limit} (--max-response-bytes); "
            "send fewer or shorter inputs" + (", or ask for base64" if per_number >= JSON_NUMBER_BYTES else ""),
            param="input",
        )


def expected_numbers(task: Task, model: LoadedModel, inputs: int, tokens: int) -> int | None:
    """The numbers the results of ``inputs`` inputs of about ``tokens`` tokens hold, from the task's
    :meth:`~poolkit.contracts.tasks.Task.result_width`; ``None`` when the task cannot say."""
    width = task.result_width(model)
    if width is None:
        return None
    return width * (tokens if task.granularity == "token" else inputs)


def result_numbers(task: Task, model: LoadedModel, results: Results) -> int:
    """The numbers the results hold as a response writes them: every number of dense results, an
    index and a value per non-zero weight of results whose width the task does not declare
    (sparse vectors)."""
    tensors = [results.data] if isinstance(results.data, torch.Tensor) else list(results.data)
    if task.result_width(model) is not None:
        return sum(t.numel() for t in tensors)
    return 2 * sum(int(torch.count_nonzero(t)) for t in tensors)


def check_truncation(llm: LLM, truncate: int | None, param: str = "truncate_prompt_tokens") -> None:
    """The LLM's truncation check, run before its other checks, with the request field at fault."""
    try:
        llm.check_truncation(truncate)
    except InvalidRequest as exc:
        raise ApiError(400, str(exc), param=param) from None


class Tokenization(NamedTuple):
    """How a request's texts are tokenized: with the tokenizer's special tokens or not, and in
    which retrieval side (``None``: as they are). Part of an embedding cache key."""

    add_special_tokens: bool = True
    side: str | None = None


async def run_task(
    call: Call | Request,
    st: ModelState,
    llm: LLM,
    task_name: str,
    raw: list[Any],
    params: PoolingParams,
    prompt_name: str | None = None,
    add_special_tokens: bool = True,
    number_bytes: float = JSON_NUMBER_BYTES,
    check: Callable[[Any], None] | None = None,
    side: str | None = None,
) -> tuple[Any, Results]:
    """Prepare ``raw`` prompts for ``task_name`` with the LLM's checks, then run them on the batcher.

    The LLM decides everything about the request (the task's support and parameters, the
    truncation, the token estimate); this only bounds the estimate by the server's limits: the
    tokens (``--max-request-tokens``) and the response (``--max-response-bytes``, with
    ``number_bytes`` bytes per number of the route's encoding), estimated before the work and
    counted again after it. With an embedding cache (``--cache-size``), inputs it holds are not
    run again. ``add_special_tokens=False`` marks the text prompts to be tokenized without special
    tokens (:attr:`poolkit.contracts.io.Prompt.add_special_tokens`); ``side`` encodes the
    texts as the model's queries or documents (:meth:`poolkit.inputs.Renderer.render`).

    Prompts with media (:class:`~poolkit.contracts.io.Prompt` objects), and any request with a
    ``check`` (which sees the prepared prompts before they run), are prepared on the worker thread,
    where decoding and pre-processing the media is work: checked against the token and response
    limits once their token counts are known, and run (never cached).

    Returns:
        The task and, per input, its result tensor and prompt token ids.
    """
    check_truncation(llm, params.truncate_prompt_tokens)
    tokenization = Tokenization(add_special_tokens, side)
    if check is None and not any(isinstance(p, Prompt) for p in raw):
        task, prompts, checked, tokens = _prepared(st, llm, task_name, raw, params, prompt_name, tokenization, number_bytes)
        results = await _cached(call, st, llm, task, raw, prompts, checked, tokens, params, prompt_name, tokenization)
    else:
        guess = guess_tokens(raw)
        check_tokens(st, guess)

        def work() -> tuple[Any, Results]:
            task, prompts, checked, _ = _prepared(st, llm, task_name, raw, params, prompt_name, tokenization, number_bytes)
            if check is not None:
                check(prompts)
            return task, llm.run(task, list(prompts), checked)

        task, results = await until_done(call, st, st.batcher.call(work, guess))
        st.metrics.answered(len(results), results.num_tokens)
    check_response(st, result_numbers(task, llm.model, results), number_bytes, estimated=False)
    return task, results


def _prepared(
    st: ModelState, llm: LLM, task_name: str, raw: list[Any], params: PoolingParams, prompt_name: str | None,
    tokenization: Tokenization, number_bytes: float,
) -> tuple[Any, Any, list[PoolingParams], int]:
    """The request prepared by the LLM (task, prompts, checked parameters) and its token estimate,
    held to the server's token and (estimated) response limits."""
    task, prompts, checked = _prepare(st, llm, task_name, raw, params, prompt_name, tokenization)
    tokens = llm.estimate_tokens(prompts, checked)
    check_tokens(st, tokens)
    expected = expected_numbers(task, llm.model, len(raw), tokens)
    if expected is not None:
        check_response(st, expected, number_bytes, estimated=True)
    return task, prompts, checked, tokens


def _prepare(
    st: ModelState, llm: LLM, task_name: str, raw: list[Any], params: PoolingParams, prompt_name: str | None,
    tokenization: Tokenization,
) -> tuple[Any, Any, list[PoolingParams]]:
    """A request's inputs through the renderer's door (:meth:`LLM.render`) with the served model's
    adapter, texts tokenized without special tokens and in a retrieval side where the request says so."""
    return llm.render(PoolRequest(
        raw, task=task_name, params=params, prompt_name=prompt_name, side=tokenization.side,
        add_special_tokens=None if tokenization.add_special_tokens else False, lora_request=st.lora,
    ))


async def _cached(
    call: Call | Request, st: ModelState, llm: LLM, task: Any, raw: list[Any], prompts: Any, checked: Any, tokens: int,
    params: PoolingParams, prompt_name: str | None, tokenization: Tokenization,
) -> Results:
    """The results of prepared prompts: from the embedding cache where it holds them, the rest run."""
    cache = st.cache
    adapter = st.llm.model.adapters.identity(st.lora) if st.lora is not None else None
    keys = cache.keys(task.name, params, prompt_name, tokenization, raw, adapter) if cache is not None else None
    if keys is None:
        return await _run(call, st, task, prompts, checked, tokens)
    entries: list[Any] = [cache.get(key) for key in keys]
    missing = [i for i, entry in enumerate(entries) if entry is None]
    st.metrics.cached(len(raw) - len(missing), len(missing))
    if missing:
        if len(missing) < len(raw):
            _, prompts, checked = _prepare(st, llm, task.name, [raw[i] for i in missing], params, prompt_name, tokenization)
            tokens = llm.estimate_tokens(prompts, checked)
        try:
            ran = await _run(call, st, task, prompts, checked, tokens)
        except InputTooLong as exc:  # the run held only the inputs the cache did not: name the request's own
            raise exc.at(missing[exc.index]) from None
        for i, (tensor, ids), cut in zip(missing, ran, ran.truncated.tolist()):
            entries[i] = (packed(tensor), ids, cut)
            cache.put(keys[i], entries[i])
    tensors = [unpacked(tensor) for tensor, _, _ in entries]
    same = all(t.shape == tensors[0].shape and t.dtype == tensors[0].dtype for t in tensors)
    data = torch.stack(tensors) if same else tensors
    return Results(data, [ids for _, ids, _ in entries], np.array([cut for _, _, cut in entries], dtype=bool))


async def _run(call: Call | Request, st: ModelState, task: Any, prompts: Any, checked: Any, tokens: int) -> Results:
    """Run prepared prompts of about ``tokens`` tokens on the batcher."""
    results = await until_done(call, st, st.batcher.submit(task, prompts, checked, tokens))
    st.metrics.answered(len(results), results.num_tokens)
    return results
