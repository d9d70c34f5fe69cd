"""vLLM's options that take several values after one flag (``nargs="+"`` in vLLM's parser).

``vllm serve MODEL --lora-modules a=/p/a b=/p/b`` (vLLM's docs, ``docs/features/lora.md``) and
``--served-model-name a b`` work with ``poolkit serve`` as written, beside poolkit's repeated flag
(``--lora-modules a=/p/a --lora-modules b=/p/b``). As in vLLM's parser, a flag's values run to the
next option. The spellings are vLLM's docs' and ``tests/entrypoints/openai/test_cli_args.py``'s;
each test reads what ``poolkit serve`` would serve, with the server's ``run`` replaced.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from poolkit.entrypoints.cli import app

#: vLLM's ``tests/entrypoints/openai/test_cli_args.py`` ``LORA_MODULE``.
LORA_MODULE = {"name": "module2", "path": "/path/to/module2", "base_model_name": "llama"}


def _serve(*argv: str):
    return CliRunner().invoke(app, ["serve", *argv])


def _adapters(call: dict) -> list[tuple]:
    return [(a.lora_name, a.lora_int_id, a.lora_path, a.base_model_name) for a in call["lora_modules"]]


def _error(result) -> str:
    assert result.exit_code == 1, result.output
    return result.stderr.splitlines()[0]


# -- --lora-modules (vLLM's FrontendArgs.lora_modules, LoRAParserAction) ------------------------------


def test_lora_modules_name_path_pairs_after_one_flag(served):
    """vLLM's docs: ``--lora-modules {name}={path} {name}={path}``."""
    result = _serve("./model", "--enable-lora", "--lora-modules", "sql-lora=/path/a", "other=/path/b")
    assert result.exit_code == 0, result.output
    (call,) = served
    assert _adapters(call) == [("sql-lora", 1, "/path/a", None), ("other", 2, "/path/b", None)]


def test_lora_modules_name_path_and_json_after_one_flag(served):
    """vLLM's ``test_multiple_valid_inputs``: the old and the JSON form after one flag."""
    result = _serve("./model", "--enable-lora", "--lora-modules", "module1=/path/to/module1", json.dumps(LORA_MODULE))
    assert result.exit_code == 0, result.output
    (call,) = served
    assert _adapters(call) == [("module1", 1, "/path/to/module1", None), ("module2", 2, "/path/to/module2", "llama")]


def test_lora_modules_both_spellings_together_in_order(served):
    """vLLM's list and poolkit's repeated flag add up, in the order given; vLLM's ``--lora_modules`` too."""
    result = _serve("./model", "--lora-modules", "a=/p/a", "b=/p/b", "--enable-lora", "--lora-modules", "c=/p/c", "d=/p/d")
    assert result.exit_code == 0, result.output
    assert [a[:3] for a in _adapters(served[0])] == [("a", 1, "/p/a"), ("b", 2, "/p/b"), ("c", 3, "/p/c"), ("d", 4, "/p/d")]
    result = _serve("./model", "--enable_lora", "--lora_modules", "a=/p/a", "b=/p/b", "--lora_modules", "c=/p/c")
    assert result.exit_code == 0, result.output
    assert [a[:3] for a in _adapters(served[1])] == [("a", 1, "/p/a"), ("b", 2, "/p/b"), ("c", 3, "/p/c")]


def test_lora_modules_empty_value_is_no_adapter(served):
    """vLLM's ``test_empty_values``: ``--lora-modules ""`` serves no adapter (its parser skips empty items)."""
    result = _serve("./model", "--lora-modules", "")
    assert result.exit_code == 0, result.output
    assert served[0]["lora_modules"] == []
    result = _serve("./model", "--enable-lora", "--lora-modules", "", "a=/p/a")
    assert result.exit_code == 0, result.output
    assert _adapters(served[1]) == [("a", 1, "/p/a", None)]


def test_a_bad_lora_module_in_a_list_is_a_one_line_error(served):
    result = _serve("./model", "--enable-lora", "--lora-modules", "a=/p/a", "invalid_format")
    assert _error(result) == "Error: --lora-modules takes name=path or a JSON object, got 'invalid_format'"
    assert served == []


# -- --served-model-name (vLLM's ModelConfig.served_model_name: str | list[str]) -----------------------


def test_served_model_names_after_one_flag_name_the_models_in_order(served):
    result = _serve("./m1", "--model", "./m2", "--served-model-name", "a", "b")
    assert result.exit_code == 0, result.output
    (call,) = served
    assert call["models"] == ["./m1", "./m2"] and call["served_model_name"] == ["a", "b"]
    result = _serve("./m1", "--model", "./m2", "--model", "./m3", "--served_model_name", "a", "b", "--served_model_name", "c")
    assert result.exit_code == 0, result.output
    assert served[1]["models"] == ["./m1", "./m2", "./m3"] and served[1]["served_model_name"] == ["a", "b", "c"]


def test_several_names_for_one_model_is_a_one_line_error(served):
    """vLLM answers to every name of ``--served-model-name a b``; poolkit names each model once."""
    line = _error(_serve("./model", "--served-model-name", "a", "b"))
    assert line.startswith("Error: 2 --served-model-name for 1 model: ")
    assert "vLLM's several names for one model are not supported" in line
    assert served == []


def test_a_value_list_ends_at_the_next_option_or_double_dash(served):
    result = _serve("--served-model-name", "a", "b", "--port", "9001", "./m1", "--model", "./m2")
    assert result.exit_code == 0, result.output
    assert served[0]["models"] == ["./m1", "./m2"] and served[0]["served_model_name"] == ["a", "b"]
    assert served[0]["port"] == 9001
    result = _serve("--model", "./m2", "--served-model-name", "a", "b", "--", "./m1")
    assert result.exit_code == 0, result.output
    assert served[1]["models"] == ["./m1", "./m2"] and served[1]["served_model_name"] == ["a", "b"]


def test_model_after_the_names_is_one_of_them_as_in_vllm(served):
    """vLLM refuses ``vllm serve --served-model-name NAME MODEL`` (``test_served_model_name_parsing``):
    the list takes MODEL too. poolkit says to give MODEL first."""
    line = _error(_serve("--served-model-name", "name", "./model"))
    assert line.startswith("Error: 2 --served-model-name for 1 model: ")
    assert line.endswith("give MODEL first: poolkit serve MODEL --served-model-name NAME")
    assert served == []


def test_an_equals_sign_gives_one_value(served):
    """``--flag=value`` is one value, as argparse's: what follows is MODEL."""
    result = _serve("--served-model-name=a", "./m1", "--model", "./m2", "--served-model-name", "b")
    assert result.exit_code == 0, result.output
    assert served[0]["models"] == ["./m1", "./m2"] and served[0]["served_model_name"] == ["a", "b"]
    result = _serve("--allowed-media-domains=img.example.com", "./m1", "--allowed-media-domains", "a.example.com", "b.example.com")
    assert result.exit_code == 0, result.output
    assert served[1]["models"] == ["./m1"]
    assert served[1]["allowed_media_domains"] == ["img.example.com", "a.example.com", "b.example.com"]


# -- --allowed-media-domains (vLLM's ModelConfig.allowed_media_domains: list[str]) ---------------------


def test_allowed_media_domains_after_one_flag(served):
    result = _serve("./model", "--allowed-media-domains", "upload.wikimedia.org", "images.example.com", "--port", "9002")
    assert result.exit_code == 0, result.output
    (call,) = served
    assert call["allowed_media_domains"] == ["upload.wikimedia.org", "images.example.com"] and call["port"] == 9002


# -- --api-key (vLLM's FrontendArgs.api_key: list[str]) -----------------------------------------------


def test_several_api_keys_are_a_one_line_error_that_does_not_echo_them(served):
    result = _serve("./model", "--api-key", "secret-one", "secret-two")
    line = _error(result)
    assert line.startswith("Error: --api-key takes one value in poolkit serve, got 2")
    assert "secret" not in result.output
    assert served == []
    result = _serve("./model", "--api-key", "k", "--port", "9003")
    assert result.exit_code == 0, result.output
    assert served[0]["api_key"] == "k"


# -- every command that takes the flags, and the console script --------------------------------------


def test_every_command_with_such_a_flag_goes_through_the_same_rewrite():
    """bench-serve (a plugin's command) takes ``--served-model-name`` as serve does."""
    import typer

    from poolkit.entrypoints.cli.options import spread_values
    from poolkit.plugins import get_manager

    get_manager().register_commands(app)
    bench_serve = typer.main.get_command(app).commands["bench-serve"]
    assert spread_values(bench_serve, ["M", "--served-model-name", "a", "b", "-c", "4", "--model", "m2"]) == [
        "M", "--served-model-name", "a", "--served-model-name", "b", "-c", "4", "--model", "m2",
    ]
    # a value of another option is never read as a flag
    assert spread_values(bench_serve, ["--endpoint", "--served-model-name", "x", "y"]) == [
        "--endpoint", "--served-model-name", "x", "y",
    ]


def test_console_script_refuses_several_keys_before_loading():
    result = subprocess.run(
        [sys.executable, "-m", "poolkit", "serve", "./no-such-model", "--api-key", "k1", "k2"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines()[0].startswith("Error: --api-key takes one value in poolkit serve, got 2")


def test_a_server_started_with_names_after_one_flag_answers_to_them(minilm_dir, tmp_path):
    """End to end: ``python -m poolkit serve MODEL --model MODEL2 --served-model-name a b``."""
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    from poolkit.entrypoints.bench.load import StartedServer
    from poolkit.config.settings import EngineArgs

    server = StartedServer(
        EngineArgs(model=str(minilm_dir)), str(tmp_path / "server.log"), models=[str(minilm_dir)],
        serve_flags=["--served-model-name", "first", "second", "-q"],  # vLLM's spelling, as given
    )
    try:
        models = httpx.get(f"{server.url}/v1/models", timeout=10).json()["data"]
        assert [m["id"] for m in models] == ["first", "second"]
        got = httpx.post(f"{server.url}/v1/embeddings", json={"model": "second", "input": "hi"}, timeout=60).json()
        assert got["model"] == "second" and len(got["data"][0]["embedding"]) == 384
    finally:
        server.stop()
