"""The CPU stand-in for an accelerator (``poolkit.runtime.standin``): a device clock the host does
not wait for, on which the engine overlaps tokenization with the device's work as on a GPU.

Ordering, not speed, is tested here: results equal the CPU's, each slice of prompts after the
first is tokenized while the device is busy with an earlier one, and bad settings are refused.
The throughput against the stand-in's own rate is ``poolkit bench-standin``'s (docs/performance.md).
"""

from __future__ import annotations

import itertools
import threading
import time

import pytest
import torch

from poolkit import LLM
from poolkit.contracts.errors import InvalidRequest
from poolkit.entrypoints.bench.corpus import make_corpus
from poolkit.runtime import standin
from poolkit.runtime.standin import ENV, StandInDevice, attach

TEXTS = make_corpus(300, 30, 0.6, seed=7)


def _embed(llm: LLM) -> torch.Tensor:
    return torch.tensor([o.outputs.embedding for o in llm.embed(TEXTS, tokenization_kwargs={"truncate_prompt_tokens": -1})])


def test_the_stand_in_gives_the_cpu_s_results(tiny_encoders) -> None:
    llm = LLM(str(tiny_encoders["bert"]), max_batch_tokens=512)
    expected = _embed(llm)
    assert not llm.engine.asynchronous and len(llm.engine.slices([None] * 300)) == 1
    device = attach(llm, 1e7, keep_log=True)
    assert llm.engine.asynchronous
    assert torch.equal(_embed(llm), expected)
    assert len(device.log) > 1 and device.busy_seconds > 0


def test_each_slice_is_tokenized_while_the_device_runs_the_one_before(tiny_encoders, monkeypatch) -> None:
    """As on a GPU: the first slice (one token budget) is tokenized before any device work; each
    later one, on the worker thread, is tokenized while the slice before it is still on the device,
    and its first batch is queued before that slice's last batch is back, so the device never waits
    for the tokenizer nor drains between slices.

    Bounded by work, not time (issue 52, item 12): the results of each slice's last batch are held
    until the next slice's tokens are ready. An engine that tokenized a slice only once the one
    before had come back would wait on itself there, and the hang guard fails it; the order of
    launches and fetches is read from the engine's own sequence of calls, whatever the machine's speed."""
    llm = LLM(str(tiny_encoders["bert"]), max_batch_tokens=128)
    device = attach(llm, 1e9, keep_log=True)  # a clock far faster than the host: the order is what counts
    engine = llm.engine
    tokenize, plan, launch, delayed = engine._tokenized, engine.batches, device.launch, device.delayed
    changed = threading.Condition()
    tokenized: list[str] = []  # the thread each slice was tokenized on, in order
    batches: list[int] = []  # each slice's number of batches, in order
    events: list[tuple[str, int]] = []  # ("tokenized", slice), ("launched", batch), ("fetched", batch)
    slices = None  # known after a first run: the last slice holds its results for nothing

    def note(event: tuple[str, int]) -> None:
        with changed:
            events.append(event)
            changed.notify_all()

    def recorded_tokenize(*args, **kwargs):
        try:
            return tokenize(*args, **kwargs)
        finally:
            tokenized.append(threading.current_thread().name)
            note(("tokenized", len(tokenized) - 1))

    def recorded_batches(*args, **kwargs):
        planned = plan(*args, **kwargs)
        batches.append(len(planned))
        return planned

    def recorded_launch(tokens, since=None):
        ready = launch(tokens, since)
        note(("launched", len(device.log) - 1))
        return ready

    def held_delayed(fetch, ready):
        batch = len(device.log) - 1  # launched just before

        def fetch_when_the_next_slice_is_tokenized():
            ends = list(itertools.accumulate(batches))
            if slices is not None and batch + 1 in ends and ends.index(batch + 1) + 1 < slices:
                following = ends.index(batch + 1) + 1
                with changed:
                    assert changed.wait_for(lambda: len(tokenized) > following, 60), (
                        f"slice {following} was not tokenized while slice {following - 1} was on the device"
                    )
            result = delayed(fetch, ready)()
            note(("fetched", batch))
            return result

        return fetch_when_the_next_slice_is_tokenized

    monkeypatch.setattr(engine, "_tokenized", recorded_tokenize)
    monkeypatch.setattr(engine, "batches", recorded_batches)
    monkeypatch.setattr(device, "launch", recorded_launch)
    monkeypatch.setattr(device, "delayed", held_delayed)
    _embed(llm)
    slices = len(batches)
    assert slices >= 3, batches
    for record in (tokenized, batches, events, device.log):
        record.clear()
    _embed(llm)
    assert len(tokenized) == len(batches) == slices and sum(batches) == len(device.log), (tokenized, batches)
    assert all(name.startswith("poolkit-tokenize") for name in tokenized)
    assert events.index(("tokenized", 0)) < events.index(("launched", 0))  # nothing to run before the first slice
    last = [n - 1 for n in itertools.accumulate(batches)]  # each slice's last batch
    for k in range(1, slices):
        assert events.index(("tokenized", k)) < events.index(("fetched", last[k - 1])), f"slice {k} tokenized late"
        assert events.index(("launched", last[k - 1] + 1)) < events.index(("fetched", last[k - 1])), (
            f"slice {k}'s first batch waited for slice {k - 1} to drain"
        )


def test_the_environment_gives_every_engine_a_stand_in(tiny_encoders, monkeypatch) -> None:
    monkeypatch.setenv(ENV, "250000")
    llm = LLM(str(tiny_encoders["bert"]))
    assert llm.engine.standin is not None and llm.engine.standin.rate == 250_000 and llm.engine.asynchronous
    monkeypatch.setenv(ENV, "fast")
    with pytest.raises(InvalidRequest, match=f"^{ENV} must be a number of tokens per second, got 'fast'$"):
        standin.from_environment()
    with pytest.raises(InvalidRequest, match="positive rate"):
        StandInDevice(0)
    monkeypatch.setenv(ENV, "")
    assert standin.from_environment() is None


def test_batches_queue_behind_each_other_on_the_device_clock() -> None:
    device = StandInDevice(1000.0, keep_log=True)
    first = device.launch(100)  # 0.1 s
    second = device.launch(50)  # queued behind it
    assert second == pytest.approx(first + 0.05)
    started = time.perf_counter()
    assert device.delayed(lambda: "rows", second)() == "rows"
    assert time.perf_counter() - started >= second - started - 1e-3
    assert device.busy_seconds == pytest.approx(0.15)


def test_bench_standin_reports_every_stage(tiny_encoders) -> None:
    from poolkit.entrypoints.bench.standin import format_standin, measure

    report = measure(str(tiny_encoders["bert"]), 2e6, texts=200, reps=1, clients=4, inputs=4, seconds=2.0)
    for key in ("from_ids", "tokenize", "from_text", "served"):
        assert report[key] > 0, report
    assert set(report["served_status_codes"]) == {"200"}
    assert 0 < report["from_ids_vs_rate"] <= 1.05  # the device clock bounds it
    assert "x the slower stage" in format_standin(report)
