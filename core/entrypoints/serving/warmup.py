"""Warm-up: a model's first run at its largest batch of its longest inputs, before the server says it
is ready (TEI's warm-up; Infinity's rate in the log).

The first batch pays for what is done once (kernel choices, the allocator's pools, compiled graphs,
lazily built tables); at the largest shape it also finds out, at start rather than under the first
heavy load, whether that batch fits the device's memory. ``/health`` answers 503 until it is done.
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ...api.llm import LLM

#: A word every tokenizer keeps as a few tokens; repeated, it fills any input length.
FILLER = "warm "


@dataclass(frozen=True)
class WarmUp:
    """What a warm-up ran and measured.

    Attributes:
        task: the task it ran (the model's default).
        inputs: how many inputs.
        tokens: their tokens in all (each at the model's limit).
        seconds: the run's wall time, tokenization included.
        peak_bytes: the peak memory then: the device's allocations on an accelerator, the process's
            resident set on the CPU.
    """

    task: str
    inputs: int
    tokens: int
    seconds: float
    peak_bytes: int

    def line(self, name: str) -> str:
        """The log line: what ran, its rate and the peak memory."""
        rate = self.tokens / self.seconds if self.seconds > 0 else float("inf")
        return (
            f"warm-up of '{name}' ({self.task}): {self.inputs} inputs of {self.tokens // max(self.inputs, 1)} tokens "
            f"in {self.seconds:.2f} s, {rate:,.0f} tokens/s; peak memory {self.peak_bytes / 2**20:,.0f} MiB"
        )


def warm_up(llm: LLM) -> WarmUp | None:
    """Run ``llm``'s default task once on its largest batch (the engine's token budget) of inputs at
    the model's limit (or the whole budget, for a model whose limit is larger), through the same
    door as any request. ``None`` for a model whose default task
    takes no text (an IO processor's ``plugin`` task), which is then not warmed up.

    Raises:
        PoolkitError: what the run raises (a batch that does not fit the device, say): the server
            then stops, as for a model that fails to load.
    """
    task = llm.default_task
    if task is None or task == llm.plugin_task:
        return None
    budget = llm.engine.max_batch_tokens
    max_len = min(llm.model_config.max_model_len or budget, budget)
    inputs = max(1, budget // max_len)
    text = FILLER * max_len  # at least one token a word: cut to the limit
    device = llm.model.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    outputs = llm.encode([text] * inputs, pooling_task=task, tokenization_kwargs={"truncate_prompt_tokens": max_len})
    seconds = time.perf_counter() - start
    tokens = sum(len(out.prompt_token_ids) for out in outputs)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:  # ru_maxrss: KiB on Linux, bytes on macOS
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return WarmUp(task, inputs, tokens, seconds, peak)
