"""A CPU stand-in for an accelerator: a device that runs each batch in a fixed time per token
while the host goes on, as a GPU does, so the host/device overlap can be tested and measured on
a machine without one.

On a GPU the engine queues a batch and returns at once; the host waits only when it reads the
results back (:func:`poolkit.runtime.columns.to_host`), and meanwhile tokenizes the next slice of
prompts on a worker thread (:meth:`poolkit.runtime.engine.Engine.slices`) and packs the next
batch. Whether that keeps the device busy depends on the host alone, which is what the stand-in
isolates: the model still computes its outputs on the CPU (a tiny model costs next to nothing),
and the device time is a clock. Each batch is queued behind the previous one and is ready
``tokens / rate`` seconds after the device is free; reading its results back sleeps until then,
without holding the GIL (``time.sleep``), as waiting on a CUDA event does. The stand-in's own
device-bound rate is ``rate`` tokens per second: offline and served throughput are measured
against it (``poolkit bench-standin``).

``POOLKIT_STANDIN_TOKENS_PER_S=<rate>`` gives every engine made in the process a stand-in device
(``poolkit serve``, ``poolkit embed`` and the API alike); :func:`attach` gives one to a loaded
``LLM``. The engine then treats the model as on an accelerator: prompts are tokenized in slices
overlapping the device's work, and batches are queued ahead of their results.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..config.environment import env_number
from ..contracts.errors import InvalidRequest
from ..contracts.serving import EngineOwner

#: The environment variable that gives each engine a stand-in device of this many tokens per second.
ENV = "POOLKIT_STANDIN_TOKENS_PER_S"


@dataclass
class StandInDevice:
    """The device clock: batches run one after another at ``rate`` tokens per second.

    ``log`` keeps ``(launched, ready)`` perf-counter times of each batch when ``keep_log`` is
    set (tests read the overlap from it).
    """

    rate: float
    keep_log: bool = False
    busy_seconds: float = 0.0
    log: list[tuple[float, float]] = field(default_factory=list)
    _free_at: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if not self.rate > 0:
            raise InvalidRequest(f"a stand-in device needs a positive rate in tokens per second, got {self.rate}")

    def launch(self, tokens: int, since: float | None = None) -> float:
        """Queue a batch of ``tokens`` whose work the host began queuing at ``since`` (a
        perf-counter time; default now): as on a GPU, whose first kernels run while the host still
        queues the rest, the device starts on it then, or when it is free. Returns the time its
        results are ready."""
        cost = tokens / self.rate
        with self._lock:
            now = time.perf_counter() if since is None else since
            ready = max(now, self._free_at) + cost
            self._free_at = ready
            self.busy_seconds += cost
            if self.keep_log:
                self.log.append((now, ready))
        return ready

    def delayed(self, fetch: Callable[[], Any], ready: float) -> Callable[[], Any]:
        """``fetch`` that first waits, without the GIL, until ``ready``."""

        def wait_then_fetch() -> Any:
            left = ready - time.perf_counter()
            if left > 0:
                time.sleep(left)
            return fetch()

        return wait_then_fetch


def from_environment() -> StandInDevice | None:
    """The stand-in device :data:`ENV` asks for, or ``None``.

    Raises:
        InvalidRequest: the variable is set but not a positive number.
    """
    rate = env_number(ENV, None, "a number of tokens per second", positive=False)
    return None if rate is None else StandInDevice(rate)


def attach(llm: EngineOwner, rate: float, keep_log: bool = False) -> StandInDevice:
    """Give a loaded ``LLM``'s engine a stand-in device of ``rate`` tokens per second; returns it."""
    device = StandInDevice(rate, keep_log)
    llm.engine.standin = device
    return device
