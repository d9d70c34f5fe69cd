"""TEI's compute times (:mod:`poolkit.entrypoints.serving.compute_times`): the batcher stamps the
phases of a timed request's work in order, on one thread and in the pipeline of a device, and no
other work; the phases are the mean over a request's inputs, as TEI's; the headers are TEI's. The
routes' headers and the gRPC ``Metadata`` on both wires: test_grpc.py."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from poolkit.entrypoints.serving.compute_times import ComputeTimes, characters
from poolkit.runtime.batching import TIMED_WORK, Batcher, WorkTimes
from waits import until_async


@pytest.fixture(params=["cpu", "device"])
def llm(request, minilm):
    """``minilm`` as it is (one thread tokenizes and runs) and on a stand-in device (a pipeline)."""
    if request.param == "cpu":
        yield minilm
        return
    from poolkit.runtime.standin import attach

    attach(minilm, 1e8)
    yield minilm
    minilm.engine.standin = None


def test_the_batcher_stamps_a_timed_requests_phases_in_order_and_no_other_work(llm):
    """The batcher held (a call on its device step), a timed and an untimed request queued behind it:
    only the timed request's work gets times; it is taken and tokenized after the hold ends on one
    thread, while the device is held in a pipeline, and run after the hold ends either way."""
    batcher = Batcher(llm, max_batch_tokens=100_000)
    gate, works = threading.Event(), []

    async def main() -> int:
        held = asyncio.ensure_future(batcher.call(lambda: gate.wait(120), cost=1))
        await until_async(lambda: batcher.stats.requests and not batcher.queue_depth, "the hold taken")
        task, prompts, params = llm.prepare(["timed", "timed too"], pooling_task="embed")
        reset = TIMED_WORK.set(works)
        timed = asyncio.ensure_future(batcher.submit(task, prompts, params))  # the task holds a copy of the context
        TIMED_WORK.reset(reset)
        _, others, other_params = llm.prepare(["not timed"], pooling_task="embed")
        untimed = asyncio.ensure_future(batcher.submit(task, others, other_params))
        await until_async(lambda: batcher.stats.requests == 3, "both requests queued")
        if batcher.pipelined:  # the worker takes and tokenizes the next batch while the device is held
            await until_async(lambda: works[0].tokenized, "the timed work tokenized")
        released = time.time_ns()
        gate.set()
        await asyncio.gather(held, timed, untimed)
        return released

    released = asyncio.run(main())
    (work,) = works  # the untimed request's work was given no times
    assert (work.inputs, work.task) == (2, "embed")
    if batcher.pipelined:
        assert work.queued <= work.taken <= work.tokenized < released <= work.ran
    else:  # both waited for the one thread: merged into one batch, tokenized and run in turn
        assert work.batch_inputs == 3
        assert work.queued < released <= work.taken <= work.tokenized <= work.ran
    assert batcher.drain(5)


def test_the_phases_are_the_mean_over_the_inputs_of_the_work_that_ran():
    times = ComputeTimes()
    times.works = [
        WorkTimes(queued=100, inputs=1, taken=300, tokenized=400, ran=1400),
        WorkTimes(queued=100, inputs=3, taken=500, tokenized=0, ran=2500),  # tokenized inside its run
        WorkTimes(queued=100, inputs=0, taken=200, ran=600),  # a whole call (a reranker's): counted once
        WorkTimes(queued=100, inputs=5, taken=0),  # not run (its client left)
    ]
    # tokenization (100 + 0 + 0) / 5, queue (200 + 3 * 400 + 100) / 5, inference (1000 + 3 * 2000 + 400) / 5
    assert times.phases() == (20, 300, 1480)
    assert ComputeTimes().phases() == (0, 0, 0)  # nothing ran: an answer from the cache


def test_the_headers_are_teis_in_whole_milliseconds():
    times = ComputeTimes()
    times.start -= 7_600_000  # begun 7.6 ms ago
    times.works = [WorkTimes(queued=0, inputs=1, taken=2_999_999, tokenized=4_000_000, ran=6_500_000)]
    headers = times.headers(12, 5, "cpu")
    total = int(headers.pop("x-total-time"))
    assert total >= 7 and headers.pop("x-compute-time") == str(total)
    assert headers == {
        "x-compute-type": "cpu", "x-compute-characters": "12", "x-compute-tokens": "5",
        "x-tokenization-time": "1", "x-queue-time": "2", "x-inference-time": "2",
    }
    assert times.headers(1, 1, "cuda")["x-compute-type"] == "gpu+optimized"  # TEI's word on a GPU


def test_inside_a_traced_request_the_tracings_list_is_read():
    traced: list[WorkTimes] = []
    reset = TIMED_WORK.set(traced)
    try:
        with ComputeTimes() as times:
            assert TIMED_WORK.get() is traced and times.works is traced
        assert TIMED_WORK.get() is traced
    finally:
        TIMED_WORK.reset(reset)
    with ComputeTimes() as times:
        assert TIMED_WORK.get() is times.works
    assert TIMED_WORK.get() is None


def test_the_characters_are_teis():
    assert characters("ünïcödé ✓") == 9  # characters, not bytes
    assert characters(["ab", "cde"]) == 5 and characters([["ab", "c"], ["d", ""]]) == 4  # pairs: both sides
    assert characters([101, 2023, 102]) == 3 and characters([[101, 102], "abc"]) == 5  # token ids: one an id
