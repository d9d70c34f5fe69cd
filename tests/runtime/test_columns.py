"""The engine's columnar hot path (issue 29, items 2 and 3): texts and token ids travel as
columns, results as one tensor of rows, and nothing on the way makes an object per input; the
object path (mixed prompts) gives the same results."""

from __future__ import annotations

import asyncio
import pickle

import numpy as np
import pytest
import torch

import poolkit.runtime.columns as columns
from poolkit import PoolingParams
from poolkit.contracts.errors import InvalidRequest
from poolkit.contracts.io import Prompt, PromptBatch
from poolkit.contracts.outputs import EmbeddingOutput
from poolkit.runtime.batching import Batcher

TEXTS = ["Hello, my name is", "A man is eating food.", "The new movie is awesome.", "word " * 300, "x"]


class _Counted:
    """Counts the objects of ``cls`` made while the context is open."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, cls: type) -> None:
        self.made = 0
        original = cls.__init__

        def counting(obj, *args, **kwargs):
            self.made += 1
            original(obj, *args, **kwargs)

        monkeypatch.setattr(cls, "__init__", counting)


def test_embed_makes_no_object_per_input(minilm, monkeypatch):
    ids = [out.prompt_token_ids for out in minilm.embed(TEXTS[:3])]
    prompts, encoded = _Counted(monkeypatch, Prompt), _Counted(monkeypatch, columns.Encoded)
    for given in (TEXTS[:3], [{"prompt": t} for t in TEXTS[:3]], ids, [{"prompt_token_ids": i} for i in ids]):
        outputs = minilm.embed(given)
        assert len(outputs) == 3 and all(o.outputs._embedding is None for o in outputs)  # read when first asked
    assert prompts.made == 0 and encoded.made == 0
    assert outputs[0].prompt_token_ids is ids[0]  # a token-id prompt's own list, not a copy


def test_the_column_and_object_paths_agree(minilm):
    cases = [
        (TEXTS, {"truncate_prompt_tokens": 8}),
        (TEXTS, {"truncate_prompt_tokens": 8, "truncation_side": "left"}),
        (TEXTS[:3], None),
        ([[101, 7592, 102], [101, 2088, 2003, 102], list(range(1000, 1600))], {"truncate_prompt_tokens": -1}),
    ]
    task = minilm.model.task("embed")
    for given, params in cases:
        _, prompts, checked = minilm.prepare(given, params, pooling_task="embed")
        assert prompts.columnar
        objects = [Prompt(text=g) if isinstance(g, str) else Prompt(token_ids=list(g)) for g in given]
        fast = minilm.engine.run(task, prompts, checked)
        slow = minilm.engine.run(task, PromptBatch(objects=objects), checked)
        assert isinstance(fast.data, torch.Tensor) and fast.data.shape[0] == len(given)
        assert fast.token_ids == slow.token_ids
        assert fast.truncated.tolist() == slow.truncated.tolist()
        torch.testing.assert_close(fast.data, torch.stack(slow.rows()), atol=1e-6, rtol=1e-5)
    cut = minilm.embed(TEXTS, tokenization_kwargs={"truncate_prompt_tokens": 7})  # the first text is 7 tokens
    assert [len(o.prompt_token_ids) for o in cut] == [7, 7, 7, 7, 3]
    assert [o.truncated for o in cut] == [False, True, True, True, False]


def test_bad_token_ids_in_a_column_are_named_as_before(minilm):
    vocab = minilm.model.hf_config.vocab_size
    with pytest.raises(InvalidRequest, match=rf"prompt 2 has token id {vocab}, outside the vocabulary \(0..{vocab - 1}\)"):
        minilm.embed([[101, 102], [101, 5, 102], [101, vocab, 7, 102]])
    with pytest.raises(InvalidRequest, match="prompt 1 has token id -3"):
        minilm.embed([{"prompt_token_ids": [101, 102]}, {"prompt_token_ids": [101, -3, 102]}])
    with pytest.raises(InvalidRequest, match="prompt 1 must be a list of integer token ids"):
        minilm.embed([[101, 102], [101, 2.5, 102]])
    with pytest.raises(InvalidRequest, match="prompt 0 must be a list of integer token ids"):
        minilm.embed([[101, True, 102], [101, 102]])
    with pytest.raises(InvalidRequest, match="prompt 1 is an empty list of token ids"):
        minilm.embed([[101, 102], []])
    with pytest.raises(InvalidRequest, match="input 1 has more tokens than that"):
        minilm.embed(["fine", "word " * 600])


def test_a_prompt_batch_turns_into_objects_once_and_they_are_the_batch():
    batch = PromptBatch(texts=["a", "b"], prompt_prefix="query: ")
    assert batch.columnar and len(batch) == 2 and batch[0:1].texts == ["a"]
    batch[1].text = "changed"  # an object handed out is the batch from then on
    assert not batch.columnar and [p.text for p in batch] == ["a", "changed"]
    assert batch[0].prompt_prefix == "query: "
    merged = PromptBatch.concat([PromptBatch(token_ids=[[1]]), PromptBatch(token_ids=[[2, 3]])])
    assert merged.columnar and merged.token_ids == [[1], [2, 3]]
    mixed = PromptBatch.concat([PromptBatch(token_ids=[[1]]), PromptBatch(texts=["t"])])
    assert not mixed.columnar and [p.token_ids for p in mixed] == [[1], None]
    with pytest.raises(ValueError, match="exactly one"):
        PromptBatch(texts=["a"], token_ids=[[1]])


def test_merged_requests_run_as_one_column(minilm, monkeypatch):
    batcher = Batcher(minilm, max_batch_tokens=100_000)
    made = _Counted(monkeypatch, Prompt)

    async def main():
        jobs = []
        for text in TEXTS[:3]:
            task, prompts, params = minilm.prepare([text], pooling_task="embed")  # each request its own params
            jobs.append(batcher.submit(task, prompts, params))
        return await asyncio.gather(*jobs)

    results = asyncio.run(main())
    assert made.made == 0 and batcher.stats.tokens == sum(r.num_tokens for r in results)
    for text, result in zip(TEXTS, results):
        (want,) = minilm.embed(text)
        torch.testing.assert_close(result.data[0], torch.tensor(want.outputs.embedding), atol=1e-6, rtol=1e-5)
    assert batcher.drain(5)


def test_a_lazy_embedding_reads_compares_and_pickles_as_a_list():
    rows = np.arange(6, dtype=np.float32).reshape(3, 2)
    lazy = EmbeddingOutput.of_rows(rows)
    assert [o.embedding for o in lazy] == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]
    assert lazy[1] == EmbeddingOutput([2.0, 3.0]) and repr(lazy[1]) == "EmbeddingOutput(embedding=[2.0, 3.0])"
    fresh = EmbeddingOutput.of_rows(np.zeros((1000, 64), dtype=np.float32))[0]
    assert len(pickle.dumps(fresh)) < 2000  # its own floats, not the whole block
    assert pickle.loads(pickle.dumps(fresh)) == EmbeddingOutput([0.0] * 64) and fresh.hidden_size == 64
    fresh.embedding = [1.0]
    assert fresh.embedding == [1.0]


def test_results_keep_input_order_across_batches(minilm):
    texts = [f"sentence number {i} " * (1 + i % 7) for i in range(40)]
    minilm.engine.max_batch_tokens, budget = 64, minilm.engine.max_batch_tokens
    try:
        outputs = minilm.embed(texts)
    finally:
        minilm.engine.max_batch_tokens = budget
    want = minilm.embed(texts)
    for a, b in zip(outputs, want):
        assert a.prompt_token_ids == b.prompt_token_ids
        torch.testing.assert_close(torch.tensor(a.outputs.embedding), torch.tensor(b.outputs.embedding), atol=1e-5, rtol=1e-4)
    assert [b.tolist() for b in _budget(minilm, 6).batches([3, 5, 1, 5, 2])] == [[1], [3], [0, 4, 2]]


def _budget(llm, tokens):
    from poolkit.runtime.engine import Engine

    return Engine(llm.model, max_batch_tokens=tokens)


def test_one_parameters_object_for_many_prompts_is_checked_once(minilm, monkeypatch):
    task = minilm.model.task("embed")
    calls = []
    original = type(task).verify

    def counting(self, params, model):
        calls.append(params)
        return original(self, params, model)

    monkeypatch.setattr(type(task), "verify", counting)
    params = minilm.check_params(PoolingParams(), 500, "embed")
    assert len(params) == 500 and all(p is params[0] for p in params) and len(calls) == 1


def test_truncation_comes_back_with_every_kind_of_result(minilm):
    """Callers count cut inputs from the results (issue 29, item 6): encode, embed, score, rerank."""
    long, cut = "word " * 600, {"truncate_prompt_tokens": -1}
    assert [o.truncated for o in minilm.encode(["short", long], pooling_task="embed", tokenization_kwargs=cut)] == [False, True]
    scores = minilm.score("short", ["fine", long], tokenization_kwargs=cut)
    assert [s.truncated for s in scores] == [False, True]
    ranked = minilm.rerank("short", ["fine", long], tokenization_kwargs=cut)
    assert {r.index: r.truncated for r in ranked} == {0: False, 1: True}


def test_entities_say_whether_their_input_was_cut(tmp_path):
    from tiny_models import build_modernbert

    from poolkit import LLM

    llm = LLM(str(build_modernbert(tmp_path / "ner", "token_classify")))
    short, long = "paris is the capital of france", "paris is the capital of france " * 40
    found = llm.entities([short, long], tokenization_kwargs={"truncate_prompt_tokens": -1})
    assert [spans.truncated for spans in found] == [False, True]
    assert all(isinstance(e.label, str) for spans in found for e in spans)


def test_small_cpu_batches_run_on_one_thread_and_give_the_same_numbers(minilm, monkeypatch):
    """A batch below ONE_THREAD_WORK (tokens x hidden size squared) runs on the calling thread alone,
    a larger one on the threads configured; the count is restored after either, and the numbers
    do not depend on it beyond float rounding."""
    import poolkit.runtime.engine as engine_module

    arch = minilm.engine.model.architecture
    seen: list[tuple[int, int]] = []
    forward = arch.forward

    def spy(batch):
        seen.append((batch.num_tokens, torch.get_num_threads()))
        return forward(batch)

    before = torch.get_num_threads()
    if before < 2:
        torch.set_num_threads(2)
    try:
        threads = torch.get_num_threads()
        monkeypatch.setattr(arch, "forward", spy)
        small = minilm.embed(TEXTS[:2])
        assert len(seen) == 1 and seen[0][0] * arch.hidden_size**2 < engine_module.ONE_THREAD_WORK and seen[0][1] == 1
        assert torch.get_num_threads() == threads
        monkeypatch.setattr(engine_module, "ONE_THREAD_WORK", 1)  # every batch is large now
        large = minilm.embed(TEXTS[:2])
        assert seen[1][1] == threads and torch.get_num_threads() == threads
        for a, b in zip(small, large):
            assert torch.nn.functional.cosine_similarity(
                torch.tensor(a.outputs.embedding), torch.tensor(b.outputs.embedding), dim=0
            ) > 0.99999
    finally:
        torch.set_num_threads(before)
