"""The engine: length-sorted token-budget batches run on the device, pooled, in input order.

Prompts are tokenized and truncated by the engine's :class:`PromptTokenizer`
(:mod:`poolkit.runtime.tokenizing`); the engine schedules and launches: an over-long input cut into
chunks under chunked processing, sequences sorted by length and packed into batches under a token
budget with no padding, on an accelerator the next slice tokenized while the device runs this one
and each batch queued before the previous one is read back (:mod:`poolkit.runtime.inflight`), the
CPU's threads per batch, LoRA adapters pinned per batch (:mod:`poolkit.runtime.adapter_runs`), and
shared prefixes computed once (:mod:`poolkit.runtime.prefix`). Results come back in input order.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from ..contracts.batch import PackedBatch, device_tensor
from ..contracts.errors import InvalidRequest
from ..contracts.io import Prompt, PromptBatch
from ..contracts.params import PoolingParams
from ..contracts.tasks import Task
from ..loading.model import PoolingModel
from ..plugins.lookup import row_planner
from . import adapter_runs
from .allocator import tune_allocator
from . import prefix
from .columns import Collector, Encoded, Results, Tokens, gather_index, to_host
from .inflight import InFlight, Staged
from .estimates import CHARS_PER_TOKEN_GUESS
from .standin import StandInDevice, from_environment
from ..config.threads import one_thread
from .tokenizing import PromptTokenizer

logger = logging.getLogger(__name__)

#: Default token budget of one packed batch, by device type.
MAX_BATCH_TOKENS = {"cpu": 8192, "cuda": 65536}
#: On an accelerator, prompts are tokenized in slices of about this many token budgets of text,
#: each while the device runs the one before (:meth:`Engine.slices`).
OVERLAP_BATCHES = 8
#: A CPU batch whose tokens × hidden size² (its linear layers' work, up to a constant) is below
#: this runs on one thread: the other threads' start and finish around each operation cost more
#: than they save there, and a server of single-text requests, whose batches are that small,
#: keeps the cores for its event loop and tokenizer instead (issue 29, docs/performance.md).
ONE_THREAD_WORK = 1 << 22


#: What to call on this thread once prompts are tokenized (:func:`noting_tokenized`).
_TOKENIZED = threading.local()


@contextlib.contextmanager
def noting_tokenized(note: Callable[[], None]) -> Iterator[None]:
    """Call ``note()`` each time this thread tokenizes prompts, while inside: the batcher notes when
    work that tokenizes inside its run (a whole ``LLM.score`` call, text pairs) was tokenized."""
    _TOKENIZED.note = note
    try:
        yield
    finally:
        _TOKENIZED.note = None


class Engine:
    """Runs a :class:`PoolingModel` over prompts for one task at a time.

    Its :attr:`tokenizer` (a :class:`~poolkit.runtime.tokenizing.PromptTokenizer`) tokenizes and
    truncates; the engine answers for it the calls the layers above make: :meth:`~PromptTokenizer.tokenize`,
    :meth:`~PromptTokenizer.limit`, :meth:`~PromptTokenizer.input_cap`,
    :meth:`~PromptTokenizer.check_truncation`, :meth:`~PromptTokenizer.cut_text` and
    :meth:`~PromptTokenizer.char_spans`.

    Args:
        model: the loaded model.
        max_batch_tokens: token budget of one packed batch (default by device type).
    """

    def __init__(self, model: PoolingModel, max_batch_tokens: int | None = None) -> None:
        self.model = model
        self.max_batch_tokens = max_batch_tokens or MAX_BATCH_TOKENS.get(model.device.type, 8192)
        if self.max_batch_tokens < 1:
            raise InvalidRequest("max_batch_tokens must be positive")
        if model.device.type == "cpu":
            tune_allocator()
        #: A CPU stand-in for an accelerator (:mod:`poolkit.runtime.standin`), or ``None``.
        self.standin: StandInDevice | None = from_environment()
        #: Tokenizes and truncates the prompts (:mod:`poolkit.runtime.tokenizing`).
        self.tokenizer = PromptTokenizer(model)
        # what the layers above ask the engine of its tokenizer: bound, not wrapped, as a wrapper is
        # one more Python call on every request's path (``poolkit bench``'s workload H counts them)
        self.tokenize = self.tokenizer.tokenize
        self.limit = self.tokenizer.limit
        self.input_cap = self.tokenizer.input_cap
        self.check_truncation = self.tokenizer.check_truncation
        self.cut_text = self.tokenizer.cut_text
        self.char_spans = self.tokenizer.char_spans
        #: Seconds spent in the model's forward passes and heads so far (on a GPU, queueing them):
        #: a run's wall time less this is its host work (``poolkit bench``'s workload H).
        self.compute_seconds = 0.0
        #: Shared prefixes computed once (:mod:`poolkit.runtime.prefix`), or ``None`` for a model that cannot share them.
        self.prefixes = prefix.PrefixSharing.for_model(model, model.args.enable_prefix_caching if model.args else None)
        if self.prefixes is not None and model.adapters is not None:
            model.adapters.forgotten.append(self.prefixes.forget)  # an unloaded adapter's states go with it

    @property
    def truncated_inputs(self) -> int:
        """Inputs cut to a truncation limit so far."""
        return self.tokenizer.truncated_inputs

    # -- running -------------------------------------------------------------------------------

    def batches(self, lengths: Sequence[int] | np.ndarray) -> list[np.ndarray]:
        """Indices of sequences of these ``lengths``, longest first, packed into batches under the
        token budget (a sequence over the budget is a batch of its own)."""
        lens = np.asarray(lengths, dtype=np.int64)
        order = (-lens).argsort(kind="stable")
        ends = lens[order].cumsum()
        batches: list[np.ndarray] = []
        start, done = 0, 0
        while start < len(order):
            stop = max(int(ends.searchsorted(done + self.max_batch_tokens, side="right")), start + 1)
            batches.append(order[start:stop])
            done = int(ends[stop - 1])
            start = stop
        return batches

    def run(
        self,
        task: Task,
        prompts: Sequence[Prompt],
        params: Sequence[PoolingParams],
        progress: Callable[[int, int], None] | None = None,
    ) -> Results:
        """Pool every prompt for ``task``: the results, their token ids and truncation, in input order.

        Args:
            task: a task the model supports.
            prompts: the inputs (a columnar :class:`PromptBatch` takes the fast path).
            params: one verified :class:`PoolingParams` per prompt.
            progress: called with ``(items done, tokens done)`` after each batch.
        """
        head = self.model.head(task)
        if head is None:
            raise InvalidRequest(f"model '{self.model.name}' does not support task '{task.name}'")
        if not (isinstance(prompts, PromptBatch) and prompts.columnar):
            media = [i for i, p in enumerate(prompts) if p.text is None and p.token_ids is None]
            if media:
                return self._run_mixed(task, prompts, params, media, progress)
        chunked = task.chunkable and self.model.pooler_config.enable_chunked_processing
        if not chunked:
            return self._run_overlapped(head, prompts, params, self.tokenizer.input_cap(task), progress)
        tokens = self._tokenized(prompts, params, chunked, self.tokenizer.input_cap(task))
        max_embed_len = self.model.pooler_config.max_embed_len
        pieces: list[Encoded] = []
        owners: list[int] = []
        weights: list[int] = []
        spans: list[tuple[int, int]] = []  # each prompt's chunks are consecutive in ``pieces``
        for i in range(len(tokens)):
            enc = tokens[i]
            if max_embed_len and len(enc.token_ids) > max_embed_len:
                raise InvalidRequest(
                    f"prompt {i} is longer than max_embed_len ({max_embed_len} tokens); "
                    "shorten it, raise max_embed_len, or set truncate_prompt_tokens"
                )
            start = len(pieces)
            for chunk, weight in self.chunks(enc):
                pieces.append(chunk)
                owners.append(i)
                weights.append(weight)
            spans.append((start, len(pieces)))
        results = Results.rows_of(self._run(head, Tokens.of(pieces), [params[i] for i in owners], progress))
        renormalize = self.model.pooler_config.renormalize_chunked_mean
        means = [self._mean(results[a:b], weights[a:b], renormalize) for a, b in spans]
        return Results(means, tokens.ids, tokens.truncated)

    def staged(self, task: Task, prompts: Sequence[Prompt], params: Sequence[PoolingParams]) -> Callable[[], Results]:
        """:meth:`run` in two steps: tokenize the prompts now, on the calling thread, and return
        the call that runs their batches (a :class:`Staged`, whose device work can also be
        launched behind another's, when the prompts are plain texts or token ids). A server on an accelerator tokenizes its next merged
        batch this way while the device runs the one before (:class:`poolkit.runtime.batching.Batcher`).
        Inputs that are not plain text or token ids, and chunked processing, are tokenized in the
        returned call, as :meth:`run` does them.

        Raises:
            PoolkitError: a prompt the tokenizer or the model's limits refuse (here, not later).
        """
        head = self.model.head(task)
        plain = isinstance(prompts, PromptBatch) and prompts.columnar or all(
            p.text is not None or p.token_ids is not None for p in prompts
        )
        if head is None or not plain or (task.chunkable and self.model.pooler_config.enable_chunked_processing):
            return lambda: self.run(task, prompts, params)
        return Staged(self, head, self._tokenized(prompts, params, False, self.tokenizer.input_cap(task)), params)

    def _tokenized(
        self, prompts: Sequence[Prompt], params: Sequence[PoolingParams], chunked: bool, cap: int | None, first: int = 0
    ) -> Tokens:
        tokens = self.tokenizer.tokenize(prompts, params, chunked, cap, first)
        if (note := getattr(_TOKENIZED, "note", None)) is not None:
            note()
        empty = (tokens.lens == 0).nonzero()[0]
        if empty.size:
            raise InvalidRequest(f"prompt {first + int(empty[0])} has no tokens")
        return tokens

    @property
    def asynchronous(self) -> bool:
        """Whether the device runs batches while the host goes on: an accelerator, or the CPU
        with a stand-in device (:mod:`poolkit.runtime.standin`)."""
        return self.model.device.type != "cpu" or self.standin is not None

    def slices(self, prompts: Sequence[Prompt]) -> list[tuple[int, int]]:
        """``(start, stop)`` ranges of ``prompts`` tokenized one after another while the device
        computes the previous one: the first about one token budget of text, so that the device
        starts early, the rest about :data:`OVERLAP_BATCHES` budgets each, by character count.
        One range on the CPU, where both would share the same cores."""
        if not self.asynchronous or len(prompts) < 2:
            return [(0, len(prompts))]
        budget = self.max_batch_tokens * CHARS_PER_TOKEN_GUESS
        ranges, start, chars = [], 0, 0
        for i, prompt in enumerate(prompts):
            chars += len(prompt.text or "") + len(prompt.text_pair or "") + len(prompt.token_ids or ()) * CHARS_PER_TOKEN_GUESS
            if chars >= budget:
                ranges.append((start, i + 1))
                start, chars = i + 1, 0
                budget = OVERLAP_BATCHES * self.max_batch_tokens * CHARS_PER_TOKEN_GUESS
        if start < len(prompts):
            ranges.append((start, len(prompts)))
        return ranges

    def _run_overlapped(
        self,
        head: Callable,
        prompts: Sequence[Prompt],
        params: Sequence[PoolingParams],
        cap: int | None,
        progress: Callable[[int, int], None] | None,
    ) -> Results:
        """Tokenize each slice of the prompts on a worker thread while the previous slice runs.

        A bad prompt in a later slice is found once the earlier slices have run; its error ends
        the call all the same, and nothing is returned.
        """
        ranges = self.slices(prompts)
        if len(ranges) == 1:
            tokens = self._tokenized(prompts, params, False, cap)
            return Results(self._run(head, tokens, params, progress), tokens.ids, tokens.truncated, tokens.cached)
        tokenized: list[Tokens] = []
        with ThreadPoolExecutor(1, thread_name_prefix="poolkit-tokenize") as pool:
            submit = lambda a, b: pool.submit(self._tokenized, prompts[a:b], params[a:b], False, cap, a)  # noqa: E731

            def parts() -> Iterator[tuple[Tokens, Sequence[PoolingParams]]]:
                # the next slice's tokens are awaited while the device runs this one's last batch
                future = submit(*ranges[0])
                for k, (a, b) in enumerate(ranges):
                    tokens = future.result()
                    if k + 1 < len(ranges):
                        future = submit(*ranges[k + 1])
                    tokenized.append(tokens)
                    yield tokens, params[a:b]

            results = self._run_parts(head, parts(), progress)
        return Results.concat([Results(r, t.ids, t.truncated, t.cached) for r, t in zip(results, tokenized)])

    def chunks(self, encoded: Encoded) -> list[tuple[Encoded, int]]:
        """Split an over-long input into model-sized chunks, each with the input's special tokens.

        Returns ``(chunk, weight)`` pairs; the weight is the chunk's share of the input's tokens.
        """
        ids = encoded.token_ids
        limit = self.model.max_model_len.value
        if limit is None or len(ids) <= limit:
            return [(encoded, len(ids))]
        special = set(self.model.tokenizer.all_special_ids)
        start, end = 0, len(ids)
        while start < end and ids[start] in special:
            start += 1
        while end > start and ids[end - 1] in special:
            end -= 1
        prefix, body, suffix = ids[:start], ids[start:end], ids[end:]
        size = limit - len(prefix) - len(suffix)
        if size < 1:
            raise InvalidRequest(f"the model's limit of {limit} tokens leaves no room for text between special tokens")
        return [(Encoded(prefix + body[k : k + size] + suffix), len(body[k : k + size])) for k in range(0, len(body), size)]

    @staticmethod
    def _mean(parts: list[torch.Tensor], weights: list[int], renormalize: bool) -> torch.Tensor:
        """Token-weighted mean of chunk results (fp32), L2-normalised again if asked."""
        if len(parts) == 1:
            return parts[0]
        stacked = torch.stack([p.float() for p in parts])
        w = torch.tensor(weights, dtype=torch.float32).unsqueeze(1)
        mean = (stacked * w).sum(0) / w.sum()
        return torch.nn.functional.normalize(mean, dim=-1) if renormalize else mean

    def _run_mixed(
        self,
        task: Task,
        prompts: Sequence[Prompt],
        params: Sequence[PoolingParams],
        media: list[int],
        progress: Callable[[int, int], None] | None,
    ) -> Results:
        """Run prompts of text and prompts of tensors (images, ...) apart, results in input order."""
        data: list[torch.Tensor | None] = [None] * len(prompts)
        ids: list[list[int]] = [[] for _ in prompts]
        truncated = np.zeros(len(prompts), dtype=bool)
        is_media = set(media)
        texts = [i for i in range(len(prompts)) if i not in is_media]
        if texts:
            done = self.run(task, [prompts[i] for i in texts], [params[i] for i in texts], progress)
            rows = done.rows()
            for k, i in enumerate(texts):
                data[i], ids[i], truncated[i] = rows[k], done.token_ids[k], done.truncated[k]
        for i, r in zip(media, self._run_tensors(self.model.head(task), [prompts[i] for i in media], [params[i] for i in media], progress)):
            data[i] = r
        return Results(data, ids, truncated)  # type: ignore[arg-type]

    def _run_tensors(
        self,
        head: Callable,
        prompts: Sequence[Prompt],
        params: Sequence[PoolingParams],
        progress: Callable[[int, int], None] | None,
    ) -> list[torch.Tensor]:
        """Prompts that carry tensors in ``extras`` instead of text: each is a one-token sequence.

        Prompts with the same tensor keys and shapes are stacked into one batch's ``extras``
        (``batch.extras["pixel_values"]`` is ``[n, 3, H, W]``, say); the architecture returns one
        row per prompt, which the head pools like any sequence.
        """
        groups: dict[tuple, list[int]] = {}
        for i, prompt in enumerate(prompts):
            tensors = {k: v for k, v in prompt.extras.items() if isinstance(v, torch.Tensor)}
            if not tensors:
                raise InvalidRequest(f"prompt {i} has neither text, token ids nor data the model can read")
            key = tuple(sorted((k, tuple(v.shape)) for k, v in tensors.items()))
            groups.setdefault(key, []).append(i)
        results: list[torch.Tensor | None] = [None] * len(prompts)
        step = max(1, self.max_batch_tokens // 128)
        for members in groups.values():
            for start in range(0, len(members), step):
                chunk = members[start : start + step]
                batch = PackedBatch(
                    torch.zeros(len(chunk), dtype=torch.long, device=self.model.device),
                    [1] * len(chunk),
                    extras={
                        k: torch.stack([prompts[i].extras[k] for i in chunk]).to(self.model.device)
                        for k, v in prompts[chunk[0]].extras.items()
                        if isinstance(v, torch.Tensor)
                    },
                )
                with torch.inference_mode():
                    outputs = head(self.model.architecture(batch), batch, [params[i] for i in chunk])
                for i, out in zip(chunk, to_host(outputs)()):
                    results[i] = out
                if progress is not None:
                    progress(len(chunk), 0)
        return results  # type: ignore[return-value]

    def _threads_for(self, num_tokens: int) -> Any:
        """The intra-op threads of a batch of ``num_tokens`` on this thread: one for a small CPU
        batch (:data:`ONE_THREAD_WORK`), else as they are."""
        hidden = getattr(self.model.architecture, "hidden_size", None)  # a plugin's config may have no hidden_size
        if self.model.device.type != "cpu" or not hidden or num_tokens * hidden**2 >= ONE_THREAD_WORK:
            return contextlib.nullcontext()
        return one_thread()

    def _run(
        self,
        head: Callable,
        tokens: Tokens,
        params: Sequence[PoolingParams],
        progress: Callable[[int, int], None] | None,
    ) -> torch.Tensor | list[torch.Tensor]:
        """Run the batches of ``tokens``: :meth:`_run_parts` of one part."""
        (result,) = self._run_parts(head, [(tokens, params)], progress)
        return result

    def _run_parts(
        self,
        head: Callable,
        parts: Iterable[tuple[Tokens, Sequence[PoolingParams]]],
        progress: Callable[[int, int], None] | None,
    ) -> list[torch.Tensor | list[torch.Tensor]]:
        """Run the batches of each part in turn (:meth:`launch`), the last batch of a part still
        on the device while the next part's first one is queued; each part's results come back as
        one ``[N, ...]`` tensor when every batch's head gives one tensor of rows of a shape, else
        one tensor per prompt."""
        collectors: list[Collector] = []
        last: InFlight | None = None
        for tokens, params in parts:
            collected, last = self.launch(head, tokens, params, progress, last)
            collectors.append(collected)
        if last is not None:
            last.read()
        return [c.result() for c in collectors]

    def launch(
        self,
        head: Callable,
        tokens: Tokens,
        params: Sequence[PoolingParams],
        progress: Callable[[int, int], None] | None,
        behind: InFlight | None = None,
    ) -> tuple[Collector, InFlight | None]:
        """Queue the batches of ``tokens`` on the device, each one before the previous one's
        results are read back (``behind``: a batch of an earlier part still in flight, read once
        this part's first batch is queued): on a GPU the host packs batch ``k + 1`` (or waits for
        the next part's tokens) while the device computes batch ``k``, and each batch costs one
        device-to-host copy and one wait. Returns the part's collector, whose results are complete
        once the returned last batch in flight is read. :meth:`run` launches each slice's tokens
        this way, and a :class:`Staged` call its own, behind another's.

        Each batch is gathered from the part's one flat array of token ids.
        """
        arch = self.model.architecture
        if arch.accepts_filler and "_rows_for" not in self.__dict__:  # planned once, as layers pick kernels once:
            self._rows_for = row_planner(self.model.device)  # asking the registry was ~0.1 ms of every batch
        rows_for = self._rows_for if arch.accepts_filler else None
        shared = params[0] if params and all(p is params[0] for p in params) else None
        types = tokens.flat_types if self.tokenizer.uses_token_type_ids else None
        skip = np.asarray(tokens.pool_skip, dtype=np.int64) if tokens.pool_skip is not None else None
        keys = np.asarray(tokens.key_lens, dtype=np.int64) if tokens.key_lens is not None else None
        collected = Collector(len(tokens))
        adapters, batches = self.model.adapters, self.batches(tokens.lens)
        for members, slots in adapter_runs.plan(adapters, batches, params):
            seq_lens = tokens.lens[members]
            index = gather_index(tokens.starts[members], seq_lens)
            batch_skip = skip[members].tolist() if skip is not None else None
            batch = PackedBatch(
                device_tensor(tokens.flat[index], torch.long, self.model.device),
                seq_lens.tolist(),
                device_tensor(types[index], torch.long, self.model.device) if types is not None else None,
                batch_skip if batch_skip is not None and any(batch_skip) else None,
                key_lens=keys[members].tolist() if keys is not None and (keys[members] < seq_lens).any() else None,
            )
            if tokens.media is not None:
                batch.extras["media"] = [_on_device(tokens.media[i], self.model.device) for i in members.tolist()]
            started = time.perf_counter()
            active = adapter_runs.active(adapters, seq_lens.tolist(), slots) if slots is not None else contextlib.nullcontext()
            members_params = [shared] * len(members) if shared is not None else [params[i] for i in members]
            with torch.inference_mode(), self._threads_for(batch.num_tokens), active:
                hidden, cached = prefix.forward(self.prefixes, arch, batch, rows_for, tokens.flat[index], members_params, adapters, slots)
                tokens.note_cached(members, cached)
                fetch = to_host(head(hidden, batch, members_params))
            if self.standin is not None:
                fetch = self.standin.delayed(fetch, self.standin.launch(batch.num_tokens, started))
            self.compute_seconds += time.perf_counter() - started
            if behind is not None:
                behind.read()
            behind = InFlight(collected, members, fetch, batch.num_tokens, progress)
        return collected, behind


def _on_device(media: dict | None, device: torch.device) -> dict | None:
    """A sequence's media tensors on ``device`` (other values as they are)."""
    if media is None:
        return None
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in media.items()}
