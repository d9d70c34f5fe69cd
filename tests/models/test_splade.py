"""SPLADE: BertForMaskedLM, the sparse_embed task, the SPLADE head, the splade_pool kernel and
SparseEmbedding, against sentence-transformers' SparseEncoder on real (SPLADE-tiny) and tiny
random weights."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from suite_device import run_triton_script

from poolkit import LLM, InvalidRequest, ModelLoadError, PoolingParams
from poolkit.builtin_poolers import sparse as sparse_head
from poolkit.contracts.sparse import SparseEmbedding, SparseEmbeddingRequestOutput
from poolkit.kernels.splade import splade_pool_reduce_first, splade_pool_reference
from poolkit.loading.st_config import read_st_config
from poolkit.plugins import lookup, registry
from poolkit.plugins.lookup import select_kernel

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support:UserWarning")  # SparseEncoder's

ATOL = 1e-4
TEXTS = [
    "The capital of France is Paris.",
    "Neural sparse retrieval with SPLADE.",
    "hello",
    "what is the capital of germany? berlin is the capital of germany.",
]
SPLADE = {"architectures": ["BertSpladeSparseEmbeddingModel"]}


@pytest.fixture(scope="module")
def sparse_encoder(splade_dir):
    from sentence_transformers import SparseEncoder

    return SparseEncoder(str(splade_dir), device="cpu")


@pytest.fixture(scope="module")
def splade_ref(sparse_encoder) -> torch.Tensor:
    return sparse_encoder.encode(TEXTS, convert_to_tensor=True).to_dense().float()


@pytest.fixture(scope="module")
def splade_llm(splade_dir) -> LLM:
    return LLM(str(splade_dir), hf_overrides=SPLADE)


def assert_same_sparse(got: torch.Tensor, ref: torch.Tensor) -> None:
    assert got.shape == ref.shape
    assert (got - ref).abs().max().item() <= ATOL
    for row_got, row_ref in zip(got, ref):
        assert torch.equal(row_got.nonzero().flatten(), row_ref.nonzero().flatten())
        assert 0 < int((row_ref != 0).sum()) < row_ref.numel() // 10  # really sparse, not empty


# -- real weights: SPLADE-tiny -------------------------------------------------------------------


def test_splade_tiny_matches_sparse_encoder(splade_llm, splade_ref):
    assert splade_llm.model.architecture_name == "BertSpladeSparseEmbeddingModel"
    assert {"embed", "sparse_embed"} <= set(splade_llm.supported_tasks)
    embedded = torch.stack([torch.tensor(o.outputs.embedding) for o in splade_llm.embed(TEXTS)])
    assert_same_sparse(embedded, splade_ref)
    encoded = torch.stack([o.outputs.data for o in splade_llm.encode(TEXTS, pooling_task="sparse_embed")])
    assert encoded.dtype == torch.float32
    assert torch.equal(encoded, embedded)


def test_top_terms_threshold_and_json(splade_llm):
    (out,) = splade_llm.encode(TEXTS[:1], pooling_task="sparse_embed")
    tok = splade_llm.get_tokenizer()
    top = SparseEmbedding.from_dense(out.outputs.data, top_k=5, tokenizer=tok)
    assert len(top) == 5 and {"paris", "france"} <= set(top.tokens)
    assert top.values == sorted(top.values, reverse=True)
    assert top.tokens == tok.convert_ids_to_tokens(top.indices)
    full = SparseEmbedding.from_dense(out.outputs.data)
    assert len(full) == int((out.outputs.data != 0).sum()) and full.tokens is None
    assert full.indices[:5] == top.indices
    pruned = SparseEmbedding.from_dense(out.outputs.data, threshold=1.0)
    assert 0 < len(pruned) < len(full) and min(pruned.values) >= 1.0
    assert pruned.indices == [i for i, v in zip(full.indices, full.values) if v >= 1.0]
    data = json.loads(json.dumps(top.to_dict()))
    assert data == {"indices": top.indices, "values": top.values, "tokens": top.tokens}
    assert torch.equal(full.to_dense(out.outputs.data.numel()), out.outputs.data)
    wrapped = SparseEmbeddingRequestOutput.from_base(out, top_k=2, tokenizer=tok)
    assert wrapped.outputs.indices == top.indices[:2] and wrapped.prompt_token_ids == out.prompt_token_ids


def test_plain_mlm_load_serves_sparse_embed_and_keeps_hidden_state_embed(splade_dir, splade_ref):
    plain = LLM(str(splade_dir))
    assert plain.model.architecture_name == "BertForMaskedLM"
    sparse = torch.stack([o.outputs.data for o in plain.encode(TEXTS, pooling_task="sparse_embed")])
    assert_same_sparse(sparse, splade_ref)
    embedded = torch.tensor([o.outputs.embedding for o in plain.embed(TEXTS)])
    assert embedded.shape == (len(TEXTS), 128)  # the hidden-state (CLS) embedding, not SPLADE
    bare = LLM(str(splade_dir), hf_overrides={"architectures": ["BertModel"]})
    assert torch.equal(embedded, torch.tensor([o.outputs.embedding for o in bare.embed(TEXTS)]))
    tokens = plain.encode(TEXTS[:2], pooling_task="token_embed")
    for got, ref in zip(tokens, bare.encode(TEXTS[:2], pooling_task="token_embed")):
        assert torch.equal(got.outputs.data, ref.outputs.data)


def test_long_batch_is_pooled_in_bounded_chunks(splade_dir, sparse_encoder, monkeypatch):
    texts = [f"{i} " + "the quick brown fox jumps over the lazy dog near paris " * 11 for i in range(60)]
    seen: list[int] = []

    def spy(logits, segments, out, strategy, activation):
        seen.append(logits.shape[0])
        return splade_pool_reference(logits, segments, out, strategy, activation)

    chosen = lookup.select_kernel
    monkeypatch.setattr(lookup, "select_kernel", lambda op, device: spy if op == "splade_pool" else chosen(op, device))
    llm = LLM(str(splade_dir), hf_overrides=SPLADE)
    vocab = llm.model.hf_config.vocab_size
    default_rows = sparse_head.LOGITS_BUDGET // vocab
    outs = llm.encode(texts, pooling_task="sparse_embed")
    total = sum(len(o.prompt_token_ids) for o in outs)
    assert all(110 <= len(o.prompt_token_ids) <= 130 for o in outs)
    assert total > 10 * default_rows and total <= llm.engine.max_batch_tokens  # one batch, many chunks
    assert max(seen) == default_rows and sum(seen) == total and len(seen) == -(-total // default_rows)
    default = torch.stack([o.outputs.data for o in outs])
    ref = sparse_encoder.encode(texts[:3], convert_to_tensor=True).to_dense().float()
    assert_same_sparse(default[:3], ref)
    # Chunks of 37 rows cut every sequence somewhere: the same vectors (a smaller batch, to be quick).
    few = texts[:12]
    whole = torch.stack([o.outputs.data for o in llm.encode(few, pooling_task="sparse_embed")])
    monkeypatch.setattr(sparse_head, "LOGITS_BUDGET", 37 * vocab)
    seen.clear()
    outs = llm.encode(few, pooling_task="sparse_embed")
    small = torch.stack([o.outputs.data for o in outs])
    rows = sum(len(o.prompt_token_ids) for o in outs)
    assert max(seen) == 37 and sum(seen) == rows and len(seen) == -(-rows // 37)
    assert torch.allclose(small, whole, rtol=0, atol=1e-5) and torch.equal(small != 0, whole != 0)
    assert torch.allclose(whole, default[:12], rtol=0, atol=1e-5)


# -- tiny random MLMs: sentence-transformers SparseEncoder configs, untied decoders, old names ----


@pytest.fixture(scope="module")
def tiny_mlms(tmp_path_factory) -> dict[str, Path]:
    from tiny_models import build_masked_lm

    root = tmp_path_factory.mktemp("mlm")
    return {
        "tied": build_masked_lm(root / "tied"),
        "untied": build_masked_lm(root / "untied", seed=1, tie_word_embeddings=False),
        "legacy": build_masked_lm(root / "legacy", seed=1, tie_word_embeddings=False, legacy_names=True),
    }


def hf_splade(path: Path, texts: list[str], strategy: str = "max", activation: bool = True) -> torch.Tensor:
    """SPLADE by hand on transformers' BertForMaskedLM: padded batch, padding masked out."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    model = AutoModelForMaskedLM.from_pretrained(str(path)).eval()
    enc = AutoTokenizer.from_pretrained(str(path))(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits
    mask = enc["attention_mask"].bool().unsqueeze(-1)
    x = torch.log1p(torch.relu(logits)) if activation else logits
    if strategy == "max":
        return x.masked_fill(~mask, float("-inf")).amax(dim=1)
    return (x * mask).sum(dim=1)


@pytest.mark.parametrize("strategy,module", [("max", "MLMTransformer"), ("sum", "Transformer")])
def test_sparse_encoder_config_is_detected_without_overrides(tiny_mlms, tmp_path, strategy, module):
    from sentence_transformers import SparseEncoder
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sparse_encoder.modules import MLMTransformer, SpladePooling

    first = MLMTransformer(str(tiny_mlms["tied"])) if module == "MLMTransformer" else Transformer(
        str(tiny_mlms["tied"]), transformer_task="fill-mask"
    )
    encoder = SparseEncoder(modules=[first, SpladePooling(pooling_strategy=strategy)], device="cpu")
    encoder.save(str(tmp_path / "st"))
    modules = json.loads((tmp_path / "st" / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == [module, "SpladePooling"]
    ref = encoder.encode(TEXTS, convert_to_tensor=True).to_dense().float()
    llm = LLM(str(tmp_path / "st"))
    assert llm.model.architecture_name == "BertForMaskedLM"
    assert llm.model.st.splade["strategy"] == strategy
    head = llm.model.head(registry("task").get("sparse_embed"))
    assert head.pooling_name == f"SPLADE_{strategy.upper()}" and head.output_size == len(llm.get_tokenizer())
    embedded = torch.stack([torch.tensor(o.outputs.embedding) for o in llm.embed(TEXTS)])
    assert embedded.shape == ref.shape and (embedded - ref).abs().max().item() <= ATOL
    for got, want in zip(embedded, ref):
        assert torch.equal(got.nonzero().flatten(), want.nonzero().flatten())
    assert torch.equal(torch.stack([o.outputs.data for o in llm.encode(TEXTS, pooling_task="sparse_embed")]), embedded)
    assert torch.allclose(ref, hf_splade(tiny_mlms["tied"], TEXTS, strategy), atol=ATOL)
    # The same checkpoint without the sentence-transformers files: embed is the CLS hidden state.
    assert len(LLM(str(tiny_mlms["tied"])).embed(TEXTS[0])[0].outputs.embedding) == 32


def test_untied_decoder_and_legacy_layernorm_names_match_transformers(tiny_mlms):
    ref = hf_splade(tiny_mlms["untied"], TEXTS)
    assert not torch.allclose(ref, hf_splade(tiny_mlms["tied"], TEXTS), atol=0.1)
    for kind in ("untied", "legacy"):
        llm = LLM(str(tiny_mlms[kind]), hf_overrides=SPLADE)
        assert llm.model.architecture.cls.predictions.decoder is not None
        got = torch.stack([o.outputs.data for o in llm.encode(TEXTS, pooling_task="sparse_embed")])
        assert torch.allclose(got, ref, atol=ATOL), kind


def test_use_activation_false_gives_raw_pooled_logits_per_request(tiny_mlms):
    path = tiny_mlms["tied"]
    llm = LLM(str(path), hf_overrides=SPLADE)
    off = PoolingParams(use_activation=False)
    raw = torch.stack([o.outputs.data for o in llm.encode(TEXTS, off, pooling_task="sparse_embed")])
    assert torch.equal(raw, torch.tensor([o.outputs.embedding for o in llm.embed(TEXTS, off)]))
    assert torch.allclose(raw, hf_splade(path, TEXTS, activation=False), atol=ATOL)
    assert (raw < 0).any()
    activated = torch.stack([o.outputs.data for o in llm.encode(TEXTS, pooling_task="sparse_embed")])
    assert torch.allclose(activated, torch.log1p(torch.relu(raw)), atol=1e-6)  # max commutes with it
    mixed = [PoolingParams(use_activation=i % 2 == 0) for i in range(len(TEXTS))]
    got = [o.outputs.data for o in llm.encode(TEXTS, mixed, pooling_task="sparse_embed")]
    for i, row in enumerate(got):
        assert torch.equal(row, activated[i] if i % 2 == 0 else raw[i])


def test_task_availability_and_errors(tiny_encoders, tiny_mlms):
    bare = LLM(str(tiny_encoders["bert"]))
    assert "sparse_embed" not in bare.supported_tasks
    with pytest.raises(InvalidRequest, match="Task sparse_embed is not supported by model"):
        bare.encode("hello", pooling_task="sparse_embed")
    # A BertModel checkpoint labelled BertForMaskedLM has no MLM head: hidden-state tasks only.
    headless = LLM(str(tiny_encoders["bert"]), hf_overrides={"architectures": ["BertForMaskedLM"]})
    assert headless.model.architecture_name == "BertForMaskedLM"
    assert "sparse_embed" not in headless.supported_tasks
    assert headless.embed(TEXTS)[1].outputs.embedding == bare.embed(TEXTS)[1].outputs.embedding
    with pytest.raises(ModelLoadError, match=r"needs the checkpoint's MLM head \(cls\.predictions\.\*\)"):
        LLM(str(tiny_encoders["bert"]), hf_overrides=SPLADE)
    splade = LLM(str(tiny_mlms["tied"]), hf_overrides=SPLADE)
    with pytest.raises(InvalidRequest, match=r"only supports \['use_activation'\] parameters"):
        splade.encode("hello", PoolingParams(dimensions=8), pooling_task="sparse_embed")
    with pytest.raises(InvalidRequest, match="does not support matryoshka"):
        splade.embed("hello", PoolingParams(dimensions=8))


def test_splade_pooling_config_is_validated(tmp_path):
    (tmp_path / "1_SpladePooling").mkdir()
    (tmp_path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"},
        {"idx": 1, "name": "1", "path": "1_SpladePooling",
         "type": "sentence_transformers.sparse_encoder.modules.splade_pooling.SpladePooling"},
    ]))
    config = tmp_path / "1_SpladePooling" / "config.json"
    config.write_text(json.dumps({"pooling_strategy": "sum", "activation_function": "log1p_relu"}))
    st = read_st_config(tmp_path)
    assert st.splade == {"strategy": "sum", "activation": "log1p_relu", "path": "1_SpladePooling/config.json"}
    assert st.pooling_modes is None
    config.write_text(json.dumps({"pooling_strategy": "mean"}))
    with pytest.raises(ModelLoadError, match="unknown SpladePooling pooling_strategy 'mean'; valid: max, sum"):
        read_st_config(tmp_path)
    config.write_text(json.dumps({"activation_function": "gelu"}))
    with pytest.raises(ModelLoadError, match="activation_function 'gelu'"):
        read_st_config(tmp_path)


# -- SparseEmbedding ------------------------------------------------------------------------------


def test_sparse_embedding_from_dense():
    vector = torch.tensor([0.0, 0.5, 0.0, 2.0, 0.5, 1.0])
    sparse = SparseEmbedding.from_dense(vector)
    assert sparse.indices == [3, 5, 1, 4] and sparse.values == [2.0, 1.0, 0.5, 0.5]  # ties by id
    assert SparseEmbedding.from_dense(vector.tolist(), top_k=2).indices == [3, 5]
    assert SparseEmbedding.from_dense(vector, threshold=0.6).to_dict() == {"indices": [3, 5], "values": [2.0, 1.0]}
    assert SparseEmbedding.from_dense(vector, top_k=9, threshold=1.0).values == [2.0, 1.0]
    assert SparseEmbedding.from_dense(torch.zeros(4)).to_dict() == {"indices": [], "values": []}
    assert torch.equal(sparse.to_dense(6), vector)
    for bad in ({"top_k": 0}, {"top_k": 1.5}, {"top_k": True}, {"threshold": float("nan")}, {"threshold": "1"}):
        with pytest.raises(InvalidRequest):
            SparseEmbedding.from_dense(vector, **bad)
    with pytest.raises(InvalidRequest, match="one-dimensional"):
        SparseEmbedding.from_dense(torch.ones(2, 3))
    with pytest.raises(InvalidRequest, match="need the tokens"):
        sparse.to_token_weights()


# -- the splade_pool kernel -----------------------------------------------------------------------


def naive_splade(logits: torch.Tensor, lens: list[int], strategy: str, activation: str) -> torch.Tensor:
    rows = []
    for seq in torch.split(logits.float(), lens):
        x = seq if activation == "none" else torch.log1p(torch.relu(seq))
        if activation == "log1p_relu":
            x = torch.log1p(x)
        rows.append(x.amax(0) if strategy == "max" else x.sum(0))
    return torch.stack(rows)


@pytest.mark.parametrize("kernel", [splade_pool_reference, splade_pool_reduce_first], ids=["reference", "reduce-first"])
@pytest.mark.parametrize("strategy", ["max", "sum"])
@pytest.mark.parametrize("activation", ["relu", "log1p_relu", "none"])
def test_cpu_kernels_match_per_sequence_computation(kernel, strategy, activation):
    torch.manual_seed(0)
    lens = [3, 1, 7, 2]
    logits = torch.randn(sum(lens), 50) * 3
    segments = torch.repeat_interleave(torch.arange(len(lens)), torch.tensor(lens))
    start = float("-inf") if strategy == "max" else 0.0
    expected = naive_splade(logits, lens, strategy, activation)
    before = logits.clone()
    out = kernel(logits, segments, torch.full((len(lens), 50), start), strategy, activation)
    assert torch.allclose(out, expected, atol=1e-5) and torch.equal(logits, before)
    # Two calls over halves that split a sequence, rows out of order, bf16 logits: same result.
    half, order = 6, torch.randperm(sum(lens))
    split = torch.full((len(lens), 50), start)
    kernel(logits[order[:half]], segments[order[:half]], split, strategy, activation)
    kernel(logits[order[half:]], segments[order[half:]], split, strategy, activation)
    assert torch.allclose(split, expected, atol=1e-5)
    low = kernel(logits.bfloat16(), segments, torch.full((len(lens), 50), start), strategy, activation)
    assert torch.allclose(low, naive_splade(logits.bfloat16(), lens, strategy, activation), atol=1e-5)
    with pytest.raises(ValueError, match="strategy 'mean'"):
        kernel(logits, segments, out, "mean", activation)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("activation", ["relu", "log1p_relu", "none"])
def test_reduce_first_is_the_reference_bit_for_bit(dtype, activation):
    """Including the head's mixed calls: rows a call does not touch keep their values."""
    assert select_kernel("splade_pool", "cpu") is splade_pool_reduce_first
    g = torch.Generator().manual_seed(1)
    lens = [5, 2, 9, 1, 4]
    logits = (torch.randn(sum(lens), 300, generator=g) * 2).to(dtype)
    segments = torch.repeat_interleave(torch.arange(len(lens)), torch.tensor(lens))
    raw = segments % 2 == 1  # sequences 1 and 3 pooled without activation, as use_activation=False asks
    results = []
    for kernel in (splade_pool_reference, splade_pool_reduce_first):
        out = torch.full((len(lens) + 1, 300), float("-inf"))  # the last row has no tokens
        kernel(logits[~raw], segments[~raw], out, "max", activation)
        kernel(logits[raw], segments[raw], out, "max", "none")
        results.append(out)
    assert torch.equal(results[0], results[1])
    assert torch.isinf(results[1][-1]).all() and (results[1][1] < 0).any()


def test_triton_kernel_is_registered_for_cuda_only():
    entry = registry("kernel").get("splade_pool:triton")
    assert entry.device == "cuda" and entry.reference is splade_pool_reference
    if not torch.cuda.is_available():
        assert not entry.is_available()


def test_triton_kernel_matches_reference():
    pytest.importorskip("triton", reason="pip install triton (the gpu extra) to test the Triton kernels")
    script = textwrap.dedent(
        """
        import torch
        from poolkit.kernels.splade import splade_pool_reference, splade_pool_triton
        torch.manual_seed(1)
        lens = [5, 1, 33, 16, 2]
        logits = torch.randn(sum(lens), 1500) * 3
        segments = torch.repeat_interleave(torch.arange(len(lens)), torch.tensor(lens))
        worst = 0.0
        for strategy in ("max", "sum"):
            start = float("-inf") if strategy == "max" else 0.0
            for activation in ("relu", "log1p_relu", "none"):
                for order in (torch.arange(sum(lens)), torch.randperm(sum(lens))):
                    args = (logits[order], segments[order])
                    got = splade_pool_triton(*args, torch.full((len(lens), 1500), start), strategy, activation)
                    ref = splade_pool_reference(*args, torch.full((len(lens), 1500), start), strategy, activation)
                    assert torch.allclose(got, ref, atol=1e-5, rtol=1e-6), (strategy, activation)
                    worst = max(worst, (got - ref).abs().max().item())
        bf16 = splade_pool_triton(logits.bfloat16(), segments, torch.full((len(lens), 1500), 0.0), "sum", "relu")
        assert torch.allclose(bf16, splade_pool_reference(logits.bfloat16(), segments, torch.zeros(len(lens), 1500), "sum", "relu"), atol=1e-4)
        print("ok", worst)
        """
    )
    result = run_triton_script(script)
    assert result.returncode == 0 and result.stdout.startswith("ok"), result.stderr[-2000:]


# -- LLM.sparse_embed and `poolkit encode --task sparse_embed` (skipped until they are wired) -----


def _cli_has_sparse_options() -> bool:
    import inspect

    from poolkit.entrypoints import cli

    return "top_k" in inspect.signature(cli.encode).parameters


@pytest.mark.skipif(not hasattr(LLM, "sparse_embed"), reason="LLM.sparse_embed is not wired yet")
def test_llm_sparse_embed(splade_llm):
    outs = splade_llm.sparse_embed(TEXTS, top_k=5, return_tokens=True)
    dense = splade_llm.encode(TEXTS, pooling_task="sparse_embed")
    tok = splade_llm.get_tokenizer()
    for out, ref in zip(outs, dense):
        assert isinstance(out, SparseEmbeddingRequestOutput) and out.prompt_token_ids == ref.prompt_token_ids
        assert out.outputs == SparseEmbedding.from_dense(ref.outputs.data, top_k=5, tokenizer=tok)
    assert {"paris", "france"} <= set(outs[0].outputs.tokens)
    (pruned,) = splade_llm.sparse_embed(TEXTS[0], threshold=1.0)
    assert pruned.outputs.tokens is None and min(pruned.outputs.values) >= 1.0
    with pytest.raises(InvalidRequest, match="top_k must be a positive integer"):
        splade_llm.sparse_embed(TEXTS, top_k=0)


@pytest.mark.skipif(not _cli_has_sparse_options(), reason="poolkit encode --top-k is not wired yet")
def test_cli_encode_sparse_embed(splade_dir, splade_llm):
    from typer.testing import CliRunner

    from poolkit.entrypoints.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["encode", "--task", "sparse_embed", "--model", str(splade_dir), "--top-k", "5", "-q", *TEXTS[:2]])
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["index"] for r in rows] == [0, 1]
    expected = splade_llm.encode(TEXTS[:2], pooling_task="sparse_embed")
    for row, ref in zip(rows, expected):
        sparse = SparseEmbedding.from_dense(ref.outputs.data, top_k=5, tokenizer=splade_llm.get_tokenizer())
        assert row["indices"] == sparse.indices and row["tokens"] == sparse.tokens
        assert row["values"] == pytest.approx(sparse.values, abs=1e-5)
    assert {"paris", "france"} <= set(rows[0]["tokens"])
    wrong = runner.invoke(app, ["encode", "--task", "embed", "--model", str(splade_dir), "--top-k", "5", "-q", "hello"])
    assert wrong.exit_code == 1
    assert "Error: --top-k and --threshold apply to --task sparse_embed only" in wrong.stderr
