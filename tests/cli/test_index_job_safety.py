"""``poolkit index`` loses nothing and ``poolkit search`` never uses the wrong model (issue 80, item 3).

- ``--overwrite`` replaces what the job made (its table, chunks and record) and nothing else: not
  another table of a LanceDB directory, not the input file given as ``--index``;
- a second job into an index being written is refused in one line, and writes nothing;
- a finished index whose data file was cut is named damaged (by the job and by ``search``), not
  "already complete";
- ``search`` without MODEL loads the model from the folder the index was built from, wherever it
  runs; a MODEL of the same name that is another model is refused.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from index_checks import files_holding, held_by_another_writer, retrained
from typer.testing import CliRunner

pytest.importorskip("lancedb", reason="pip install 'poolkit[index]'")

from poolkit import LLM, LateInteractionIndex  # noqa: E402
from poolkit.entrypoints.cli import app  # noqa: E402

from test_index_cli import corpus, model, table_rows  # noqa: E402,F401  (model: the module's tiny ColBERT fixture)

runner = CliRunner()


def index_cmd(model: str, src: Path, out: Path, *extra: str) -> list[str]:
    return ["index", model, "--dtype", "float32", "-i", str(src), "--index", str(out), "-q", *extra]


def one_line_error(result) -> str:
    assert result.exit_code == 1, result.stdout
    assert result.stderr.startswith("Error: ") and "Traceback" not in result.stderr
    return result.stderr.splitlines()[0]


def test_overwrite_keeps_another_table_of_the_database_and_the_old_documents_go(model, tmp_path):
    import lancedb

    db = tmp_path / "db"
    lancedb.connect(str(db)).create_table("users", data=[{"name": "ada", "age": 36}])
    old = tmp_path / "old.jsonl"
    old.write_text("".join(json.dumps({"id": f"secret-old-{i}", "text": f"paris {i}"}) + "\n" for i in range(8)))
    first = runner.invoke(app, index_cmd(model, old, db))  # into a database that holds another table
    assert first.exit_code == 0, first.stderr
    assert files_holding(db, b"secret-old-")
    again = runner.invoke(app, index_cmd(model, corpus(tmp_path / "corpus.jsonl", 12), db, "--overwrite"))
    assert again.exit_code == 0, again.stderr
    assert lancedb.connect(str(db)).open_table("users").to_arrow().to_pylist() == [{"name": "ada", "age": 36}]
    assert sorted(table_rows(db, LLM(model, dtype="float32"))) == sorted(f"doc-{i}" for i in range(12))
    assert files_holding(db, b"secret-old-") == []  # the replaced documents are gone from disk


def test_overwrite_never_deletes_a_file_or_a_table_poolkit_did_not_write(model, tmp_path):
    import lancedb

    src = corpus(tmp_path / "corpus.jsonl", 5)
    before = src.read_bytes()
    line = one_line_error(runner.invoke(app, index_cmd(model, src, src, "--overwrite")))
    assert line == f"Error: '{src}' is a file, not an index directory: choose another --index (nothing was changed)"
    assert src.read_bytes() == before
    theirs = lancedb.connect(str(tmp_path / "db")).create_table("documents", data=[{"id": 1, "text": "keep me"}])
    line = one_line_error(runner.invoke(app, index_cmd(model, src, tmp_path / "db", "--overwrite")))
    assert "holds a 'documents' table that poolkit did not write; refusing to overwrite it" in line
    assert theirs.to_arrow().to_pylist() == [{"id": 1, "text": "keep me"}]


def test_a_second_job_into_an_index_being_written_fails_and_writes_nothing(model, tmp_path):
    src, out = corpus(tmp_path / "corpus.jsonl", 40), tmp_path / "idx"
    with held_by_another_writer(out):  # as a first job holds it while it runs
        line = one_line_error(runner.invoke(app, index_cmd(model, src, out)))
        assert line.startswith(f"Error: index '{out}' is being written by another process (pid ")
        assert not out.exists() and not out.with_name("idx.parts").exists()
    done = runner.invoke(app, index_cmd(model, src, out))
    assert done.exit_code == 0 and "40 documents, 40 encoded" in done.stderr
    assert len(table_rows(out, LLM(model, dtype="float32"))) == 40


def test_a_cut_data_file_is_named_damaged_not_complete(model, tmp_path):
    src, out = corpus(tmp_path / "corpus.jsonl", 30), tmp_path / "idx"
    cmd = index_cmd(model, src, out)
    assert runner.invoke(app, cmd).exit_code == 0
    assert "already complete" in runner.invoke(app, cmd).stderr
    for data in (out / "documents.lance" / "data").iterdir():
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    line = one_line_error(runner.invoke(app, cmd))
    assert line.startswith(f"Error: output '{out}' is damaged (it cannot be read") and "--overwrite" in line
    line = one_line_error(runner.invoke(app, ["search", "--index", str(out), "--query", "paris", "-f", "jsonl"]))
    assert line.startswith(f"Error: index '{out}' is damaged (") and line.endswith("build it again with --overwrite")
    assert runner.invoke(app, cmd + ["--overwrite"]).exit_code == 0
    assert len(table_rows(out, LLM(model, dtype="float32"))) == 30


def test_search_from_another_folder_uses_the_model_that_built_the_index(model, tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shutil.copytree(model, tmp_path / "a" / "enc")
    retrained(Path(model), tmp_path / "b" / "enc")  # the same name and width there, other weights
    src, out = corpus(tmp_path / "corpus.jsonl", 30), tmp_path / "idx"
    monkeypatch.chdir(tmp_path / "a")
    assert runner.invoke(app, index_cmd("enc", src, out)).exit_code == 0
    expected = LateInteractionIndex.open(out, LLM("enc", dtype="float32")).search("capital of france", top_k=5)[0]
    monkeypatch.chdir(tmp_path / "b")
    found = runner.invoke(app, ["search", "--index", str(out), "--query", "capital of france", "--top-k", "5", "-f", "jsonl"])
    assert found.exit_code == 0, found.stderr
    printed = [json.loads(line) for line in found.stdout.splitlines()]
    assert [r["id"] for r in printed] == [h.id for h in expected]
    assert np.allclose([r["score"] for r in printed], [h.score for h in expected], atol=1e-5)
    line = one_line_error(runner.invoke(app, ["search", "enc", "--dtype", "float32", "--index", str(out), "--query", "paris"]))
    assert "was built with model 'enc'" in line
