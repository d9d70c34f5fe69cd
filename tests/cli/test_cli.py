"""The CLI: data on stdout, one record per input with its index or id."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from poolkit.entrypoints.cli import app

runner = CliRunner()


# Tests of the default model (all-MiniLM-L6-v2): skipped where its package is absent, as the minilm fixtures are.
needs_minilm = pytest.mark.usefixtures("minilm_dir")


def records(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines()]


def test_embed_arguments_default_model(minilm):
    result = runner.invoke(app, ["embed", "Hello, my name is", "second text"])
    assert result.exit_code == 0, result.stderr
    rows = records(result.stdout)
    assert [r["index"] for r in rows] == [0, 1]
    expected = minilm.embed("Hello, my name is")[0].outputs.embedding
    assert rows[0]["embedding"] == pytest.approx(expected, abs=1e-6)


def test_embed_file_with_ids_and_plain_lines(tmp_path, minilm):
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": "doc-a", "text": "first"}\n\n{"id": 7, "text": "second"}\n')
    rows = records(runner.invoke(app, ["embed", "-i", str(src)]).stdout)
    assert [r["id"] for r in rows] == ["doc-a", 7]
    assert rows[1]["embedding"] == pytest.approx(minilm.embed("second")[0].outputs.embedding, abs=1e-6)
    plain = tmp_path / "in.txt"
    plain.write_text("alpha\nbeta\n")
    rows = records(runner.invoke(app, ["embed", "-i", str(plain)]).stdout)
    assert [r["index"] for r in rows] == [0, 1]


@needs_minilm
def test_embed_stdin_and_json_format():
    result = runner.invoke(app, ["embed", "-i", "-", "--format", "json"], input="one\ntwo\nthree\n")
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["index"] for r in rows] == [0, 1, 2] and len(rows[0]["embedding"]) == 384


@needs_minilm
def test_table_format():
    result = runner.invoke(app, ["embed", "--format", "table", "hello"])
    assert result.exit_code == 0 and "embedding" in result.stdout and "384" in result.stdout


@needs_minilm
def test_encode_token_embed():
    result = runner.invoke(app, ["encode", "--task", "token_embed", "hello world"])
    (row,) = records(result.stdout)
    assert len(row["data"]) == 4 and len(row["data"][0]) == 384  # [CLS] hello world [SEP]


def test_embed_options_reach_the_model(minilm_dir):
    result = runner.invoke(
        app,
        ["embed", "--model", str(minilm_dir), "--pooler-config", '{"pooling_type": "CLS", "use_activation": false}',
         "--hf-overrides", '{"is_matryoshka": true}', "--dimensions", "16", "--truncate-prompt-tokens", "5", "hi there"],
    )
    assert result.exit_code == 0, result.stderr
    (row,) = records(result.stdout)
    assert len(row["embedding"]) == 16
    assert abs(sum(v * v for v in row["embedding"]) - 1.0) > 1e-3


def test_info_shows_sources(minilm_dir):
    result = runner.invoke(app, ["info", str(minilm_dir), "--pooler-config", '{"use_activation": false}'])
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["architecture"] == "BertModel"
    assert info["tasks"]["embed"]["pooling_type"] == {"value": "MEAN", "source": "sentence-transformers 1_Pooling/config.json"}
    assert info["use_activation"] == {"value": False, "source": "pooler_config"}
    assert info["max_model_len"] == {"value": 256, "source": "sentence-transformers sentence_bert_config.json"}


def test_plugins_lists_builtins_with_all():
    plain = json.loads(runner.invoke(app, ["plugins"]).stdout)
    assert all(not p["builtin"] for p in plain)
    everything = json.loads(runner.invoke(app, ["plugins", "--all"]).stdout)
    bert = next(p for p in everything if p["name"] == "builtin_bert")
    assert bert["builtin"] and bert["status"] == "ok" and bert["distribution"] == "poolkit"
    assert {"BertModel", "RobertaModel", "XLMRobertaModel", "BertForSequenceClassification"} <= set(
        bert["provides"]["architecture"]
    )


@needs_minilm
def test_console_script_runs():
    result = subprocess.run(
        [sys.executable, "-m", "poolkit", "embed", "--format", "jsonl", "Hello, my name is"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    (row,) = records(result.stdout)
    assert row["index"] == 0 and len(row["embedding"]) == 384


def test_info_shows_what_applies_with_its_source(minilm_dir, tmp_path):
    """Issue 17: the activation of each task with its source; no transformers-default labels on a
    model without a classifier; no pooling type for a task that does not pool (sparse_embed)."""
    from tiny_models import build_classifier, build_masked_lm

    def info(*args: str) -> dict:
        result = runner.invoke(app, ["info", *args])
        assert result.exit_code == 0, result.stderr
        return json.loads(result.stdout)

    embedder = info(str(minilm_dir), "--pooler-config", '{"activation_fn": "identity"}')
    assert "num_labels" not in embedder and "id2label" not in embedder
    assert embedder["tasks"]["embed"]["activation_fn"] == {"value": "identity", "source": "pooler_config"}
    assert info(str(minilm_dir))["tasks"]["embed"]["activation_fn"] == {"value": "normalize", "source": "task default (embed)"}

    classifier = info(str(build_classifier(tmp_path / "clf", "bert", 1)))
    assert classifier["num_labels"] == {"value": 1, "source": "config.json"}
    assert classifier["tasks"]["classify"]["activation_fn"] == {
        "value": "sigmoid", "source": "default: sigmoid for one output, softmax for several"
    }
    regression = info(str(build_classifier(tmp_path / "reg", "bert", 1, problem_type="regression")))
    assert regression["tasks"]["classify"]["activation_fn"] == {"value": "identity", "source": "config.json problem_type (regression)"}

    sparse = info(str(build_masked_lm(tmp_path / "mlm")))["tasks"]["sparse_embed"]
    assert "pooling_type" not in sparse
    assert sparse["splade_pooling"] == {"value": "max", "source": "task default (sparse_embed)"}
    assert sparse["activation_fn"] == {"value": "relu", "source": "task default (sparse_embed)"}


# -- one rule for texts: the server's (poolkit.contracts.io.text_problem) ----------------------------------


@pytest.mark.parametrize(
    "args, stdin, message",
    [
        (["embed", ""], None, "Error: TEXT argument 1 is not a valid text: an empty string"),
        (["embed", "first", ""], None, "Error: TEXT argument 2 is not a valid text: an empty string"),
        (["embed", "-i", "-"], 'ok\n{"id": 2, "text": ""}\n', "Error: line 2 of stdin is not a valid text: an empty string"),
        (["score", "", "Paris is."], None, "Error: TEXT_1 is not a valid text: an empty string"),
        (["score", "query", "Paris is.", ""], None, "Error: TEXT argument 3 is not a valid text: an empty string"),
        (["rerank", "--query", "", "Paris is."], None, "Error: --query is not a valid text: an empty string"),
        (["rerank", "--query", "capital", "Paris is.", ""], None, "Error: TEXT argument 2 is not a valid text: an empty string"),
    ],
)
def test_an_empty_text_is_refused_as_the_server_refuses_it(args, stdin, message):
    result = runner.invoke(app, args, input=stdin)
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert result.stderr.splitlines()[0] == message


def test_a_file_names_the_line_of_an_empty_text_and_skips_blank_lines(tmp_path, minilm):
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": "a", "text": "first"}\n\n{"id": "b", "text": ""}\n')
    result = runner.invoke(app, ["embed", "-i", str(src)])
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == f"Error: line 3 of '{src}' is not a valid text: an empty string"
    plain = tmp_path / "in.txt"
    plain.write_text("alpha\n\n   \nbeta\n")  # blank lines separate texts
    result = runner.invoke(app, ["embed", "-i", str(plain)])
    assert result.exit_code == 0, result.stderr
    assert [r["index"] for r in records(result.stdout)] == [0, 1]
    assert len(minilm.embed("")[0].outputs.embedding) == 384  # the Python API keeps vLLM's behaviour


@pytest.mark.parametrize(
    "args, stdin",
    [(["embed"], ""), (["embed", "-i", "-"], "\n\n"), (["classify", "-i", "{empty}"], None)],
)
def test_no_input_says_what_the_command_takes(args, stdin, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    result = runner.invoke(app, [a.replace("{empty}", str(empty)) for a in args], input=stdin)
    assert result.exit_code == 1
    (line, *_) = result.stderr.splitlines()
    assert line.startswith("Error: no input: ") and line.endswith("; pass TEXT arguments, -i FILE, or pipe lines on stdin (-i -)")


@needs_minilm
def test_no_plugin_data_says_what_the_command_takes():
    result = runner.invoke(app, ["encode", "--task", "plugin", "-i", "-", "-q"], input="\n")
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == (
        "Error: no input: the input is empty; pass DATA arguments, -i FILE, or pipe JSON lines on stdin (-i -)"
    )


# -- the CLI itself ---------------------------------------------------------------------------------


def test_version():
    import poolkit

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"poolkit {poolkit.__version__}\n"


def _command_paths(command, path=()):
    yield path
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from _command_paths(sub, (*path, name))


def test_every_help_screen_shows_flags_without_a_type():
    """Typer's Rich panels printed ``--help <bool>``, ``--quiet <bool>``: every flag as if it took a value."""
    import re

    import typer

    from poolkit.plugins import get_manager

    get_manager().register_commands(app)  # bench and bench-serve come from a plugin
    paths = list(_command_paths(typer.main.get_command(app)))
    assert {(), ("embed",), ("plugins",), ("plugins", "new"), ("serve",), ("bench",), ("bench-serve",)} <= set(paths)
    for path in paths:
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, (path, result.output)
        text = result.stdout
        assert "<bool>" not in text, path
        assert re.search(r"^\s+--help\s+Show this message and exit\.$", text, re.MULTILINE), path
        assert not re.search(r"\[default: (None|False|True|Format\.)", text), path
    embed = runner.invoke(app, ["embed", "--help"], env={"COLUMNS": "200"}).stdout
    assert re.search(r"^\s+-q, --quiet\s+No progress bar", embed, re.MULTILINE)


def test_a_local_corpus_job_says_what_it_truncated_to(tmp_path, minilm_dir):
    """The job's summary names the length its inputs were cut to: the model's limit, or the one asked for."""
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": "long", "text": "word " * 2000}) + "\n" + json.dumps({"id": "short", "text": "hi"}) + "\n")
    for extra, words in (([], "1 truncated to the model's limit"), (["--truncate-prompt-tokens", "8"], "1 truncated to 8 tokens")):
        out = tmp_path / f"out{len(extra)}.jsonl"
        result = CliRunner().invoke(app, ["embed", "--model", str(minilm_dir), "-i", str(src), "-o", str(out), "-q", *extra])
        assert result.exit_code == 0, result.stderr
        assert words in result.stderr, result.stderr
