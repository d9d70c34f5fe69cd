"""AsyncLLM: LLM's methods awaited, concurrent callers merged by the server's batcher (issue 83, item 4).

Merging and cancellation are shown through the batcher's counters, with the worker thread held on
a gate until the calls are queued: what the test asserts does not depend on timing.
"""

from __future__ import annotations

import asyncio
import re
import threading
from pathlib import Path

import pytest
import torch
from waits import until_async

from poolkit import LLM, AsyncLLM, EngineArgs, LateChunkingParams, PoolingParams, PoolkitError
from poolkit.runtime.batching import ShuttingDown

DOCS = Path(__file__).resolve().parents[2] / "docs" / "getting-started.md"
TEXTS = [f"text {i}: {'a cat sat on the mat' if i % 3 else 'stocks fell sharply'} " * (1 + i % 4) for i in range(200)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Tiny BERT models with heads: a 3-class classifier, a cross-encoder and a token classifier."""
    from tiny_models import build_classifier

    root = tmp_path_factory.mktemp("async")
    return {
        "classifier": LLM(str(build_classifier(root / "c3", "bert", 3))),
        "cross_encoder": LLM(str(build_classifier(root / "ce", "bert", 1))),
        "ner": LLM(str(build_classifier(root / "ner", "bert", 3, token=True, id2label={0: "O", 1: "B-PER", 2: "I-PER"}))),
    }


@pytest.fixture
def engine(minilm):
    engine = AsyncLLM.from_llm(minilm)
    yield engine
    engine.shutdown(5)


async def _gated(engine: AsyncLLM, calls: list) -> list:
    """Run ``calls`` (coroutines) with the batcher's worker held until every one is queued."""
    gate = threading.Event()
    held = asyncio.ensure_future(engine.batcher.call(gate.wait, 0))
    tasks = [asyncio.ensure_future(c) for c in calls]
    await until_async(lambda: engine.batcher.queue_depth == len(tasks), "every call queued behind the gate")
    gate.set()
    await held
    return await asyncio.gather(*tasks)


def _assert_embeddings_close(got, want) -> None:
    a, b = torch.tensor(got), torch.tensor(want)
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) >= 0.99999 and (a - b).abs().max() <= 1e-4


def test_200_concurrent_callers_get_the_synchronous_embeddings_in_merged_batches(minilm, engine):
    want = minilm.embed(TEXTS)
    got = asyncio.run(_gated(engine, [engine.embed(text) for text in TEXTS]))
    stats = engine.batcher.stats
    assert sum(stats.batch_sizes) == len(TEXTS) and stats.batches < len(TEXTS)  # merged: fewer engine calls than callers
    for (out,), expected in zip(got, want):
        assert out.prompt_token_ids == expected.prompt_token_ids and out.truncated == expected.truncated
        _assert_embeddings_close(out.outputs.embedding, expected.outputs.embedding)


def test_classify_score_and_rerank_concurrently_equal_the_synchronous_ones(tiny):
    classifier, cross_encoder = (AsyncLLM.from_llm(tiny[k]) for k in ("classifier", "cross_encoder"))
    texts = TEXTS[:40]
    docs = ["a cat sat on the mat", "stocks fell sharply", "the mat was red"]

    async def main():
        classified = _gated(classifier, [classifier.classify(t) for t in texts])
        scored = asyncio.gather(*(cross_encoder.score(t, docs) for t in texts[:10]))
        ranked = asyncio.gather(*(cross_encoder.rerank(t, docs, top_n=2) for t in texts[:10]))
        return await asyncio.gather(classified, scored, ranked)

    classified, scored, ranked = asyncio.run(main())
    assert classifier.batcher.stats.batches < len(texts)
    for (out,), expected in zip(classified, tiny["classifier"].classify(texts)):
        assert out.outputs.label == expected.outputs.label
        torch.testing.assert_close(torch.tensor(out.outputs.probs), torch.tensor(expected.outputs.probs), atol=1e-4, rtol=0)
    for text, scores, ranking in zip(texts, scored, ranked):
        want = [s.outputs.score for s in tiny["cross_encoder"].score(text, docs)]
        assert [s.outputs.score for s in scores] == pytest.approx(want, abs=1e-4)
        expected = tiny["cross_encoder"].rerank(text, docs, top_n=2)
        assert [r.index for r in ranking] == [r.index for r in expected]
        assert [r.relevance_score for r in ranking] == pytest.approx([r.relevance_score for r in expected], abs=1e-4)
    for engine in (classifier, cross_encoder):
        assert engine.shutdown(5)


def test_the_other_methods_equal_the_synchronous_ones(tiny, minilm, engine):
    """reward, entities, token_embed with late chunking, and prompt dicts (rendered on the worker thread)."""
    ner = AsyncLLM.from_llm(tiny["ner"])
    texts = ["john lives in paris", "mary met john in a small town by the sea"]
    chunked = PoolingParams(late_chunking_params=LateChunkingParams(chunk_size=4))
    prompts = [{"prompt": t} for t in texts]

    async def main():
        return await asyncio.gather(
            ner.reward(texts), ner.entities(texts), engine.encode(texts, chunked, pooling_task="token_embed"), engine.embed(prompts)
        )

    rewards, entities, chunks, embedded = asyncio.run(main())
    for got, want in zip(rewards, tiny["ner"].reward(texts)):
        torch.testing.assert_close(got.outputs.data, want.outputs.data, atol=1e-4, rtol=0)
    assert entities == tiny["ner"].entities(texts)
    for got, want in zip(chunks, minilm.encode(texts, chunked, pooling_task="token_embed")):
        assert got.late_chunking is not None and got.late_chunking == want.late_chunking
        torch.testing.assert_close(got.outputs.data, want.outputs.data, atol=1e-4, rtol=0)
    for got, want in zip(embedded, minilm.embed(prompts)):
        _assert_embeddings_close(got.outputs.embedding, want.outputs.embedding)
    assert ner.shutdown(5)


def test_sparse_embeddings_equal_the_synchronous_ones(splade_dir):
    splade = LLM(str(splade_dir))
    texts = ["The capital of France is Paris.", "stocks fell sharply"]

    async def main():
        async with AsyncLLM.from_llm(splade) as engine:
            return await asyncio.gather(*(engine.sparse_embed(t, top_k=5, return_tokens=True) for t in texts))

    for (got,), want in zip(asyncio.run(main()), splade.sparse_embed(texts, top_k=5, return_tokens=True)):
        assert got.outputs.indices == want.outputs.indices and got.outputs.tokens == want.outputs.tokens
        assert got.outputs.values == pytest.approx(want.outputs.values, abs=1e-4)


def test_a_caller_cancelled_while_queued_drops_its_work_and_the_others_answer(minilm, engine):
    async def main():
        gate = threading.Event()
        held = asyncio.ensure_future(engine.batcher.call(gate.wait, 0))
        doomed = asyncio.ensure_future(engine.embed("cancel me before I run"))
        kept = asyncio.ensure_future(engine.embed("keep me"))
        await until_async(lambda: engine.batcher.queue_depth == 2, "both calls queued behind the gate")
        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        assert engine.batcher.queue_depth == 1 and engine.batcher.stats.cancelled == 1
        gate.set()
        await held
        return await kept

    (out,) = asyncio.run(main())
    assert engine.batcher.stats.items == 1  # the cancelled call's prompt never ran
    _assert_embeddings_close(out.outputs.embedding, minilm.embed("keep me")[0].outputs.embedding)


BAD_CALLS = [
    ("embed", (None,), {}),
    ("embed", ([],), {}),
    ("embed", ("hello", PoolingParams(dimensions=32)), {}),
    ("embed", ("hello",), {"prompt_name": "nope"}),
    ("embed", ("hello",), {"messages": [{"role": "user", "content": "hi"}]}),
    ("encode", ("hello",), {"pooling_task": "nope"}),
    ("encode", ({"data": [1]},), {"pooling_task": "embed"}),
    ("classify", ("hello",), {}),
    ("sparse_embed", ("hello",), {"top_k": 0}),
    ("entities", ("hello",), {}),
    ("score", ("a", []), {}),
    ("score", (["a", "b"], ["c", "d", "e"]), {}),
    ("rerank", (1, ["a"]), {}),
    ("rerank", ("a", ["b"]), {"top_n": 0}),
]


@pytest.mark.parametrize(("method", "args", "kwargs"), BAD_CALLS, ids=[f"{m}-{i}" for i, (m, _, _) in enumerate(BAD_CALLS)])
def test_bad_input_raises_what_llm_raises(minilm, engine, method, args, kwargs):
    with pytest.raises(PoolkitError) as sync:
        getattr(minilm, method)(*args, **kwargs)

    async def call():
        return await getattr(engine, method)(*args, **kwargs)

    with pytest.raises(PoolkitError) as awaited:
        asyncio.run(call())
    assert type(awaited.value) is type(sync.value) and str(awaited.value) == str(sync.value)


def _example(marker: str) -> str:
    """The Python example of the docs' "Async engine (AsyncLLM)" section that contains ``marker``."""
    text = DOCS.read_text(encoding="utf-8")
    section = text.split("## Async engine (AsyncLLM)\n", 1)[1].split("\n## ", 1)[0]
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", section, re.S) if marker in b]
    return block


def test_the_docs_fastapi_example_serves_embeddings(minilm):
    from fastapi.testclient import TestClient

    namespace: dict = {"__name__": "fastapi_example"}
    exec(compile(_example("FastAPI("), "fastapi_example", "exec"), namespace)
    with TestClient(namespace["app"]) as client:
        engine = namespace["app"].state.engine
        response = client.post("/embed", json={"texts": TEXTS[:3]})
        assert response.status_code == 200
        for got, want in zip(response.json(), minilm.embed(TEXTS[:3])):
            _assert_embeddings_close(got, want.outputs.embedding)
    with pytest.raises(ShuttingDown):  # the lifespan's end drained the engine
        asyncio.run(engine.embed("after the app stopped"))


def test_an_async_route_in_the_tests_own_loop_awaits_the_engine(engine, minilm):
    """Inside the caller's own event loop (httpx's ASGI transport, no thread between)."""
    import httpx
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/embed/{text}")
    async def embed(text: str) -> list[float]:
        (out,) = await engine.embed(text)
        return out.outputs.embedding

    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            return await asyncio.gather(*(client.get(f"/embed/{t}") for t in ("a cat", "a dog")))

    for response, want in zip(asyncio.run(main()), minilm.embed(["a cat", "a dog"])):
        _assert_embeddings_close(response.json(), want.outputs.embedding)


def test_shutdown_finishes_the_queued_calls_and_later_calls_are_refused(tiny_encoders):
    model = str(tiny_encoders["bert"])
    engine = AsyncLLM.from_engine_args(EngineArgs(model=model))
    want = LLM(model).embed(TEXTS[:50])

    async def main():
        async with engine:
            calls = [asyncio.ensure_future(engine.embed(text)) for text in TEXTS[:50]]
            await asyncio.sleep(0)  # each call rendered and queued
        return await asyncio.gather(*calls)  # leaving the block drained them

    for (out,), expected in zip(asyncio.run(main()), want):
        _assert_embeddings_close(out.outputs.embedding, expected.outputs.embedding)
    with pytest.raises(ShuttingDown) as refused:
        asyncio.run(engine.embed("too late"))
    assert "\n" not in str(refused.value)
    assert engine.shutdown(1)  # a second shutdown finds nothing to do


def test_create_loads_the_model_off_the_event_loop(tiny_encoders, monkeypatch):
    """``await AsyncLLM.create(...)`` inside a running loop loads the model on another thread, so the loop goes on serving."""
    import poolkit.api.async_llm as async_llm

    loaded_on = []

    class Recorded(LLM):
        def __init__(self, *args, **kwargs):
            loaded_on.append(threading.get_ident())
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(async_llm, "LLM", Recorded)

    async def main():
        engine = await AsyncLLM.create(str(tiny_encoders["bert"]))
        async with engine:
            return engine, await engine.embed("loaded")

    engine, (out,) = asyncio.run(main())
    assert loaded_on and loaded_on[0] != threading.get_ident()  # asyncio.run's loop runs on this thread
    assert len(out.outputs.embedding) == engine.llm.model_config.embedding_size


@pytest.mark.ray
def test_the_docs_ray_actor_example_embeds(local_ray, minilm):
    namespace: dict = {"__name__": "ray_example"}
    exec(compile(_example("@ray.remote"), "ray_example", "exec"), namespace)
    for got, want in zip(namespace["vectors"], minilm.embed(["a cat", "a dog", "a car"])):
        _assert_embeddings_close(got[0], want.outputs.embedding)
