"""Ray Data: embed_dataset on a local Ray instance equals the Python API."""

from __future__ import annotations

import pytest
import torch

ray = pytest.importorskip("ray", reason="pip install 'poolkit[ray]'")

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


def test_embed_dataset_equals_the_python_api(local_ray, tiny_encoders):
    from poolkit import LLM
    from poolkit.integrations.ray import embed_dataset

    model = str(tiny_encoders["bert"])
    texts = [f"paris is the capital of france {i % 17} " * (1 + i % 5) for i in range(500)]
    ds = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(texts)])
    rows = embed_dataset(ds, model=model, batch_size=64, dtype="float32").take_all()
    assert len(rows) == 500 and {r["id"] for r in rows} == set(range(500))
    expected = LLM(model, dtype="float32").embed(texts)
    for row in rows[::37]:
        assert torch.allclose(torch.tensor(row["embedding"]), torch.tensor(expected[row["id"]].outputs.embedding), atol=1e-5)


def test_missing_ray_is_a_clear_error(monkeypatch):
    import builtins

    from poolkit import MissingDependency
    from poolkit.integrations import ray as integration

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("no ray")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(MissingDependency, match=r"pip install 'poolkit\[ray\]'"):
        integration.embed_dataset(object())


def test_cli_engine_ray(local_ray, tiny_encoders, tmp_path):
    import json

    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from poolkit import LLM
    from poolkit.cli import app

    model = str(tiny_encoders["bert"])
    src = tmp_path / "in.jsonl"
    texts = [f"hello world {i}" for i in range(40)]
    src.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["embed", "--model", model, "--dtype", "float32", "--engine", "ray", "-i", str(src), "-o", str(out), "-q"])
    assert result.exit_code == 0, result.stderr
    rows = pq.read_table(str(out)).to_pylist()
    assert len(rows) == 40
    expected = LLM(model, dtype="float32").embed(texts)
    for row in rows[::7]:
        assert torch.allclose(torch.tensor(row["embedding"]), torch.tensor(expected[row["id"]].outputs.embedding), atol=1e-5)
