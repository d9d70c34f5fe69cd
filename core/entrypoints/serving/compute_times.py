"""What TEI tells a client about the work its request took: the characters and tokens computed and
the time of each phase, in its HTTP routes' ``x-compute-*`` and ``x-*-time`` headers (milliseconds)
and its gRPC answers' ``Metadata`` (nanoseconds), as TEI's ``router/src/lib.rs`` writes them.

The batcher stamps the work of a request measured here with the times of its phases
(:data:`~poolkit.runtime.batching.TIMED_WORK`, the list a traced request's work goes to as well).
TEI tokenizes a request before queueing it; poolkit tokenizes a merged batch when the batcher takes
it. So the queue time is from queued to taken, the tokenization time from taken to tokenized, and
the inference time from tokenized (taken, for work that tokenizes inside its run) to its results.
Each phase is the mean over the request's inputs, as TEI's; the total is the request's own time.
"""

from __future__ import annotations

import contextvars
import time
from typing import Any

from ...runtime.batching import TIMED_WORK, WorkTimes


def characters(inputs: Any) -> int:
    """The characters a TEI request computes (its ``compute_chars``): a text's characters, a pair's
    both, a list of token ids its length (TEI counts one an id), summed over a batch."""
    if isinstance(inputs, str):
        return len(inputs)
    if isinstance(inputs, int):
        return 1
    if isinstance(inputs, (list, tuple)):
        return sum(characters(item) for item in inputs)
    return 0


#: TEI's word for an accelerator's work (its ``x-compute-type``; poolkit says ``cpu`` on a CPU).
_ACCELERATED = "gpu+optimized"
#: poolkit's ``x-compute-type`` of an answer no work computed: every input came from the embedding
#: cache (``--cache-size``), so the phases are 0 and the total is the request's own time. The times
#: of the work that once computed them are not told to another client.
CACHED = "cache"


class ComputeTimes:
    """The phases of one request's work, while the request runs inside ``with ComputeTimes() as times``.

    Inside a traced request the tracing's list of its work is read; else the request's work is
    stamped for this alone.
    """

    def __init__(self) -> None:
        self.start = time.time_ns()
        self.works: list[WorkTimes] = []
        self._reset: contextvars.Token | None = None

    def __enter__(self) -> ComputeTimes:
        held = TIMED_WORK.get()
        if held is None:
            self._reset = TIMED_WORK.set(self.works)
        else:
            self.works = held
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._reset is not None:
            TIMED_WORK.reset(self._reset)
            self._reset = None

    def phases(self) -> tuple[int, int, int]:
        """The tokenization, queue and inference nanoseconds, each the mean over the inputs of the
        work that ran (0 each when nothing ran: a cached answer, a refusal)."""
        inputs = tokenization = queued = inference = 0
        for work in self.works:
            if not work.ran:
                continue
            n = max(work.inputs, 1)  # a whole call (a reranker's pairs) counts once
            began = work.tokenized or work.taken
            tokenization += n * (began - work.taken)
            queued += n * (work.taken - work.queued)
            inference += n * (work.ran - began)
            inputs += n
        if not inputs:
            return 0, 0, 0
        return tokenization // inputs, queued // inputs, inference // inputs

    def total(self) -> int:
        """Nanoseconds since the request began."""
        return time.time_ns() - self.start

    def headers(self, chars: int, tokens: int, device: str) -> dict[str, str]:
        """TEI's response headers (:func:`headers`) of this request: ``x-compute-type`` is
        :data:`CACHED` where no work ran for it (every input answered from ``--cache-size``'s cache)."""
        return headers(chars, tokens, device if any(w.ran for w in self.works) else CACHED, self.total(), *self.phases())

    def metadata(self, pb: Any, chars: int, tokens: int) -> Any:
        """TEI's gRPC ``Metadata`` (of ``pb``, the generated ``tei.v1`` messages) with these times."""
        tokenization, queued, inference = self.phases()
        return pb.Metadata(
            compute_chars=chars, compute_tokens=tokens, total_time_ns=self.total(), tokenization_time_ns=tokenization,
            queue_time_ns=queued, inference_time_ns=inference,
        )


def headers(chars: int, tokens: int, device: str, total: int, tokenization: int, queued: int, inference: int) -> dict[str, str]:
    """TEI's response headers: ``x-compute-type`` (``cpu``, else TEI's ``gpu+optimized``), the
    characters and tokens computed, and the times (given in nanoseconds) in whole milliseconds; its
    HTTP routes send them as headers, its unary RPCs as the answer's initial metadata."""
    ms = str(total // 1_000_000)
    return {
        "x-compute-type": device if device in ("cpu", CACHED) else _ACCELERATED, "x-compute-time": ms,
        "x-compute-characters": str(chars), "x-compute-tokens": str(tokens), "x-total-time": ms,
        "x-tokenization-time": str(tokenization // 1_000_000), "x-queue-time": str(queued // 1_000_000),
        "x-inference-time": str(inference // 1_000_000),
    }


def metadata_headers(metadata: Any, device: str) -> dict[str, str]:
    """:func:`headers` of a TEI gRPC answer's ``Metadata`` (:data:`CACHED` where no phase took time:
    no work ran)."""
    ran = metadata.tokenization_time_ns or metadata.queue_time_ns or metadata.inference_time_ns
    return headers(metadata.compute_chars, metadata.compute_tokens, device if ran else CACHED, metadata.total_time_ns,
                   metadata.tokenization_time_ns, metadata.queue_time_ns, metadata.inference_time_ns)
