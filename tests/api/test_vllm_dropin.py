"""vLLM's offline API, as its users and tests call it (issue 13): prompts, spellings, defaults, limits."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from typer.testing import CliRunner

import poolkit
from poolkit import LLM, InvalidRequest, PoolerConfig, PoolingParams
from poolkit.entrypoints.cli import app

LONG = "the quick brown fox jumps over the lazy dog " * 60  # ~540 tokens, over MiniLM's 256


@pytest.fixture(scope="module")
def ner(tmp_path_factory):
    from tiny_models import build_classifier

    path = build_classifier(tmp_path_factory.mktemp("ner") / "ner", "bert", num_labels=3, token=True,
                            id2label={0: "O", 1: "B-PER", 2: "I-PER"}, label2id={"O": 0, "B-PER": 1, "I-PER": 2})
    return LLM(str(path), dtype="float32")


def test_token_id_lists_are_prompts(minilm):
    ids = minilm.get_tokenizer()("Hello world")["input_ids"]
    by_text = minilm.embed("Hello world")[0].outputs.embedding
    (flat,) = minilm.embed(ids)  # vLLM reads one flat list of ints as one tokenized prompt
    nested = minilm.embed([ids, ids[:2] + ids[-1:]])
    assert flat.prompt_token_ids == ids and flat.outputs.embedding == pytest.approx(by_text, abs=1e-6)
    assert len(nested) == 2 and nested[0].outputs.embedding == pytest.approx(by_text, abs=1e-6)
    with pytest.raises(InvalidRequest, match="prompt 1 is an empty list of token ids"):
        minilm.embed([ids, []])


def test_model_config_has_what_vllm_tests_read(minilm):
    config = minilm.model_config
    assert config.max_model_len == 256 and config.embedding_size == 384 and config.get_hidden_size() == 384
    assert config.is_matryoshka is False and config.runner_type == "pooling"
    assert config.hf_config.model_type == "bert" and config.get_vocab_size() == 30522
    assert isinstance(config.pooler_config, PoolerConfig)


def test_vllm_output_classes_are_exported():
    for name in ("PoolingOutput", "EmbeddingOutput", "ClassificationOutput", "ScoringOutput", "PoolingRequestOutput",
                 "EmbeddingRequestOutput", "ClassificationRequestOutput", "ScoringRequestOutput"):
        assert isinstance(getattr(poolkit, name), type), name


def test_vllm_spellings_of_task_and_activation():
    assert PoolerConfig(pooling_task="token_classify").task == "token_classify"
    assert PoolingParams(pooling_task="embed").task == "embed"
    with pytest.raises(InvalidRequest, match="'pooling_task' and 'task' disagree"):
        PoolerConfig(pooling_task="embed", task="classify")
    with pytest.warns(DeprecationWarning, match="field 'activation' is deprecated; use 'use_activation'"):
        assert PoolingParams(activation=False).use_activation is False
    with pytest.warns(DeprecationWarning, match="PoolerConfig field 'activation' is deprecated"):
        assert PoolerConfig(activation=True).use_activation is True


def test_reward_is_a_deprecated_name_of_token_classify(ner):
    assert "reward" not in ner.supported_tasks and "token_classify" in ner.supported_tasks
    expected = ner.encode("John Smith", pooling_task="token_classify")[0].outputs.data
    with pytest.warns(DeprecationWarning, match="task 'reward' is deprecated; use 'token_classify'"):
        got = ner.encode("John Smith", pooling_task="reward")[0].outputs.data
    assert torch.equal(got, expected)


def test_encode_without_a_task_runs_the_models_default(ner, minilm, caplog):
    with caplog.at_level(logging.WARNING, logger="poolkit.api.llm"):
        rewards = ner.encode("John Smith")
    assert "default task 'token_classify'" in caplog.text
    assert torch.equal(rewards[0].outputs.data, ner.encode("John Smith", pooling_task="token_classify")[0].outputs.data)
    assert minilm.default_task == "embed" and ner.default_task == "token_classify"


def test_over_length_input_is_refused_unless_truncation_is_asked(minilm):
    with pytest.raises(InvalidRequest, match=r"maximum context length is 256 tokens\. .* Please reduce the length of the input prompt"):
        minilm.embed(["short", LONG])
    ids = minilm.get_tokenizer()(LONG)["input_ids"]
    with pytest.raises(InvalidRequest, match="Please reduce the length of the input prompt"):
        minilm.embed([ids])
    kept = minilm.embed(LONG, tokenization_kwargs={"truncate_prompt_tokens": -1})[0]
    assert len(kept.prompt_token_ids) == 256
    assert len(minilm.embed(LONG, PoolingParams(truncate_prompt_tokens=10))[0].prompt_token_ids) == 10
    left = minilm.embed(LONG, PoolingParams(truncation_side="left"))[0]  # a side asks for truncation too
    assert len(left.prompt_token_ids) == 256 and left.prompt_token_ids != kept.prompt_token_ids
    exactly = minilm.get_tokenizer()("word " * 254)["input_ids"]
    assert len(exactly) == 256 and minilm.embed([exactly])[0].prompt_token_ids == exactly  # at the limit is fine


def test_a_limit_below_the_models_refuses_beyond_it(minilm_dir):
    llm = LLM(str(minilm_dir), max_model_len=16)
    assert llm.model_config.max_model_len == 16
    with pytest.raises(InvalidRequest, match="maximum context length is 16 tokens"):
        llm.embed("word " * 20)


def test_the_cli_truncates_and_says_how_many(minilm_dir):
    result = CliRunner().invoke(app, ["embed", "--model", str(minilm_dir), "-q", "short", LONG, LONG])
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 3
    assert "2 of 3 inputs were longer than the model's limit of 256 tokens and were truncated" in result.stderr
    quiet = CliRunner().invoke(app, ["embed", "--model", str(minilm_dir), "-q", "short"])
    assert "truncated" not in quiet.stderr


def test_corpus_jobs_truncate_and_count(minilm, tmp_path):
    from poolkit.entrypoints.jobs import run_job

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": LONG if i % 2 else "short"}) + "\n" for i in range(6)))
    summary = run_job(minilm, src, tmp_path / "out.jsonl")
    assert summary.rows == 6 and summary.truncated == 3


def test_cli_entities(ner):
    path = str(ner.model.path)
    result = CliRunner().invoke(app, ["encode", "--task", "token_classify", "--entities", "--model", path,
                                      "--dtype", "float32", "-q", "John Smith lives here"])
    assert result.exit_code == 0, result.stderr
    (row,) = [json.loads(line) for line in result.stdout.splitlines()]
    expected = [vars(e) for e in ner.entities(["John Smith lives here"])[0]]
    assert row["index"] == 0 and len(row["entities"]) == len(expected)
    for got, want in zip(row["entities"], expected):
        assert {k: v for k, v in got.items() if k != "score"} == {k: v for k, v in want.items() if k != "score"}
        assert got["score"] == pytest.approx(want["score"], abs=1e-5)
    wrong = CliRunner().invoke(app, ["encode", "--task", "embed", "--entities", "--model", path, "-q", "x"])
    assert wrong.exit_code == 1 and "--entities applies to --task token_classify only" in wrong.stderr


@pytest.mark.parametrize("value", [0, -1, True, False, 1.5, "2"])
def test_late_chunk_size_must_be_a_positive_integer(value):
    # vllm tests/test_pooling_params.py::test_late_chunk_size_rejects_non_positive_integers
    with pytest.raises(InvalidRequest, match="positive integer"):
        PoolingParams(late_chunking_params=poolkit.LateChunkingParams(chunk_size=value))


def test_late_chunking_is_a_token_embed_parameter(minilm):
    chunked = PoolingParams(late_chunking_params={"chunk_size": 2})  # the JSON form
    assert chunked.late_chunking_params == poolkit.LateChunkingParams(2)
    with pytest.raises(InvalidRequest, match="Task 'embed' only supports"):
        minilm.embed("a b c", pooling_params=chunked)
    (out,) = minilm.encode("a b c", pooling_task="token_embed", pooling_params=chunked)
    assert out.outputs.data.shape == (3, 384)  # [CLS] a | b c | [SEP]
    assert [c.token_range for c in out.late_chunking.chunks] == [(0, 2), (2, 4), (4, 5)]
    assert [c.char_range for c in out.late_chunking.chunks] == [(0, 1), (2, 5), None]
    # vLLM's prefix-cache switch is accepted and changes nothing (poolkit has no prefix cache).
    (plain,) = minilm.encode("a b c", pooling_task="token_embed", pooling_params=PoolingParams(skip_reading_prefix_cache=False))
    assert plain.late_chunking is None and plain.outputs.data.shape == (5, 384)


def test_score_limits_cut_queries_and_documents_to_their_first_tokens(minilm):
    query, doc = "what is the capital of france", "paris is the capital and largest city of france"
    (whole,) = minilm.score(query, doc)
    (cut,) = minilm.score(query, doc, PoolingParams(extra_kwargs={"max_tokens_per_query": 2, "max_tokens_per_doc": 3}))
    (reference,) = minilm.score("what is", "paris is the")
    assert cut.outputs.score == pytest.approx(reference.outputs.score, abs=1e-6)
    assert cut.outputs.score != pytest.approx(whole.outputs.score, abs=1e-3)
    assert len(cut.prompt_token_ids) == (2 + 2) + 1 + (3 + 2)  # query, vLLM's pad token, document
    for bad in (0, -5, True, 2.5):
        with pytest.raises(InvalidRequest, match="max_tokens_per_doc must be a positive integer"):
            minilm.score(query, doc, PoolingParams(extra_kwargs={"max_tokens_per_doc": bad}))
    with pytest.raises(InvalidRequest, match=r"max_tokens_per_query \(256\) must be less than max_model_len \(256\)"):
        minilm.score(query, doc, {"extra_kwargs": {"max_tokens_per_query": 256}})
