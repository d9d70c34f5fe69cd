"""Dynamic batching for the server: concurrent requests merged into token-budget batches.

Requests wait in a queue; one worker thread takes the oldest and the later requests of its task
that fit the token budget (in arrival order; for a model that shares prefixes, those that begin
like the oldest first), runs them through the engine as one call (tokenization included, so the
event loop never tokenizes or computes), and hands each request its own results. A request whose
client went away is dropped before it runs; a full queue is refused at once.

On an accelerator (or the CPU stand-in for one, :mod:`poolkit.runtime.standin`) the work is a
pipeline of two threads: the worker takes and tokenizes the next merged batch while a device
thread runs the one before and answers its requests (:meth:`poolkit.runtime.engine.Engine.staged`),
one batch waiting between them at most; otherwise the device would wait for every batch's
tokenization. On the CPU both would share the same cores, and one thread does both.

The work of a request queued under a :data:`TIMED_WORK` list (a traced request,
:mod:`poolkit.entrypoints.server.tracing`; a TEI route's, :mod:`poolkit.entrypoints.serving.compute_times`)
is stamped with the times of its phases (:class:`WorkTimes`); no other work is.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..contracts.errors import PoolkitError
from ..contracts.io import Prompt, PromptBatch
from ..contracts.params import PoolingParams
from ..contracts.serving import EngineOwner
from ..contracts.tasks import Task
from .allocator import release_freed_memory
from .columns import Results
from .engine import noting_tokenized
from .estimates import estimate_costs
from .inflight import Staged

logger = logging.getLogger(__name__)


class QueueFull(PoolkitError):
    """The server has as much pending work as it accepts; retry later (HTTP 429)."""


class ShuttingDown(PoolkitError):
    """The server is draining and takes no new work (HTTP 503)."""


#: Least seconds between two returns of freed memory to the system (:func:`release_freed_memory`)
#: under load; an idle batcher returns it this long after its last batch.
TRIM_INTERVAL = 1.0


@dataclass(eq=False)
class WorkTimes:
    """When one piece of a timed request's work entered the queue, was taken from it, was
    tokenized and had run (``time.time_ns()``; 0: not reached). Work that tokenizes inside its
    run (a whole call, :meth:`Batcher.call`; images; chunked inputs) leaves ``tokenized`` at 0.

    Attributes:
        inputs: the prompts of this work; ``task``: their task's name (``None`` for a call).
        batch_inputs: the prompts of the merged batch it ran in.
    """

    queued: int
    inputs: int = 0
    task: str | None = None
    taken: int = 0
    tokenized: int = 0
    ran: int = 0
    batch_inputs: int = 0


#: The list a timed request's work appends its :class:`WorkTimes` to: set by the server for each
#: request it traces or whose phases it reports (TEI's routes), read when the work is queued.
TIMED_WORK: contextvars.ContextVar[list[WorkTimes] | None] = contextvars.ContextVar("poolkit_timed_work", default=None)


def _timed_in(batch: list[_Work]) -> bool:
    """Whether any work of ``batch`` is timed (its phases to be stamped)."""
    for work in batch:
        if work.times is not None:
            return True
    return False


def _stamp(batch: list[_Work], phase: str, inputs: int = 0) -> None:
    """Note the time the timed work of ``batch`` reached ``phase`` (a :class:`WorkTimes` field);
    ``inputs``: the prompts of the merged batch, noted when it is taken."""
    now = time.time_ns()
    for work in batch:
        if work.times is not None:
            setattr(work.times, phase, now)
            if inputs:
                work.times.batch_inputs = inputs


def _timed(batch: list[_Work], run: Callable[[], Any]) -> Callable[[], Any]:
    """``run``, noting when the timed work of ``batch`` first tokenized (if not before) and had run."""
    first = lambda: any(w.times is not None and not w.times.tokenized for w in batch) and _stamp(batch, "tokenized")  # noqa: E731

    def timed() -> Any:
        try:
            with noting_tokenized(first):
                return run()
        finally:
            _stamp(batch, "ran")

    return timed


@dataclass(eq=False)
class _Work:
    task: Task | None
    prompts: PromptBatch
    params: list[PoolingParams]
    cost: int
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    enqueued: float = field(default_factory=time.monotonic)
    #: A whole call to run on the worker thread instead of prompts to merge (score, rerank).
    call: Callable[[], Any] | None = None
    #: Its phases' times, when its request is timed.
    times: WorkTimes | None = None


def _lead(work: _Work) -> tuple:
    """What a request's first prompt begins with, for :meth:`Batcher._take`: its ``cache_salt`` (no
    prefix is shared across salts) and its token ids, or its instruction and text."""
    if not len(work.prompts):
        return None, ""
    prompt = work.prompts[0]
    salt = getattr(work.params[0], "cache_salt", None) if work.params else None
    return salt, prompt.token_ids if prompt.token_ids is not None else (prompt.prompt_prefix or "") + (prompt.text or "")


def _shared(a: tuple, b: tuple) -> int:
    """How many leading tokens or characters two :func:`_lead` values share (0 across salts or kinds)."""
    if a[0] != b[0] or type(a[1]) is not type(b[1]):
        return 0
    n = 0
    for x, y in zip(a[1], b[1]):
        if x != y:
            break
        n += 1
    return n


@dataclass
class BatcherStats:
    """Counters for ``/metrics``."""

    requests: int = 0
    items: int = 0
    batches: int = 0
    tokens: int = 0
    rejected: int = 0
    cancelled: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    queue_seconds: list[float] = field(default_factory=list)


@dataclass(eq=False)
class _Staged:
    """A merged batch tokenized for the device thread: ``run`` runs and answers it; where its
    device work can be queued alone (``staged``, :class:`poolkit.runtime.engine.Staged`),
    ``staged.launch(behind)`` queues it and ``finish`` answers it."""

    batch: list[_Work]
    run: Callable[[], Any]
    staged: Staged | None = None
    finish: Callable[[], Any] | None = None


class Batcher:
    """Merges concurrent requests into engine calls on one worker thread.

    Args:
        llm: what owns the engine the batches run on (the loaded :class:`poolkit.LLM`): its
            ``engine`` is read at each batch, never its own methods, so the runtime calls down only.
        max_batch_tokens: estimated tokens merged into one engine call.
        max_queue_tokens: estimated tokens allowed to wait; beyond it :class:`QueueFull`.
    """

    def __init__(self, llm: EngineOwner, max_batch_tokens: int = 16384, max_queue_tokens: int = 1_000_000) -> None:
        self.llm = llm
        self.max_batch_tokens = max_batch_tokens
        self.max_queue_tokens = max_queue_tokens
        self.stats = BatcherStats()
        self._queue: deque[_Work] = deque()
        self._queued_tokens = 0
        self._cond = threading.Condition()
        self._closing = False
        self._active = 0  # batches taken and not yet answered
        engine = llm.engine
        #: Merge the requests that begin alike first (a model that shares prefixes, :meth:`_take`).
        self.groups_prefixes = getattr(engine, "prefixes", None) is not None
        #: Tokenize the next batch while the device runs the last (an accelerator's engine).
        self.pipelined = bool(getattr(engine, "asynchronous", False)) and hasattr(engine, "staged")
        self._handoff: queue.Queue = queue.Queue(maxsize=1)
        self._device = (
            threading.Thread(target=self._device_loop, name="poolkit-device", daemon=True) if self.pipelined else None
        )
        self._thread = threading.Thread(target=self._loop, name="poolkit-batcher", daemon=True)
        self._thread.start()
        if self._device is not None:
            self._device.start()

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    async def submit(
        self, task: Task, prompts: Sequence[Prompt], params: Sequence[PoolingParams], cost: int | None = None
    ) -> Results:
        """Run ``prompts`` for ``task`` (as :meth:`poolkit.LLM.prepare` returned them); results in
        order. Cancelling the caller drops the work. ``cost``: the prompts' tokens as the caller
        estimated them already (:meth:`poolkit.LLM.estimate_tokens`), else estimated here.

        Raises:
            QueueFull: too much work is waiting.
            ShuttingDown: the batcher is draining.
            PoolkitError: whatever the engine raises for these inputs.
        """
        prompts = PromptBatch.of(prompts)
        cost = sum(estimate_costs(prompts)) if cost is None else cost
        return await self._enqueue(task, prompts, list(params), cost, None)

    async def call(self, fn: Callable[[], Any], cost: int) -> Any:
        """Run ``fn()`` on the worker thread, in turn with the batches (``LLM.score``, say)."""
        return await self._enqueue(None, PromptBatch(objects=[]), [], cost, fn)

    async def _enqueue(
        self, task: Task | None, prompts: PromptBatch, params: list[PoolingParams], cost: int, call: Callable[[], Any] | None
    ) -> Any:
        loop = asyncio.get_running_loop()
        work = _Work(task, prompts, params, cost, loop.create_future(), loop, call=call)
        if (owner := TIMED_WORK.get()) is not None:  # a timed request's work: its phases are stamped
            work.times = WorkTimes(time.time_ns(), len(prompts), task.name if task is not None else None)
            owner.append(work.times)
        with self._cond:
            if self._closing:
                raise ShuttingDown("the server is shutting down")
            if self._queue and self._queued_tokens + cost > self.max_queue_tokens:
                self.stats.rejected += 1
                raise QueueFull("the server is busy: too much work is queued; retry later")
            self._queue.append(work)
            self._queued_tokens += cost
            self.stats.requests += 1
            self._cond.notify()
        try:
            return await work.future
        except asyncio.CancelledError:
            with self._cond:
                if work in self._queue:
                    self._queue.remove(work)
                    self._queued_tokens -= work.cost
                    self.stats.cancelled += 1
            raise

    def _take(self) -> list[_Work]:
        """The next batch: the oldest request and the later ones of its task that fit the budget.

        When they do not all fit and the model shares prefixes (:mod:`poolkit.runtime.prefix`),
        those whose first prompt begins most like the oldest one's go first (in arrival order among
        equals), so that a shared instruction or query runs once in the batch instead of once in
        each; the oldest request always goes, so none waits for more than the queue ahead of it.
        """
        first = self._queue.popleft()
        taken, tokens = [first], first.cost
        if first.call is not None:
            self._queued_tokens -= tokens
            return taken
        mates = [w for w in self._queue if w.call is None and w.task is first.task]
        if self.groups_prefixes and tokens + sum(w.cost for w in mates) > self.max_batch_tokens:
            lead = _lead(first)
            mates.sort(key=lambda w: -_shared(lead, _lead(w)))
        for work in mates:
            if tokens + work.cost <= self.max_batch_tokens:
                self._queue.remove(work)
                taken.append(work)
                tokens += work.cost
        self._queued_tokens -= tokens
        return taken

    def _loop(self) -> None:
        trimmed = time.monotonic()
        ran = False  # batches ran since the last trim
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    # Idle: once the last answers are out (serialised and sent after the batch),
                    # what they freed goes back too, else an idle server keeps its busiest second.
                    if ran and not self._cond.wait(TRIM_INTERVAL) and not self._queue:
                        release_freed_memory()
                        trimmed, ran = time.monotonic(), False
                    elif not ran:
                        self._cond.wait()
                if not self._queue and self._closing:
                    if self._device is not None:
                        self._handoff.put(None)  # the device thread ends after what it holds
                    return
                batch = [w for w in self._take() if not w.future.cancelled()]
                self._active += 1
            handed = False
            try:
                if batch and self.pipelined:
                    self._handoff.put(self._stage(batch))  # waits while one batch is waiting already
                    handed = True
                elif batch:
                    self._run(batch)
            except Exception as exc:  # the worker thread outlives any failure; its requests get it
                logger.exception("the batcher failed to answer %d requests", len(batch))
                for work in batch:
                    self._resolve(work, exception=exc)
            finally:
                if not handed:
                    self._finished()
            ran = True
            if time.monotonic() - trimmed >= TRIM_INTERVAL:
                release_freed_memory()
                trimmed, ran = time.monotonic(), False

    def _finished(self) -> None:
        with self._cond:
            self._active -= 1
            self._cond.notify_all()

    def _stage(self, batch: list[_Work]) -> _Staged:
        """Tokenize a merged batch now (the pipeline's first step). A batch the tokenizer refuses
        is run request by request instead, on the device thread, so that one bad request does not
        fail the others."""
        if batch[0].call is not None:
            return _Staged(batch, lambda: self._run(batch))
        prompts = PromptBatch.concat([w.prompts for w in batch])
        params = [p for w in batch for p in w.params]
        now = time.monotonic()
        if timed := _timed_in(batch):
            _stamp(batch, "taken", len(prompts))
        try:
            run = self.llm.engine.staged(batch[0].task, prompts, params)
        except Exception:
            return _Staged(batch, lambda: [self._run([work]) for work in batch])
        launches = hasattr(run, "launch")  # else it tokenizes when it runs
        answer, finish = run, getattr(run, "finish", None)
        if timed:
            if launches:
                _stamp(batch, "tokenized")
            answer, finish = _timed(batch, run), finish and _timed(batch, finish)
        return _Staged(
            batch, lambda: self._answer(batch, prompts, now, answer),
            run if launches else None, lambda: self._answer(batch, prompts, now, finish),
        )

    def _device_loop(self) -> None:
        """The pipeline's second step: run each staged batch and answer its requests, in turn.

        A batch whose device work can be launched alone (plain texts or token ids) is queued on
        the device behind the one before, whose requests are answered only then: the device
        runs the next merged batch while this thread reads the last one's results back and
        answers them. With nothing waiting, the batch in flight is answered at once."""
        held: _Staged | None = None  # launched, not yet answered
        while True:
            try:
                item = self._handoff.get_nowait() if held is not None else self._handoff.get()
            except queue.Empty:
                self._settle_staged(held, held.finish)
                held = None
                continue
            if item is None:
                break
            if item.staged is not None:
                try:
                    item.staged.launch(held.staged if held is not None else None)
                except Exception:  # run and answered on its own below, request by request where it fails
                    item.staged = None
            if held is not None:
                self._settle_staged(held, held.finish)
                held = None
            if item.staged is not None:
                held = item
            else:
                self._settle_staged(item, item.run)
        if held is not None:
            self._settle_staged(held, held.finish)

    def _settle_staged(self, item: _Staged, step: Callable[[], Any]) -> None:
        try:
            step()
        except Exception as exc:  # the thread outlives any failure; its requests get it
            logger.exception("the batcher failed to answer %d requests", len(item.batch))
            for work in item.batch:
                self._resolve(work, exception=exc)
        finally:
            self._finished()

    def _run(self, batch: list[_Work]) -> None:
        first = batch[0]
        timed = _timed_in(batch)
        if first.call is not None:
            if timed:
                _stamp(batch, "taken")
            try:
                self._resolve(first, result=(_timed(batch, first.call) if timed else first.call)())
            except Exception as exc:
                self._resolve(first, exception=exc)
            return
        prompts = PromptBatch.concat([w.prompts for w in batch])
        params = [p for w in batch for p in w.params]
        if timed:
            _stamp(batch, "taken", len(prompts))
            run = _timed(batch, lambda: self._run_staged(batch, prompts, params))
        else:
            run = lambda: self.llm.engine.run(first.task, prompts, params)  # noqa: E731
        self._answer(batch, prompts, time.monotonic(), run)

    def _run_staged(self, batch: list[_Work], prompts: PromptBatch, params: list[PoolingParams]) -> Results:
        """A timed batch's run: its prompts tokenized first (:meth:`~poolkit.runtime.engine.Engine.staged`,
        the tokenizing time noted), then run, which is what :meth:`~poolkit.runtime.engine.Engine.run` does in one call."""
        staged = self.llm.engine.staged(batch[0].task, prompts, params)
        if hasattr(staged, "launch"):  # tokenized now, else when it runs
            _stamp(batch, "tokenized")
        return staged()

    def _answer(self, batch: list[_Work], prompts: PromptBatch, now: float, run: Callable[[], Results]) -> None:
        """Run a merged batch (``run``) and give each request its share of the results."""
        try:
            results = run()
        except Exception as exc:  # one bad request must not fail the others: run them alone
            if len(batch) > 1:
                for work in batch:
                    self._run([work])
                return
            self._resolve(batch[0], exception=exc)
            return
        self.stats.batches += 1
        self.stats.items += len(prompts)
        self.stats.tokens += results.num_tokens
        self.stats.batch_sizes.append(len(prompts))
        start, answers = 0, []
        for work in batch:
            self.stats.queue_seconds.append(now - work.enqueued)
            answers.append((work, results[start : start + len(work.prompts)]))
            start += len(work.prompts)
        self._settle(answers)

    @staticmethod
    def _resolve(work: _Work, result: Any = None, exception: BaseException | None = None) -> None:
        def settle() -> None:
            if work.future.done():
                return
            if exception is not None:
                work.future.set_exception(exception)
            else:
                work.future.set_result(result)

        work.loop.call_soon_threadsafe(settle)

    @staticmethod
    def _settle(answers: list[tuple[_Work, Any]]) -> None:
        """Give a batch's requests their results: one wake-up of each event loop, not one a request."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Work, Any]]] = {}
        for work, result in answers:
            by_loop.setdefault(work.loop, []).append((work, result))

        def settle(pairs: list[tuple[_Work, Any]]) -> None:
            for work, result in pairs:
                if not work.future.done():
                    work.future.set_result(result)

        for loop, pairs in by_loop.items():
            loop.call_soon_threadsafe(settle, pairs)

    def drain(self, timeout: float = 30.0) -> bool:
        """Stop taking work, finish what is queued and running; True if done within ``timeout``.

        Past ``timeout`` the work still queued fails with :class:`ShuttingDown` and the batch
        running finishes (a batch is bounded by ``max_batch_tokens``): the worker thread never
        outlives the drain, so the process exits cleanly.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            while (self._queue or self._active) and time.monotonic() < deadline:
                self._cond.wait(timeout=max(0.0, deadline - time.monotonic()))
            done = not self._queue and not self._active
            for work in self._queue:
                self._resolve(work, exception=ShuttingDown("the server is shutting down: the request did not run in time"))
            self._queue.clear()
            self._queued_tokens = 0
        self._thread.join()
        if self._device is not None:
            self._device.join()
        return done
