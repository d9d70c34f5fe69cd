"""IO processors get the loaded model's context: ``bind(context)``, once per model, read-only.

Processors are registered through a real plugin object (:func:`poolkit.plugins.testing.plugin_registered`)
and run through ``LLM.encode({"data": ...}, pooling_task="plugin")``, the way users run them.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import pytest

from poolkit import LLM, IOContext, IOProcessor, PluginError, PoolingParams, Prompt, hookimpl
from poolkit.plugins import registry
from poolkit.plugins.testing import plugin_registered


class Probe(IOProcessor):
    """Reports what its context says about the model; counts its binds."""

    binds: ClassVar[list[str]] = []

    def bind(self, context):
        Probe.binds.append(context.model_name)
        return super().bind(context)

    def pre_process(self, data, request_id=None):
        return [Prompt(text=data)]

    def merge_pooling_params(self, params, task):
        return PoolingParams(task="embed")

    def post_process(self, outputs, request_id=None, data=None):
        context = self.context
        assert isinstance(context, IOContext)
        return {
            "model_name": context.model_name,
            "model_type": context.config.model_type,
            "max_model_len": context.max_model_len,
            "supported_tasks": context.supported_tasks,
            "tokens": context.tokenizer.convert_ids_to_tokens(outputs[0].prompt_token_ids),
        }


class Vandal(Probe):
    """Tries to change the model through its context."""

    def post_process(self, outputs, request_id=None, data=None):
        context = self.context
        context.tokenizer.truncation_side = "left"
        context.tokenizer.add_tokens(["vandalized"])
        context.config.model_type = "vandalized"
        context.config.hidden_size = 1
        try:
            context.model_name = "vandalized"
        except dataclasses.FrozenInstanceError:
            return "frozen"
        return "reassigned"


class Lines(IOProcessor):
    """An old-style processor: registered as a configured instance, never reads a context."""

    def __init__(self, separator: str) -> None:
        self.separator = separator

    def pre_process(self, data, request_id=None):
        return [Prompt(text=line) for line in data.split(self.separator)]

    def merge_pooling_params(self, params, task):
        return PoolingParams(task="embed")

    def post_process(self, outputs, request_id=None, data=None):
        return [len(o.outputs.data) for o in outputs]


class Vocabulary(IOProcessor):
    """Overrides ``bind`` to build per-model state once, from the tokenizer."""

    def __init__(self, vocab: dict[str, int] | None = None) -> None:
        self.vocab = vocab

    def bind(self, context):
        return Vocabulary(dict(context.tokenizer.get_vocab()))

    def pre_process(self, data, request_id=None):
        return [Prompt(text=data)]

    def merge_pooling_params(self, params, task):
        return PoolingParams(task="embed")

    def post_process(self, outputs, request_id=None, data=None):
        return [word in self.vocab for word in data.split()]


class BadBind(Probe):
    def bind(self, context):
        return "not a processor"


class Processors:
    @hookimpl
    def poolkit_register_io_processors(self, register):
        register("probe", Probe)
        register("vandal", Vandal)
        register("lines", Lines(" | "))
        register("vocabulary", Vocabulary)
        register("bad_bind", BadBind)


@pytest.fixture
def processors(fresh_plugins):
    Probe.binds = []
    with plugin_registered(Processors(), "io_context_test"):
        yield


@pytest.fixture(scope="module")
def bert(minilm_dir):
    return LLM(str(minilm_dir))


@pytest.fixture(scope="module")
def roberta(tiny_encoders):
    return tiny_encoders["roberta"]


def run(llm: LLM, processor: str, data):
    llm.io_processor_plugin = processor
    (out,) = llm.encode({"data": data}, pooling_task="plugin")
    return out.outputs


def test_context_describes_the_model(processors, bert, minilm_dir):
    got = run(bert, "probe", "Hello world")

    assert got == {
        "model_name": str(minilm_dir),
        "model_type": "bert",
        "max_model_len": 256,
        "supported_tasks": ("embed", "token_embed"),
        "tokens": ["[CLS]", "hello", "world", "[SEP]"],
    }
    assert registry("io_processor").get("probe").context is None  # the registered instance stays unbound


def test_one_processor_serves_two_models_with_their_own_context(processors, bert, minilm_dir, roberta):
    other = LLM(str(roberta))
    text = "the zebra"

    first = run(bert, "probe", text)
    second = run(other, "probe", text)
    again = run(bert, "probe", text)

    assert first == again
    assert (first["model_name"], first["model_type"], first["max_model_len"]) == (str(minilm_dir), "bert", 256)
    assert (second["model_name"], second["model_type"], second["max_model_len"]) == (str(roberta), "roberta", 128)
    for llm, got in ((bert, first), (other, second)):
        ids = llm.encode(text, pooling_task="embed")[0].prompt_token_ids
        assert got["tokens"] == llm.get_tokenizer().convert_ids_to_tokens(ids)
    assert first["tokens"] != second["tokens"]
    assert Probe.binds == [str(minilm_dir), str(roberta)]  # bound once per model, not per request


def test_context_is_read_only(processors, minilm_dir):
    llm = LLM(str(minilm_dir))
    tokenizer, config = llm.model.tokenizer, llm.model.hf_config
    before = (tokenizer.truncation_side, len(tokenizer), config.model_type, config.hidden_size)
    (expected,) = llm.embed("vandalized text")

    assert run(llm, "vandal", "vandalized text") == "frozen"

    assert (tokenizer.truncation_side, len(tokenizer), config.model_type, config.hidden_size) == before
    assert llm.get_tokenizer() is tokenizer and llm.model.hf_config is config
    (after,) = llm.embed("vandalized text")
    assert after.prompt_token_ids == expected.prompt_token_ids
    assert after.outputs.embedding == pytest.approx(expected.outputs.embedding)


def test_old_style_processors_work_unchanged(processors, bert):
    assert run(bert, "lines", "one | two | three") == [384, 384, 384]
    assert registry("io_processor").get("lines").separator == " | "


def test_bind_can_build_per_model_state(processors, bert):
    assert run(bert, "vocabulary", "hello qwxzv") == [True, False]
    assert registry("io_processor").get("vocabulary").vocab is None


def test_bind_must_return_an_io_processor(processors, bert):
    with pytest.raises(PluginError, match=r"^IO processor 'bad_bind': bind\(\) must return a poolkit.IOProcessor, got str$"):
        run(bert, "bad_bind", "text")
