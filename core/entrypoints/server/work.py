"""Admitting and running a request's work: the token limit, the batcher, client disconnects.

The event loop only validates; tokenizing and running the model happen on the batcher's worker
thread. A client that goes away while its work waits cancels it before it runs.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable

import numpy as np
import torch
from fastapi import Request

from ...contracts.errors import InvalidRequest
from ...contracts.params import PoolingParams
from ...runtime.columns import Results
from .errors import ApiError, ClientGone
from .state import ModelState

#: The ASGI scope key of a future the server's HTTP front sets when the client goes away
#: (:mod:`poolkit.entrypoints.server.front`): awaited instead of watching ``receive`` for a disconnect.
DISCONNECTED = "poolkit.disconnected"


async def _until_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
        await asyncio.sleep(0.01)


async def until_done(request: Request, st: ModelState, awaitable: Awaitable[Any]) -> Any:
    """Await work for a request; if the client disconnects first, cancel it (dropping queued work).

    Raises:
        ClientGone: the client went away (counted in ``poolkit_client_disconnects_total``).
    """
    work = asyncio.ensure_future(awaitable)
    gone = request.scope.get(DISCONNECTED)
    watcher = asyncio.ensure_future(_until_disconnect(request)) if gone is None else None
    left = gone if watcher is None else watcher
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


def check_truncation(llm: Any, truncate: int | None, param: str = "truncate_prompt_tokens") -> None:
    """The LLM's truncation check, run before its other checks, with the request field at fault."""
    try:
        llm.check_truncation(truncate)
    except InvalidRequest as exc:
        raise ApiError(400, str(exc), param=param) from None


async def run_task(
    request: Request,
    st: ModelState,
    llm: Any,
    task_name: str,
    raw: list[Any],
    params: PoolingParams,
    prompt_name: str | None = None,
    add_special_tokens: bool = True,
) -> tuple[Any, Results]:
    """Prepare ``raw`` prompts for ``task_name`` with the LLM's checks, then run them on the batcher.

    The LLM decides everything about the request (the task's support and parameters, the
    truncation, the token estimate); this only bounds the estimate by the server's limit. With
    an embedding cache (``--cache-size``), inputs it holds are not run again.
    ``add_special_tokens=False`` marks the text prompts to be tokenized without special tokens
    (:attr:`poolkit.contracts.io.Prompt.add_special_tokens`).

    Returns:
        The task and, per input, its result tensor and prompt token ids.
    """
    check_truncation(llm, params.truncate_prompt_tokens)
    task, prompts, checked = llm.prepare(raw, params, pooling_task=task_name, prompt_name=prompt_name)
    cache = st.cache
    keys = cache.keys(task.name, params, prompt_name, add_special_tokens, raw) if cache is not None else None
    if keys is None:
        return task, await _run(request, st, llm, task, prompts, checked, add_special_tokens)
    entries: list[Any] = [cache.get(key) for key in keys]
    missing = [i for i, entry in enumerate(entries) if entry is None]
    st.metrics.cached(len(raw) - len(missing), len(missing))
    if missing:
        if len(missing) < len(raw):
            _, prompts, checked = llm.prepare([raw[i] for i in missing], params, pooling_task=task_name, prompt_name=prompt_name)
        ran = await _run(request, st, llm, task, prompts, checked, add_special_tokens)
        for i, (tensor, ids), cut in zip(missing, ran, ran.truncated.tolist()):
            entries[i] = (tensor.clone(), ids, cut)
            cache.put(keys[i], entries[i])
    tensors = [tensor for tensor, _, _ in entries]
    same = all(t.shape == tensors[0].shape and t.dtype == tensors[0].dtype for t in tensors)
    data = torch.stack(tensors) if same else tensors
    return task, Results(data, [ids for _, ids, _ in entries], np.array([cut for _, _, cut in entries], dtype=bool))


async def _run(
    request: Request, st: ModelState, llm: Any, task: Any, prompts: Any, checked: PoolingParams, add_special_tokens: bool
) -> Results:
    """Run prepared prompts on the batcher, within the server's token limit."""
    if not add_special_tokens:
        prompts.set_add_special_tokens(False)
    tokens = llm.estimate_tokens(prompts, checked)
    check_tokens(st, tokens)
    results = await until_done(request, st, st.batcher.submit(task, prompts, checked, tokens))
    st.metrics.answered(len(results), results.num_tokens)
    return results
