"""The server's dynamic batcher: merging, results per request, cancellation, queue limits, draining."""

from __future__ import annotations

import asyncio
import queue
import threading
import time

import pytest
import torch

from poolkit.contracts.errors import InvalidRequest
from poolkit.runtime.batching import Batcher, QueueFull, ShuttingDown
from waits import until

TEXTS = ["Hello, my name is", "A man is eating food.", "The new movie is awesome.", "x " * 300]


def test_concurrent_requests_are_merged_and_answered_in_order(minilm):
    batcher = Batcher(minilm, max_batch_tokens=100_000)

    async def main():
        jobs = []
        for text in TEXTS:
            # the last text is longer than the model's limit: truncated on request, as vLLM wants
            task, prompts, params = minilm.prepare([text, text.upper()], {"truncate_prompt_tokens": -1}, pooling_task="embed")
            jobs.append(batcher.submit(task, prompts, params))
        return await asyncio.gather(*jobs)

    results = asyncio.run(main())
    assert batcher.stats.requests == 4 and batcher.stats.batches < 4  # merged
    for text, pair in zip(TEXTS, results):
        expected = minilm.embed([text, text.upper()], tokenization_kwargs={"truncate_prompt_tokens": -1})
        for (vector, ids), out in zip(pair, expected):
            assert ids == out.prompt_token_ids
            assert torch.allclose(vector, torch.tensor(out.outputs.embedding), atol=1e-5)
    assert batcher.drain(5)


def test_a_bad_request_does_not_fail_its_batch_mates(minilm):
    batcher = Batcher(minilm)

    async def main():
        task, good, good_params = minilm.prepare(["fine"], pooling_task="embed")
        _, bad, bad_params = minilm.prepare([{"prompt_token_ids": [1, 2]}], pooling_task="embed")
        bad[0].token_ids = [10**9]  # outside the vocabulary, found only when the engine runs
        return await asyncio.gather(
            batcher.submit(task, good, good_params), batcher.submit(task, bad, bad_params), return_exceptions=True
        )

    ok, failed = asyncio.run(main())
    assert len(ok) == 1 and isinstance(failed, InvalidRequest)
    batcher.drain(5)


def test_cancelled_work_is_dropped_and_full_queues_refuse(minilm):
    batcher = Batcher(minilm, max_queue_tokens=50)

    async def main():
        gate = asyncio.Event()

        def slow():
            import time

            time.sleep(0.3)
            return "done"

        first = asyncio.ensure_future(batcher.call(slow, cost=1))
        await asyncio.sleep(0.05)
        task, prompts, params = minilm.prepare(["queued"], pooling_task="embed")
        waiting = asyncio.ensure_future(batcher.submit(task, prompts, params))
        await asyncio.sleep(0.01)
        _, big, big_params = minilm.prepare(["y " * 400], pooling_task="embed")
        with pytest.raises(QueueFull):
            await batcher.submit(task, big, big_params)
        waiting.cancel()
        gate.set()
        assert await first == "done"
        with pytest.raises(asyncio.CancelledError):
            await waiting

    asyncio.run(main())
    assert batcher.stats.cancelled == 1 and batcher.stats.rejected == 1
    assert batcher.drain(5)

    async def after():
        task, prompts, params = minilm.prepare(["late"], pooling_task="embed")
        await batcher.submit(task, prompts, params)

    with pytest.raises(ShuttingDown):
        asyncio.run(after())



async def _submit_one_by_one(batcher, llm, texts):
    for text in texts:
        task, prompts, params = llm.prepare([text], pooling_task="embed")
        await batcher.submit(task, prompts, params)


def test_freed_memory_is_handed_back_between_batches(minilm, monkeypatch):
    """glibc keeps freed blocks, fragmented across threads' arenas, and does not return them: a
    server's memory crept up under a steady load (poolkit bench-serve: +23% in five minutes). The
    worker hands freed memory back (malloc_trim) after a batch, at most once per TRIM_INTERVAL."""
    import poolkit.runtime.batching as batching

    calls = []
    monkeypatch.setattr(batching, "release_freed_memory", lambda: calls.append(0))
    monkeypatch.setattr(batching, "TRIM_INTERVAL", 0.0)
    batcher = Batcher(minilm)
    asyncio.run(_submit_one_by_one(batcher, minilm, TEXTS[:3]))
    assert batcher.drain(5)
    assert len(calls) >= 3 and set(calls) == {0}

    calls.clear()
    monkeypatch.setattr(batching, "TRIM_INTERVAL", 3600.0)
    quiet = Batcher(minilm)
    asyncio.run(_submit_one_by_one(quiet, minilm, TEXTS[:3]))
    assert quiet.drain(5) and calls == []


def test_the_token_estimates_share_one_rule():
    """Admission, batching, score limits and the engine's slices estimate a text's tokens alike."""
    from poolkit.contracts.io import Prompt
    from poolkit.runtime.estimates import CHARS_PER_TOKEN_GUESS, estimate_cost, estimate_pair_tokens, tokens_of_text

    text = "x" * 40
    assert tokens_of_text(len(text)) == 40 // CHARS_PER_TOKEN_GUESS and tokens_of_text(0) == 1
    assert estimate_cost(Prompt(text=text)) == tokens_of_text(len(text)) + 2  # and the special tokens
    assert estimate_cost(Prompt(text=text, text_pair=text)) == tokens_of_text(2 * len(text)) + 2
    assert estimate_cost(Prompt(token_ids=[1, 2, 3])) == 3
    assert estimate_pair_tokens([text], [text, text], None) == 2 * (2 * tokens_of_text(len(text)) + 3)
    assert estimate_pair_tokens([text], [text * 100], 64) == 64  # each pair cut at the limit


def test_a_failure_after_the_run_is_answered_and_the_worker_lives_on(minilm, monkeypatch):
    """Anything that goes wrong on the worker thread reaches the requests it took; the thread
    itself never dies and leaves later requests waiting forever."""
    batcher = Batcher(minilm)
    monkeypatch.setattr(minilm.engine, "run", lambda *args, **kwargs: object())  # no results object at all (the batcher runs the engine)

    async def one():
        task, prompts, params = minilm.prepare(["fine"], pooling_task="embed")
        return await asyncio.wait_for(batcher.submit(task, prompts, params), 120)  # a hang guard, not a duration

    with pytest.raises(AttributeError):
        asyncio.run(one())
    monkeypatch.undo()
    assert len(asyncio.run(one())) == 1
    assert batcher.drain(5)


def test_an_idle_batcher_hands_freed_memory_back_once(minilm, monkeypatch):
    """What the last answers freed (serialised after their batch) goes back once the worker has
    been idle TRIM_INTERVAL, not at the next batch: an idle server does not keep its busiest second
    (the soak's memory "before" and "end" are idle samples). Nothing ran since: no more trims."""
    import poolkit.runtime.batching as batching

    calls = []
    monkeypatch.setattr(batching, "release_freed_memory", lambda: calls.append(time.monotonic()))
    monkeypatch.setattr(batching, "TRIM_INTERVAL", 0.5)
    batcher = Batcher(minilm)
    asyncio.run(_submit_one_by_one(batcher, minilm, TEXTS[:1]))
    # One trim: the idle one TRIM_INTERVAL after the answer, or, where the batch itself ended
    # TRIM_INTERVAL after the worker started (a loaded machine), the one right after it.
    until(lambda: calls, "the idle trim")
    time.sleep(1.0)
    assert len(calls) == 1  # idle with nothing run since: the worker just waits, however long
    assert batcher.drain(5)


# -- the pipeline on an accelerator (here the CPU stand-in for one) -------------------------------


@pytest.fixture
def on_device(minilm):
    """``minilm`` with a stand-in device fast enough not to slow the tests: its batcher pipelines."""
    from poolkit.runtime.standin import attach

    attach(minilm, 1e8)
    yield minilm
    minilm.engine.standin = None


def test_on_a_device_the_next_batch_is_tokenized_while_the_last_runs(on_device, monkeypatch):
    """Two threads: the worker tokenizes a merged batch (Engine.staged) and hands it on; the
    device thread runs it and answers. Results are the one-thread batcher's."""
    cpu = Batcher(on_device, max_batch_tokens=100_000)
    assert cpu.pipelined
    threads = {}
    staged = on_device.engine.staged

    def recorded(*args):
        threads.setdefault("tokenized", set()).add(threading.current_thread().name)
        run = staged(*args)

        def running():
            threads.setdefault("ran", set()).add(threading.current_thread().name)
            return run()

        return running

    monkeypatch.setattr(on_device.engine, "staged", recorded)

    async def main():
        jobs = []
        for text in TEXTS:
            task, prompts, params = on_device.prepare([text, text.upper()], {"truncate_prompt_tokens": -1}, pooling_task="embed")
            jobs.append(cpu.submit(task, prompts, params))
        return await asyncio.gather(*jobs)

    results = asyncio.run(main())
    assert threads == {"tokenized": {"poolkit-batcher"}, "ran": {"poolkit-device"}}
    for text, pair in zip(TEXTS, results):
        expected = on_device.embed([text, text.upper()], tokenization_kwargs={"truncate_prompt_tokens": -1})
        for (vector, ids), out in zip(pair, expected):
            assert ids == out.prompt_token_ids and torch.allclose(vector, torch.tensor(out.outputs.embedding), atol=1e-5)
    assert cpu.drain(5)
    assert not cpu._thread.is_alive() and not cpu._device.is_alive()


def test_the_device_thread_queues_a_waiting_batch_before_answering_the_one_in_flight():
    """The pipeline's second step on its own, its work handed ahead: each merged batch waiting in
    the handoff is queued on the device behind the one in flight before that one is read back and
    answered, so the device never drains between merged batches while work waits; the last is
    answered once nothing waits. (The order is the code's, not the scheduler's: no thread races.)"""
    from poolkit.runtime.batching import _Staged

    events: list[tuple] = []

    class Launch:
        def __init__(self, k: int) -> None:
            self.k = k

        def launch(self, behind) -> None:
            events.append(("launch", self.k, None if behind is None else behind.k))

    batcher = Batcher.__new__(Batcher)  # its device loop alone, run on this thread
    batcher._handoff, batcher._cond, batcher._active = queue.Queue(), threading.Condition(), 3
    for k in range(3):
        batcher._handoff.put(_Staged([], lambda: None, Launch(k), lambda k=k: events.append(("answer", k))))
    batcher._handoff.put(None)
    batcher._device_loop()
    assert events == [("launch", 0, None), ("launch", 1, 0), ("answer", 0), ("launch", 2, 1), ("answer", 1), ("answer", 2)]
    assert batcher._active == 0


def test_on_a_device_merged_batches_run_in_turn_and_a_lone_request_is_answered(minilm):
    """Through the stand-in device, one request a merged batch: every batch runs, each request
    gets its own answer, and a lone request with nothing behind it is answered (how many batches
    overlapped depends on how the OS schedules the two threads, and is not asserted: the order
    that makes them overlap is the test above)."""
    from poolkit.runtime.standin import attach

    texts = [TEXTS[k % 3] for k in range(24)]  # the short ones
    expected = minilm.embed(texts, tokenization_kwargs={"truncate_prompt_tokens": -1})
    device = attach(minilm, 500, keep_log=True)  # 10-20 ms of device time a text, more than the CPU's own forward pass
    try:
        batcher = Batcher(minilm, max_batch_tokens=1)  # one request a merged batch

        async def load():
            jobs = []
            for text in texts:
                task, prompts, params = minilm.prepare([text], {"truncate_prompt_tokens": -1}, pooling_task="embed")
                jobs.append(batcher.submit(task, prompts, params))
            return await asyncio.gather(*jobs)

        results = asyncio.run(load())
        for ((vector, ids),), out in zip(results, expected):
            assert ids == out.prompt_token_ids and torch.allclose(vector, torch.tensor(out.outputs.embedding), atol=1e-5)
        assert batcher.stats.batches == 24 and len(device.log) >= 24

        async def alone():
            task, prompts, params = minilm.prepare(["just one"], pooling_task="embed")
            return await batcher.submit(task, prompts, params)

        assert len(asyncio.run(alone())) == 1
        assert batcher.drain(5)
    finally:
        minilm.engine.standin = None


def test_on_a_device_bad_requests_fail_alone_and_failures_reach_their_requests(on_device, monkeypatch):
    batcher = Batcher(on_device)

    async def mixed():
        task, good, good_params = on_device.prepare(["fine"], pooling_task="embed")
        _, bad, bad_params = on_device.prepare([{"prompt_token_ids": [1, 2]}], pooling_task="embed")
        bad[0].token_ids = [10**9]  # outside the vocabulary, found only when the engine runs
        _, long, long_params = on_device.prepare(["y " * 400], pooling_task="embed")  # refused by the tokenizing step
        return await asyncio.gather(
            batcher.submit(task, good, good_params), batcher.submit(task, bad, bad_params),
            batcher.submit(task, long, long_params), return_exceptions=True,
        )

    ok, failed, refused = asyncio.run(mixed())
    assert len(ok) == 1 and isinstance(failed, InvalidRequest) and isinstance(refused, InvalidRequest)
    assert "maximum context length" in str(refused)

    monkeypatch.setattr(on_device.engine, "staged", lambda *args: (lambda: object()))  # no results object at all

    async def one():
        task, prompts, params = on_device.prepare(["fine"], pooling_task="embed")
        return await asyncio.wait_for(batcher.submit(task, prompts, params), 120)  # a hang guard, not a duration

    with pytest.raises(AttributeError):
        asyncio.run(one())
    monkeypatch.undo()
    assert len(asyncio.run(one())) == 1  # both threads live on
    assert batcher.drain(5)


@pytest.mark.parametrize("on", ["cpu", "accelerator"])
def test_requests_that_begin_alike_are_merged_first_when_not_all_fit(tmp_path, on):
    """A model that shares prefixes: of the requests waiting behind the oldest, those whose prompt
    begins like its own go into its batch first (the shared instruction runs once there), the
    others after, in arrival order; results as from the LLM. Without sharing, arrival order. The
    batches are read where they are formed, so the same holds for an accelerator's pipelined
    batcher (the CPU's stand-in device here), which runs them through another path."""
    from tiny_models import build_qwen

    from poolkit import LLM
    from poolkit.runtime.estimates import estimate_costs
    from poolkit.runtime.standin import attach

    path = build_qwen(tmp_path / "qwen3", "qwen3", "lm", max_position_embeddings=512)
    instructions = ("Instruct: find the passages that answer this question about geography. Query: ",
                    "Instruct: retrieve the products a shopper asks for, by their description. Query: ")
    texts = [instructions[i % 2] + q for i, q in enumerate(("capital of france", "red shoes", "longest river", "blue hats"))]
    for sharing in (True, False):
        llm = LLM(str(path), enable_prefix_caching=sharing)
        if on == "accelerator":
            attach(llm, 1e7)
        costs = [sum(estimate_costs(llm.prepare([t], pooling_task="embed")[1])) for t in texts]
        assert 3 * min(costs) > 2 * max(costs)
        batcher = Batcher(llm, max_batch_tokens=2 * max(costs))  # two requests a batch
        assert batcher.pipelined == (on == "accelerator")
        ran = []
        take = batcher._take

        def taken():
            batch = take()
            ran.append([w.prompts[0].text for w in batch if w.call is None])
            return batch

        batcher._take = taken

        async def main():
            # Hold every thread of the batcher while the four queue: the worker, and on a pipelined
            # batcher also the device thread and the batch handed between them (three holds).
            gate = threading.Event()
            holds = [asyncio.ensure_future(batcher.call(lambda: gate.wait(120), cost=1)) for _ in range(3 if batcher.pipelined else 1)]
            while batcher.stats.requests < len(holds) or batcher.queue_depth:  # each hold taken
                await asyncio.sleep(0.01)
            jobs = []
            for text in texts:
                task, prompts, params = llm.prepare([text], pooling_task="embed")
                jobs.append(asyncio.ensure_future(batcher.submit(task, prompts, params)))
                while batcher.queue_depth < len(jobs):  # queued in arrival order
                    await asyncio.sleep(0.01)
            gate.set()
            await asyncio.gather(*holds)
            return await asyncio.gather(*jobs)

        results = asyncio.run(main())
        order = [[0, 2], [1, 3]] if sharing else [[0, 1], [2, 3]]
        assert [r for r in ran if r] == [[texts[i] for i in pair] for pair in order]
        for text, got in zip(texts, results):
            assert torch.allclose(got[0][0], torch.tensor(llm.embed([text])[0].outputs.embedding), atol=1e-5)
        assert batcher.drain(5)
