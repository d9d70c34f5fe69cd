"""poolkit bench: a smoke configuration runs and its JSON has every field."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from poolkit.cli import app, main  # noqa: F401 - main registers plugin commands

FIELDS = {
    "workload", "description", "items", "tokens", "poolkit_items_per_s", "peer_items_per_s", "poolkit_tokens_per_s",
    "peer_tokens_per_s", "ratio", "rounds", "min_cosine", "max_abs_diff", "poolkit_peak_rss_mb", "peer_peak_rss_mb",
    "padding_fraction_peer", "padding_fraction_poolkit", "poolkit_gflops", "peer_gflops", "notes",
}


def _app():
    from poolkit.plugins import get_manager

    get_manager().register_commands(app)
    return app


def test_bench_smoke_json():
    result = CliRunner().invoke(_app(), ["bench", "--smoke", "--json", "--workloads", "W1,W3,W6,W7"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert {"model", "dtype", "peer_dtype", "device", "threads", "gemm_peak_gflops", "versions", "weights", "results"} <= set(report)
    assert report["weights"] == "real" and report["peer_dtype"] == report["dtype"]
    assert report["gemm_peak_gflops"] > 0
    assert [r["workload"] for r in report["results"]] == ["W1", "W3", "W6", "W7"]
    for row in report["results"]:
        assert set(row) == FIELDS
        assert row["poolkit_tokens_per_s"] > 0 and row["peer_tokens_per_s"] > 0 and row["ratio"] > 0
    w1 = report["results"][0]
    assert w1["min_cosine"] > 0.999 and w1["padding_fraction_poolkit"] == 0.0
    assert w1["poolkit_gflops"] > 0 and w1["peer_gflops"] > 0
    assert report["results"][2]["max_abs_diff"] < 1e-4
    w7 = report["results"][3]
    assert w7["min_cosine"] > 0.99 and "non-zero terms per text" in w7["notes"]


def test_bench_rejects_unknown_workloads():
    result = CliRunner().invoke(_app(), ["bench", "--smoke", "--workloads", "W99"])
    assert result.exit_code == 1 and "unknown workload(s) W99" in result.stderr


def test_random_weight_presets_build_once_and_match_sentence_transformers(tmp_path, monkeypatch):
    """A preset is a model of an exact config with seeded random weights, loadable by both libraries."""
    import torch
    from sentence_transformers import SentenceTransformer

    from poolkit import LLM
    from poolkit import bench

    tiny = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    monkeypatch.setitem(bench.PRESETS, "tiny-bert", {"pooling": "cls", "config": {**bench._BERT, **tiny}})
    monkeypatch.setitem(bench.PRESETS, "tiny-qwen3", {"pooling": "lasttoken", "config": {
        **bench.PRESETS["qwen3-embedding-0.6b"]["config"], **tiny, "num_key_value_heads": 2, "head_dim": 8,
        "vocab_size": 30522}})
    monkeypatch.setenv("POOLKIT_BENCH_CACHE", str(tmp_path))
    for name in ("tiny-bert", "tiny-qwen3"):
        path, weights = bench.resolve_bench_model(name)
        assert path == str(tmp_path / name) and weights.startswith("random")
        stamp = (tmp_path / name / "model.safetensors").stat().st_mtime_ns
        assert bench.resolve_bench_model(name)[0] == path  # built once
        assert (tmp_path / name / "model.safetensors").stat().st_mtime_ns == stamp
        texts = ["a short sentence", "and another, somewhat longer, sentence to embed"]
        ours = torch.tensor([o.outputs.embedding for o in LLM(path, dtype="float32").embed(texts)])
        ref = SentenceTransformer(path, device="cpu").encode(texts, convert_to_tensor=True)
        assert torch.nn.functional.cosine_similarity(ours, ref).min() > 0.99999
    assert bench.resolve_bench_model("sentence-transformers/all-MiniLM-L6-v2")[1] == "real"
