"""Corpus jobs (issue 14): changed inputs, id types, bad texts, disk full, damaged files,
progress with a total, and the stored embedding dtype."""

from __future__ import annotations

import errno
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from poolkit import LLM, InvalidRequest
from poolkit.entrypoints import jobs
from poolkit.entrypoints.cli import app
from poolkit.entrypoints.encodings import binary, ubinary
from poolkit.entrypoints.jobs import run_job

runner = CliRunner()
ROWS = 600
CHUNK = 100


@pytest.fixture(scope="module")
def model(tiny_encoders):
    return str(tiny_encoders["bert"])


@pytest.fixture(scope="module")
def llm(model):
    return LLM(model, dtype="float32")


def text_of(i: int, city: str = "paris") -> str:
    return f"document number {i:04d} is about {city} and the quick brown fox"


def write_corpus(path: Path, n: int = ROWS, edit: dict[int, str] | None = None) -> Path:
    edit = edit or {}
    path.write_text("".join(json.dumps({"id": f"doc-{i}", "text": edit.get(i, text_of(i))}) + "\n" for i in range(n)))
    return path


class Killed(Exception):
    """Stands for a SIGKILL: the job stops between two chunks, its parts stay on disk."""


def killer(after: int):
    calls = {"n": 0}

    def progress(rows: int, tokens: int) -> None:
        if tokens:
            calls["n"] += 1
            if calls["n"] >= after:
                raise Killed

    return progress


def start_and_kill(llm, src: Path, out: Path, after: int = 2, **kwargs) -> None:
    with pytest.raises(Killed):
        run_job(llm, src, out, chunk_rows=CHUNK, progress=killer(after), **kwargs)


def embedding(llm, text: str) -> torch.Tensor:
    return torch.tensor(llm.embed(text)[0].outputs.embedding)


def jsonl_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def leftovers(*folders: Path) -> list[str]:
    return [p.name for folder in folders if folder.is_dir() for p in folder.iterdir() if ".tmp-" in p.name]


# -- 1. a changed input is never mixed with the results of the old one ------------------------


def test_input_edited_between_kill_and_resume_recomputes_the_changed_chunk(llm, tmp_path):
    src, out = write_corpus(tmp_path / "in.jsonl"), tmp_path / "out.jsonl"
    start_and_kill(llm, src, out, after=2)
    size = src.stat().st_size
    write_corpus(src, edit={50: text_of(50, "tokyo")})  # same byte size, other text
    assert src.stat().st_size == size
    summary = run_job(llm, src, out, chunk_rows=CHUNK)
    assert summary.resumed_rows == CHUNK  # chunk 1 is unchanged; chunk 0 is recomputed
    assert summary.recomputed_chunks == 1
    rows = jsonl_rows(out)
    assert len(rows) == ROWS
    assert torch.allclose(torch.tensor(rows[50]["embedding"]), embedding(llm, text_of(50, "tokyo")), atol=1e-5)
    assert torch.allclose(torch.tensor(rows[150]["embedding"]), embedding(llm, text_of(150)), atol=1e-5)


def test_input_edited_after_the_job_finished_is_refused(llm, tmp_path):
    src, out = write_corpus(tmp_path / "in.jsonl"), tmp_path / "out.jsonl"
    run_job(llm, src, out, chunk_rows=CHUNK)
    write_corpus(src, edit={7: text_of(7, "tokyo")})
    with pytest.raises(InvalidRequest, match=r"input 'in.jsonl' has changed since .* pass --overwrite"):
        run_job(llm, src, out, chunk_rows=CHUNK)
    redone = run_job(llm, src, out, chunk_rows=CHUNK, overwrite=True)
    assert redone.written == ROWS
    assert torch.allclose(torch.tensor(jsonl_rows(out)[7]["embedding"]), embedding(llm, text_of(7, "tokyo")), atol=1e-5)


def test_skip_bad_lines_added_on_resume_keeps_the_finished_chunks(llm, tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    lines = [json.dumps({"id": i, "text": text_of(i)}) for i in range(ROWS)]
    lines[450] = '{"id": 450, "text": '
    src.write_text("\n".join(lines) + "\n")
    with pytest.raises(InvalidRequest, match="line 451"):
        run_job(llm, src, out, chunk_rows=CHUNK)
    summary = run_job(llm, src, out, chunk_rows=CHUNK, skip_bad_lines=True)
    assert summary.resumed_rows == 4 * CHUNK and summary.skipped_lines == [451]


# -- 2. ids of mixed types --------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_mixed_string_and_integer_ids_are_written_as_strings(llm, tmp_path, fmt, caplog):
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    src = tmp_path / "mixed.jsonl"
    src.write_text('{"id": "a", "text": "hello"}\n{"id": 7, "text": "world"}\n{"text": "no id"}\n')
    out = tmp_path / f"out.{fmt}"
    summary = run_job(llm, src, out)
    assert summary.rows == 3
    if fmt == "parquet":
        import pyarrow.parquet as pq

        ids = pq.read_table(str(out)).column("id").to_pylist()
    else:
        ids = [r["id"] for r in jsonl_rows(out)]
    assert ids == ["a", "7", "2"]
    assert "mix strings and integers: every id is written as a string" in caplog.text


def test_one_id_type_is_kept_and_seven_equals_string_seven(llm, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    src = tmp_path / "ints.jsonl"
    src.write_text('{"id": 3, "text": "a"}\n{"id": 7, "text": "b"}\n{"id": "7", "text": "c"}\n')
    summary = run_job(llm, src, tmp_path / "out.parquet")
    assert summary.duplicate_ids == 1
    table = pq.read_table(str(tmp_path / "out.parquet"))
    assert table.column("id").to_pylist() == [3, 7] and table.schema.field("id").type == pa.int64()


@pytest.mark.parametrize("bad_id", ["1.5", "null", "[1]", "true", '"\\udc00"'])
def test_ids_that_are_neither_strings_nor_integers_are_bad_lines(llm, tmp_path, bad_id):
    src = tmp_path / "ids.jsonl"
    src.write_text(f'{{"id": "a", "text": "x"}}\n{{"id": {bad_id}, "text": "y"}}\n')
    with pytest.raises(InvalidRequest, match=r"line 2 of 'ids.jsonl' is not a valid record \('id'"):
        run_job(llm, src, tmp_path / "out.jsonl")
    assert run_job(llm, src, tmp_path / "out2.jsonl", skip_bad_lines=True).skipped_lines == [2]


# -- 3. and 5c. a lone surrogate or an empty text is a bad line -------------------------------


@pytest.mark.parametrize(
    "text, reason", [('"\\ud800"', "lone surrogate"), ('"ab\\udfffcd"', "lone surrogate"), ('""', "an empty string")]
)
def test_bad_texts_are_bad_lines(llm, tmp_path, text, reason):
    src = tmp_path / "in.jsonl"
    src.write_text(f'{{"id": 1, "text": "fine"}}\n{{"id": 2, "text": {text}}}\n{{"id": 3, "text": "also fine"}}\n')
    with pytest.raises(InvalidRequest, match=rf"line 2 of 'in.jsonl' is not a valid record \(.*{reason}.*\); fix it or pass --skip-bad-lines"):
        run_job(llm, src, tmp_path / "out.jsonl")
    summary = run_job(llm, src, tmp_path / "out.jsonl", skip_bad_lines=True)
    assert summary.rows == 2 and summary.skipped_lines == [2]
    assert [r["id"] for r in jsonl_rows(tmp_path / "out.jsonl")] == [1, 3]


def test_bad_texts_in_csv_and_parquet_are_named_by_line_and_row(llm, tmp_path):
    csv_src = tmp_path / "in.csv"
    csv_src.write_text('id,text\n1,fine\n2,\n3,"two\nlines"\n4,\n')
    with pytest.raises(InvalidRequest, match=r"line 3 of 'in.csv' is not a valid record \(an empty string\)"):
        run_job(llm, csv_src, tmp_path / "o1.jsonl")
    assert run_job(llm, csv_src, tmp_path / "o2.jsonl", skip_bad_lines=True).skipped_lines == [3, 6]
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq_src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": [1, 2, 3], "text": ["fine", None, ""]}), str(pq_src))
    with pytest.raises(InvalidRequest, match=r"row 2 of 'in.parquet' is not a valid record \(no text\)"):
        run_job(llm, pq_src, tmp_path / "o3.jsonl")
    assert run_job(llm, pq_src, tmp_path / "o4.jsonl", skip_bad_lines=True).skipped_lines == [2, 3]


def test_cli_lone_surrogate_is_one_error_line(model, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": 1, "text": "fine"}\n{"id": 2, "text": "\\ud800"}\n')
    cmd = ["embed", "--model", model, "-i", str(src), "-o", str(tmp_path / "out.jsonl"), "-q"]
    result = runner.invoke(app, cmd)
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: line 2 of 'in.jsonl' is not a valid record") and "Traceback" not in result.stderr
    ok = runner.invoke(app, cmd + ["--skip-bad-lines"])
    assert ok.exit_code == 0, ok.stderr
    assert "1 bad lines skipped (2)" in ok.stderr


# -- 4. disk full -----------------------------------------------------------------------------


def fail_fsync_at(monkeypatch, call: int) -> None:
    """The ``call``-th fsync fails as a full disk does (the data written before it is lost)."""
    real, calls = os.fsync, {"n": 0}

    def fsync(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] == call:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize("when", ["chunk", "finish"])
def test_disk_full_leaves_no_temporary_file_and_resumes(llm, tmp_path, monkeypatch, when):
    src, out = write_corpus(tmp_path / "in.jsonl", n=300), tmp_path / "out.jsonl"
    parts = tmp_path / "out.jsonl.parts"
    # fsyncs: the manifest, then one per chunk (3), then the output.
    fail_fsync_at(monkeypatch, 3 if when == "chunk" else 5)
    for _ in range(2):  # every re-run that fails the same way leaves nothing behind either
        with pytest.raises(InvalidRequest) as info:
            run_job(llm, src, out, chunk_rows=CHUNK)
        assert "no space left" in str(info.value) and "\n" not in str(info.value)
        assert leftovers(parts, tmp_path) == []
        assert not out.exists()
        fail_fsync_at(monkeypatch, 1)  # the manifest is written: the next write is the one that fails
    monkeypatch.undo()
    summary = run_job(llm, src, out, chunk_rows=CHUNK)
    assert summary.resumed_rows == (CHUNK if when == "chunk" else 3 * CHUNK)
    assert len(jsonl_rows(out)) == 300 and leftovers(parts, tmp_path) == []


def test_disk_full_while_writing_rows_mid_file(llm, tmp_path, monkeypatch):
    src, out = write_corpus(tmp_path / "in.jsonl", n=300), tmp_path / "out.parquet"
    pytest.importorskip("pyarrow")
    real = jobs._write_lines

    def half_then_full(handle, lines):
        handle.write(next(iter(lines)))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(jobs, "_write_lines", half_then_full)
    with pytest.raises(InvalidRequest, match="no space left on the device"):
        run_job(llm, src, out, chunk_rows=CHUNK)
    assert leftovers(tmp_path / "out.parquet.parts", tmp_path) == []
    monkeypatch.setattr(jobs, "_write_lines", real)
    assert run_job(llm, src, out, chunk_rows=CHUNK).written == 300


def test_cli_disk_full_is_one_error_line(model, tmp_path, monkeypatch):
    src = write_corpus(tmp_path / "in.jsonl", n=50)
    fail_fsync_at(monkeypatch, 2)
    result = runner.invoke(app, ["embed", "--model", model, "-i", str(src), "-o", str(tmp_path / "out.jsonl"), "-q"])
    assert result.exit_code == 1
    first, *rest = result.stderr.splitlines()
    assert first.startswith("Error: no space left on the device") and "Traceback" not in result.stderr
    assert rest == ["(set POOLKIT_DEBUG=1 to see the traceback)"]


# -- 5. damaged parts and outputs -------------------------------------------------------------


def test_truncated_part_is_recomputed(llm, tmp_path):
    src, out = write_corpus(tmp_path / "in.jsonl"), tmp_path / "out.jsonl"
    start_and_kill(llm, src, out, after=3)
    (part,) = sorted((tmp_path / "out.jsonl.parts").glob("part-00000001*.jsonl"))
    data = part.read_bytes()
    part.write_bytes(data[: len(data) // 2])
    summary = run_job(llm, src, out, chunk_rows=CHUNK)
    assert summary.resumed_rows == 2 * CHUNK and summary.repaired_chunks == 1
    rows = jsonl_rows(out)
    assert [r["id"] for r in rows] == [f"doc-{i}" for i in range(ROWS)]
    assert torch.allclose(torch.tensor(rows[180]["embedding"]), embedding(llm, text_of(180)), atol=1e-5)


def test_damaged_part_while_joining_names_the_file(llm, tmp_path):
    src, out = write_corpus(tmp_path / "in.jsonl", n=300), tmp_path / "out.jsonl"
    start_and_kill(llm, src, out, after=3)
    (part,) = sorted((tmp_path / "out.jsonl.parts").glob("part-00000000*.jsonl"))
    lines = part.read_text().splitlines(keepends=True)
    lines[10] = lines[10][:40] + "\n"  # same number of rows, the last one intact: found while joining
    part.write_text("".join(lines))
    with pytest.raises(InvalidRequest, match=r"chunk file '.*part-00000000.*' is damaged .*line 11.*run the same command again"):
        run_job(llm, src, out, chunk_rows=CHUNK)
    assert not part.exists() and not out.exists()
    summary = run_job(llm, src, out, chunk_rows=CHUNK)
    assert summary.written == CHUNK and len(jsonl_rows(out)) == 300


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "npy"])
def test_damaged_finished_output_is_not_complete(llm, tmp_path, fmt):
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    src, out = write_corpus(tmp_path / "in.jsonl", n=200), tmp_path / f"out.{fmt}"
    run_job(llm, src, out, chunk_rows=CHUNK)
    assert run_job(llm, src, out, chunk_rows=CHUNK).already_complete
    data = out.read_bytes()
    out.write_bytes(data[: len(data) - 300])
    with pytest.raises(InvalidRequest, match=rf"output '.*out.{fmt}' is damaged .*200 rows.*pass --overwrite"):
        run_job(llm, src, out, chunk_rows=CHUNK)
    assert run_job(llm, src, out, chunk_rows=CHUNK, overwrite=True).written == 200


# -- 6. progress: a total, a percentage, an ETA; lines on a non-terminal ----------------------


def test_job_tells_the_progress_its_total(llm, tmp_path):
    from poolkit.runtime.progress import Meter

    src = write_corpus(tmp_path / "in.jsonl", n=250)
    meter = Meter()
    run_job(llm, src, tmp_path / "out.jsonl", chunk_rows=CHUNK, progress=meter)
    assert meter.total == 250 and meter.done == 250
    assert meter.percent == 100.0


def test_meter_rates_and_eta_leave_resumed_rows_out():
    from poolkit.runtime.progress import Meter

    now = {"t": 0.0}
    meter = Meter(total=1000, clock=lambda: now["t"])
    meter(400, 0)  # resumed: no time spent on them
    now["t"] = 10.0
    meter(100, 5000)  # 100 rows in 10 s
    assert meter.done == 500 and meter.rate == pytest.approx(10.0) and meter.eta == pytest.approx(50.0)
    assert meter.line("embedding") == "embedding: 500/1000 rows (50%), 10.0 rows/s, 500 tok/s, ETA 0:00:50"


def test_non_terminal_prints_periodic_lines(monkeypatch):
    from poolkit.runtime.progress import progress_bar

    stream = io.StringIO()
    with progress_bar(None, label="embedding", every=0.0, stream=stream) as advance:
        advance.set_total(30)
        for _ in range(3):
            advance(10, 100)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3 and lines[-1].startswith("embedding: 30/30 rows (100%)") and "ETA 0:00:00" in lines[-1]
    quiet = io.StringIO()
    with progress_bar(None, enabled=False, every=0.0, stream=quiet) as advance:
        advance(10, 10)
    assert quiet.getvalue() == ""


def test_cli_job_prints_progress_lines_when_stderr_is_not_a_terminal(model, tmp_path, monkeypatch):
    from poolkit.runtime import progress

    monkeypatch.setattr(progress, "LOG_EVERY", 0.0)
    src = write_corpus(tmp_path / "in.jsonl", n=250)
    result = runner.invoke(app, ["embed", "--model", model, "-i", str(src), "-o", str(tmp_path / "out.jsonl")])
    assert result.exit_code == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("embed: ")]
    assert lines and lines[-1].startswith("embed: 250/250 rows (100%)") and "rows/s" in lines[-1] and "ETA" in lines[-1]


# -- 7. the stored dtype ----------------------------------------------------------------------


def parquet_vectors(path: Path) -> tuple[np.ndarray, dict, object]:
    import pyarrow.parquet as pq

    table = pq.read_table(str(path))
    column = table.column("embedding").combine_chunks()
    flat = column.flatten().to_numpy()
    return flat.reshape(len(column), -1), table.schema.metadata, column.type.value_type


def test_float32_is_the_default_and_recorded(llm, tmp_path):
    pa = pytest.importorskip("pyarrow")
    src = write_corpus(tmp_path / "in.jsonl", n=50)
    run_job(llm, src, tmp_path / "out.parquet")
    vectors, meta, leaf = parquet_vectors(tmp_path / "out.parquet")
    assert leaf == pa.float32() and vectors.dtype == np.float32
    assert meta[b"embed_dtype"] == b"float32" and meta[b"embed_field"] == b"embedding"
    assert np.allclose(vectors[3], embedding(llm, text_of(3)).numpy(), atol=1e-6)
    run_job(llm, src, tmp_path / "out.jsonl")
    assert {r["embed_dtype"] for r in jsonl_rows(tmp_path / "out.jsonl")} == {"float32"}
    run_job(llm, src, tmp_path / "out.npy")
    assert np.load(tmp_path / "out.npy").dtype == np.float32


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "int8", "uint8", "binary", "ubinary"])
def test_embed_dtypes_in_parquet_npy_and_jsonl(llm, tmp_path, dtype):
    pytest.importorskip("pyarrow")
    src = write_corpus(tmp_path / "in.jsonl", n=120)
    run_job(llm, src, tmp_path / "f32.npy", chunk_rows=50)
    reference = np.load(tmp_path / "f32.npy")  # the same batches: the same float32 values
    run_job(llm, src, tmp_path / "out.parquet", embed_dtype=dtype, chunk_rows=50)
    vectors, meta, _ = parquet_vectors(tmp_path / "out.parquet")
    assert meta[b"embed_dtype"] == dtype.encode()
    run_job(llm, src, tmp_path / "out.npy", embed_dtype=dtype, chunk_rows=50)
    array = np.load(tmp_path / "out.npy")
    run_job(llm, src, tmp_path / "out.jsonl", embed_dtype=dtype, chunk_rows=50)
    rows = jsonl_rows(tmp_path / "out.jsonl")
    assert {r["embed_dtype"] for r in rows} == {dtype}
    expected = {"float16": np.float16, "bfloat16": np.uint16, "int8": np.int8, "uint8": np.uint8,
                "binary": np.int8, "ubinary": np.uint8}[dtype]
    assert vectors.dtype == expected and array.dtype == expected
    assert np.array_equal(vectors, array) and np.array_equal(np.asarray([r["embedding"] for r in rows], dtype=expected), array)
    original = torch.from_numpy(reference)
    if dtype == "float16":
        assert np.array_equal(array, reference.astype(np.float16))
    elif dtype == "bfloat16":
        back = torch.from_numpy(array.astype(np.int16)).view(torch.bfloat16)
        assert torch.equal(back, original.to(torch.bfloat16))
    elif dtype in ("int8", "uint8"):
        assert array.shape == (120, 32)
        signed = torch.from_numpy(array.astype(np.float32) - (128 if dtype == "uint8" else 0))
        assert torch.all(signed.abs().amax(dim=1) == 127)
        assert torch.nn.functional.cosine_similarity(signed, original, dim=1).min() > 0.999
    else:
        assert array.shape == (120, 4)
        encode = binary if dtype == "binary" else ubinary
        assert array.tolist() == [encode(v) for v in original]


def test_bad_embed_dtype_is_refused(llm, tmp_path):
    src = write_corpus(tmp_path / "in.jsonl", n=5)
    with pytest.raises(InvalidRequest, match="embed_dtype must be one of float32, float16, bfloat16, int8, uint8, binary, ubinary"):
        run_job(llm, src, tmp_path / "out.jsonl", embed_dtype="float64")
    with pytest.raises(InvalidRequest, match="one vector per input"):
        run_job(llm, src, tmp_path / "out.jsonl", task="token_embed", embed_dtype="int8")


def test_cli_embed_dtype(model, tmp_path):
    pytest.importorskip("pyarrow")
    src = write_corpus(tmp_path / "in.jsonl", n=20)
    out = tmp_path / "out.parquet"
    result = runner.invoke(app, ["embed", "--model", model, "-i", str(src), "-o", str(out), "--embed-dtype", "ubinary", "-q"])
    assert result.exit_code == 0, result.stderr
    vectors, meta, _ = parquet_vectors(out)
    assert vectors.shape == (20, 4) and meta[b"embed_dtype"] == b"ubinary"
    bad = runner.invoke(app, ["embed", "--model", model, "--embed-dtype", "int8", "hello"])
    assert bad.exit_code == 1 and bad.stderr.startswith("Error: --embed-dtype applies to corpus jobs (-o OUTPUT)")


def test_overwrite_never_deletes_the_input_or_a_folder(model, tmp_path):
    """``-o`` naming the input file, or a folder, is refused before anything is removed, with or
    without --overwrite (it used to delete the corpus, or the whole folder)."""
    src = write_corpus(tmp_path / "corpus.jsonl", 5)
    folder = tmp_path / "results.jsonl"  # a folder named as an output file
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    for output, message in ((src, "is the input file"), (folder, "is a folder")):
        for extra in ([], ["--overwrite"]):
            result = runner.invoke(app, ["embed", "--model", model, "-i", str(src), "-o", str(output), "-q", *extra])
            assert result.exit_code == 1 and result.stderr.startswith("Error: output ") and message in result.stderr.splitlines()[0]
    assert len(src.read_text().splitlines()) == 5 and (folder / "notes.txt").read_text() == "mine"
