"""Corpus jobs: file to file, killed with SIGKILL and resumed, bad inputs, formats."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from poolkit import LLM, InvalidRequest
from poolkit.entrypoints.jobs import read_rows, run_job

N = 5000


@pytest.fixture(scope="module")
def model(tiny_encoders):
    return str(tiny_encoders["bert"])


def write_input(path: Path, fmt: str, n: int = N) -> Path:
    words = "paris is the capital of france the quick brown fox jumps over lazy dog hello world".split()
    texts = [" ".join(words[(i * 7 + j) % len(words)] for j in range(1 + i % 23)) for i in range(n)]
    if fmt == "jsonl":
        path.write_text("".join(json.dumps({"id": f"doc-{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    elif fmt == "txt":
        path.write_text("".join(t + "\n" for t in texts))
    elif fmt == "parquet":
        pa = pytest.importorskip("pyarrow")
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"id": [f"doc-{i}" for i in range(n)], "text": texts}), str(path))
    return path


JOB_SCRIPT = textwrap.dedent(
    """
    import sys
    from poolkit import LLM
    from poolkit.entrypoints.jobs import run_job
    model, src, out = sys.argv[1:4]
    summary = run_job(LLM(model, dtype="float32"), src, out, chunk_rows=250, settings={"model": model})
    print("resumed", summary.resumed_rows, "written", summary.written)
    """
)


def run_and_kill(model: str, src: Path, out: Path, after_chunks: int) -> None:
    proc = subprocess.Popen([sys.executable, "-c", JOB_SCRIPT, model, str(src), str(out)])
    parts = out.with_name(out.name + ".parts")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list(parts.glob("part-*.jsonl"))) >= after_chunks:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("fmt", ["jsonl", "txt", "parquet"])
def test_killed_and_resumed_job_has_every_id_once(model, tmp_path, fmt):
    src = write_input(tmp_path / f"in.{fmt}", fmt)
    out = tmp_path / "out.jsonl"
    run_and_kill(model, src, out, after_chunks=3)
    run_and_kill(model, src, out, after_chunks=9)
    assert not out.exists()
    result = subprocess.run([sys.executable, "-c", JOB_SCRIPT, model, str(src), str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    resumed = int(result.stdout.split()[1])
    assert resumed >= 9 * 250, result.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    ids = [r["id"] for r in rows]
    assert len(ids) == N and len(set(ids)) == N
    expected_ids = [f"doc-{i}" for i in range(N)] if fmt != "txt" else list(range(N))
    assert ids == expected_ids
    llm = LLM(model, dtype="float32")
    texts = [t for _, t in read_rows(src)]
    for i in (0, 1234, 2999, 4999):
        assert torch.allclose(torch.tensor(rows[i]["embedding"]), torch.tensor(llm.embed(texts[i])[0].outputs.embedding), atol=1e-5)
    again = run_job(llm, src, out, chunk_rows=250, settings={"model": model})
    assert again.already_complete and len(out.read_text().splitlines()) == N  # never appended twice
    with pytest.raises(InvalidRequest, match="different settings; pass --overwrite"):
        run_job(llm, src, out, chunk_rows=250, settings={"model": "another"})
    redone = run_job(llm, src, out, chunk_rows=250, settings={"model": "another"}, overwrite=True)
    assert redone.written == N


def test_outputs_parquet_and_npy(model, tmp_path):
    llm = LLM(model, dtype="float32")
    src = write_input(tmp_path / "in.jsonl", "jsonl", n=300)
    run_job(llm, src, tmp_path / "out.npy", chunk_rows=128)
    import numpy as np

    vectors = np.load(tmp_path / "out.npy")
    assert vectors.shape == (300, 32)
    pq = pytest.importorskip("pyarrow.parquet")
    run_job(llm, src, tmp_path / "out.parquet", chunk_rows=128)
    table = pq.read_table(str(tmp_path / "out.parquet"))
    assert table.num_rows == 300 and table.column("id").to_pylist()[:2] == ["doc-0", "doc-1"]
    assert np.allclose(np.asarray(table.column("embedding").to_pylist()), vectors, atol=1e-6)


def test_bad_inputs_and_no_partial_corruption(model, tmp_path):
    llm = LLM(model, dtype="float32")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "text": "ok"}\n{"id": 2, "text": \n{"id": 3}\n{"id": 4, "text": "fine"}\n')
    with pytest.raises(InvalidRequest, match=r"line 2 of 'bad.jsonl' is not a valid record"):
        run_job(llm, bad, tmp_path / "o1.jsonl")
    summary = run_job(llm, bad, tmp_path / "o2.jsonl", skip_bad_lines=True)
    assert summary.rows == 2 and summary.skipped_lines == [2, 3]
    with pytest.raises(InvalidRequest, match="does not exist"):
        run_job(llm, tmp_path / "missing.jsonl", tmp_path / "o3.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(InvalidRequest, match="has no rows"):
        run_job(llm, empty, tmp_path / "o4.jsonl")
    missing_field = tmp_path / "nofield.jsonl"
    missing_field.write_text('{"id": 1, "body": "x"}\n')
    with pytest.raises(InvalidRequest, match="missing field 'text'"):
        run_job(llm, missing_field, tmp_path / "o5.jsonl")
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00garbage\xff")
    with pytest.raises(InvalidRequest, match="not UTF-8"):
        run_job(llm, binary, tmp_path / "o6.jsonl")
    not_a_dir = tmp_path / "a-file"
    not_a_dir.write_text("x")  # unwritable as a directory even for root
    with pytest.raises(InvalidRequest, match="cannot write"):
        run_job(llm, write_input(tmp_path / "ok.jsonl", "jsonl", 10), not_a_dir / "out.jsonl")


def test_existing_output_of_another_job_is_untouched(model, tmp_path):
    llm = LLM(model, dtype="float32")
    out = tmp_path / "out.jsonl"
    out.write_text("precious\n")
    with pytest.raises(InvalidRequest, match="already exists"):
        run_job(llm, write_input(tmp_path / "in.jsonl", "jsonl", 10), out)
    assert out.read_text() == "precious\n"


def test_duplicate_ids_are_reported_and_kept_once(model, tmp_path, caplog):
    src = tmp_path / "dups.jsonl"
    src.write_text("".join(json.dumps({"id": i % 3, "text": f"text {i}"}) + "\n" for i in range(7)))
    summary = run_job(LLM(model, dtype="float32"), src, tmp_path / "out.jsonl")
    assert summary.duplicate_ids == 4 and summary.rows == 3
    assert "4 duplicate id(s)" in caplog.text


def test_cli_corpus_job_resumes_after_sigkill(model, tmp_path):
    src = write_input(tmp_path / "in.jsonl", "jsonl")
    out = tmp_path / "out.parquet"
    pytest.importorskip("pyarrow")
    cmd = [sys.executable, "-m", "poolkit", "embed", "--model", model, "--dtype", "float32", "-i", str(src), "-o", str(out), "-q"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    parts = out.with_name(out.name + ".parts")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and len(list(parts.glob("part-*.jsonl"))) < 2:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"{N} rows" in result.stderr and "resumed" in result.stderr and str(out) in result.stderr
    import pyarrow.parquet as pq

    ids = pq.read_table(str(out)).column("id").to_pylist()
    assert len(ids) == N == len(set(ids))
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 0 and "already complete" in again.stderr
    bad = subprocess.run(cmd[:-5] + ["-i", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "x.jsonl")], capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.startswith("Error: input file") and "Traceback" not in bad.stderr
