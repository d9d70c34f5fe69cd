"""EngineArgs: every load setting declared once, validated once, and derived by every surface."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from poolkit import LLM, EngineArgs, InvalidRequest
from poolkit.entrypoints.cli import app

runner = CliRunner()


def test_llm_keeps_its_resolved_settings(minilm_dir):
    llm = LLM(str(minilm_dir), pooler_config='{"pooling_type": "CLS"}', hf_overrides='{"is_matryoshka": true}', dtype=torch.float32)
    assert llm.args.pooler_config.pooling_type == "CLS"
    assert llm.args.hf_overrides == {"is_matryoshka": True}
    assert llm.args.dtype == "float32" and llm.model.args is llm.args
    again = LLM.from_args(llm.args)
    assert again.args == llm.args
    assert again.embed("hello")[0].outputs.embedding == llm.embed("hello")[0].outputs.embedding


def test_default_model_and_identity():
    args = EngineArgs()
    assert args.model == "sentence-transformers/all-MiniLM-L6-v2"
    assert EngineArgs(model=None) == args
    identity = EngineArgs(dtype="float32", pooler_config={"pooling_type": "MEAN"}).identity()
    assert set(identity) == {"dtype", "pooler_config"} and identity["pooler_config"]["pooling_type"] == "MEAN"


@pytest.mark.parametrize(
    "values, message",
    [
        ({"runner": "generate"}, "runner 'generate' is not supported: poolkit runs pooling models"),
        ({"convert": "reward"}, "convert 'reward' is not one of auto, none, embed, classify"),
        ({"hf_overrides": "{nope"}, "hf_overrides is not valid JSON"),
        ({"hf_overrides": "[1]"}, "hf_overrides must be a dict, got list"),
        ({"pooler_config": "{nope"}, "pooler_config is not valid JSON"),
        ({"pooler_config": {"pooling_type": "CLS", "bogus": 1}}, "bogus"),
        ({"dtype": "int4"}, "unknown dtype 'int4'"),
        ({"device": "gpu:x"}, "unknown device 'gpu:x'"),
        ({"max_model_len": 0}, "max_model_len must be positive, got 0"),
        ({"max_batch_tokens": -5}, "max_batch_tokens must be positive, got -5"),
        ({"max_model_len": "many"}, "max_model_len: Input should be a valid integer"),
        ({"model": ""}, "model must be a name or a path"),
        ({"colour": "blue"}, "colour: Extra inputs are not permitted"),
    ],
)
def test_bad_settings_are_one_line_errors(values, message):
    with pytest.raises(InvalidRequest, match=message.replace("(", r"\(").replace("[", r"\[")) as info:
        EngineArgs(**values)
    assert "\n" not in str(info.value)


def test_vllm_engine_arguments_are_accepted_and_unknown_ones_refused():
    assert EngineArgs.build({"enforce_eager": True}, dtype="float32").dtype == "float32"
    with pytest.raises(InvalidRequest, match="unknown LLM argument\\(s\\): colour"):
        EngineArgs.build({"colour": "blue"})


@pytest.mark.parametrize("command", ["embed", "encode", "classify", "score", "rerank", "info", "serve"])
def test_every_model_command_offers_every_load_setting(command):
    """The CLI derives its load options from EngineArgs: one declaration, every command."""
    text = runner.invoke(app, [command, "--help"], env={"COLUMNS": "300"}).stdout
    for name in EngineArgs.model_fields:
        if name == "model" and command in ("info", "serve"):
            assert "model" in text.lower().split("usage:")[1].splitlines()[0]  # the positional argument
            continue
        assert "--" + name.replace("_", "-") in text, (command, name)


def test_cli_setting_errors_name_the_flag():
    result = runner.invoke(app, ["embed", "--hf-overrides", "[1]", "x"])
    assert result.exit_code == 1 and "Error: --hf-overrides must be a dict, got list" in result.stderr
    result = runner.invoke(app, ["info", "--max-model-len", "0"])
    assert result.exit_code == 1 and "Error: --max-model-len must be positive, got 0" in result.stderr
