"""LoRA adapters (issue: vLLM's LoRA column): PEFT adapters on the encoder, decoder and reranker
families, each against peft's ``PeftModel`` on transformers' own model, mixed with each other and
the base model in one call, and the bad adapters refused clearly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as T

from poolkit import LLM, LoRARequest
from poolkit.contracts.errors import InvalidRequest, PoolkitError
from poolkit.kernels.lora import lora_delta_reference
from tiny_models import build_classifier, build_encoder, build_mpnet, build_qwen

peft = pytest.importorskip("peft")

TEXTS = ["hello world", "a much longer sentence about many things and more", "x", "the quick brown fox"]
ATOL = 1e-4  # fp32 (DESIGN.md section 7)


def _adapter(base: Path, out: Path, auto: type, seed: int, **config) -> Path:
    """A PEFT adapter of ``base`` (loaded with transformers' ``auto`` class), its factors random
    (``init_lora_weights=False``: B is not zero, so the adapter changes the outputs)."""
    torch.manual_seed(seed)
    model = auto.from_pretrained(base)
    settings = dict(r=4, lora_alpha=8, init_lora_weights=False)
    settings.update(config)
    peft.get_peft_model(model, peft.LoraConfig(**settings)).save_pretrained(out)
    return out


def _peft(base: Path, adapter: Path | None, auto: type) -> torch.nn.Module:
    model = auto.from_pretrained(base)
    return (model if adapter is None else peft.PeftModel.from_pretrained(model, adapter)).eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lora")
    bert = build_encoder(root / "bert", "bert")
    qwen = build_qwen(root / "qwen3", "qwen3")
    cross = build_classifier(root / "cross", "bert", num_labels=1)
    mpnet = build_mpnet(root / "mpnet")
    return {
        "bert": bert,
        "bert_a": _adapter(bert, root / "bert_a", T.AutoModel, 1, target_modules=["query", "value", "dense"]),
        "bert_b": _adapter(bert, root / "bert_b", T.AutoModel, 2, target_modules=["key", "intermediate.dense"], r=8, lora_alpha=4),
        "bert_c": _adapter(bert, root / "bert_c", T.AutoModel, 3, target_modules=["query"], r=2, use_rslora=True),
        "qwen3": qwen,
        "qwen3_a": _adapter(
            qwen, root / "qwen3_a", T.AutoModel, 4, target_modules=["q_proj", "v_proj", "o_proj", "gate_proj", "down_proj"], use_rslora=True
        ),
        "cross": cross,
        "cross_a": _adapter(cross, root / "cross_a", T.AutoModelForSequenceClassification, 5, task_type="SEQ_CLS", target_modules=["query", "value"]),
        "mpnet": mpnet,
        "mpnet_a": _adapter(mpnet, root / "mpnet_a", T.AutoModel, 6, target_modules=["q", "v", "o", "intermediate.dense"]),
    }


def _cls(model: torch.nn.Module, tok, texts) -> torch.Tensor:
    enc = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**enc).last_hidden_state[:, 0]


def _rows(outputs) -> torch.Tensor:
    return torch.tensor([o.outputs.embedding for o in outputs])


@pytest.fixture(scope="module")
def bert_llm(models) -> LLM:
    return LLM(str(models["bert"]), enable_lora=True, max_loras=2, pooler_config={"pooling_type": "CLS", "use_activation": False})


@pytest.mark.parametrize("name", ["bert_a", "bert_b", "bert_c"])
def test_an_encoder_adapter_matches_peft(models, bert_llm, name):
    tok = T.AutoTokenizer.from_pretrained(models["bert"])
    want = _cls(_peft(models["bert"], models[name], T.AutoModel), tok, TEXTS)
    got = _rows(bert_llm.embed(TEXTS, lora_request=LoRARequest(name, 1 + len(name), str(models[name]))))
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    base = _cls(_peft(models["bert"], None, T.AutoModel), tok, TEXTS)
    assert (want - base).abs().max() > 0.05  # the adapter changes what the test compares


def test_mixed_adapters_and_the_base_in_one_call_equal_each_alone(models, bert_llm):
    requests = {n: LoRARequest(n, i + 1, str(models[n])) for i, n in enumerate(["bert_a", "bert_b", "bert_c"])}
    plan = [requests["bert_a"], None, requests["bert_b"], requests["bert_c"], None, requests["bert_a"], requests["bert_c"], requests["bert_b"]]
    texts = (TEXTS * 2)[: len(plan)]
    mixed = _rows(bert_llm.embed(texts, lora_request=plan))  # three adapters, max_loras=2: two parts
    for i, (text, request) in enumerate(zip(texts, plan)):
        alone = _rows(bert_llm.embed([text], lora_request=request))
        torch.testing.assert_close(mixed[i : i + 1], alone, atol=1e-5, rtol=0)
    # all three in one batch (the kernel's batched form), with slots to spare
    roomy = LLM(str(models["bert"]), enable_lora=True, max_loras=8, pooler_config={"pooling_type": "CLS", "use_activation": False})
    torch.testing.assert_close(_rows(roomy.embed(texts, lora_request=plan)), mixed, atol=1e-5, rtol=0)


def test_a_decoder_adapter_matches_peft_with_fused_projections_and_rslora(models):
    llm = LLM(str(models["qwen3"]), enable_lora=True, pooler_config={"pooling_type": "LAST", "use_activation": False})
    tok = T.AutoTokenizer.from_pretrained(models["qwen3"])
    reference = _peft(models["qwen3"], models["qwen3_a"], T.AutoModel)
    want = []
    for text in TEXTS:
        with torch.no_grad():
            want.append(reference(**tok([text], return_tensors="pt")).last_hidden_state[0, -1])
    request = LoRARequest("qwen3_a", 1, str(models["qwen3_a"]))
    got = _rows(llm.embed(TEXTS, lora_request=[request, None, request, request]))
    torch.testing.assert_close(got[[0, 2, 3]], torch.stack(want)[[0, 2, 3]], atol=ATOL, rtol=0)
    base = _rows(llm.embed(TEXTS[1:2]))
    torch.testing.assert_close(got[1:2], base, atol=1e-5, rtol=0)


def test_a_reranker_adapter_with_its_own_classifier_head_matches_peft(models):
    llm = LLM(str(models["cross"]), enable_lora=True)
    tok = T.AutoTokenizer.from_pretrained(models["cross"])
    request = LoRARequest("cross_a", 1, str(models["cross_a"]))
    saved = json.loads((models["cross_a"] / "adapter_config.json").read_text())["modules_to_save"]
    assert "classifier" in saved  # SEQ_CLS adapters save their own head
    query, docs = "what is this", TEXTS
    enc = tok([query] * len(docs), docs, return_tensors="pt", padding=True)
    for adapter, lora in ((models["cross_a"], request), (None, None)):
        with torch.no_grad():
            want = torch.sigmoid(_peft(models["cross"], adapter, T.AutoModelForSequenceClassification)(**enc).logits[:, 0])
        got = torch.tensor([o.outputs.score for o in llm.score(query, docs, lora_request=lora)])
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    ranked = llm.rerank(query, docs, lora_request=request)
    assert sorted(r.index for r in ranked) == list(range(len(docs)))
    # one call mixing the adapter and the base model, one per pair (vLLM's list form)
    mixed = torch.tensor([o.outputs.score for o in llm.score(query, docs, lora_request=[request, None, request, None])])
    alone = [llm.score(query, [d], lora_request=r)[0].outputs.score for d, r in zip(docs, [request, None, request, None])]
    torch.testing.assert_close(mixed, torch.tensor(alone), atol=1e-5, rtol=0)
    with pytest.raises(InvalidRequest, match="Lora request list should be the same length"):
        llm.score(query, docs, lora_request=[request])


def test_a_per_pair_lora_list_needs_a_cross_encoder(models, bert_llm):
    request = LoRARequest("bert_a", 1, str(models["bert_a"]))
    with pytest.raises(InvalidRequest, match="a lora_request per pair takes a cross-encoder"):
        bert_llm.score("q", ["a", "b"], lora_request=[request, None])
    assert len(bert_llm.score("q", ["a", "b"], lora_request=request)) == 2


def test_mpnet_adapter_matches_peft(models):
    llm = LLM(str(models["mpnet"]), enable_lora=True, pooler_config={"pooling_type": "CLS", "use_activation": False})
    tok = T.AutoTokenizer.from_pretrained(models["mpnet"])
    want = _cls(_peft(models["mpnet"], models["mpnet_a"], T.AutoModel), tok, TEXTS)
    got = _rows(llm.embed(TEXTS, lora_request=LoRARequest("mpnet_a", 1, str(models["mpnet_a"]))))
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_the_lru_keeps_max_cpu_loras_and_reads_an_evicted_adapter_again(models):
    llm = LLM(str(models["bert"]), enable_lora=True, max_cpu_loras=1, pooler_config={"pooling_type": "CLS", "use_activation": False})
    a, b = (LoRARequest(n, i + 1, str(models[n])) for i, n in enumerate(["bert_a", "bert_b"]))
    first = _rows(llm.embed(TEXTS, lora_request=a))
    _rows(llm.embed(TEXTS, lora_request=b))
    assert [r.lora_name for r in llm.model.adapters.loaded] == ["bert_b"]
    torch.testing.assert_close(_rows(llm.embed(TEXTS, lora_request=a)), first, atol=1e-6, rtol=0)
    both = _rows(llm.embed(TEXTS[:2], lora_request=[a, b]))  # one slot: the two run one after the other
    torch.testing.assert_close(both[:1], first[:1], atol=1e-5, rtol=0)


def test_modernbert_adapter_matches_peft(tmp_path):
    from tiny_models import build_modernbert

    base = build_modernbert(tmp_path / "modernbert", "embed")
    adapter = _adapter(base, tmp_path / "modernbert_a", T.AutoModel, 8, target_modules=["Wqkv", "Wo", "Wi"])
    llm = LLM(str(base), enable_lora=True, pooler_config={"pooling_type": "CLS", "use_activation": False})
    tok = T.AutoTokenizer.from_pretrained(base)
    texts = [*TEXTS, "a longer input that reaches past the local attention window of eight tokens"]
    want = [_cls(_peft(base, adapter, T.AutoModel), tok, [t])[0] for t in texts]
    got = _rows(llm.embed(texts, lora_request=LoRARequest("m", 1, str(adapter))))
    torch.testing.assert_close(got, torch.stack(want), atol=ATOL, rtol=0)


def _merged(base: Path, out: Path, targets: str, seed: int) -> tuple[Path, Path]:
    """A PEFT-format adapter of ``base`` on the checkpoint's linear layers matching ``targets``
    (random factors, as vLLM's NomicBERT LoRA test draws them), and the same model with the
    adapter merged into its weights (``W + alpha / r * B A``): the reference where transformers
    has no class for the family (NomicBERT, GTE are remote code)."""
    import re

    from safetensors.torch import load_file, save_file

    r, alpha = 4, 8
    weights = load_file(base / "model.safetensors")
    generator = torch.Generator().manual_seed(seed)
    factors, layers = {}, []
    for name, tensor in weights.items():
        if tensor.ndim == 2 and name.endswith(".weight") and re.search(targets, name):
            layer = name.removesuffix(".weight")
            a = torch.randn(r, tensor.shape[1], generator=generator) * 0.2
            b = torch.randn(tensor.shape[0], r, generator=generator) * 0.2
            factors[f"base_model.model.{layer}.lora_A.weight"] = a
            factors[f"base_model.model.{layer}.lora_B.weight"] = b
            weights[name] = tensor + alpha / r * b @ a
            layers.append(layer.rpartition(".")[2])
    adapter, merged = out / "adapter", out / "merged"
    adapter.mkdir(parents=True)
    save_file(factors, adapter / "adapter_model.safetensors")
    config = {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "target_modules": sorted(set(layers)), "bias": "none"}
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    shutil.copytree(base, merged)
    save_file(weights, merged / "model.safetensors")
    return adapter, merged


@pytest.mark.parametrize("family", ["nomic", "gte"])
def test_rotary_encoder_adapters_equal_their_merged_weights(family, tmp_path):
    from tiny_rotary_encoders import build_gte, build_nomic

    base = (build_nomic if family == "nomic" else build_gte)(tmp_path / family)
    adapter, merged = _merged(base, tmp_path / "lora", r"encoder\.layers?\.\d+\.", seed=9)
    pooling = {"pooling_type": "MEAN", "use_activation": False}
    want = _rows(LLM(str(merged), pooler_config=pooling, trust_remote_code=True).embed(TEXTS))
    llm = LLM(str(base), enable_lora=True, pooler_config=pooling, trust_remote_code=True)
    request = LoRARequest(family, 1, str(adapter))
    got = _rows(llm.embed(TEXTS, lora_request=[request, request, None, request]))
    torch.testing.assert_close(got[[0, 1, 3]], want[[0, 1, 3]], atol=ATOL, rtol=0)
    torch.testing.assert_close(got[2:3], _rows(llm.embed(TEXTS[2:3])), atol=1e-5, rtol=0)  # another batch: fp32 order
    assert (want - _rows(llm.embed(TEXTS))).abs().max() > 0.05


@pytest.mark.parametrize("family", ["bert", "qwen3"])
def test_bfloat16_adapters_are_as_close_as_peft_in_bfloat16(models, family, tmp_path):
    """bf16 within the reference's own bf16 error: poolkit's bf16 run with the adapter and peft's own
    bf16 run, each against peft's fp32. The BERT is built with weights at a trained model's scale
    (init_range 0.1): at the suite's usual 0.5 the tiny model amplifies rounding chaotically, and
    which of two bf16 runs lands closer is chance."""
    from tolerances import assert_bf16_as_close_as_the_reference

    if family == "bert":
        base = build_encoder(tmp_path / "bert", "bert", init_range=0.1)
        adapter = _adapter(base, tmp_path / "bert_a", T.AutoModel, 12, target_modules=["query", "value", "dense"])
    else:
        base, adapter = models[family], models[f"{family}_a"]
    tok = T.AutoTokenizer.from_pretrained(base)
    pooling = "CLS" if family == "bert" else "LAST"
    texts = [*TEXTS, *[f"sentence number {i} about topic {i * 7 % 5}" for i in range(12)]]

    def reference(dtype):
        model = peft.PeftModel.from_pretrained(T.AutoModel.from_pretrained(base, dtype=dtype), adapter).eval()
        rows = []
        for text in texts:
            with torch.no_grad():
                hidden = model(**tok([text], return_tensors="pt")).last_hidden_state[0]
            rows.append((hidden[0] if pooling == "CLS" else hidden[-1]).float())
        return rows

    llm = LLM(str(base), enable_lora=True, dtype="bfloat16", pooler_config={"pooling_type": pooling, "use_activation": False})
    ours = [torch.tensor(o.outputs.embedding) for o in llm.embed(texts, lora_request=LoRARequest(family, 1, str(adapter)))]
    assert_bf16_as_close_as_the_reference(ours, reference(torch.bfloat16), reference(torch.float32))


# -- bad adapters and requests -------------------------------------------------------------------


def test_lora_request_without_enable_lora_is_refused(models):
    llm = LLM(str(models["bert"]))
    with pytest.raises(InvalidRequest, match="but LoRA is not enabled!"):
        llm.embed(["x"], lora_request=LoRARequest("a", 1, str(models["bert_a"])))


def test_a_request_needs_a_positive_id_and_a_path():
    with pytest.raises(InvalidRequest, match="id must be > 0, got 0"):
        LoRARequest("a", 0, "/somewhere")
    with pytest.raises(InvalidRequest, match="lora_path cannot be empty"):
        LoRARequest("a", 1, "")


def test_bad_adapters_are_refused_in_one_line(models, bert_llm, tmp_path):
    def refused(request, match):
        with pytest.raises(PoolkitError, match=match) as info:
            bert_llm.embed(["x"], lora_request=request)
        assert "\n" not in str(info.value)

    refused(LoRARequest("gone", 9, str(tmp_path / "nowhere")), "Loading lora gone failed: No adapter found for")
    small = LLM(str(models["bert"]), enable_lora=True, max_lora_rank=4)
    with pytest.raises(InvalidRequest, match=r"LoRA rank 8 is greater than max_lora_rank 4\."):
        small.embed(["x"], lora_request=LoRARequest("bert_b", 2, str(models["bert_b"])))
    # an adapter of another model: the qwen adapter's layers are no layers of BERT
    refused(LoRARequest("qwen", 3, str(models["qwen3_a"])), "targets modules that model .* has no linear layer for: layers.0")
    # an adapter of a wider BERT: the shapes do not fit
    wide = build_encoder(tmp_path / "wide", "bert")
    config = json.loads((wide / "config.json").read_text())
    config.update(hidden_size=48, intermediate_size=96)
    wide_model = T.BertModel(T.BertConfig(**{k: v for k, v in config.items() if k not in ("architectures", "transformers_version")}))
    wide_model.save_pretrained(wide)
    refused(LoRARequest("wide", 4, str(_adapter(wide, tmp_path / "wide_a", T.AutoModel, 7, target_modules=["query"]))), "does not fit model")
    # pickle weights only: refused unless pickles are allowed, as for a model's weights
    pickled = tmp_path / "pickled"
    shutil.copytree(models["bert_a"], pickled)
    from safetensors.torch import load_file

    torch.save(load_file(pickled / "adapter_model.safetensors"), pickled / "adapter_model.bin")
    (pickled / "adapter_model.safetensors").unlink()
    refused(LoRARequest("pickled", 5, str(pickled)), "has only pickle weights .* allow_pickle=True")
    # DoRA is another method
    dora = tmp_path / "dora"
    shutil.copytree(models["bert_a"], dora)
    config = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    refused(LoRARequest("dora", 6, str(dora)), "does not yet support DoRA")
    with pytest.raises(InvalidRequest, match="should be the same length as the prompts"):
        bert_llm.embed(["x", "y"], lora_request=[None])


def test_an_architecture_without_adapters_is_refused_at_load(tmp_path):
    from tiny_models import build_clip

    with pytest.raises(InvalidRequest, match="architecture CLIPModel does not take LoRA adapters yet"):
        LLM(str(build_clip(tmp_path / "clip")), enable_lora=True)


def test_settings_of_lora_are_checked():
    with pytest.raises(InvalidRequest, match="max_lora_rank"):
        LLM("unused", enable_lora=True, max_lora_rank=0)


# -- the kernel -----------------------------------------------------------------------------------


def test_lora_delta_reference_adds_each_segments_low_rank_product():
    torch.manual_seed(0)
    x, out = torch.randn(10, 6), torch.randn(10, 5)
    a, b = torch.randn(3, 2, 6), torch.randn(3, 5, 2)
    segments = [(0, 3, 2), (5, 9, 0)]
    want = out.clone()
    for start, stop, slot in segments:
        for t in range(start, stop):
            want[t] += b[slot] @ (a[slot] @ x[t])
    got = lora_delta_reference(x, out.clone(), a, b, segments)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert torch.equal(got[3:5], out[3:5]) and torch.equal(got[9:], out[9:])  # rows of no segment: the base's
    # more than two segments run batched (padded to the longest): slots in order, and out of order
    a, b = torch.randn(5, 2, 6), torch.randn(5, 5, 2)  # more slots than the segments use
    for many in ([(0, 2, 0), (2, 7, 1), (7, 8, 2)], [(1, 4, 2), (4, 5, 0), (6, 10, 1)], [(0, 3, 1), (3, 6, 3), (6, 9, 4)]):
        want = out.clone()
        for start, stop, slot in many:
            want[start:stop] += x[start:stop] @ a[slot].t() @ b[slot].t()
        torch.testing.assert_close(lora_delta_reference(x, out.clone(), a, b, many), want, atol=1e-5, rtol=0)


# -- served: --lora-modules, /v1/models, a request's model, vLLM's load and unload routes ---------


@pytest.fixture(scope="module")
def served(models):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from poolkit.entrypoints.server import create_app

    llm = LLM(str(models["bert"]), enable_lora=True, max_loras=2, pooler_config={"pooling_type": "CLS", "use_activation": False})
    adapters = [LoRARequest("legal", 1, str(models["bert_a"])), LoRARequest("medical", 2, str(models["bert_b"]))]
    with TestClient(create_app(llm, served_model_name="base", lora_modules=adapters, cache_size=16)) as client:
        yield client, llm


def test_served_adapters_are_listed_with_their_parent(served):
    client, _ = served
    cards = {card["id"]: card for card in client.get("/v1/models").json()["data"]}
    assert set(cards) == {"base", "legal", "medical"}
    assert cards["legal"]["parent"] == "base" and cards["legal"]["root"] == "legal" and "parent" not in cards["base"]
    assert str(Path(cards["legal"]["root"])) == "legal"  # no adapter path shows


def test_a_requests_model_runs_its_adapter_on_every_route(served, models):
    client, llm = served
    for name, request in (("legal", LoRARequest("legal", 1, str(models["bert_a"]))), ("base", None)):
        want = _rows(llm.embed(TEXTS[:2], lora_request=request))
        for _ in range(2):  # the second answer comes from the cache, which keeps adapters apart
            body = client.post("/v1/embeddings", json={"model": name, "input": TEXTS[:2]}).json()
            got = torch.tensor([d["embedding"] for d in body["data"]])
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        assert body["model"] == name
        pooled = client.post("/pooling", json={"model": name, "input": TEXTS[:1], "task": "embed"}).json()
        torch.testing.assert_close(torch.tensor(pooled["data"][0]["data"]), want[0], atol=1e-5, rtol=0)
        cohere = client.post("/v2/embed", json={"model": name, "texts": TEXTS[:1], "embedding_types": ["float"]})
        assert cohere.status_code == 200, cohere.text
        torch.testing.assert_close(torch.tensor(cohere.json()["embeddings"]["float"][0]), want[0], atol=1e-5, rtol=0)
        tei = client.post("/embed", json={"inputs": TEXTS[:1], "normalize": False}, headers={"X-Model": name})
        torch.testing.assert_close(torch.tensor(tei.json()[0]), want[0], atol=1e-5, rtol=0)
    missing = client.post("/v1/embeddings", json={"model": "nobody", "input": "x"})
    assert missing.status_code == 404 and "nobody" in missing.json()["error"]["message"]


def test_vllms_load_and_unload_routes_are_off_unless_allowed(served, models, monkeypatch):
    client, _ = served
    body = {"lora_name": "fresh", "lora_path": str(models["bert_c"])}
    assert client.post("/v1/load_lora_adapter", json=body).status_code == 404
    monkeypatch.setenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "True")
    loaded = client.post("/v1/load_lora_adapter", json=body)
    assert loaded.status_code == 200 and loaded.text == "Success: LoRA adapter 'fresh' added successfully."
    again = client.post("/v1/load_lora_adapter", json=body)
    assert again.status_code == 400 and "The lora adapter 'fresh' has already been loaded." in again.text
    assert client.post("/v1/embeddings", json={"model": "fresh", "input": "x"}).status_code == 200
    gone = client.post("/v1/load_lora_adapter", json={"lora_name": "gone", "lora_path": "/no/such/adapter"})
    assert gone.status_code == 404 and "No adapter found for" in gone.text and "/no/such" not in gone.text  # paths scrubbed
    assert "gone" not in {c["id"] for c in client.get("/v1/models").json()["data"]}
    unloaded = client.post("/v1/unload_lora_adapter", json={"lora_name": "fresh"})
    assert unloaded.status_code == 200 and unloaded.text == "Success: LoRA adapter 'fresh' removed successfully."
    assert client.post("/v1/embeddings", json={"model": "fresh", "input": "x"}).status_code == 404
    missing = client.post("/v1/unload_lora_adapter", json={"lora_name": "fresh"})
    assert missing.status_code == 404 and "The lora adapter 'fresh' cannot be found." in missing.text


def test_lora_modules_need_enable_lora_and_a_well_formed_value(models):
    from typer.testing import CliRunner

    from poolkit.entrypoints.cli import app

    runner = CliRunner()
    bad = runner.invoke(app, ["serve", str(models["bert"]), "--lora-modules", f"legal={models['bert_a']}"])
    assert bad.exit_code == 1 and "Error: --lora-modules needs --enable-lora" in bad.output
    worse = runner.invoke(app, ["serve", str(models["bert"]), "--enable-lora", "--lora-modules", "legal"])
    assert worse.exit_code == 1 and "Error: --lora-modules takes name=path or a JSON object, got 'legal'" in worse.output
    with pytest.raises(InvalidRequest, match="but LoRA is not enabled"):
        from poolkit.entrypoints.server import create_app

        create_app(LLM(str(models["bert"])), lora_modules=[LoRARequest("legal", 1, str(models["bert_a"]))])


# -- sentence-transformers' adapter methods ---------------------------------------------------------


def _normalized_cls(model: torch.nn.Module, tok, texts) -> np.ndarray:
    return torch.nn.functional.normalize(_cls(model, tok, texts), dim=-1).numpy()


def test_sentence_transformers_load_adapter_and_set_adapter_match_peft(models):
    """sentence-transformers' own ``load_adapter`` needs a newer PEFT than PyPI's latest here, so
    the reference is peft's ``PeftModel`` with the pooling poolkit's class gives a plain
    transformers directory (CLS, normalised: vLLM's default for BERT), which its base encode pins."""
    from poolkit import SentenceTransformer

    model = SentenceTransformer(str(models["bert"]))
    tok = T.AutoTokenizer.from_pretrained(models["bert"])
    base = model.encode(TEXTS)
    np.testing.assert_allclose(base, _normalized_cls(_peft(models["bert"], None, T.AutoModel), tok, TEXTS), atol=ATOL)
    with pytest.raises(InvalidRequest, match="No adapter loaded"):
        model.active_adapters()
    model.load_adapter(str(models["bert_a"]))
    assert model.active_adapters() == ["default"]
    np.testing.assert_allclose(model.encode(TEXTS), _normalized_cls(_peft(models["bert"], models["bert_a"], T.AutoModel), tok, TEXTS), atol=ATOL)
    model.load_adapter(str(models["bert_b"]), adapter_name="b")
    assert model.active_adapters() == ["default"]  # loading another does not switch, as in transformers
    model.set_adapter("b")
    np.testing.assert_allclose(model.encode(TEXTS), _normalized_cls(_peft(models["bert"], models["bert_b"], T.AutoModel), tok, TEXTS), atol=ATOL)
    model.disable_adapters()
    np.testing.assert_allclose(model.encode(TEXTS), base, atol=1e-6)
    model.enable_adapters()
    assert model.active_adapters() == ["b"]
    with pytest.raises(InvalidRequest, match="Adapter with name b already exists"):
        model.load_adapter(str(models["bert_b"]), adapter_name="b")
    with pytest.raises(InvalidRequest, match="Adapter with name nope not found"):
        model.set_adapter("nope")


def test_a_cross_encoder_runs_its_adapter(models):
    from poolkit import CrossEncoder

    model = CrossEncoder(str(models["cross"]))
    model.load_adapter(str(models["cross_a"]))
    tok = T.AutoTokenizer.from_pretrained(models["cross"])
    pairs = [("what is this", doc) for doc in TEXTS]
    enc = tok([q for q, _ in pairs], [d for _, d in pairs], return_tensors="pt", padding=True)
    with torch.no_grad():
        want = torch.sigmoid(_peft(models["cross"], models["cross_a"], T.AutoModelForSequenceClassification)(**enc).logits[:, 0])
    np.testing.assert_allclose(model.predict(pairs), want.numpy(), atol=ATOL)


def test_lora_delta_triton_matches_the_reference():
    pytest.importorskip("triton", reason="pip install triton (the gpu extra) to test the Triton kernels")
    import textwrap

    from suite_device import run_triton_script

    script = textwrap.dedent(
        """
        import torch
        from poolkit.kernels.lora import lora_delta_reference, lora_delta_triton
        g = torch.Generator().manual_seed(0)
        for width, features, rank in ((32, 96, 12), (40, 24, 48)):
            x = torch.randn(70, width, generator=g)
            out = torch.randn(70, features, generator=g)
            a, b = torch.randn(3, rank, width, generator=g), torch.randn(3, features, rank, generator=g)
            for segments in ([(0, 70, 1)], [(2, 19, 0), (19, 20, 2), (33, 70, 1)], []):
                for dtype in (torch.float32, torch.bfloat16):
                    want = lora_delta_reference(x.to(dtype), out.to(dtype).clone(), a.to(dtype), b.to(dtype), segments)
                    got = lora_delta_triton(x.to(dtype), out.to(dtype).clone(), a.to(dtype), b.to(dtype), segments)
                    tol = 1e-3 if dtype == torch.float32 else 0.25
                    assert torch.allclose(got.float(), want.float(), atol=tol, rtol=1e-2), (width, segments, dtype)
        print("ok")
        """
    )
    result = run_triton_script(script)
    assert result.returncode == 0 and result.stdout.startswith("ok"), result.stderr[-2000:]


def test_the_lora_bench_measures_mixes_against_the_base_and_peft(models):
    from poolkit.config.settings import EngineArgs
    from poolkit.entrypoints.bench.lora import adapter_counts, format_lora_bench, run_lora_bench

    assert adapter_counts(16) == [1, 4, 16] and adapter_counts(1) == [1] and adapter_counts(6) == [1, 4, 6]
    report = run_lora_bench(EngineArgs(model=str(models["bert"])), 4, 8, texts=24, rounds=1)
    assert [row["adapters"] for row in report["rows"]] == [0, 1, 4]
    assert report["rows"][0]["vs_base"] == 1.0 and all(row["items_per_s"] > 0 for row in report["rows"])
    assert all(row["peft_items_per_s"] > 0 and row["vs_peft"] > 0 for row in report["rows"][1:])
    assert report["min_cosine_vs_peft"] > 0.9999  # the mixes agree with peft's
    assert "least cosine poolkit vs peft" in format_lora_bench(report)


def test_a_vision_language_adapter_on_its_language_model_matches_peft(tmp_path):
    from test_qwen_vl import IMAGE, reference
    from tiny_models import build_qwen2_vl, picture

    base = build_qwen2_vl(tmp_path / "qwen2-vl")
    targets = r".*language_model.*\.(q_proj|v_proj|o_proj|gate_proj|down_proj)"
    adapter = _adapter(base, tmp_path / "qwen2-vl_a", T.Qwen2VLForConditionalGeneration, 10, target_modules=targets)
    hf = T.Qwen2VLForConditionalGeneration.from_pretrained(base, dtype=torch.float32).eval()
    peft.PeftModel.from_pretrained(hf, adapter)  # injects the adapter into hf's own modules
    tools = (hf, T.AutoTokenizer.from_pretrained(base), T.AutoImageProcessor.from_pretrained(base))
    llm = LLM(str(base), enable_lora=True)
    request = LoRARequest("vl", 1, str(adapter))
    cases = [("is paris the capital of france?", []), (f"what is {IMAGE} this?", [picture(40, 24, 1)])]
    for text, images in cases:
        prompt = text if not images else {"prompt": text, "multi_modal_data": {"image": images[0]}}
        (out,) = llm.embed([prompt], lora_request=request)
        torch.testing.assert_close(torch.tensor(out.outputs.embedding), reference(tools, text, images), atol=ATOL, rtol=0)
    vision = _adapter(base, tmp_path / "vision_a", T.Qwen2VLForConditionalGeneration, 11, target_modules=["qkv"])
    with pytest.raises(InvalidRequest, match="LoRA on Qwen2VLForConditionalGeneration's visual layers .* is not supported"):
        llm.embed(["x"], lora_request=LoRARequest("vision", 2, str(vision)))


def test_the_transformers_fallback_takes_adapters_too(models):
    """model_impl="transformers": the adapters hook transformers' own layers on its padded batches."""
    tok = T.AutoTokenizer.from_pretrained(models["bert"])
    llm = LLM(str(models["bert"]), model_impl="transformers", enable_lora=True, max_loras=2,
              pooler_config={"pooling_type": "CLS", "use_activation": False})
    a, b = (LoRARequest(n, i + 1, str(models[n])) for i, n in enumerate(["bert_a", "bert_b"]))
    got = _rows(llm.embed(TEXTS, lora_request=[a, b, None, a]))
    for i, (name, request) in enumerate([("bert_a", a), ("bert_b", b), (None, None), ("bert_a", a)]):
        want = _cls(_peft(models["bert"], None if name is None else models[name], T.AutoModel), tok, [TEXTS[i]])
        torch.testing.assert_close(got[i : i + 1], want, atol=ATOL, rtol=0)
    cross = LLM(str(models["cross"]), model_impl="transformers", enable_lora=True)
    enc = tok(["what is this"] * len(TEXTS), TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        want = torch.sigmoid(_peft(models["cross"], models["cross_a"], T.AutoModelForSequenceClassification)(**enc).logits[:, 0])
    got = torch.tensor([o.outputs.score for o in cross.score("what is this", TEXTS, lora_request=LoRARequest("c", 1, str(models["cross_a"])))])
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_poolkit_serve_with_lora_modules_lists_and_runs_them(models, tmp_path):
    """The command line end to end: `poolkit serve MODEL --enable-lora --lora-modules ...` (both of
    vLLM's forms), driven by the official OpenAI client."""
    openai = pytest.importorskip("openai")
    pytest.importorskip("fastapi")
    from test_server import start_server, stop_server

    spec = json.dumps({"name": "medical", "path": str(models["bert_b"])})
    server = start_server(
        models["bert"], tmp_path / "server.log", "--enable-lora", "--max-loras", "2", "--dtype", "float32",
        "--pooler-config", '{"pooling_type": "CLS", "use_activation": false}',
        "--lora-modules", f"legal={models['bert_a']}", "--lora-modules", spec,
    )
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)
        cards = {m.id: m for m in client.models.list().data}
        assert set(cards) == {"minilm", "legal", "medical"}
        assert cards["legal"].model_extra["parent"] == "minilm"
        offline = LLM(str(models["bert"]), enable_lora=True, max_loras=2, pooler_config={"pooling_type": "CLS", "use_activation": False})
        for name, adapter in (("legal", "bert_a"), ("medical", "bert_b"), ("minilm", None)):
            got = client.embeddings.create(model=name, input=TEXTS[:2]).data
            request = None if adapter is None else LoRARequest(name, 1, str(models[adapter]))
            want = _rows(offline.embed(TEXTS[:2], lora_request=request))
            torch.testing.assert_close(torch.tensor([d.embedding for d in got]), want, atol=1e-5, rtol=0)
        with pytest.raises(openai.NotFoundError):
            client.embeddings.create(model="unknown", input="x")
    finally:
        assert stop_server(server) == 0, server.logs()
