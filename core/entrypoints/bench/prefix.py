"""Workload P: prompts that share a long prefix, with prefix sharing against the same model without it.

An instruction embedder's queries or a reranker's documents after one query: 64 prompts (``--scale``
scales the count) of a shared 400-token prefix and 40 tokens of their own, as token ids drawn from
the vocabulary. Measured twice against the model loaded with ``enable_prefix_caching=False``: in one
call (the prefix shared within the batch), and one prompt per call (the first call leaves the prefix
in the cache, the others find it). Each round starts from an empty cache, so nothing carries over
from the round before; the outputs of both runs are compared.
"""

from __future__ import annotations

import statistics
from typing import Any

from .base import SkipWorkload
from .measure import Result, _interleave, _median_ratio

PREFIX_TOKENS = 400
SUFFIX_TOKENS = 40


def prefix_workload(bench: Any) -> Result:
    """Workload P on the :class:`~poolkit.entrypoints.bench.workloads.Bench`'s model."""
    import torch

    from poolkit import LLM

    from ...runtime.prefix import PrefixCache

    sharing = bench.llm.engine.prefixes
    if sharing is None:
        raise SkipWorkload("the model shares no prefixes (bidirectional or sliding-window attention, or enable_prefix_caching=False)")
    plain = LLM.from_args(bench.args.model_copy(update={"enable_prefix_caching": False}))
    vocab = int(bench.config.vocab_size)
    g = torch.Generator().manual_seed(11)
    prefix = torch.randint(1000, vocab, (PREFIX_TOKENS,), generator=g).tolist()
    n = max(4, int(64 * bench.scale))
    prompts = [{"prompt_token_ids": prefix + torch.randint(1000, vocab, (SUFFIX_TOKENS,), generator=g).tolist()} for _ in range(n)]
    budget = sharing.cache.max_bytes if sharing.cache is not None else 0

    def fresh() -> None:
        if sharing.cache is not None:
            sharing.cache = PrefixCache(budget)

    def ours() -> None:
        fresh()
        bench.llm.embed(prompts)

    def ours_single() -> None:
        fresh()
        for p in prompts:
            bench.llm.embed([p])

    rounds = _interleave(bench.rounds, ours, lambda: plain.embed(prompts))
    single = _interleave(bench.rounds, ours_single, lambda: [plain.embed([p]) for p in prompts])
    tokens = n * (PREFIX_TOKENS + SUFFIX_TOKENS)
    result = bench._result("P", f"{n} prompts: a {PREFIX_TOKENS}-token shared prefix + {SUFFIX_TOKENS} tokens, one call", n, tokens, rounds)
    fresh()
    got = torch.tensor([o.outputs.embedding for o in bench.llm.embed(prompts)])
    want = torch.tensor([o.outputs.embedding for o in plain.embed(prompts)])
    result.max_abs_diff = float((got - want).abs().max())
    result.min_cosine = float(torch.nn.functional.cosine_similarity(got, want).min())
    per_call = {k: 1000 * statistics.median(r[k] for r in single) / n for k in single[0]}
    result.notes = (
        f"the peer is poolkit with enable_prefix_caching=False; one prompt per call: {_median_ratio(single):.2f}x "
        f"({per_call['poolkit_s']:.1f} ms vs {per_call['peer_s']:.1f} ms per call)"
    )
    return result
