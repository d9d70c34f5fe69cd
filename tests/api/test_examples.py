"""The reference documents' Python examples run unchanged, apart from the import and the model."""

from __future__ import annotations

import pytest
import torch

import poolkit
from poolkit import LLM, PoolingParams

MODEL = "sentence-transformers/all-MiniLM-L6-v2"  # offline: the packaged model


def test_embed_example():
    llm = LLM(model=MODEL, runner="pooling")
    outputs = llm.embed("Hello, my name is")
    embeds = outputs[0].outputs.embedding
    assert isinstance(embeds, list) and len(embeds) == 384
    (output,) = llm.embed("Hello, my name is")
    assert output.outputs.embedding == embeds


def test_encode_example():
    llm = LLM(model=MODEL, runner="pooling")
    (output,) = llm.encode("Hello, my name is", pooling_task="embed")
    data = output.outputs.data
    assert isinstance(data, torch.Tensor) and data.shape == (384,)


def test_matryoshka_example():
    llm = LLM(model=MODEL, runner="pooling", trust_remote_code=True, hf_overrides={"is_matryoshka": True})
    outputs = llm.embed(["Follow the white rabbit."], pooling_params=PoolingParams(dimensions=32))
    assert len(outputs[0].outputs.embedding) == 32
    assert abs(torch.tensor(outputs[0].outputs.embedding).norm().item() - 1.0) < 1e-5


def test_runtime_pooler_and_activation_are_used(fresh_plugins):
    @poolkit.register_pooler("first_plus_last_test")
    def first_plus_last(hidden, batch):
        return hidden[batch.first_indices] + hidden[batch.last_indices]

    @poolkit.register_activation("double_test")
    def double(x):
        return x * 2

    base = LLM(model=MODEL, pooler_config={"pooling_type": "ALL", "use_activation": False})
    (tokens,) = base.encode("Hello there", pooling_task="token_embed")
    rows = tokens.outputs.data
    llm = LLM(model=MODEL, pooler_config={"pooling_type": "first_plus_last_test", "activation_fn": "double_test"})
    (out,) = llm.embed("Hello there")
    assert out.outputs.embedding == pytest.approx(((rows[0] + rows[-1]) * 2).tolist(), abs=1e-5)
    info = {p.name: p for p in poolkit.plugins.get_manager().plugin_infos()}["<runtime>"]
    assert "FIRST_PLUS_LAST_TEST" in info.provides["pooler"] and "double_test" in info.provides["activation"]
