"""The Llama-style decoder family (Llama, Mistral, Gemma 1/2/3) against transformers, on tiny
random checkpoints (``tiny_models.build_decoder``).

Each checkpoint has 4 query heads sharing 2 key/value heads and random norm weights and biases.
Mistral's sliding window (6 tokens), Gemma 2's (on alternate layers, with attention-score and
logit soft-capping) and Gemma 3's local layers (with their own rotary base, linear scaling on the
global ones) are all shorter than the test inputs (up to 40 tokens). Inputs of mixed lengths run
as one packed batch; transformers runs them as one right-padded batch with explicit positions,
and the unpadded rows must agree (fp32: cosine >= 0.99999, max |diff| <= 1e-4).
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers as T
from hidden_parity import agreement, run
from hidden_parity import reference_hidden as padded_hidden

from poolkit import LLM
from poolkit.builtin_models import decoders
from poolkit.contracts.batch import PackedBatch
from poolkit.contracts.errors import ModelLoadError
from poolkit.loading.weights import checkpoint_files, iter_tensors
from poolkit.plugins import registry

ATOL = 1e-4
MIN_COS = 0.99999
LENGTHS = [1, 5, 6, 40, 13, 6, 33, 2, 40]
TEXTS = [
    "paris is the capital of france",
    "hello",
    "the quick brown fox jumps over the lazy dog " * 3,
    "what is the capital of germany? berlin is the capital of germany.",
    "yes",
]
QUERY = "what is the capital of france"
DOCS = ["paris is the capital of france", "hello world", "the quick brown fox", "berlin is the capital of germany"]
LLAMA3_ROPE = {
    "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16, "rope_theta": 500.0,
}

#: name -> (family, task, num_labels, config overrides, poolkit class)
SPECS = {
    "llama": ("llama", "embed", 1, dict(num_hidden_layers=3), decoders.LlamaModel),
    "llama-bias-llama3": ("llama", "embed", 1, dict(attention_bias=True, mlp_bias=True, rope_parameters=LLAMA3_ROPE),
                          decoders.LlamaModel),
    "llama-dynamic": ("llama", "embed", 1, dict(rope_parameters={"rope_type": "dynamic", "factor": 4.0, "rope_theta": 100.0}),
                      decoders.LlamaModel),
    "llama-lm": ("llama", "lm", 1, dict(tie_word_embeddings=False), decoders.LlamaForCausalLM),
    "llama-cls3": ("llama", "classify", 3, {}, decoders.LlamaForSequenceClassification),
    "llama-ner": ("llama", "token_classify", 5, {}, decoders.LlamaForTokenClassification),
    "mistral": ("mistral", "embed", 1, {}, decoders.MistralModel),
    "mistral-lm": ("mistral", "lm", 1, {}, decoders.MistralForCausalLM),
    "mistral-cls1": ("mistral", "classify", 1, {}, decoders.MistralForSequenceClassification),
    "gemma": ("gemma", "embed", 1, {}, decoders.GemmaModel),
    "gemma-lm": ("gemma", "lm", 1, {}, decoders.GemmaForCausalLM),
    "gemma-cls1": ("gemma", "classify", 1, {}, decoders.GemmaForSequenceClassification),
    "gemma2": ("gemma2", "embed", 1, {}, decoders.Gemma2Model),
    "gemma2-lm": ("gemma2", "lm", 1, {}, decoders.Gemma2ForCausalLM),
    "gemma2-cls3": ("gemma2", "classify", 3, {}, decoders.Gemma2ForSequenceClassification),
    "gemma3": ("gemma3", "embed", 1, {}, decoders.Gemma3TextModel),
    "gemma3-bidirectional": ("gemma3", "embed", 1, dict(use_bidirectional_attention=True), decoders.Gemma3TextModel),
    "gemma3-lm": ("gemma3", "lm", 1, dict(final_logit_softcapping=3.0), decoders.Gemma3ForCausalLM),
    "gemma3-cls3": ("gemma3", "classify", 3, {}, decoders.Gemma3TextForSequenceClassification),
}
BACKBONES = [n for n, spec in SPECS.items() if spec[1] in ("embed", "lm")]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tiny_models import build_decoder

    root = tmp_path_factory.mktemp("decoders")
    return {
        name: build_decoder(root / name, family, task, labels, seed=i, **config)
        for i, (name, (family, task, labels, config, _)) in enumerate(SPECS.items())
    }


def load(path: Path, name: str, config: object = None) -> decoders.DecoderModel:
    arch = SPECS[name][4](config or T.AutoConfig.from_pretrained(path))
    arch.load_weights(iter_tensors(checkpoint_files(path)))
    return arch.eval()


def random_sequences(lengths: list[int], seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 300, (n,), generator=g).tolist() for n in lengths]


def bare(path: Path, **config: object) -> torch.nn.Module:
    """Transformers' backbone of a checkpoint (``AutoModel``), config attributes overridden."""
    cfg = T.AutoConfig.from_pretrained(str(path))
    for key, value in config.items():
        setattr(cfg, key, value)
    return T.AutoModel.from_pretrained(str(path), config=cfg).eval()


def reference_hidden(backbone: torch.nn.Module, seqs: list[list[int]], padded: bool = True) -> list[torch.Tensor]:
    """Transformers' last hidden state on one right-padded batch cut back to each sequence, or
    (``padded=False``) on each sequence alone."""
    if padded:
        return padded_hidden(backbone, seqs, positions=True)
    with torch.inference_mode():
        return [backbone(input_ids=torch.tensor([s])).last_hidden_state[0] for s in seqs]


def hf_run(model: torch.nn.Module, path: Path, texts: list[str], pairs: list[str] | None = None) -> tuple[object, torch.Tensor]:
    """Transformers' outputs on one left-padded batch (positions from 0 in each text), and its mask."""
    enc = T.AutoTokenizer.from_pretrained(str(path))(texts, pairs, padding=True, return_tensors="pt")
    mask = enc["attention_mask"]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = model(input_ids=enc["input_ids"], attention_mask=mask, position_ids=positions)
    return out, mask.bool()


def embeddings(llm: LLM, texts: list[str]) -> torch.Tensor:
    return torch.tensor([o.outputs.embedding for o in llm.embed(texts)])


# -- the architectures ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", BACKBONES)
def test_matches_transformers(models: dict[str, Path], name: str) -> None:
    path = models[name]
    backbone = bare(path)
    arch = load(path, name)
    seqs = random_sequences(LENGTHS, seed=1)

    # In float64 everything but the norms (float32 in both) is exact: poolkit must agree to
    # rounding. transformers' eager attention (Gemma 2) turns padded float64 rows into NaN, so
    # the reference runs each sequence alone here; it also takes its softmax in float32, where
    # poolkit's soft-capped attention keeps float64.
    max_diff, _ = agreement(run(copy.deepcopy(arch).double(), seqs), reference_hidden(copy.deepcopy(backbone).double(), seqs, padded=False))
    assert max_diff <= (1e-5 if SPECS[name][0] == "gemma2" else 1e-9), f"{name} float64: max |diff| {max_diff:.3g}"

    max_diff, min_cos = agreement(run(arch, seqs), reference_hidden(backbone, seqs))
    assert max_diff <= ATOL, f"{name}: max |diff| {max_diff:.3g}"
    assert min_cos >= MIN_COS, f"{name}: min cosine {min_cos:.7f}"


@pytest.mark.parametrize(
    "name, change",
    [
        ("mistral", {"sliding_window": None}),
        ("gemma2", {"attn_logit_softcapping": None}),
        ("gemma2", {"layer_types": ["full_attention"] * 3}),
        ("gemma2", {"query_pre_attn_scalar": 8}),
        ("gemma3", {"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1000.0},
                                        "sliding_attention": {"rope_type": "default", "rope_theta": 100.0}}}),
        ("gemma3", {"rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000.0},
                                        "sliding_attention": {"rope_type": "default", "rope_theta": 1000.0}}}),
        ("gemma3", {"layer_types": ["full_attention"] * 4}),
        ("gemma3-bidirectional", {"sliding_window": 1000}),
        ("llama-bias-llama3", {"rope_parameters": {"rope_type": "default", "rope_theta": 500.0}}),
    ],
)
def test_what_the_parity_test_would_catch(models: dict[str, Path], name: str, change: dict) -> None:
    """Ignoring a window, a soft cap, a scale or a rotary variant would fail the parity test."""
    path = models[name]
    config = T.AutoConfig.from_pretrained(path)
    for key, value in change.items():
        setattr(config, key, value)
    seqs = random_sequences([40, 33], seed=2)
    max_diff, _ = agreement(run(load(path, name, config), seqs), reference_hidden(bare(path), seqs))
    assert max_diff > 1e-2


def test_dynamic_rope_is_plain_rope_within_the_context(models: dict[str, Path]) -> None:
    """transformers rescales ``dynamic`` frequencies only past max_position_embeddings, which poolkit
    never runs: within it they are the plain frequencies of rope_theta."""
    path = models["llama-dynamic"]
    arch = load(path, "llama-dynamic")
    assert arch.max_positions == 128
    (inv_freq, scaling), = arch._rotary_parameters.values()
    assert scaling == 1.0 and torch.equal(inv_freq, 1.0 / 100.0 ** (torch.arange(0, 8, 2).float() / 8))


@pytest.mark.parametrize("name", ["llama", "mistral", "gemma2", "gemma3-bidirectional"])
def test_batch_invariance(models: dict[str, Path], name: str) -> None:
    arch = load(models[name], name)
    g = torch.Generator().manual_seed(4)
    seqs = random_sequences(torch.randint(1, 41, (32,), generator=g).tolist(), seed=5)
    together = run(arch, seqs)
    for i in (0, 17, 31):
        (alone,) = run(arch, [seqs[i]])
        max_diff, min_cos = agreement([alone], [together[i]])
        assert min_cos >= MIN_COS and max_diff <= ATOL, (i, max_diff, min_cos)


def _hf_embeddings(path: Path, dtype: torch.dtype, texts: list[str], **config: object) -> torch.Tensor:
    """transformers' normalized last-token embeddings in ``dtype``, each text run alone."""
    model = bare(path, **config).to(dtype)
    tok = T.AutoTokenizer.from_pretrained(str(path))
    with torch.no_grad():
        rows = [model(input_ids=torch.tensor([tok(t)["input_ids"]])).last_hidden_state[0, -1].float() for t in texts]
    return F.normalize(torch.stack(rows), dim=-1)


@pytest.mark.parametrize("family", ["llama", "mistral", "gemma", "gemma2", "gemma3"])
def test_bfloat16_follows_float32(family: str, tmp_path: Path) -> None:
    """bf16 embeddings stay within cosine 0.9999 of fp32 — or, where transformers' own bf16 run of
    the tiny model does not (Gemma 2/3, whose extra norms round more), about as close as it is:
    poolkit in bf16 computes what transformers computes in bf16."""
    from tiny_models import build_decoder

    path = build_decoder(tmp_path / family, family, init_range=0.05)
    full = embeddings(LLM(str(path), dtype="float32"), TEXTS)
    half_llm = LLM(str(path), dtype="bfloat16")
    assert half_llm.model.dtype == torch.bfloat16
    half = embeddings(half_llm, TEXTS)
    theirs = _hf_embeddings(path, torch.bfloat16, TEXTS)
    cosine = F.cosine_similarity(full, half).min().item()
    reference = F.cosine_similarity(full, theirs).min().item()
    assert cosine >= min(0.9999, reference - 2e-4), f"{family}: bf16 cosine {cosine:.6f}, transformers' {reference:.6f}"
    if family in ("llama", "mistral", "gemma"):
        assert cosine >= 0.9999
    arch = half_llm.model.architecture
    half_tokens = run(arch, random_sequences(LENGTHS, seed=3))
    assert all(h.dtype == torch.bfloat16 for h in half_tokens)


def test_bfloat16_keeps_a_float32_residual_stream(tmp_path: Path) -> None:
    """poolkit deliberately does more than transformers here: in a bf16 (or fp16) decoder the
    residual stream stays float32 (each layer's add would otherwise round it to bf16), so a deep
    model's bf16 embeddings lose less than half of what transformers' own bf16 run loses against
    float32 (Qwen3-Embedding-0.6B's preset at 512 tokens: least cosine 0.99987 -> 0.99992)."""
    from tiny_models import build_qwen

    path = build_qwen(tmp_path / "qwen3", "qwen3", init_range=0.05, num_hidden_layers=28, hidden_size=64, intermediate_size=192)
    texts = [" ".join(f"word{i * 7 % 50}" for i in range(k)) for k in (4, 8, 12, 16)]
    full = embeddings(LLM(str(path), dtype="float32"), texts)
    half_llm = LLM(str(path), dtype="bfloat16")
    ours = F.cosine_similarity(full, embeddings(half_llm, texts)).min().item()
    theirs = F.cosine_similarity(full, _hf_embeddings(path, torch.bfloat16, texts)).min().item()
    assert 1 - ours <= 0.6 * (1 - theirs), f"bf16 least cosine {ours:.6f}, transformers' {theirs:.6f}"
    # The stream between the layers is float32; what each sublayer reads is bf16.
    arch = half_llm.model.architecture
    seen: list[torch.dtype] = []
    hook = arch.layers[1].register_forward_pre_hook(lambda module, args: seen.extend((args[0].dtype, args[1].dtype)))
    try:
        run(arch, random_sequences([5, 9], seed=1))
    finally:
        hook.remove()
    assert seen == [torch.float32, torch.bfloat16]
    assert all(h.dtype == torch.bfloat16 for h in run(arch, random_sequences([5, 9], seed=1)))


def test_bidirectional_when_not_causal(models: dict[str, Path]) -> None:
    """``is_causal: false`` (hf_overrides) makes any member bidirectional, sliding windows
    spanning ``sliding_window`` tokens either side, as transformers' bidirectional masks do."""
    path = models["mistral"]
    config = T.AutoConfig.from_pretrained(path)
    config.is_causal = False
    arch = load(path, "mistral", config)
    assert not arch.causal and arch.layers[0].self_attn.window == 6
    seqs = random_sequences(LENGTHS, seed=6)
    max_diff, min_cos = agreement(run(arch, seqs), reference_hidden(bare(path, is_causal=False), seqs))
    assert max_diff <= ATOL and min_cos >= MIN_COS, f"max |diff| {max_diff:.3g}, min cosine {min_cos:.7f}"
    out, _ = hf_run(bare(path, is_causal=False), path, TEXTS)
    ref = F.normalize(out.last_hidden_state[:, -1], dim=-1)
    assert (embeddings(LLM(str(path), hf_overrides={"is_causal": False}), TEXTS) - ref).abs().max() <= ATOL


@pytest.mark.parametrize(
    "name, dropped",
    [
        ("gemma2", "layers.1.pre_feedforward_layernorm.weight"),
        ("gemma2", "layers.2.post_feedforward_layernorm.weight"),
        ("gemma3", "layers.3.self_attn.k_norm.weight"),
        ("llama-bias-llama3", "layers.0.mlp.down_proj.bias"),
        ("llama-bias-llama3", "layers.1.self_attn.o_proj.bias"),
        ("llama-lm", "model.norm.weight"),
        ("gemma2-cls3", "score.weight"),
    ],
)
def test_missing_tensor_is_named(models: dict[str, Path], name: str, dropped: str) -> None:
    path = models[name]
    arch = SPECS[name][4](T.AutoConfig.from_pretrained(path))
    weights = [(n, t) for n, t in iter_tensors(checkpoint_files(path)) if n != dropped]
    assert len(weights) == len(list(iter_tensors(checkpoint_files(path)))) - 1
    with pytest.raises(ModelLoadError, match=dropped.removeprefix("model.").replace(".", r"\.")):
        arch.load_weights(weights)


def test_hooks_register_architectures() -> None:
    registered: dict[str, object] = {}
    decoders.poolkit_register_architectures(register=registered.__setitem__)
    names = [f"{f}{s}" for f in ("Llama", "Mistral", "Gemma", "Gemma2") for s in
             ("Model", "ForCausalLM", "ForSequenceClassification", "ForTokenClassification")]
    names += ["LlamaBidirectionalModel", "LlamaBidirectionalForSequenceClassification", "Gemma3TextModel",
              "Gemma3ForCausalLM", "Gemma3TextForSequenceClassification", "GritLM"]
    assert registered == {n: getattr(decoders, n) for n in names}
    assert all(registry("architecture").entry(n).plugin == "builtin_decoders" for n in names)


# -- the public API -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SPECS))
def test_served_natively(models: dict[str, Path], name: str) -> None:
    info = LLM(str(models[name])).model.describe()
    assert info["implementation"] == "native"
    assert info["architecture_plugin"] == "builtin_decoders"
    assert info["architecture"] == SPECS[name][4].__name__


@pytest.mark.parametrize("name", ["llama", "llama-lm", "mistral-lm", "gemma", "gemma2", "gemma3"])
def test_embed_is_the_normalized_last_token(models: dict[str, Path], name: str) -> None:
    path = models[name]
    out, _ = hf_run(bare(path), path, TEXTS)
    llm = LLM(str(path))
    assert "embed" in llm.supported_tasks and "classify" not in llm.supported_tasks
    ref = F.normalize(out.last_hidden_state[:, -1], dim=-1)  # left padding: the last token is last
    got = embeddings(llm, TEXTS)
    assert (got - ref).abs().max() <= ATOL
    assert F.cosine_similarity(got, ref).min() >= MIN_COS


@pytest.mark.parametrize("name", ["llama-cls3", "mistral-cls1", "gemma-cls1", "gemma2-cls3", "gemma3-cls3"])
def test_classify_matches_transformers(models: dict[str, Path], name: str) -> None:
    path = models[name]
    model = T.AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
    logits = hf_run(model, path, TEXTS)[0].logits
    ref = torch.sigmoid(logits) if logits.shape[-1] == 1 else torch.softmax(logits, dim=-1)
    llm = LLM(str(path))
    got = torch.tensor([o.outputs.probs for o in llm.classify(TEXTS)])
    assert got.shape == ref.shape
    assert torch.allclose(got, ref, atol=ATOL), (got - ref).abs().max()
    assert ref.std(0).max() > 0.01, "the tiny model must not be constant"
    if logits.shape[-1] == 1:  # a cross-encoder: score() reads query and document together
        pair_logits = hf_run(model, path, [QUERY] * len(DOCS), DOCS)[0].logits
        scores = [s.outputs.score for s in llm.score(QUERY, DOCS)]
        assert scores == pytest.approx(torch.sigmoid(pair_logits).squeeze(-1).tolist(), abs=ATOL)


def test_token_classify_matches_transformers(models: dict[str, Path]) -> None:
    path = models["llama-ner"]
    model = T.AutoModelForTokenClassification.from_pretrained(str(path)).eval()
    out, mask = hf_run(model, path, TEXTS)
    llm = LLM(str(path))
    assert set(llm.supported_tasks) == {"token_classify"}
    for got, row, keep in zip(llm.encode(TEXTS, pooling_task="token_classify"), out.logits, mask):
        assert torch.allclose(got.outputs.data, torch.softmax(row[keep], dim=-1), atol=ATOL)


@pytest.mark.parametrize("name", ["gemma-lm", "llama-lm"])
def test_llm_as_reranker_reads_the_lm_head(models: dict[str, Path], name: str) -> None:
    """bge-reranker-v2-gemma's recipe, family-wide: ``classifier_from_token: ["yes"]`` with
    ``no_post_processing`` scores sigmoid(z_yes); ``from_2_way_softmax`` over ["no", "yes"]."""
    path = models[name]
    lm = T.AutoModelForCausalLM.from_pretrained(str(path)).eval()
    no, yes = T.AutoTokenizer.from_pretrained(str(path)).convert_tokens_to_ids(["no", "yes"])
    prompts = ["is paris the capital of france? yes", "is berlin the capital of france? no", "hello world"]
    logits = hf_run(lm, path, prompts)[0].logits[:, -1, [no, yes]]
    seq_cls = SPECS[name][4].__name__.replace("ForCausalLM", "ForSequenceClassification")
    llm = LLM(str(path), hf_overrides={"architectures": [seq_cls], "classifier_from_token": ["yes"], "method": "no_post_processing"})
    assert llm.model.architecture_name == seq_cls and llm.score_type == "cross-encoder"
    got = torch.tensor([o.outputs.probs[0] for o in llm.classify(prompts)])
    assert torch.allclose(got, torch.sigmoid(logits[:, 1]), atol=ATOL)
    two_way = LLM(str(path), hf_overrides={"classifier_from_token": ["no", "yes"], "method": "from_2_way_softmax"})
    got = torch.tensor([o.outputs.probs[0] for o in two_way.classify(prompts)])
    assert torch.allclose(got, torch.softmax(logits, dim=-1)[:, 1], atol=ATOL)
    assert logits.std(0).max() > 0.01, "the tiny reranker must not be constant"


@pytest.mark.parametrize("name", ["llama-lm", "gemma2-lm", "gemma3-lm"])
def test_step_rewards_read_the_lm_head(models: dict[str, Path], name: str) -> None:
    """STEP process rewards off the LM head, soft-capped as transformers does (Gemma 2/3)."""
    path = models[name]
    tok = T.AutoTokenizer.from_pretrained(str(path))
    text = "paris is the capital of france. berlin is the capital of germany"
    ids = tok(text)["input_ids"]
    tag = max(set(ids), key=ids.count)
    assert ids.count(tag) >= 2
    with torch.no_grad():
        logits = T.AutoModelForCausalLM.from_pretrained(str(path)).eval()(input_ids=torch.tensor([ids])).logits[0]
    llm = LLM(str(path), pooler_config={"pooling_type": "STEP", "step_tag_id": tag, "use_activation": False})
    (out,) = llm.reward(text)
    want = logits[torch.tensor(ids) == tag]
    assert torch.allclose(torch.as_tensor(out.outputs.data), want, atol=ATOL)
    cap = T.AutoConfig.from_pretrained(str(path)).get_text_config().final_logit_softcapping if "gemma" in name else None
    if cap:
        assert want.abs().max() <= cap and want.abs().max() > 0.5 * cap  # the cap matters


def _nemotron_style(source: Path, target: Path, **extra: object) -> Path:
    """A copy of a Llama checkpoint whose config.json is written as llama-nemotron's: model_type
    ``llama_bidirec``, remote code in ``auto_map``, old-style ``rope_theta`` / ``rope_scaling`` (the keys
    vLLM's ``LlamaBidirectionalConfig`` handling and the publisher's ``llama_bidirectional_model`` read)."""
    shutil.copytree(source, target)
    raw = json.loads((target / "config.json").read_text())
    rope = dict(raw.pop("rope_parameters", None) or {"rope_type": "default", "rope_theta": 10000.0})
    raw.update(model_type="llama_bidirec", rope_theta=rope.pop("rope_theta"), rope_scaling=rope,
               auto_map={"AutoModel": "llama_bidirectional_model.LlamaBidirectionalModel"}, **extra)
    (target / "config.json").write_text(json.dumps(raw))
    return target


def test_llama_bidirectional_model(models: dict[str, Path], tmp_path: Path) -> None:
    """llama-nemotron-embed style: bidirectional, pooled as the config's ``pooling`` says (avg),
    from the checkpoint's own config.json (no remote code) or a plain Llama with hf_overrides."""
    source = models["llama-bias-llama3"]
    path = _nemotron_style(source, tmp_path / "nemotron", architectures=["LlamaBidirectionalModel"], pooling="avg")
    out, mask = hf_run(bare(source, is_causal=False), source, TEXTS)
    hidden = out.last_hidden_state
    ref = F.normalize((hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True), dim=-1)
    llm = LLM(str(path))
    info = llm.model.describe()
    assert info["implementation"] == "native" and info["architecture"] == "LlamaBidirectionalModel"
    assert info["tasks"]["embed"]["pooling_type"]["value"] == "MEAN"
    assert not llm.model.architecture.causal
    got = embeddings(llm, TEXTS)
    assert (got - ref).abs().max() <= ATOL and F.cosine_similarity(got, ref).min() >= MIN_COS
    as_override = LLM(str(source), hf_overrides={"architectures": ["LlamaBidirectionalModel"]})
    assert (embeddings(as_override, TEXTS) - ref).abs().max() <= ATOL
    last = LLM(str(source), hf_overrides={"architectures": ["LlamaBidirectionalModel"], "pooling": "last"})
    assert (embeddings(last, TEXTS) - F.normalize(hidden[:, -1], dim=-1)).abs().max() <= ATOL
    with pytest.raises(ModelLoadError, match="pooling 'weighted' of a LlamaBidirectionalModel config is not supported"):
        LLM(str(source), hf_overrides={"architectures": ["LlamaBidirectionalModel"], "pooling": "weighted"})


def test_llama_bidirectional_reranker(models: dict[str, Path], tmp_path: Path) -> None:
    """llama-nemotron-rerank style: the mean of the bidirectional hidden states -> ``score``."""
    source = models["llama-cls3"]
    path = _nemotron_style(source, tmp_path / "rerank", architectures=["LlamaBidirectionalForSequenceClassification"], pooling="avg")
    model = T.AutoModelForSequenceClassification.from_pretrained(str(source)).eval()
    out, mask = hf_run(bare(source, is_causal=False), source, TEXTS)
    pooled = (out.last_hidden_state * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
    with torch.no_grad():
        ref = torch.softmax(model.score(pooled), dim=-1)
    got = torch.tensor([o.outputs.probs for o in LLM(str(path)).classify(TEXTS)])
    assert torch.allclose(got, ref, atol=ATOL), (got - ref).abs().max()


def test_embeddinggemma_sentence_transformers_directory(tmp_path: Path) -> None:
    """EmbeddingGemma's layout: a bidirectional Gemma3TextModel, then sentence-transformers' MEAN
    pooling, Dense (up), Dense (down), Normalize — against SentenceTransformer.encode. Layout source:
    google/embeddinggemma-300m's sentence-transformers modules (its two bias-free Dense layers:
    github.com/ggml-org/llama.cpp/issues/18677), saved here by sentence-transformers itself."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer
    from tiny_models import build_decoder

    backbone = build_decoder(tmp_path / "gemma3", "gemma3", padding_side="right", use_bidirectional_attention=True, seed=7)
    torch.manual_seed(0)
    up = Dense(32, 48, bias=False, activation_function=torch.nn.Identity())
    down = Dense(48, 24, bias=False, activation_function=torch.nn.Identity())
    st = SentenceTransformer(modules=[Transformer(str(backbone)), Pooling(32, "mean"), up, down, Normalize()], device="cpu")
    st.save(str(tmp_path / "st"))
    st = SentenceTransformer(str(tmp_path / "st"), device="cpu")
    llm = LLM(str(tmp_path / "st"))
    info = llm.model.describe()
    assert info["implementation"] == "native" and info["architecture"] == "Gemma3TextModel"
    assert info["tasks"]["embed"]["pooling_type"]["value"] == "MEAN"
    assert [(d["in"], d["out"]) for d in info["projector"]] == [(32, 48), (48, 24)]
    texts = TEXTS + ["the quick brown fox jumps over the lazy dog " * 4]  # longer than the local windows
    ref = torch.tensor(st.encode(texts))
    got = embeddings(llm, texts)
    assert got.shape == ref.shape == (len(texts), 24)
    assert (got - ref).abs().max() <= ATOL, (got - ref).abs().max()
    assert F.cosine_similarity(got, ref).min() >= MIN_COS
    half = embeddings(LLM(str(tmp_path / "st"), dtype="bfloat16"), texts)
    assert F.cosine_similarity(half, got).min() >= 0.999


def test_unsupported_configs_are_refused(models: dict[str, Path]) -> None:
    raw = json.loads((models["llama"] / "config.json").read_text())
    raw.pop("model_type")
    longrope = T.LlamaConfig(**{**raw, "rope_parameters": {
        "rope_type": "longrope", "short_factor": [1.0] * 4, "long_factor": [2.0] * 4, "rope_theta": 100.0, "factor": 4.0}})
    with pytest.raises(ModelLoadError, match="unsupported rope_type 'longrope'"):
        decoders.LlamaModel(longrope)
    config = T.LlamaConfig(**raw)
    config.layer_types = ["full_attention"]
    with pytest.raises(ModelLoadError, match="layer_types .* must name"):
        decoders.LlamaModel(config)
    with pytest.raises(ModelLoadError, match="configure"):
        decoders.GemmaForCausalLM(T.GemmaConfig(**{**raw, "classifier_from_token": ["yes"], "method": "no_post_processing"}))


@pytest.mark.parametrize(
    "name, changes, message",
    [
        ("llama", {"num_hidden_layers": 1_000_000}, "config.json num_hidden_layers is 1000000, but the weights hold 3 layers"),
        ("mistral", {"sliding_window": -6}, "config.json sliding_window is -6; it must be a positive integer"),
        ("gemma2", {"query_pre_attn_scalar": 0}, "config.json query_pre_attn_scalar is 0; it must be a positive integer"),
        ("gemma3", {"head_dim": 1000}, ("config.json num_attention_heads * head_dim is 4 * 1000 = 4000, but the weights "
                                        "hold 32 ('layers.0.self_attn.q_proj.weight' has shape (32, 32))")),
    ],
)
def test_absurd_configs_are_refused_before_building(models: dict[str, Path], tmp_path: Path, name: str, changes: dict,
                                                     message: str) -> None:
    path = tmp_path / name
    shutil.copytree(models[name], path)
    raw = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**raw, **changes}))
    with pytest.raises(ModelLoadError) as info:
        LLM(str(path))
    assert str(info.value) == message


def test_softcap_attention_kernel() -> None:
    """The ``varlen_attention_softcap`` op: plain attention when the cap is far away, and
    ``cap * tanh(s / cap)`` scores, per sequence, when it is near."""
    from poolkit.plugins.lookup import select_kernel

    softcapped, plain = select_kernel("varlen_attention_softcap", "cpu"), select_kernel("varlen_attention", "cpu")
    lengths = [7, 3, 7, 12, 1]
    batch = PackedBatch.from_sequences(random_sequences(lengths, seed=9))
    g = torch.Generator().manual_seed(10)
    q, k, v = (torch.randn(sum(lengths), 2, 8, generator=g, dtype=torch.float64) for _ in range(3))
    for causal in (True, False):
        for window in (None, 2):
            kwargs = dict(causal=causal, scale=0.4, window=window)
            far = softcapped(q, k, v, batch, softcap=1e9, **kwargs)
            assert torch.allclose(far, plain(q, k, v, batch, **kwargs), atol=1e-10)
            near = softcapped(q, k, v, batch, softcap=0.5, **kwargs)
            for (qs, ks, vs), got in zip(zip(*(batch.split(t) for t in (q, k, v))), batch.split(near)):
                n = qs.shape[0]
                scores = torch.einsum("ihd,jhd->hij", qs, ks) * 0.4
                scores = 0.5 * torch.tanh(scores / 0.5)
                i, j = torch.arange(n).unsqueeze(1), torch.arange(n).unsqueeze(0)
                keep = (j <= i if causal else torch.ones(n, n, dtype=torch.bool)) & ((i - j).abs() <= (window or n))
                want = torch.einsum("hij,jhd->ihd", scores.masked_fill(~keep, float("-inf")).softmax(-1), vs)
                assert torch.allclose(got, want, atol=1e-10)
            assert not torch.allclose(near, far)


def test_attention_ops_take_fewer_key_value_heads() -> None:
    """Grouped-query attention: k and v with a divisor of the query heads give what the same keys
    and values repeated per query head (transformers' repeat_kv) give, in both attention ops,
    on length runs and on unsorted batches, with windows, bias and soft-capping."""
    from poolkit.plugins.lookup import select_kernel

    plain, softcapped = select_kernel("varlen_attention", "cpu"), select_kernel("varlen_attention_softcap", "cpu")
    g = torch.Generator().manual_seed(11)
    for lengths in ([5, 5, 9, 9, 2], [9, 2, 5, 9, 5]):
        batch = PackedBatch.from_sequences(random_sequences(lengths, seed=12))
        T = sum(lengths)
        q = torch.randn(T, 6, 8, generator=g, dtype=torch.float64)
        k, v = (torch.randn(T, 2, 8, generator=g, dtype=torch.float64) for _ in range(2))
        repeated = [t.repeat_interleave(3, dim=1) for t in (k, v)]
        bias = torch.randn(6, 9, 9, generator=g, dtype=torch.float64)
        for kwargs in (dict(causal=True), dict(window=2), dict(bias=bias)):
            assert torch.allclose(plain(q, k, v, batch, **kwargs), plain(q, *repeated, batch, **kwargs), atol=1e-12)
        got = softcapped(q, k, v, batch, causal=True, softcap=0.5)
        assert torch.allclose(got, softcapped(q, *repeated, batch, causal=True, softcap=0.5), atol=1e-12)


@pytest.mark.parametrize("name, model_type", [("gemma2", "gemma2"), ("gemma3", "gemma3_text"), ("gemma3-cls3", "gemma3_text")])
def test_float16_is_refused_for_gemma2_and_gemma3(models: dict[str, Path], name: str, model_type: str) -> None:
    """vLLM refuses fp16 for Gemma 2 and 3 (their activations overflow it), in these words."""
    with pytest.raises(ModelLoadError) as info:
        LLM(str(models[name]), dtype="float16")
    assert str(info.value) == (
        f"The model type '{model_type}' does not support float16. "
        "Reason: Numerical instability. Please use bfloat16 or float32 instead."
    )


def test_float16_is_allowed_for_gemma1_and_llama(models: dict[str, Path]) -> None:
    for name in ("gemma", "llama"):
        assert LLM(str(models[name]), dtype="float16").model.dtype == torch.float16
