"""A request in flight, as the serving layer sees it: whether its client is still there."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

#: The ASGI scope key of a future the server's HTTP front sets when the client goes away
#: (:mod:`poolkit.entrypoints.server.front`).
DISCONNECTED = "poolkit.disconnected"


class Call:
    """One request or RPC while its work runs. Work still queued for a call whose client is gone
    (an HTTP client that disconnected, a gRPC call cancelled or past its deadline) is dropped
    (:func:`poolkit.entrypoints.serving.work.until_done`).

    Args:
        gone: a future set when the client goes away.
        receive: instead, an ASGI ``receive`` to watch for ``http.disconnect`` while work waits (an
            HTTP server other than poolkit's front, such as the tests' in-process client).
    """

    __slots__ = ("gone", "receive")

    def __init__(self, gone: asyncio.Future | None = None, receive: Callable[[], Awaitable[dict]] | None = None) -> None:
        self.gone = gone
        self.receive = receive

    @classmethod
    def of(cls, request: Any) -> "Call":
        """The call of an HTTP request (a Starlette ``Request``), or ``request`` itself if it is one."""
        if isinstance(request, Call):
            return request
        gone = request.scope.get(DISCONNECTED)
        return cls(gone) if gone is not None else cls(receive=request.receive)

    @classmethod
    def of_rpc(cls, context: Any) -> "Call":
        """The call of a gRPC method (its ``grpc.aio.ServicerContext``): gone when the RPC ends."""
        gone = asyncio.get_running_loop().create_future()

        def ended(_: Any) -> None:
            if not gone.done():
                gone.set_result(None)

        context.add_done_callback(ended)
        return cls(gone)

    def watch(self) -> tuple[asyncio.Future, asyncio.Future | None]:
        """What to await for the client going away, and the watcher task to cancel afterwards (if any)."""
        if self.gone is not None:
            return self.gone, None
        watcher = asyncio.ensure_future(_until_disconnect(self.receive))
        return watcher, watcher


async def _until_disconnect(receive: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        await asyncio.sleep(0.01)
