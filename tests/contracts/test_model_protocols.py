"""A loaded model is what the contracts say it is: ``PoolingModel`` and its tokenizer satisfy the
protocols that tasks, scorers, architectures and IO processors are typed against."""

from __future__ import annotations

from poolkit import LLM
from poolkit.contracts.architecture import LoadedModel
from poolkit.contracts.model import ModelInfo, Tokenizer
from poolkit.loading.model import PoolingModel


def test_a_pooling_model_is_a_loaded_model(tiny_encoders):
    model = LLM(str(tiny_encoders["bert"])).model
    assert isinstance(model, PoolingModel)
    assert isinstance(model, LoadedModel)
    assert isinstance(model, ModelInfo)
    assert isinstance(model.tokenizer, Tokenizer)


def test_the_protocols_are_checked_member_by_member():
    assert not isinstance(object(), ModelInfo)
    assert not isinstance(object(), LoadedModel)
    assert not isinstance(object(), Tokenizer)
