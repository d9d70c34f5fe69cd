"""The server's one admission limit (``--max-concurrent-requests``), shared by every door.

An HTTP request, a unary gRPC call and each message of a gRPC stream hold one slot while their work
runs. HTTP requests and unary calls are refused when every slot is taken (429, ``ResourceExhausted``);
a stream's message waits for a slot instead, since refusing it would end the whole stream. So that
waiting streams cannot crowd out the requests that are refused, stream messages together hold at
most :func:`stream_share` of the slots, and each stream at most :data:`STREAM_WINDOW` messages
that are not yet answered and read (in flight, or answered and waiting for the client to read:
a client that stops reading stops the stream being taken from).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

#: Messages of one stream taken and not yet sent to its client: in the batcher, or answered and
#: waiting for the client to read the answers before them.
STREAM_WINDOW = 32


def stream_share(limit: int) -> int:
    """The slots stream messages may hold together out of ``limit``: half, at least one."""
    return max(1, limit // 2)


class Admission:
    """Counts the work in flight against the server's limit.

    Attributes:
        in_flight: requests, unary calls and stream messages holding a slot.
        streamed: the stream messages among them.
    """

    def __init__(self, state: Any) -> None:  # the ServerState (which holds this)
        self._state = state
        self.in_flight = 0
        self.streamed = 0
        self._waiting: deque[asyncio.Future] = deque()

    @property
    def limit(self) -> int:
        return self._state.limits.max_concurrent_requests

    def try_admit(self) -> bool:
        """Take a slot for a request or a unary call: ``False`` (counted as rejected) when none is free."""
        if self.in_flight >= self.limit:
            self._state.metrics.rejected.inc()
            return False
        self.in_flight += 1
        return True

    async def admit_message(self) -> None:
        """Take a slot for a stream's message, waiting (in arrival order) until one is free within the
        streams' share."""
        while self._waiting or not self._room():
            waiter = asyncio.get_running_loop().create_future()
            self._waiting.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                self._wake()  # a wake-up this waiter took is passed on
                raise
            finally:
                if waiter in self._waiting:
                    self._waiting.remove(waiter)
            if self._room():
                break
        self.in_flight += 1
        self.streamed += 1
        self._wake()  # room may remain for the next waiter

    def release(self, streamed: bool = False) -> None:
        """Give a slot back (from the event loop's thread)."""
        self.in_flight -= 1
        if streamed:
            self.streamed -= 1
        self._state.metrics.fold()
        self._wake()

    def _room(self) -> bool:
        return self.in_flight < self.limit and self.streamed < stream_share(self.limit)

    def _wake(self) -> None:
        while self._waiting:
            waiter = self._waiting[0]
            if not waiter.done():
                if self._room():
                    waiter.set_result(None)
                return
            self._waiting.popleft()
