"""``poolkit index`` / ``poolkit search``: an index job killed and resumed, searched from the CLI,
its errors one line each, and the Ray Data path writing the same table.

The model is the tiny HF_ColBERT with colbert-ai's ``artifact.metadata`` (markers and query
expansion; see tests/api/test_index.py).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("lancedb", reason="pip install 'poolkit[index]'")

from poolkit import LLM, LateInteractionIndex  # noqa: E402
from poolkit.entrypoints.cli import app  # noqa: E402
from poolkit.entrypoints.index_job import run_index_job  # noqa: E402

runner = CliRunner()
MARKERS = {"query_token_id": "<s>", "doc_token_id": "</s>", "query_maxlen": 32, "doc_maxlen": 64}
WORDS = "paris is the capital of france rome italy berlin germany quick brown fox jumps over lazy dog".split()


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    from tiny_models import build_stanford_colbert

    return str(build_stanford_colbert(tmp_path_factory.mktemp("index-cli") / "colbert", metadata=MARKERS))


def corpus(path: Path, n: int) -> Path:
    texts = [" ".join(WORDS[(i * 5 + j) % len(WORDS)] for j in range(3 + i % 11)) for i in range(n)]
    path.write_text("".join(json.dumps({"id": f"doc-{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    return path


def table_rows(path: Path, llm: LLM) -> dict:
    table = LateInteractionIndex.open(path, llm).table.to_arrow()
    return dict(zip(table.column("id").to_pylist(), (np.asarray(v) for v in table.column("vector").to_pylist())))


JOB_SCRIPT = textwrap.dedent(
    """
    import sys
    from poolkit import LLM
    from poolkit.entrypoints.index_job import run_index_job
    model, src, out = sys.argv[1:4]
    summary = run_index_job(LLM(model, dtype="float32"), src, out, token_pool_factor=2, chunk_rows=20)
    print("resumed", summary.resumed_rows, "written", summary.written)
    """
)


def kill_when(proc: subprocess.Popen, done: Callable[[], bool], within: float = 120) -> None:
    """SIGKILL ``proc`` once ``done()`` (or when it ends, or after ``within`` seconds)."""
    deadline = time.monotonic() + within
    while not done() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_killed_index_job_resumes_and_search_prints_the_python_hits(model, tmp_path):
    src = corpus(tmp_path / "corpus.jsonl", 400)
    out = tmp_path / "idx"
    kill_when(subprocess.Popen([sys.executable, "-c", JOB_SCRIPT, model, str(src), str(out)]),
              lambda: len(list(out.with_name("idx.parts").glob("part-*.jsonl"))) >= 4)
    assert not out.with_name("idx.job").exists()  # killed before it finished
    result = subprocess.run([sys.executable, "-c", JOB_SCRIPT, model, str(src), str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    _, resumed, _, written = result.stdout.split()
    assert int(resumed) >= 4 * 20 and int(resumed) + int(written) == 400  # finished chunks were not encoded again
    llm = LLM(model, dtype="float32")
    rows = table_rows(out, llm)
    assert sorted(rows) == sorted(f"doc-{i}" for i in range(400))
    # the CLI finds it complete, and its search prints what the Python call finds
    again = runner.invoke(app, ["index", model, "--dtype", "float32", "-i", str(src), "--index", str(out), "--token-pool-factor", "2", "-q"])
    assert again.exit_code == 1 and "different settings" in again.stderr  # the CLI's job has other chunk settings
    cli = runner.invoke(app, ["search", "--index", str(out), "--query", "capital of france", "--query", "lazy dog", "--top-k", "3", "-f", "jsonl"])
    assert cli.exit_code == 0, cli.stderr
    printed = [json.loads(line) for line in cli.stdout.splitlines()]
    expected = LateInteractionIndex.open(out, llm).search(["capital of france", "lazy dog"], top_k=3)
    assert [(r["query"], r["rank"], r["id"]) for r in printed] == [(q, k, h.id) for q, hits in enumerate(expected) for k, h in enumerate(hits, 1)]
    assert np.allclose([r["score"] for r in printed], [h.score for hits in expected for h in hits], atol=1e-5)


def test_cli_index_then_complete_then_changed_input(model, tmp_path):
    src = corpus(tmp_path / "corpus.jsonl", 30)
    cmd = ["index", model, "--dtype", "float32", "-i", str(src), "--index", str(tmp_path / "idx"), "-q"]
    first = runner.invoke(app, cmd)
    assert first.exit_code == 0, first.stderr
    assert "30 documents, 30 encoded" in first.stderr
    assert "already complete" in runner.invoke(app, cmd).stderr
    corpus(src, 31)
    changed = runner.invoke(app, cmd)
    assert changed.exit_code == 1 and changed.stderr.startswith("Error: input 'corpus.jsonl' has changed")
    assert runner.invoke(app, cmd + ["--overwrite"]).exit_code == 0
    assert len(table_rows(tmp_path / "idx", LLM(model, dtype="float32"))) == 31


def test_cli_binary_index_searches_as_the_python_call(model, tmp_path):
    src = corpus(tmp_path / "corpus.jsonl", 30)
    out = tmp_path / "idx"
    cmd = ["index", model, "--dtype", "float32", "-i", str(src), "--index", str(out), "--precision", "binary", "-q"]
    assert runner.invoke(app, cmd).exit_code == 0
    assert LateInteractionIndex.read_identity(out).precision == "binary"
    again = runner.invoke(app, cmd[:-2] + ["int8", "-q"])
    assert again.exit_code == 1 and "different settings" in again.stderr  # the precision is part of the job
    cli = runner.invoke(app, ["search", "--index", str(out), "--query", "capital of france", "--top-k", "3", "-f", "jsonl"])
    assert cli.exit_code == 0, cli.stderr
    expected = LateInteractionIndex.open(out, LLM(model, dtype="float32")).search("capital of france", top_k=3)[0]
    assert [json.loads(line)["id"] for line in cli.stdout.splitlines()] == [h.id for h in expected]
    bad = runner.invoke(app, cmd[:-2] + ["int4", "-q"])
    assert bad.exit_code == 1 and bad.stderr.splitlines()[0] == "Error: precision must be one of float32, binary, int8, got 'int4'"


def test_a_kill_while_the_table_is_written_is_finished_by_the_next_run(model, tmp_path, monkeypatch):
    src = corpus(tmp_path / "corpus.jsonl", 60)
    llm = LLM(model, dtype="float32")
    real = LateInteractionIndex.add_vectors
    calls = []

    def dies_after_one_write(self, ids, vectors):
        if calls:
            raise KeyboardInterrupt  # as a kill: nothing after it runs
        calls.append(len(ids))
        real(self, ids, vectors)

    monkeypatch.setattr("poolkit.entrypoints.index_job.WRITE_ROWS", 25)
    monkeypatch.setattr(LateInteractionIndex, "add_vectors", dies_after_one_write)
    with pytest.raises(KeyboardInterrupt):
        run_index_job(llm, src, tmp_path / "idx", chunk_rows=20)
    monkeypatch.setattr(LateInteractionIndex, "add_vectors", real)
    summary = run_index_job(llm, src, tmp_path / "idx", chunk_rows=20)
    assert summary.resumed_rows == 60 and summary.written == 0
    assert sorted(table_rows(tmp_path / "idx", llm)) == sorted(f"doc-{i}" for i in range(60))


def test_errors_are_one_line(model, tmp_path, minilm_dir):
    def error(args):
        result = runner.invoke(app, args)
        assert result.exit_code == 1, result.stdout
        assert result.stderr.startswith("Error: ") and "Traceback" not in result.stderr
        return result.stderr.splitlines()[0]

    src = corpus(tmp_path / "corpus.jsonl", 5)
    base = ["index", model, "--dtype", "float32", "-i", str(src), "-q"]
    assert "does not exist" in error(["search", "--index", str(tmp_path / "nowhere"), "--query", "x"])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert error(["index", model, "-i", str(empty), "--index", str(tmp_path / "e"), "-q"]) == "Error: input file 'empty.jsonl' has no rows"
    assert error(base + ["--index", str(tmp_path / "p"), "--token-pool-factor", "0.5"]) == (
        "Error: --token-pool-factor must be >= 1, got 0.5"
    )
    assert runner.invoke(app, base + ["--index", str(tmp_path / "idx")]).exit_code == 0
    other = error(["search", str(minilm_dir), "--index", str(tmp_path / "idx"), "--query", "paris"])
    assert "was built with model" in other


@pytest.mark.ray
def test_ray_engine_writes_the_same_table(model, tmp_path, local_ray):
    """Pooled or not, Ray's actors give the index the rows a local job stores: the skiplist's tokens
    (punctuation, in every text here) left out, as LLM.score leaves them."""
    src = corpus(tmp_path / "corpus.jsonl", 24)
    src.write_text(src.read_text().replace('"}', ', and more."}'))
    llm = LLM(model, dtype="float32")
    for name, pooling in (("pooled", ["--token-pool-factor", "2"]), ("unpooled", [])):
        run_index_job(llm, src, tmp_path / f"local-{name}", token_pool_factor=2 if pooling else None)
        args = ["index", model, "--dtype", "float32", "-i", str(src), "--index", str(tmp_path / f"ray-{name}"),
                "--engine", "ray", *pooling, "-q"]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.stderr
        local, remote = table_rows(tmp_path / f"local-{name}", llm), table_rows(tmp_path / f"ray-{name}", llm)
        assert sorted(local) == sorted(remote)
        for key, vectors in local.items():
            assert np.allclose(vectors, remote[key], atol=1e-6)
    unpooled = table_rows(tmp_path / "ray-unpooled", llm)["doc-0"]
    tokens = llm.encode([json.loads(src.read_text().splitlines()[0])["text"]], pooling_task="token_embed",
                        tokenization_kwargs={"input_type": "document"})[0]
    assert len(unpooled) < len(tokens.prompt_token_ids)  # the comma and the full stop are not stored
