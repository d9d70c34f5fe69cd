"""vLLM's LoRA routes: ``POST /v1/load_lora_adapter`` and ``/v1/unload_lora_adapter``.

As in vLLM, they change the served adapters only where the operator allowed it with
``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` (or ``POOLKIT_ALLOW_RUNTIME_LORA_UPDATING``); otherwise
they answer 404. Like every other inference route they need the API key when the server has one.
A loaded adapter serves under its name on the model the request chose (the first by default), as
one of ``--lora-modules`` does (docs/lora.md).
"""

from __future__ import annotations

import asyncio
import itertools
import os
from typing import Any, Optional

from fastapi import Request
from fastapi.responses import PlainTextResponse, Response
from pydantic import StrictBool, StrictInt, StrictStr

from ...contracts.errors import InvalidRequest
from ...lora.manager import enabled
from ...lora.request import LoRARequest
from ..protocol import BaseRequest
from ..serving.errors import ApiError
from ..serving.work import until_done
from .deps import Model, State
from .endpoints import Endpoints

ENDPOINTS = Endpoints()
#: The switches that allow loading and unloading adapters at run time (vLLM's, and poolkit's own).
RUNTIME_UPDATES = ("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "POOLKIT_ALLOW_RUNTIME_LORA_UPDATING")
#: Ids of adapters loaded at run time, above any ``--lora-modules`` gives.
_IDS = itertools.count(1_000_000)


class LoadLoRAAdapterRequest(BaseRequest):
    """``POST /v1/load_lora_adapter`` (vLLM)."""

    lora_name: Optional[StrictStr] = None
    lora_path: Optional[StrictStr] = None
    load_inplace: StrictBool = False


class UnloadLoRAAdapterRequest(BaseRequest):
    """``POST /v1/unload_lora_adapter`` (vLLM)."""

    lora_name: Optional[StrictStr] = None
    lora_int_id: Optional[StrictInt] = None


def _allowed() -> None:
    if not any(os.environ.get(name, "").strip().lower() in ("1", "true") for name in RUNTIME_UPDATES):
        raise ApiError(404, "Not Found: loading LoRA adapters at run time is off (set VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)")


@ENDPOINTS.post("/v1/load_lora_adapter", "Serve a LoRA adapter under its name (vLLM's; VLLM_ALLOW_RUNTIME_LORA_UPDATING).")
async def load_lora_adapter(body: LoadLoRAAdapterRequest, request: Request, st: State, llm: Model) -> Response:
    _allowed()
    if not body.lora_name or not body.lora_path:
        raise ApiError(400, "Both 'lora_name' and 'lora_path' must be provided.", param="lora_name")
    server = st.server
    async with _updating(server):
        old = server.adapters.get(body.lora_name)
        if old is not None and not body.load_inplace:
            raise ApiError(400, f"The lora adapter '{body.lora_name}' has already been loaded.", param="lora_name")
        base = getattr(st, "base", st)
        lora = LoRARequest(body.lora_name, next(_IDS), body.lora_path, base_model_name=base.served)
        try:
            if old is not None:  # load_inplace: the new files are read and checked before the old adapter goes
                enabled(old.base.llm.model.adapters, lora).validate(lora)
                await _unload(request, server, body.lora_name)
            try:
                server.add_adapter(lora).check()
            except BaseException:
                server.adapters.pop(body.lora_name, None)  # nothing of a refused adapter stays
                raise
        except InvalidRequest as exc:
            raise ApiError(exc.status, str(exc), param="lora_path") from None
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")


@ENDPOINTS.post("/v1/unload_lora_adapter", "Stop serving a LoRA adapter (vLLM's; VLLM_ALLOW_RUNTIME_LORA_UPDATING).")
async def unload_lora_adapter(body: UnloadLoRAAdapterRequest, request: Request, st: State, llm: Model) -> Response:
    _allowed()
    if not body.lora_name:
        raise ApiError(400, "'lora_name' needs to be provided to unload a LoRA adapter.", param="lora_name")
    async with _updating(st.server):
        if body.lora_name not in st.server.adapters:
            raise ApiError(404, f"The lora adapter '{body.lora_name}' cannot be found.", param="lora_name")
        await _unload(request, st.server, body.lora_name)
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")


def _updating(server: Any) -> asyncio.Lock:
    """The lock every change of the served adapters holds: loads, unloads and in-place reloads of
    any name run one at a time, each from start to end, so that the adapters afterwards are
    what one of the requests left, never a mix of two."""
    if server.lora_updates is None:
        server.lora_updates = asyncio.Lock()
    return server.lora_updates


async def _unload(request: Request, server: Any, name: str) -> None:
    """Stop serving ``name`` now, and unload it on the base model's batcher thread, between its
    batches (a batch running with it finishes with it); the results its load computed leave the
    embedding cache (the prefix states leave with the unload, :attr:`Adapters.forgotten`)."""
    adapter = server.adapters.pop(name)
    adapters = adapter.base.llm.model.adapters
    if adapters is not None:
        identity = adapters.identity(adapter.lora)
        await until_done(request, adapter.base, adapter.base.batcher.call(lambda: adapters.remove(name), 0))
        if adapter.base.cache is not None:
            adapter.base.cache.drop_adapter(identity)
