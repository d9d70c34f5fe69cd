"""Scorers are a registry kind: score and rerank ask the registry instead of branching on model kinds."""

from __future__ import annotations

import types

import pytest
import torch

from poolkit import InvalidRequest, Scorer, hookimpl
from poolkit.plugins import registry
from poolkit.plugins.testing import plugin_registered


class DotScorer(Scorer):
    """The docs' example: the dot product of unnormalised embeddings."""

    name = "dot"
    priority = 15

    def supports(self, model):
        return "embed" in model.supported_tasks()

    def score(self, runner, first, second, pooling_params, **kwargs):
        task, prompts, params = runner.prepare(first + second, {"use_activation": False}, "embed")
        results = runner.run(task, prompts, params)
        a, b = results[: len(first)], results[len(first) :]
        return [(float(torch.dot(x, y)), x_ids + y_ids) for (x, x_ids), (y, y_ids) in zip(a, b)]


def _plugin(**hooks):
    return types.SimpleNamespace(**{name: hookimpl(fn) for name, fn in hooks.items()})


def test_builtin_scorers_are_registered():
    assert set(registry("scorer").names()) >= {"cross-encoder", "bi-encoder", "late-interaction"}
    assert registry("scorer").entry("bi-encoder").plugin == "builtin_scorers"


def test_a_plugin_scorer_takes_over_by_priority(minilm):
    def poolkit_register_scorers(register):
        register("dot", DotScorer)

    before = minilm.score("a cat", ["a cat sat", "stocks fell"])
    with plugin_registered(_plugin(poolkit_register_scorers=poolkit_register_scorers), "dot-scorer"):
        assert minilm.score_type == "dot"
        scored = minilm.score("a cat", ["a cat sat", "stocks fell"])
        raw = minilm.encode(["a cat", "a cat sat"], {"use_activation": False}, pooling_task="embed")
        expected = float(torch.dot(raw[0].outputs.data, raw[1].outputs.data))
        assert scored[0].outputs.score == pytest.approx(expected, rel=1e-5)
        assert minilm.rerank("a cat", ["stocks fell", "a cat sat"])[0].index == 1
        with pytest.raises(InvalidRequest, match="chat_template and instruction apply to cross-encoder or listwise scoring only"):
            minilm.score("a", "b", instruction="judge")
    assert minilm.score_type == "bi-encoder"
    assert [o.outputs.score for o in minilm.score("a cat", ["a cat sat", "stocks fell"])] == [o.outputs.score for o in before]


def test_no_scorer_is_a_clear_error(minilm):
    class Nothing(Scorer):
        name = "nothing"
        priority = 99

        def supports(self, model):
            return False

        def refusal(self, model):
            return f"model '{model.name}' is not for scoring here"

    def poolkit_register_scorers(register):
        register("nothing", Nothing)

    with plugin_registered(_plugin(poolkit_register_scorers=poolkit_register_scorers), "nothing-scorer"):
        assert minilm.score_type == "bi-encoder"  # a scorer that refuses is passed over
    original = registry("scorer").get("bi-encoder").supports
    try:
        registry("scorer").get("bi-encoder").supports = lambda model: False
        with pytest.raises(InvalidRequest, match="supports no scoring; supported tasks: embed, token_embed"):
            minilm.score("a", "b")
    finally:
        registry("scorer").get("bi-encoder").supports = original


def test_default_task_follows_the_tasks_ranks(minilm):
    assert minilm.default_task == "embed"
    assert registry("task").get("embed").default_rank < registry("task").get("token_embed").default_rank
    assert minilm.plugin_task == "plugin"


def test_pairing_and_estimates_are_the_llms(minilm):
    assert minilm.pair("q", ["a", "b"]) == (["q", "q"], ["a", "b"])
    with pytest.raises(InvalidRequest, match="Input lengths must be either 1:1, 1:N or N:N"):
        minilm.pair(["a", "b"], ["c", "d", "e"])
    with pytest.raises(InvalidRequest, match="At least one text_pair element must be given"):
        minilm.pair("q", [])
    assert minilm.estimate_pair_tokens(["q" * 40], ["d" * 400]) == 10 + 100 + 3
    with pytest.raises(InvalidRequest, match=r"truncate_prompt_tokens value is greater than max_model_len\. Please request a smaller truncation size\."):
        minilm.prepare("x", {"truncate_prompt_tokens": 9999}, pooling_task="embed")
