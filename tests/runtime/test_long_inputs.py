"""Chunked processing of long inputs (enable_chunked_processing, max_embed_len)."""

from __future__ import annotations

import pytest
import torch

from poolkit import LLM, InvalidRequest, PoolingParams, Prompt

LONG = " ".join(f"word{i % 97} sentence number {i}" for i in range(300))


@pytest.fixture(scope="module")
def chunked(minilm_dir):
    return LLM(str(minilm_dir), pooler_config={"enable_chunked_processing": True})


def test_chunk_mean_equals_the_formula(chunked, minilm):
    (out,) = chunked.embed(LONG)
    ids = out.prompt_token_ids
    assert len(ids) > 3 * 256, "the input must need several chunks"
    cls, body, sep = ids[:1], ids[1:-1], ids[-1:]
    size = 256 - 2
    pieces = [body[k : k + size] for k in range(0, len(body), size)]
    chunks = minilm.embed([{"prompt_token_ids": cls + p + sep} for p in pieces])
    vectors = torch.tensor([c.outputs.embedding for c in chunks])
    weights = torch.tensor([len(p) for p in pieces], dtype=torch.float32).unsqueeze(1)
    expected = (vectors * weights).sum(0) / weights.sum()
    got = torch.tensor(out.outputs.embedding)
    assert torch.allclose(got, expected, atol=1e-5)
    assert got.norm().item() < 0.999  # vLLM's rule: the mean is not normalised again


def test_renormalized_mean(minilm_dir, chunked):
    renorm = LLM(str(minilm_dir), pooler_config={"enable_chunked_processing": True, "renormalize_chunked_mean": True})
    got = torch.tensor(renorm.embed(LONG)[0].outputs.embedding)
    plain = torch.tensor(chunked.embed(LONG)[0].outputs.embedding)
    assert abs(got.norm().item() - 1.0) < 1e-5
    assert torch.allclose(got, torch.nn.functional.normalize(plain, dim=0), atol=1e-6)


def test_short_inputs_and_explicit_truncation_are_unchanged(chunked, minilm):
    short = ["Hello, my name is", "A man is eating food."]
    got = torch.tensor([o.outputs.embedding for o in chunked.embed(short)])
    assert torch.allclose(got, torch.tensor([o.outputs.embedding for o in minilm.embed(short)]), atol=1e-6)
    truncated = chunked.embed(LONG, PoolingParams(truncate_prompt_tokens=-1))[0]
    assert len(truncated.prompt_token_ids) == 256
    plain = minilm.embed(LONG, PoolingParams(truncate_prompt_tokens=-1))[0]
    assert truncated.outputs.embedding == pytest.approx(plain.outputs.embedding, abs=1e-6)


def test_max_embed_len_rejects_longer_inputs(minilm_dir):
    llm = LLM(str(minilm_dir), pooler_config={"enable_chunked_processing": True, "max_embed_len": 600})
    assert len(llm.embed(" ".join(["word"] * 500))[0].prompt_token_ids) == 502
    with pytest.raises(InvalidRequest, match=r"prompt 1 is longer than max_embed_len \(600 tokens\)"):
        llm.embed(["short", LONG])
    huge = "lorem ipsum dolor sit amet " * 40000  # 1M characters: refused after reading ~600 tokens' worth
    with pytest.raises(InvalidRequest, match="longer than max_embed_len"):
        llm.embed(huge)


def test_million_characters_in_bounded_chunks(tiny_encoders):
    llm = LLM(str(tiny_encoders["bert"]), pooler_config={"enable_chunked_processing": True}, max_batch_tokens=4096)
    text = ("paris is the capital of france " * 40000)[:1_000_000]
    (out,) = llm.embed(text)
    assert len(out.prompt_token_ids) > 150_000
    assert len(out.outputs.embedding) == 32 and torch.isfinite(torch.tensor(out.outputs.embedding)).all()
    (encoded,) = llm.engine.tokenize([Prompt(text=text[:50_000])], [PoolingParams()], chunked=True)
    pieces = [chunk for chunk, _ in llm.engine.chunks(encoded)]
    assert max(len(c.token_ids) for c in pieces) == 128
    batches = llm.engine.batches([len(c.token_ids) for c in pieces])
    assert len(batches) > 1 and all(sum(len(pieces[i].token_ids) for i in b) <= 4096 for b in batches)
