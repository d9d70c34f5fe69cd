"""poolkit bench: a smoke configuration runs and its JSON has every field; ``--vs fallback`` and the
``model_impl`` setting it relies on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from poolkit.entrypoints.bench import format_table
from poolkit.entrypoints.cli import app, main  # noqa: F401 - main registers plugin commands

FIELDS = {
    "workload", "description", "items", "tokens", "poolkit_items_per_s", "peer_items_per_s", "poolkit_tokens_per_s",
    "peer_tokens_per_s", "ratio", "rounds", "min_cosine", "max_abs_diff", "poolkit_peak_rss_mb", "peer_peak_rss_mb",
    "padding_fraction_peer", "padding_fraction_poolkit", "poolkit_gflops", "peer_gflops", "notes", "stages",
    "peer_min_cosine", "peer_max_abs_diff", "breakdown",
}


# Tests of the default model (all-MiniLM-L6-v2): skipped where its package is absent, as the minilm fixtures are.
needs_minilm = pytest.mark.usefixtures("minilm_dir")


def _app():
    from poolkit.plugins import get_manager

    get_manager().register_commands(app)
    return app


@needs_minilm
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


@needs_minilm
def test_the_breakdown_times_every_linear_layer_and_the_same_matmuls_alone(minilm):
    """``--breakdown``: the pass's linear layers are all timed (their multiply-adds over the rows the
    matmuls compute: the batch's tokens padded to the kernels' row bucket), inside the pass's time,
    and run again alone; the probe is gone afterwards."""
    import torch

    from poolkit.contracts.kernel import LINEAR_PROBE, probing
    from poolkit.entrypoints.bench.breakdown import breakdown
    from poolkit.plugins.lookup import kernel_rows

    texts = ["A short text about the weather.", "Another, longer text about a quiet street lined with old oak trees."] * 4
    figures = breakdown(lambda: minilm.embed(texts))
    assert LINEAR_PROBE.current is None
    plain = minilm.embed(texts)
    with probing(lambda layer, x, compute: compute(x)):
        assert [o.outputs.embedding for o in minilm.embed(texts)] == [o.outputs.embedding for o in plain]
    tokens = sum(len(o.prompt_token_ids) for o in plain)  # one batch
    layers = [m for n, m in minilm.model.architecture.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith("encoder.")]
    assert len(layers) == 24  # six layers: the fused QKV, the attention's output, the feed-forward's two
    assert figures["matmul_flops"] == 2 * kernel_rows(tokens, minilm.model.device) * sum(m.in_features * m.out_features for m in layers)
    assert 0 < figures["matmul_s"] < figures["wall_s"] and figures["alone_s"] > 0


def test_the_breakdown_of_a_model_without_probed_layers_is_empty(tiny_encoders):
    from poolkit import LLM
    from poolkit.entrypoints.bench.breakdown import breakdown

    fallback = LLM(str(tiny_encoders["bert"]), model_impl="transformers")  # transformers' own layers
    assert breakdown(lambda: fallback.embed(["hello world"])) == {}


@needs_minilm
def test_bench_breakdown_reports_the_matmuls_and_the_rest():
    """An embedding workload and W4's rerank (its cross-encoder's pass) each break one pass down."""
    result = CliRunner().invoke(_app(), ["bench", "--smoke", "--json", "--workloads", "W2,W4", "--breakdown"])
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)["results"]
    assert [row["workload"] for row in rows] == ["W2", "W4"]
    for row in rows:
        assert set(row["breakdown"]) == {"wall_s", "matmul_s", "alone_s", "matmul_flops"}
        assert 0 < row["breakdown"]["matmul_s"] < row["breakdown"]["wall_s"]
    table = CliRunner().invoke(_app(), ["bench", "--smoke", "--workloads", "W2", "--breakdown"])
    assert table.exit_code == 0 and "GFLOP/s in the pass" in table.stdout and "outside the matmuls" in table.stdout


def test_bench_rejects_unknown_workloads():
    result = CliRunner().invoke(_app(), ["bench", "--smoke", "--workloads", "W99"])
    assert result.exit_code == 1 and "unknown workload(s) W99" in result.stderr


@needs_minilm
def test_random_weight_presets_build_once_and_match_sentence_transformers(tmp_path, monkeypatch):
    """A preset is a model of an exact config with seeded random weights, loadable by both libraries."""
    import torch
    from sentence_transformers import SentenceTransformer

    from poolkit import LLM
    from poolkit.entrypoints import bench

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


@needs_minilm
def test_bench_vs_fallback_smoke_json():
    """``--vs fallback``: the peer is poolkit itself on the transformers fallback, same weights and dtype;
    parity is against the fallback in fp32 (transformers' own output), and workloads with no fallback
    side are listed as skipped."""
    result = CliRunner().invoke(_app(), ["bench", "--vs", "fallback", "--smoke", "--json", "--workloads", "W1,W3,W6"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["vs"] == "fallback" and report["peer"] == "poolkit on the transformers fallback"
    assert report["implementation"] == {"poolkit": "native", "peer": "fallback (transformers)"}
    assert report["peer_dtype"] == report["dtype"] and report["versions"]["transformers"]
    assert [r["workload"] for r in report["results"]] == ["W1", "W3"]
    assert set(report["skipped"]) == {"W6"} and "no fallback to compare" in report["skipped"]["W6"]
    for row in report["results"]:
        assert set(row) == FIELDS
        assert row["poolkit_tokens_per_s"] > 0 and row["peer_tokens_per_s"] > 0 and row["ratio"] > 0
        assert row["min_cosine"] > 0.999 and row["max_abs_diff"] < 1e-2
        assert 0 < row["padding_fraction_peer"] < 1 and row["padding_fraction_poolkit"] == 0.0


@needs_minilm
def test_bench_vs_poolkit_compares_int8_with_poolkit_unquantized():
    """``--vs poolkit --quantization int8``: the peer is poolkit on the same weights without
    quantization, at its own dtype (``--peer-dtype``); parity is against poolkit fp32 unquantized."""
    args = ["bench", "--vs", "poolkit", "--quantization", "int8", "--smoke", "--json", "-w", "W1,W6", "--dtype", "float32"]
    result = CliRunner().invoke(_app(), [*args, "--peer-dtype", "bfloat16"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["vs"] == "poolkit" and report["peer"] == "poolkit unquantized" and report["quantization"] == "int8"
    assert report["peer_dtype"] == "bfloat16" and report["implementation"]["peer"] == "poolkit bfloat16"
    assert [r["workload"] for r in report["results"]] == ["W1"] and set(report["skipped"]) == {"W6"}
    (w1,) = report["results"]
    assert w1["poolkit_tokens_per_s"] > 0 and w1["peer_tokens_per_s"] > 0
    assert w1["padding_fraction_peer"] == w1["padding_fraction_poolkit"] == 0.0
    assert 0.999 <= w1["min_cosine"] < 1.0  # int8 against poolkit fp32: close, not equal


def test_bench_vs_fallback_refuses_a_model_without_native_code(tmp_path):
    from tiny_models import build_transformers_model

    path = build_transformers_model(tmp_path / "electra", "ElectraModel")
    result = CliRunner().invoke(_app(), ["bench", "--vs", "fallback", "--smoke", "-w", "W1", "-m", str(path)])
    assert result.exit_code == 1
    assert result.stderr.startswith(
        "Error: --vs fallback: poolkit has no native code for ElectraModel: it runs on the transformers fallback too"
    )
    result = CliRunner().invoke(_app(), ["bench", "--vs", "pytorch", "--smoke"])
    assert result.exit_code == 1 and "Error: --vs 'pytorch' is not one of sentence-transformers, fallback, vllm-cpu" in result.stderr


#: A stand-in for vLLM's ``LLM``, answering as vLLM's pooling API does, from sentence-transformers.
FAKE_VLLM = """
from types import SimpleNamespace

calls = []


class LLM:
    def __init__(self, model, runner, dtype, seed):
        import os, subprocess, sys

        assert runner == "pooling" and dtype in ("float32", "bfloat16")
        self.model = model
        # vLLM runs its engine in processes of its own: a stand-in for one, which outlives a killed parent
        engine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        with open(os.environ["FAKE_VLLM_ENGINES"], "a") as pids:
            pids.write(f"{engine.pid}\\n")

    def embed(self, texts, tokenization_kwargs=None, use_tqdm=True):
        from sentence_transformers import SentenceTransformer

        assert tokenization_kwargs == {"truncate_prompt_tokens": -1} and use_tqdm is False
        vectors = SentenceTransformer(self.model, device="cpu").encode(texts)
        return [SimpleNamespace(outputs=SimpleNamespace(embedding=v.tolist())) for v in vectors]

    def score(self, queries, documents, tokenization_kwargs=None, use_tqdm=True):
        from sentence_transformers import CrossEncoder

        assert tokenization_kwargs == {"truncate_prompt_tokens": -1} and len(queries) == len(documents)
        scores = CrossEncoder(self.model, device="cpu").predict(list(zip(queries, documents)))
        return [SimpleNamespace(outputs=SimpleNamespace(score=float(s))) for s in scores]

    def reset_prefix_cache(self):
        return True  # a cache that keeps nothing, as vLLM's for an encoder-only model
"""


def fake_vllm_python(tmp_path, monkeypatch, source: str) -> None:
    """``POOLKIT_VLLM_PYTHON`` set to this Python with a stand-in ``vllm`` package (``source``) on its path."""
    import sys

    (tmp_path / "fake" / "vllm").mkdir(parents=True)
    (tmp_path / "fake" / "vllm" / "__init__.py").write_text(source)
    python = tmp_path / "python"
    python.write_text(f"#!/bin/sh\nPYTHONPATH={tmp_path / 'fake'} exec {sys.executable} \"$@\"\n")
    python.chmod(0o755)
    monkeypatch.setenv("POOLKIT_VLLM_PYTHON", str(python))


@needs_minilm
def test_bench_vs_vllm_cpu_runs_vllm_in_its_own_python(tmp_path, monkeypatch):
    """``--vs vllm-cpu``: each peer model lives in a worker process of the Python
    ``POOLKIT_VLLM_PYTHON`` names (here this one, with a stand-in ``vllm`` on its path), spoken to
    in JSON lines; its vectors and scores come back through the bench's usual columns. The processes
    vLLM's engine spawns end with their worker (they were left spinning on every core)."""
    fake_vllm_python(tmp_path, monkeypatch, FAKE_VLLM)
    monkeypatch.setenv("FAKE_VLLM_ENGINES", str(tmp_path / "engines"))
    result = CliRunner().invoke(_app(), ["bench", "--vs", "vllm-cpu", "--smoke", "--json", "--workloads", "W1,W4,W6"])
    assert result.exit_code == 0, result.stderr
    import gc

    gc.collect()
    engines = [int(pid) for pid in (tmp_path / "engines").read_text().split()]
    assert engines
    for pid in engines:  # gone, or dead and not yet reaped (a zombie of whichever process adopted it)
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
    report = json.loads(result.stdout)
    assert report["vs"] == "vllm-cpu" and report["peer"] == "vLLM (CPU build)"
    assert [r["workload"] for r in report["results"]] == ["W1", "W4"] and set(report["skipped"]) == {"W6"}
    for row in report["results"]:
        assert row["poolkit_tokens_per_s"] > 0 and row["peer_tokens_per_s"] > 0
        assert row["padding_fraction_peer"] == 0.0
    assert report["results"][0]["min_cosine"] > 0.9999  # the stand-in computes what sentence-transformers does


@needs_minilm
def test_bench_vs_vllm_cpu_without_vllm(monkeypatch, tmp_path):
    monkeypatch.delenv("POOLKIT_VLLM_PYTHON", raising=False)
    result = CliRunner().invoke(_app(), ["bench", "--vs", "vllm-cpu", "--smoke", "--json", "-w", "W1"])
    assert result.exit_code == 0, result.stderr
    row = json.loads(result.stdout)["results"][0]
    assert row["poolkit_tokens_per_s"] > 0 and row["peer_tokens_per_s"] is None  # measured alone, as without sentence-transformers
    monkeypatch.setenv("POOLKIT_VLLM_PYTHON", str(tmp_path / "missing" / "python"))
    result = CliRunner().invoke(_app(), ["bench", "--vs", "vllm-cpu", "--smoke", "-w", "W1"])
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == f"Error: POOLKIT_VLLM_PYTHON: {tmp_path / 'missing' / 'python'} is not an executable Python"


@needs_minilm
def test_bench_through_the_sentence_transformers_drop_in():
    """``--api sentence-transformers``: poolkit's side is called through poolkit.SentenceTransformer,
    CrossEncoder and SparseEncoder (around the bench's loaded models), their results compared."""
    result = CliRunner().invoke(_app(), ["bench", "--api", "sentence-transformers", "--smoke", "--json", "-w", "W1,W4,W7"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["api"] == "sentence-transformers"
    assert "through the sentence-transformers drop-in" in format_table(report).splitlines()[1]
    w1, w4, w7 = report["results"]
    assert w1["min_cosine"] > 0.999 and w4["max_abs_diff"] < 1e-2 and w7["min_cosine"] > 0.99
    assert all(r["poolkit_tokens_per_s"] > 0 and r["peer_tokens_per_s"] > 0 for r in report["results"])
    result = CliRunner().invoke(_app(), ["bench", "--api", "openai", "--smoke", "-w", "W1"])
    assert result.exit_code == 1 and result.stderr.splitlines()[0] == "Error: --api 'openai' is not one of llm, sentence-transformers"


#: The int8 export peers and the modules each needs.
EXPORTS = {"onnx-int8": ("onnxruntime", "onnx"), "openvino-int8": ("openvino", "nncf")}


@needs_minilm
@pytest.mark.parametrize("vs", EXPORTS)
def test_bench_vs_an_int8_export_reports_both_cosines(vs):
    """``--vs onnx-int8`` / ``--vs openvino-int8``: poolkit's int8 against the runtime's int8
    export of the same weights, each one's min cosine against sentence-transformers fp32 side by side
    (an export loses more than poolkit's smoothed int8, and it is quantized: not the reference)."""
    for module in EXPORTS[vs]:
        pytest.importorskip(module)
    result = CliRunner().invoke(_app(), ["bench", "--vs", vs, "--quantization", "int8", "--smoke", "--json", "-w", "W1,W4,W7,W9"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["quantization"] == "int8" and report["peer_dtype"] == "int8"
    assert report["implementation"]["peer"].startswith(f"{EXPORTS[vs][0]} ") and "int8" in report["implementation"]["peer"]
    assert [r["workload"] for r in report["results"]] == ["W1", "W4"] and set(report["skipped"]) == {"W7", "W9"}
    w1, w4 = report["results"]
    assert w1["peer_tokens_per_s"] > 0 and w4["peer_items_per_s"] > 0
    assert w1["min_cosine"] >= 0.999 and 0.95 < w1["peer_min_cosine"] < 0.9995
    assert 0 < w4["peer_max_abs_diff"] < 0.1 and w4["max_abs_diff"] < 0.1
    assert f"{w1['min_cosine']:.6f}/{w1['peer_min_cosine']:.6f}" in format_table(report)


@pytest.mark.parametrize("vs", EXPORTS)
def test_an_unquantized_export_matches_sentence_transformers(vs, tiny_encoders, tmp_path):
    """``--peer-dtype float32``: the export without quantizing computes what sentence-transformers
    does, embeddings and cross-encoder scores in input order (only the transformer changes hands)."""
    import torch
    from sentence_transformers import CrossEncoder, SentenceTransformer

    from poolkit.config.settings import EngineArgs
    from poolkit.entrypoints.bench.peers import PEERS

    for module in EXPORTS[vs]:
        pytest.importorskip(module)
    peer = PEERS[vs](EngineArgs(model="unused"), None)
    texts = ["a", "a much longer text than the first one, with more words", "short", "middle length text"] * 3
    path = str(tiny_encoders["bert"])
    got = peer.model("SentenceTransformer", path, "cpu", "float32").encode(texts, batch_size=4, convert_to_tensor=True)
    ref = SentenceTransformer(path, device="cpu").encode(texts, convert_to_tensor=True)
    assert torch.nn.functional.cosine_similarity(got, ref).min() > 0.99999
    from tiny_models import build_classifier

    cross = str(build_classifier(tmp_path / "cross", "bert", 1))
    pairs = [(t, texts[-1 - i]) for i, t in enumerate(texts)]
    scores = peer.model("CrossEncoder", cross, "cpu", "float32").predict(pairs, batch_size=4)
    expected = CrossEncoder(cross, device="cpu").predict(pairs)
    assert max(abs(a - b) for a, b in zip(scores, expected)) < 1e-5


@needs_minilm
def test_bench_vs_an_export_without_its_runtime_or_in_another_dtype(monkeypatch):
    """Without the runtime installed the bench measures poolkit alone; a dtype the export has not is refused."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    result = CliRunner().invoke(_app(), ["bench", "--vs", "onnx-int8", "--smoke", "--json", "-w", "W1"])
    assert result.exit_code == 0, result.stderr
    row = json.loads(result.stdout)["results"][0]
    assert row["poolkit_tokens_per_s"] > 0 and row["peer_tokens_per_s"] is None and row["peer_min_cosine"] is None
    result = CliRunner().invoke(_app(), ["bench", "--vs", "openvino-int8", "--peer-dtype", "float16", "--smoke", "-w", "W1"])
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == "Error: --peer-dtype 'float16': the openvino export runs in int8 or float32"


@pytest.mark.parametrize("kind", ["bert", "roberta", "xlm-roberta"])
def test_model_impl_transformers_runs_the_fallback_and_matches_native(tiny_encoders, kind):
    """``model_impl="transformers"`` serves a native family with the fallback (``describe()`` says
    so), within DESIGN.md §7's fp32 tolerances of the native code; ``poolkit``/``vllm`` keep it native."""
    import torch

    from poolkit import LLM

    path = str(tiny_encoders[kind])
    texts = ["hello", "a somewhat longer sentence, to pad the short one in the fallback's batch", ""]
    runs = {}
    for impl in ("auto", "poolkit", "vllm", "transformers"):
        llm = LLM(path, dtype="float32", model_impl=impl)
        info = llm.model.describe()
        want = "fallback (transformers)" if impl == "transformers" else "native"
        assert info["implementation"] == want, impl
        assert (info["architecture_plugin"] is None) == (impl == "transformers")
        assert llm.args.model_impl == impl
        runs[impl] = torch.tensor([o.outputs.embedding for o in llm.embed(texts)])
    for impl in ("poolkit", "vllm"):
        assert torch.equal(runs[impl], runs["auto"])
    cos = torch.nn.functional.cosine_similarity(runs["transformers"], runs["auto"])
    assert cos.min() >= 0.99999 and (runs["transformers"] - runs["auto"]).abs().max() <= 1e-4


def test_model_impl_errors_are_one_line(tiny_encoders, tmp_path):
    from tiny_models import build_transformers_model

    from poolkit import LLM, InvalidRequest, ModelLoadError

    with pytest.raises(InvalidRequest, match=r"^model_impl 'terratorch' is not one of auto, poolkit, vllm, transformers$"):
        LLM(str(tiny_encoders["bert"]), model_impl="terratorch")
    # an architecture only poolkit has: transformers cannot run it
    with pytest.raises(ModelLoadError) as info:
        LLM(str(tiny_encoders["xlm-roberta"]), model_impl="transformers",
            hf_overrides={"architectures": ["BgeM3EmbeddingModel"]})
    assert str(info.value) == (
        "model_impl='transformers': nothing runs BgeM3EmbeddingModel with the fallback (transformers) "
        "implementation; use model_impl='auto'"
    )
    # a family with no native code, native only
    electra = build_transformers_model(tmp_path / "electra", "ElectraModel")
    with pytest.raises(ModelLoadError) as info:
        LLM(str(electra), model_impl="poolkit")
    assert str(info.value) == (
        "model_impl='poolkit': only the fallback (transformers) implementation runs ElectraModel; use model_impl='auto'"
    )
    result = CliRunner().invoke(_app(), ["embed", "--model-impl", "terratorch", "hello"])
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == (
        "Error: --model-impl 'terratorch' is not one of auto, poolkit, vllm, transformers"
    )


def test_info_says_fallback_with_model_impl_transformers(tiny_encoders):
    result = CliRunner().invoke(_app(), ["info", str(tiny_encoders["bert"]), "--model-impl", "transformers"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["implementation"] == "fallback (transformers)"


@needs_minilm
def test_w5_runs_inputs_of_about_fifty_tokens():
    result = CliRunner().invoke(_app(), ["bench", "--smoke", "--json", "--workloads", "W5"])
    assert result.exit_code == 0, result.stderr
    (row,) = json.loads(result.stdout)["results"]
    assert row["workload"] == "W5" and 40 <= row["tokens"] / row["items"] <= 60


@needs_minilm
def test_host_workload_times_each_stage_against_the_tokenizer():
    """Workload H: the host's stages per text against tokenizers' encode_batch on the same ~50-token
    texts (unpadded, as the engine tokenizes), and a server's single-text requests/s."""
    result = CliRunner().invoke(_app(), ["bench", "--smoke", "--json", "--workloads", "H"])
    assert result.exit_code == 0, result.stderr
    (row,) = json.loads(result.stdout)["results"]
    assert row["workload"] == "H" and set(row) == FIELDS and 40 <= row["tokens"] / row["items"] <= 60
    stages = row["stages"]
    for stage in ("encode_batch", "transformers_tokenizer", "engine_tokenize", "embed_texts", "embed_token_ids"):
        assert stages[f"{stage}_us_per_text"] > 0 and stages[f"{stage}_vs_floor"] > 0
    assert stages["encode_batch_vs_floor"] == 1.0
    # the long case: texts cut at the model's limit, against encode_batch on the same texts
    assert stages["engine_tokenize_long_vs_floor"] > 0 and stages["encode_batch_long_vs_floor"] == 1.0
    assert stages["long_tokens_per_text"] == 256  # all-MiniLM-L6-v2's limit
    assert stages["engine_tokenize_long_us_per_text"] > stages["engine_tokenize_us_per_text"]
    # LLM.embed on 256 token ids a text, and its host work alone (issue 66, item 4)
    assert stages["embed_token_ids_256_us_per_text"] > stages["embed_token_ids_256_host_us_per_text"] > 0
    assert row["peer_items_per_s"] == pytest.approx(1e6 / stages["encode_batch_us_per_text"], rel=0.2)
    assert stages["serve_single_text_requests_per_s"] > 0
    # Issue 52, item 13: the single-text path's guard, in Python calls (counted, not timed)
    assert 100 < stages["serve_calls_per_request"] and 100 < stages["engine_calls_per_batch"]
    assert stages["serve_us_per_request"] > 0
    assert "Python calls: serve_calls_per_request" in row["notes"] and "engine_calls_per_batch" in row["notes"]


def test_the_host_guard_names_the_counts_over_their_budgets(monkeypatch):
    from poolkit.entrypoints.bench import host_calls

    assert host_calls.over_budget({"serve_calls_per_request": 10, "engine_calls_per_batch": 10}) == []
    monkeypatch.setitem(host_calls.BUDGETS, "engine_calls_per_batch", 5)
    assert host_calls.over_budget({"serve_calls_per_request": 10, "engine_calls_per_batch": 10}) == ["engine_calls_per_batch 10 > 5"]


def test_the_engine_asks_the_kernel_registry_once_not_per_batch(minilm, monkeypatch):
    """Issue 52, item 13: the rows a batch is padded to were planned from the kernel registry on every
    batch (about 0.1 ms, a single-text request's batch included); the engine plans them once."""
    import poolkit.runtime.engine as engine_module

    asked = []
    real = engine_module.row_planner
    monkeypatch.setattr(engine_module, "row_planner", lambda device: asked.append(device) or real(device))
    minilm.engine.__dict__.pop("_rows_for", None)
    for text in ("one", "two", "three"):
        minilm.embed([text], use_tqdm=False)
    assert len(asked) == 1


def test_each_timed_pass_starts_on_a_quiet_machine(monkeypatch):
    """vLLM's engine keeps a core busy for about a second after a pass returns: the bench waits for
    the machine to be quiet before timing the next pass (poolkit measured 0.68x of itself right
    after a vLLM pass), for a few seconds at most on a machine that stays busy."""
    from poolkit import InvalidRequest
    from poolkit.entrypoints.bench import measure

    ticks = {"total": 0, "idle": 0}
    busy_windows = iter([1.0, 0.5, 0.5, 0.1])  # one library left a core of two busy, then stopped

    def fake_times():
        return ticks["total"], ticks["idle"]

    def fake_sleep(seconds):
        share = next(busy_windows, 0.0)
        ticks["total"] += 100
        ticks["idle"] += round(100 * (1 - share))

    monkeypatch.setattr(measure, "_cpu_times", fake_times)
    monkeypatch.setattr(measure.time, "sleep", fake_sleep)
    measure.settle(limit=5.0)
    assert next(busy_windows, "spent") == "spent"  # it waited out the three busy windows, then the quiet one
    busy_windows = iter(lambda: 1.0, None)  # a machine that never quiets down
    clock = iter(range(100))
    monkeypatch.setattr(measure.time, "perf_counter", lambda: next(clock))
    assert measure.settle(limit=5.0) >= 5
    monkeypatch.setattr(measure, "_cpu_times", lambda: None)  # no /proc/stat: no waiting
    assert measure.settle(limit=5.0) == 1
    monkeypatch.setattr(measure, "_cpu_times", lambda: pytest.fail("POOLKIT_BENCH_SETTLE=0 samples nothing"))
    monkeypatch.setenv("POOLKIT_BENCH_SETTLE", "0")  # the suite's setting: the smoke tests time at once
    assert measure.settle() == 0
    monkeypatch.setenv("POOLKIT_BENCH_SETTLE", "2.5")
    assert measure.settle_limit() == 2.5
    for bad in ("-1", "soon", "inf"):
        monkeypatch.setenv("POOLKIT_BENCH_SETTLE", bad)
        with pytest.raises(InvalidRequest, match="POOLKIT_BENCH_SETTLE must be a number of seconds, 0 or more"):
            measure.settle_limit()

    calls = []
    monkeypatch.setattr(measure, "settle", lambda: calls.append("settle"))
    measure._interleave(2, lambda: calls.append("ours"), lambda: calls.append("theirs"))
    assert calls == ["ours", "theirs"] + ["settle", "ours", "settle", "theirs"] * 2


def test_each_timed_pass_starts_with_empty_prefix_caches(monkeypatch):
    """The rounds repeat the same texts, which a decoder's prefix cache would answer from the round
    before: every timed pass of either side starts with the caches of the models named emptied,
    untimed (a model without ``reset_prefix_cache``, or none, is passed over)."""
    from poolkit.entrypoints.bench import measure

    calls = []

    class Cached:
        def __init__(self, name):
            self.name = name

        def reset_prefix_cache(self):
            calls.append(f"reset {self.name}")

    monkeypatch.setattr(measure, "settle", lambda: calls.append("settle"))
    clock = iter(range(100))
    monkeypatch.setattr(measure.time, "perf_counter", lambda: calls.append("clock") or next(clock))
    cold = (Cached("ours"), object(), None, Cached("theirs"))
    measure._interleave(1, lambda: calls.append("ours"), lambda: calls.append("theirs"), cold=cold)
    resets = ["reset ours", "reset theirs"]
    assert calls == ["ours", "theirs"] + resets + ["settle", "clock", "ours", "clock"] + resets + ["settle", "clock", "theirs", "clock"]


@needs_minilm
def test_image_workload_smoke_json(tmp_path, monkeypatch):
    """``-w I``: a vision-language preset against transformers' own model, parity reported with the speed."""
    monkeypatch.setenv("POOLKIT_BENCH_CACHE", str(tmp_path))
    result = CliRunner().invoke(_app(), ["bench", "--smoke", "--json", "-w", "I", "-m", "tiny-vl", "--image-size", "112", "--dtype", "float32"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["workload"] == "I" and report["images"] == 2 and report["image_size"] == 112
    assert report["tokens_per_image"] == (112 // 28) ** 2 + 4  # 4 x 4 merged patches, vision start and end, [CLS] and [SEP]
    assert report["least_cosine"] >= 0.99999
    assert report["poolkit_images_per_s"] > 0 and report["transformers_images_per_s"] > 0 and report["speedup"] > 0


def test_image_workload_refuses_a_text_model(minilm_dir):
    result = CliRunner().invoke(_app(), ["bench", "--smoke", "-w", "I", "-m", str(minilm_dir)])
    assert result.exit_code == 1 and "workload I needs a model that reads text and images" in result.output
