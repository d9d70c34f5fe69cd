"""Shared prefixes computed once (poolkit.runtime.prefix): every causal surface gives, with sharing,
what it gives without (``enable_prefix_caching=False``), in fp32 within 1e-5; and sharing happens
(the counters say how many tokens' states came from a shared prefix).

The tiny decoders are tests/support/tiny_models' Qwen3 / Llama checkpoints; the prompts share an
instruction-like prefix of 40-70 tokens, or a reranker's query, and differ after it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tiny_models import build_decoder, build_qwen

from poolkit import LLM, PoolingParams
from poolkit.contracts.batch import PackedBatch

ATOL = 1e-5
PREFIX = "Instruct: given a web search query, retrieve relevant passages that answer the query. Query: "
TEXTS = [PREFIX + t for t in ("what is the capital of france", "hello", "the quick brown fox jumps over the lazy dog", "paris")]


@pytest.fixture(scope="module")
def qwen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # head_dim 16: the compiled attention kernels take it (multiples of 16), so they run here too
    return build_qwen(tmp_path_factory.mktemp("prefix") / "qwen3", "qwen3", "lm", max_position_embeddings=512, head_dim=16)


def rows(outputs: list) -> list[torch.Tensor]:
    """Each output's numbers: an embedding, class probabilities, or per-token data."""
    def value(out: object) -> object:
        for name in ("embedding", "probs", "data"):
            if hasattr(out, name):
                return getattr(out, name)
        raise AttributeError(type(out).__name__)

    return [torch.as_tensor(value(o.outputs)).float() for o in outputs]


def assert_same(got: list[torch.Tensor], want: list[torch.Tensor], atol: float = ATOL) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.shape == b.shape
        assert (a - b).abs().max() <= atol, (a - b).abs().max()


def test_prefix_attention_equals_attention_over_the_whole_sequence() -> None:
    """The kernel op: suffix queries over prefix keys + their own, causally, equal the plain causal
    attention of the whole sequences (grouped-query heads, prefixes of two lengths, one without)."""
    from poolkit.kernels.attention import prefix_attention, varlen_attention

    g = torch.Generator().manual_seed(0)
    lens, starts = [9, 7, 5, 6], [4, 4, 0, 11]
    whole = [n + s for n, s in zip(lens, starts)]
    q, k, v = (torch.randn(sum(whole), h, 8, generator=g) for h in (4, 2, 2))
    full = varlen_attention(q, k, v, PackedBatch(torch.zeros(sum(whole), dtype=torch.long), whole), causal=True)
    bounds = [0, *torch.cumsum(torch.tensor(whole), 0).tolist()]
    tail = torch.cat([torch.arange(bounds[i] + s, bounds[i + 1]) for i, s in enumerate(starts)])
    head = torch.cat([torch.arange(bounds[i], bounds[i] + s) for i, s in enumerate(starts)])
    offsets = [0, 4, 0, 8]  # sequence 1 reads its own prefix rows; 0 and 1 could share, here they do not
    batch = PackedBatch(torch.zeros(sum(lens), dtype=torch.long), lens, starts=starts)
    got = prefix_attention(q[tail], k[tail], v[tail], batch, k[head], v[head], offsets)
    assert (got - full[tail]).abs().max() <= 1e-6


def test_prefix_attention_cpu_flash_variant_matches_the_reference() -> None:
    """``prefix_attention:flash`` (two CPU flash attentions merged by log-sum-exp), the CPU's choice
    without AVX512-BF16, against the reference: shared and separate prefixes, one without,
    grouped-query heads. (The compiled variant: tests/kernels/test_attention_kernels.py.)"""
    from poolkit.kernels.attention import prefix_attention
    from poolkit.kernels.prefix import prefix_attention_flash

    g = torch.Generator().manual_seed(1)
    lens, starts, offsets = [21, 7, 5, 40, 21], [9, 9, 0, 37, 9], [0, 0, 0, 9, 0]
    for dim in (8, 64):
        q = torch.randn(sum(lens), 4, dim, generator=g)
        k, v = torch.randn(sum(lens), 2, dim, generator=g), torch.randn(sum(lens), 2, dim, generator=g)
        pk, pv = torch.randn(46, 2, dim, generator=g), torch.randn(46, 2, dim, generator=g)
        batch = PackedBatch(torch.zeros(sum(lens), dtype=torch.long), lens, starts=starts)
        want = prefix_attention(q, k, v, batch, pk, pv, offsets, scale=0.3)
        assert (prefix_attention_flash(q, k, v, batch, pk, pv, offsets, scale=0.3) - want).abs().max() <= 1e-5


def test_batch_positions_start_where_the_prefix_ends() -> None:
    batch = PackedBatch(torch.zeros(5, dtype=torch.long), [2, 3], starts=[4, 0])
    assert batch.positions.tolist() == [4, 5, 0, 1, 2]


def test_embed_last_and_mean_within_a_call(qwen: Path) -> None:
    for pooling in ("LAST", "MEAN"):
        shared = LLM(str(qwen), pooler_config={"pooling_type": pooling})
        plain = LLM(str(qwen), pooler_config={"pooling_type": pooling}, enable_prefix_caching=False)
        assert plain.engine.prefixes is None and shared.engine.prefixes is not None
        got = shared.embed(TEXTS)
        assert_same(rows(got), rows(plain.embed(TEXTS)))
        assert shared.engine.prefixes.shared_tokens >= 3 * 16  # the prefix ran once for four prompts
        # vLLM's num_cached_tokens on every output kind: the prefix's tokens, none without sharing
        assert all(o.num_cached_tokens >= 16 for o in got)
        assert all(o.num_cached_tokens == 0 for o in plain.embed(TEXTS))
        assert all(o.num_cached_tokens >= 16 for o in shared.encode(TEXTS, pooling_task="embed"))


def test_token_outputs_include_the_prefix_tokens(qwen: Path) -> None:
    shared, plain = LLM(str(qwen)), LLM(str(qwen), enable_prefix_caching=False)
    got, want = rows(shared.encode(TEXTS, pooling_task="token_embed")), rows(plain.encode(TEXTS, pooling_task="token_embed"))
    assert_same(got, want)
    assert all(g.shape[0] == len(o.prompt_token_ids) for g, o in zip(got, plain.encode(TEXTS, pooling_task="token_embed")))


def test_single_calls_reuse_the_cached_prefix(qwen: Path) -> None:
    """Across calls: the first prompt leaves its prefix (whole blocks), the next ones find it."""
    mean = {"pooling_type": "MEAN"}  # the cached prefix's own states are pooled too
    shared, plain = LLM(str(qwen), pooler_config=mean), LLM(str(qwen), pooler_config=mean, enable_prefix_caching=False)
    for text in TEXTS:
        assert_same(rows(shared.embed([text])), rows(plain.embed([text])))
    cache = shared.engine.prefixes.cache
    assert cache.hits >= 3 * 16 and cache.bytes > 0


def test_reset_prefix_cache_forgets_what_was_kept(qwen: Path) -> None:
    """vLLM's ``LLM.reset_prefix_cache()``: the next call computes its prompts' states again (the
    same result), and the counters go on; a model that keeps nothing answers True too."""
    shared = LLM(str(qwen))
    first = shared.embed(TEXTS[:1])
    assert first[0].num_cached_tokens == 0
    cache = shared.engine.prefixes.cache
    assert len(cache) == 1 and cache.bytes > 0
    assert shared.embed(TEXTS[:1])[0].num_cached_tokens >= 16  # kept: the same prompt reads it
    hits = cache.hits
    assert shared.reset_prefix_cache() is True
    assert len(cache) == 0 and cache.bytes == 0 and cache.hits == hits
    again = shared.embed(TEXTS[:1])
    assert again[0].num_cached_tokens == 0 and cache.hits == hits
    assert_same(rows(again), rows(first))
    assert len(cache) == 1  # it keeps what it computes again
    assert LLM(str(qwen), enable_prefix_caching=False).reset_prefix_cache() is True


def test_async_reset_prefix_cache(qwen: Path) -> None:
    import asyncio

    from poolkit import AsyncLLM

    engine = AsyncLLM.from_llm(LLM(str(qwen)))

    async def run() -> tuple[int, bool, int]:
        await engine.embed(TEXTS[:1])
        kept = len(engine.llm.engine.prefixes.cache)
        return kept, await engine.reset_prefix_cache(), len(engine.llm.engine.prefixes.cache)

    try:
        assert asyncio.run(run()) == (1, True, 0)
    finally:
        engine.shutdown()


def test_cache_salt_and_skip_keep_prefixes_apart(qwen: Path) -> None:
    shared = LLM(str(qwen))
    for salt in ("tenant-a", "tenant-b"):
        params = PoolingParams().with_salt(salt)
        shared.embed(TEXTS[:1], pooling_params=params)
    assert shared.engine.prefixes.cache.hits == 0  # another salt's prefix is not read
    shared.embed(TEXTS[1:2], pooling_params=PoolingParams().with_salt("tenant-a"))
    assert shared.engine.prefixes.cache.hits > 0
    before = shared.engine.prefixes.cache.hits
    shared.embed(TEXTS[2:3], pooling_params=PoolingParams(skip_reading_prefix_cache=True).with_salt("tenant-a"))
    assert shared.engine.prefixes.cache.hits == before


def test_prompt_dicts_carry_their_cache_salt(qwen: Path) -> None:
    """vLLM's ``{"prompt": ..., "cache_salt": ...}`` (and with ``prompt_token_ids``): prompts of one
    salt share their prefix within a call, of two salts do not; results as without sharing; a salt
    that is not a non-empty string is refused in one line."""
    from poolkit.contracts.errors import InvalidRequest

    shared, plain = LLM(str(qwen)), LLM(str(qwen), enable_prefix_caching=False)
    ids = shared.embed(TEXTS[2:3])[0].prompt_token_ids
    apart = [{"prompt": TEXTS[0], "cache_salt": "a"}, {"prompt": TEXTS[1], "cache_salt": "b"},
             {"prompt_token_ids": ids, "cache_salt": "c"}]
    shared.engine.prefixes.cache = None  # within the call only
    before = shared.engine.prefixes.shared_tokens
    assert_same(rows(shared.embed(apart)), rows(plain.embed(TEXTS[:3])))
    assert shared.engine.prefixes.shared_tokens == before
    together = [dict(p, cache_salt="a") for p in apart]
    assert_same(rows(shared.embed(together)), rows(plain.embed(TEXTS[:3])))
    assert shared.engine.prefixes.shared_tokens > before
    for salt in ("", 3):
        with pytest.raises(InvalidRequest, match=r"^prompt 0: cache_salt must be a non-empty string"):
            shared.embed([{"prompt": "x", "cache_salt": salt}])


def test_reranker_shares_its_query(tmp_path: Path) -> None:
    """A decoder reranker's pairs begin with the same query: classify and score match the unshared run."""
    path = build_qwen(tmp_path / "rerank", "qwen3", "classify", num_labels=1, max_position_embeddings=512)
    query = PREFIX + "which city is the capital of france?"
    docs = ["paris is the capital of france", "hello world", "berlin is in germany", "yes"]
    shared, plain = LLM(str(path)), LLM(str(path), enable_prefix_caching=False)
    got = [o.outputs.score for o in shared.score(query, docs)]
    want = [o.outputs.score for o in plain.score(query, docs)]
    assert max(abs(a - b) for a, b in zip(got, want)) <= ATOL
    classified = shared.classify(TEXTS)
    assert_same(rows(classified), rows(plain.classify(TEXTS)))
    assert shared.engine.prefixes.shared_tokens > 0
    assert all(o.num_cached_tokens >= 16 for o in classified)


def test_step_rewards_off_the_lm_head(qwen: Path) -> None:
    from transformers import AutoTokenizer

    tag = AutoTokenizer.from_pretrained(str(qwen))(" the")["input_ids"][-1]
    config = {"pooling_type": "STEP", "step_tag_id": tag, "use_activation": False}
    shared, plain = LLM(str(qwen), pooler_config=config), LLM(str(qwen), pooler_config=config, enable_prefix_caching=False)
    assert_same(rows(shared.reward(TEXTS)), rows(plain.reward(TEXTS)))


def test_lora_adapters_are_part_of_the_key(qwen: Path, tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    import transformers as T

    from poolkit import LoRARequest

    requests = []
    for n, seed in enumerate((1, 2)):
        torch.manual_seed(seed)
        base = T.AutoModelForCausalLM.from_pretrained(str(qwen))
        config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
        peft.get_peft_model(base, config).save_pretrained(tmp_path / f"a{n}")
        requests.append(LoRARequest(f"a{n}", n + 1, str(tmp_path / f"a{n}")))
    shared = LLM(str(qwen), enable_lora=True, max_loras=2)
    plain = LLM(str(qwen), enable_lora=True, max_loras=2, enable_prefix_caching=False)
    mixed = [requests[0], requests[1], None, requests[0]]
    assert_same(rows(shared.embed(TEXTS, lora_request=mixed)), rows(plain.embed(TEXTS, lora_request=mixed)))
    for request in requests:  # single calls: each adapter's own cached prefix
        assert_same(rows(shared.embed(TEXTS[1:2], lora_request=request)), rows(plain.embed(TEXTS[1:2], lora_request=request)))


def test_bfloat16_is_within_the_unshared_runs_own_rounding(qwen: Path) -> None:
    """In bf16 the shared run is as far from the fp32 run as the unshared bf16 run is, within a
    factor of two, so the two bf16 runs differ by at most the sum of their roundings. Not a fixed
    number of bf16 steps, nor a closer run: the shared run's matmuls have other shapes (the prefix
    once, then the suffixes), so each layer rounds other sums, and the two runs' distances from
    fp32 are two walks of per-layer roundings of one size, whose lengths depend on the kernels a
    CPU runs (the shared run 1.5 bf16 steps from the unshared one on a CPU without AVX512-BF16, 1.7
    on an AMX one; 1.46x the unshared run's distance from fp32 with the compiled kernels off)."""
    exact = rows(LLM(str(qwen), dtype="float32", enable_prefix_caching=False).embed(TEXTS))
    llm = LLM(str(qwen), dtype="bfloat16")
    shared = rows(llm.embed(TEXTS))
    plain = rows(LLM(str(qwen), dtype="bfloat16", enable_prefix_caching=False).embed(TEXTS))
    assert llm.engine.prefixes.shared_tokens > 0
    error = lambda runs: max(float((r - f).abs().max()) for r, f in zip(runs, exact))  # noqa: E731
    assert error(shared) <= 2 * error(plain)
    for a, b in zip(shared, plain):
        assert F.cosine_similarity(a, b, dim=0) >= 0.999
        assert (a - b).abs().max() <= error(shared) + error(plain)


def test_bidirectional_and_windowed_models_share_nothing(qwen: Path, tmp_path: Path) -> None:
    """A prefix's states depend on what follows in a bidirectional model, and a sliding window reads
    positions relative to each token: neither shares, whatever enable_prefix_caching says."""
    assert LLM(str(qwen), hf_overrides={"is_causal": False}, enable_prefix_caching=True).engine.prefixes is None
    mistral = build_decoder(tmp_path / "mistral", "mistral", "embed")
    assert LLM(str(mistral), enable_prefix_caching=True).engine.prefixes is None
    llama = build_decoder(tmp_path / "llama", "llama", "embed", max_position_embeddings=512)
    assert LLM(str(llama)).engine.prefixes is not None


def test_the_cache_stays_within_its_bytes(qwen: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POOLKIT_PREFIX_CACHE_BYTES", str(200_000))
    shared = LLM(str(qwen))
    for i in range(12):
        shared.embed([f"document number {i}: " + "some words that make it long " * 3])
    cache = shared.engine.prefixes.cache
    assert 0 < cache.bytes <= 200_000


def test_prefix_attention_triton_matches_the_reference() -> None:
    """The Triton variant (interpreted on the CPU, compiled on a GPU suite) against the torch
    reference: grouped-query heads, prefixes of two lengths shared and not, a sequence without one,
    sequences longer than a block, float32 and bf16."""
    pytest.importorskip("triton", reason="pip install triton (the gpu extra) to test the Triton kernels")
    import textwrap

    from suite_device import run_triton_script

    script = textwrap.dedent(
        """
        import torch
        from poolkit.contracts.batch import PackedBatch
        from poolkit.kernels.attention import prefix_attention
        from poolkit.kernels.prefix import prefix_attention_triton
        g = torch.Generator().manual_seed(0)
        lens, starts, offsets = [21, 7, 5, 40], [9, 9, 0, 37], [0, 0, 0, 9]
        for dim in (8, 24):
            q = torch.randn(sum(lens), 4, dim, generator=g)
            k, v = torch.randn(sum(lens), 2, dim, generator=g), torch.randn(sum(lens), 2, dim, generator=g)
            pk, pv = torch.randn(46, 2, dim, generator=g), torch.randn(46, 2, dim, generator=g)
            batch = PackedBatch(torch.zeros(sum(lens), dtype=torch.long), lens, starts=starts)
            for dtype in (torch.float32, torch.bfloat16):
                args = [t.to(dtype) for t in (q, k, v)] + [batch] + [t.to(dtype) for t in (pk, pv)] + [offsets]
                want, got = prefix_attention(*args, scale=0.3), prefix_attention_triton(*args, scale=0.3)
                tol = 1e-5 if dtype == torch.float32 else 2e-2
                assert (got.float() - want.float()).abs().max() <= tol, (dim, dtype, (got.float() - want.float()).abs().max())
        print("ok")
        """
    )
    result = run_triton_script(script)
    assert result.returncode == 0 and result.stdout.startswith("ok"), result.stderr[-2000:]


def test_chunked_long_inputs_share_their_first_chunk(qwen: Path) -> None:
    """Long inputs split into chunks (``enable_chunked_processing``): inputs that begin alike have
    first chunks that begin alike, and the chunks' mean is the unshared run's."""
    config = {"enable_chunked_processing": True, "pooling_type": "MEAN"}
    texts = [PREFIX * 3 + t for t in ("alpha beta gamma", "the lazy dog " * 4)]
    shared, plain = LLM(str(qwen), pooler_config=config), LLM(str(qwen), pooler_config=config, enable_prefix_caching=False)
    assert max(len(o.prompt_token_ids) for o in plain.embed(texts)) > 128  # longer than the model's 128: chunked
    assert_same(rows(shared.embed(texts)), rows(plain.embed(texts)))
    assert shared.engine.prefixes.shared_tokens > 0


def test_server_requests_share_through_the_cache_within_their_salt(qwen: Path) -> None:
    """Single requests through the server (its batcher runs each alone here): the second finds the
    first's prefix in the cache; a request of another cache_salt does not."""
    from fastapi.testclient import TestClient

    from poolkit.entrypoints.server import create_app

    llm, plain = LLM(str(qwen)), LLM(str(qwen), enable_prefix_caching=False)
    sharing = llm.engine.prefixes
    with TestClient(create_app(llm)) as client:
        def post(text: str, salt: str | None = None) -> torch.Tensor:
            body = {"input": [text], **({"cache_salt": salt} if salt else {})}
            response = client.post("/v1/embeddings", json=body)
            assert response.status_code == 200, response.text
            return torch.tensor(response.json()["data"][0]["embedding"])

        post(TEXTS[0], "tenant-a")
        before = sharing.cache.hits
        post(TEXTS[1], "tenant-b")
        assert sharing.cache.hits == before  # another tenant's prefix is not read
        got = post(TEXTS[2], "tenant-a")
        assert sharing.cache.hits > before
        assert (got - torch.tensor(plain.embed(TEXTS[2:3])[0].outputs.embedding)).abs().max() <= ATOL


def test_a_causal_lm_read_as_a_yes_no_reranker_shares_its_query(qwen: Path) -> None:
    """The LLM-as-reranker form (Qwen3-Reranker: the LM head's "no"/"yes" rows at the last token):
    its pairs, query first, share the query; the scores are the unshared run's."""
    overrides = {"classifier_from_token": ["no", "yes"], "method": "from_2_way_softmax"}
    query = PREFIX + "which city is the capital of france?"
    docs = ["paris is the capital of france", "hello world", "berlin is in germany", "yes"]
    shared = LLM(str(qwen), hf_overrides=overrides)
    plain = LLM(str(qwen), hf_overrides=overrides, enable_prefix_caching=False)
    got = [o.outputs.score for o in shared.score(query, docs)]
    want = [o.outputs.score for o in plain.score(query, docs)]
    assert max(abs(a - b) for a, b in zip(got, want)) <= ATOL
    assert shared.engine.prefixes.shared_tokens > 0


def test_server_rerank_requests_keep_their_salt(tmp_path: Path) -> None:
    """/rerank: a decoder reranker's documents share the query within the request; a second request
    reads the query's states from the cache only under the same cache_salt."""
    from fastapi.testclient import TestClient

    from poolkit.entrypoints.server import create_app

    path = build_qwen(tmp_path / "rerank", "qwen3", "classify", num_labels=1, max_position_embeddings=512)
    llm = LLM(str(path))
    cache = llm.engine.prefixes.cache
    body = {"query": PREFIX + "which city is the capital of france?", "documents": ["paris", "berlin is in germany", "hello"]}
    with TestClient(create_app(llm)) as client:
        def rerank(salt: str) -> list[float]:
            response = client.post("/rerank", json={**body, "cache_salt": salt})
            assert response.status_code == 200, response.text
            return [r["relevance_score"] for r in sorted(response.json()["results"], key=lambda r: r["index"])]

        first = rerank("tenant-a")
        hits = cache.hits
        rerank("tenant-b")
        assert cache.hits == hits
        assert rerank("tenant-a") == pytest.approx(first, abs=ATOL) and cache.hits > hits
