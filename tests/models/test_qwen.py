"""Native Qwen2 / Qwen3 against transformers, on tiny random checkpoints.

The checkpoints (``tiny_models.build_qwen``) have 4 query heads sharing 2 key/value heads and
random RMSNorm weights. Inputs of mixed lengths run as one packed batch, so attention leaking
across sequences (or a missing causal mask) shows; transformers runs them as one padded batch
with an attention mask and explicit positions, and the unpadded rows must agree.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import transformers as T
from safetensors.torch import save_file
from hidden_parity import agreement, reference_hidden, run

from poolkit import LLM, PoolingParams
from poolkit.builtin_models import qwen
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
RERANK_PROMPTS = [
    "is paris the capital of france? yes",
    "is berlin the capital of france? no",
    "hello world",
    "the quick brown fox jumps over the lazy dog",
]
SLIDING = dict(use_sliding_window=True, sliding_window=4, max_window_layers=1, num_hidden_layers=3)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tiny_models import build_qwen

    root = tmp_path_factory.mktemp("qwen")
    specs = {
        "qwen3": ("qwen3", "embed", 1, dict(num_hidden_layers=3)),
        "qwen3-lm": ("qwen3", "lm", 1, {}),
        "qwen3-lm-untied": ("qwen3", "lm", 1, dict(tie_word_embeddings=False)),
        "qwen3-bias": ("qwen3", "embed", 1, dict(attention_bias=True, hidden_act="gelu_pytorch_tanh")),
        "qwen3-linear": ("qwen3", "embed", 1, dict(rope_parameters={"rope_type": "linear", "factor": 4.0, "rope_theta": 100.0})),
        "qwen3-yarn": (
            "qwen3",
            "embed",
            1,
            dict(rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 100.0, "original_max_position_embeddings": 32}),
        ),
        "qwen3-cls1": ("qwen3", "classify", 1, {}),
        "qwen3-cls3": ("qwen3", "classify", 3, {}),
        "qwen3-ner": ("qwen3", "token_classify", 5, {}),
        "qwen2": ("qwen2", "embed", 1, dict(num_hidden_layers=3)),
        "qwen2-sliding": ("qwen2", "embed", 1, SLIDING),
        "qwen2-cls1": ("qwen2", "classify", 1, {}),
    }
    return {
        name: build_qwen(root / name, family, task, labels, seed=i, **config)
        for i, (name, (family, task, labels, config)) in enumerate(specs.items())
    }


def load(path: Path, config: object = None, arch: type = qwen.Qwen3Model) -> qwen.Qwen2Model:
    model = arch(config or T.AutoConfig.from_pretrained(path))
    model.load_weights(iter_tensors(checkpoint_files(path)))
    return model.eval()


def random_sequences(lengths: list[int], seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 300, (n,), generator=g).tolist() for n in lengths]


def hf_run(model: torch.nn.Module, path: Path, texts: list[str], pairs: list[str] | None = None) -> tuple[object, torch.Tensor]:
    """Transformers' outputs on one left-padded batch (positions from 0 in each text), and its mask."""
    enc = T.AutoTokenizer.from_pretrained(str(path))(texts, pairs, padding=True, return_tensors="pt")
    mask = enc["attention_mask"]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = model(input_ids=enc["input_ids"], attention_mask=mask, position_ids=positions)
    return out, mask.bool()


def bare(path: Path, **config: object) -> torch.nn.Module:
    """Transformers' backbone of a checkpoint (``AutoModel``), config attributes overridden."""
    cfg = T.AutoConfig.from_pretrained(str(path))
    for key, value in config.items():
        setattr(cfg, key, value)
    return T.AutoModel.from_pretrained(str(path), config=cfg).eval()


# -- the architecture -----------------------------------------------------------------------------

ARCHS = {
    "qwen3": qwen.Qwen3Model,
    "qwen3-lm": qwen.Qwen3ForCausalLM,
    "qwen3-bias": qwen.Qwen3Model,
    "qwen3-linear": qwen.Qwen3Model,
    "qwen3-yarn": qwen.Qwen3Model,
    "qwen3-cls3": qwen.Qwen3ForSequenceClassification,
    "qwen2": qwen.Qwen2Model,
    "qwen2-sliding": qwen.Qwen2Model,
    "qwen2-cls1": qwen.Qwen2ForSequenceClassification,
}


@pytest.mark.parametrize("name", list(ARCHS))
def test_matches_transformers(models: dict[str, Path], name: str) -> None:
    path = models[name]
    backbone = bare(path)
    arch = load(path, arch=ARCHS[name])
    seqs = random_sequences(LENGTHS, seed=1)

    # transformers' RMSNorm computes in float32 whatever the dtype; in float64 everything else is
    # exact, so poolkit (doing the same) must agree to rounding.
    max_diff, _ = agreement(run(copy.deepcopy(arch).double(), seqs), reference_hidden(copy.deepcopy(backbone).double(), seqs, positions=True))
    assert max_diff <= 1e-9, f"{name} float64: max |diff| {max_diff:.3g}"

    max_diff, min_cos = agreement(run(arch, seqs), reference_hidden(backbone, seqs, positions=True))
    assert max_diff <= ATOL, f"{name}: max |diff| {max_diff:.3g}"
    assert min_cos >= MIN_COS, f"{name}: min cosine {min_cos:.7f}"


def test_rope_scaling_and_windows_matter(models: dict[str, Path]) -> None:
    """The parity test would catch an ignored rope scaling or sliding window."""
    seqs = random_sequences([40, 33], seed=2)
    for name, change in (("qwen3-linear", {"rope_parameters": {"rope_type": "default", "rope_theta": 100.0}}),
                         ("qwen3-yarn", {"rope_parameters": {"rope_type": "default", "rope_theta": 100.0}}),
                         ("qwen2-sliding", {"use_sliding_window": False, "layer_types": None})):
        path = models[name]
        raw = json.loads((path / "config.json").read_text())
        raw.pop("model_type")
        config_cls = T.Qwen2Config if name.startswith("qwen2") else T.Qwen3Config
        plain = config_cls(**{**raw, **change})
        max_diff, _ = agreement(run(load(path, plain, ARCHS[name]), seqs), reference_hidden(bare(path), seqs, positions=True))
        assert max_diff > 1e-2, name


def test_batch_invariance(models: dict[str, Path]) -> None:
    arch = load(models["qwen3"])
    g = torch.Generator().manual_seed(4)
    seqs = random_sequences(torch.randint(1, 41, (32,), generator=g).tolist(), seed=5)
    together = run(arch, seqs)
    for i in (0, 17, 31):
        (alone,) = run(arch, [seqs[i]])
        max_diff, min_cos = agreement([alone], [together[i]])
        assert min_cos >= MIN_COS and max_diff <= ATOL


def test_bfloat16_follows_float32(models: dict[str, Path]) -> None:
    arch = load(models["qwen3"])
    seqs = random_sequences(LENGTHS, seed=3)
    full = run(arch, seqs)
    half = run(arch.to(torch.bfloat16), seqs)
    assert all(h.dtype == torch.bfloat16 for h in half)
    _, min_cos = agreement(half, full)
    assert min_cos >= 0.99


@pytest.mark.parametrize("name", ["qwen3", "qwen2-sliding"])
def test_bidirectional_when_not_causal(models: dict[str, Path], name: str) -> None:
    path = models[name]
    seqs = random_sequences(LENGTHS, seed=6)
    config = T.AutoConfig.from_pretrained(path)
    config.is_causal = False
    arch = load(path, config, ARCHS[name])
    assert not arch.causal
    theirs = reference_hidden(bare(path, is_causal=False), seqs, positions=True)
    if name == "qwen3":
        # transformers' is_causal=False is the plain bidirectional mask, written out here.
        width = max(LENGTHS)
        ids = torch.tensor([s + [0] * (width - len(s)) for s in seqs])
        keys = torch.tensor([[True] * len(s) + [False] * (width - len(s)) for s in seqs])
        mask = keys[:, None, None, :] | torch.eye(width, dtype=torch.bool)  # padding rows see themselves
        with torch.inference_mode():
            out = bare(path)(input_ids=ids, attention_mask={"full_attention": mask}, position_ids=torch.arange(width).expand_as(ids))
        written_out = [out.last_hidden_state[i, : len(s)] for i, s in enumerate(seqs)]
        assert agreement(written_out, theirs)[0] <= 1e-6
    max_diff, min_cos = agreement(run(arch, seqs), theirs)
    assert max_diff <= ATOL and min_cos >= MIN_COS, f"max |diff| {max_diff:.3g}, min cosine {min_cos:.7f}"
    assert agreement(run(load(path, arch=ARCHS[name]), seqs), theirs)[0] > 1e-2  # causal differs

    # Through the API: hf_overrides reach the architecture.
    out, mask = hf_run(bare(path, is_causal=False), path, TEXTS)
    ref = torch.nn.functional.normalize(out.last_hidden_state[:, -1], dim=-1)
    got = torch.tensor([o.outputs.embedding for o in LLM(str(path), hf_overrides={"is_causal": False}).embed(TEXTS)])
    assert (got - ref).abs().max() <= ATOL


@pytest.mark.parametrize(
    "name, dropped",
    [
        ("qwen3", "layers.1.self_attn.k_proj.weight"),
        ("qwen3", "layers.0.mlp.up_proj.weight"),
        ("qwen3", "layers.2.self_attn.q_norm.weight"),
        ("qwen3", "norm.weight"),
        ("qwen2", "layers.0.self_attn.v_proj.bias"),
        ("qwen3-lm", "model.embed_tokens.weight"),
        ("qwen3-cls3", "score.weight"),
    ],
)
def test_missing_tensor_is_named(models: dict[str, Path], name: str, dropped: str) -> None:
    path = models[name]
    arch = ARCHS[name](T.AutoConfig.from_pretrained(path))
    weights = [(n, t) for n, t in iter_tensors(checkpoint_files(path)) if n != dropped]
    assert len(weights) == len(list(iter_tensors(checkpoint_files(path)))) - 1
    with pytest.raises(ModelLoadError, match=dropped.removeprefix("model.").replace(".", r"\.")):
        arch.load_weights(weights)


def test_unsupported_configs_are_refused(models: dict[str, Path]) -> None:
    raw = json.loads((models["qwen3"] / "config.json").read_text())
    raw.pop("model_type")
    # longrope switches frequencies by the batch's longest sequence (dynamic is plain RoPE within
    # max_position_embeddings, which poolkit never exceeds: tests/models/test_decoders.py).
    longrope = T.Qwen3Config(**{**raw, "rope_parameters": {
        "rope_type": "longrope", "short_factor": [1.0] * 4, "long_factor": [2.0] * 4, "rope_theta": 100.0, "factor": 4.0}})
    with pytest.raises(ModelLoadError, match="unsupported rope_type 'longrope'"):
        qwen.Qwen3Model(longrope)
    with pytest.raises(ModelLoadError, match="num_attention_heads 4 is not a multiple of num_key_value_heads 3"):
        qwen.Qwen3Model(T.Qwen3Config(**{**raw, "num_key_value_heads": 3}))
    # A reranker config built without its tokenizer's ids.
    with pytest.raises(ModelLoadError, match="configure"):
        qwen.Qwen3ForCausalLM(T.Qwen3Config(**{**raw, "classifier_from_token": ["no", "yes"], "method": "from_2_way_softmax"}))


def test_hooks_register_architectures() -> None:
    registered: dict[str, object] = {}
    qwen.poolkit_register_architectures(register=registered.__setitem__)
    names = [f"{family}{suffix}" for family in ("Qwen2", "Qwen3") for suffix in
             ("Model", "ForCausalLM", "ForSequenceClassification", "ForTokenClassification")]
    names += ["Qwen2ForRewardModel", "Qwen2ForProcessRewardModel", "VoyageQwen3BidirectionalEmbedModel"]
    assert registered == {n: getattr(qwen, n) for n in names}
    assert all(registry("architecture").entry(n).plugin == "builtin_qwen" for n in names)


# -- the public API -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["qwen3", "qwen3-lm", "qwen2"])
def test_embed_is_the_normalized_last_token(models: dict[str, Path], name: str) -> None:
    path = models[name]
    out, mask = hf_run(bare(path), path, TEXTS)
    hidden = out.last_hidden_state
    llm = LLM(str(path))
    assert llm.model.architecture.default_pooling_type == "LAST"
    assert "embed" in llm.supported_tasks and "classify" not in llm.supported_tasks
    ref = torch.nn.functional.normalize(hidden[:, -1], dim=-1)  # left padding: the last token is last
    got = torch.tensor([o.outputs.embedding for o in llm.embed(TEXTS)])
    assert got.shape == ref.shape
    assert (got - ref).abs().max() <= ATOL
    assert torch.nn.functional.cosine_similarity(got, ref).min() >= MIN_COS

    mean = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
    ref = torch.nn.functional.normalize(mean, dim=-1)
    got = torch.tensor([o.outputs.embedding for o in LLM(str(path), pooler_config={"pooling_type": "MEAN"}).embed(TEXTS)])
    assert (got - ref).abs().max() <= ATOL


@pytest.mark.parametrize("name", ["qwen3-cls1", "qwen3-cls3", "qwen2-cls1"])
def test_classify_matches_transformers(models: dict[str, Path], name: str) -> None:
    path = models[name]
    model = T.AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
    logits = hf_run(model, path, TEXTS)[0].logits
    ref = torch.sigmoid(logits) if logits.shape[-1] == 1 else torch.softmax(logits, dim=-1)
    llm = LLM(str(path))
    outs = llm.classify(TEXTS)
    got = torch.tensor([o.outputs.probs for o in outs])
    assert got.shape == ref.shape
    assert torch.allclose(got, ref, atol=ATOL)
    assert ref.std(0).max() > 0.01, "the tiny model must not be constant"
    if logits.shape[-1] == 3:
        assert [o.outputs.label for o in outs] == [f"class_{i}" for i in ref.argmax(-1).tolist()]
        return
    # A one-output classifier is a cross-encoder: score() reads query and document together.
    pair_logits = hf_run(model, path, [QUERY] * len(DOCS), DOCS)[0].logits
    scores = [s.outputs.score for s in llm.score(QUERY, DOCS)]
    assert scores == pytest.approx(torch.sigmoid(pair_logits).squeeze(-1).tolist(), abs=ATOL)
    # token_classify: the same score on every token.
    out, mask = hf_run(model.model, path, TEXTS)
    with torch.no_grad():
        token_logits = model.score(out.last_hidden_state)
    for got, row, keep in zip(llm.encode(TEXTS, pooling_task="token_classify"), token_logits, mask):
        assert torch.allclose(got.outputs.data, torch.sigmoid(row[keep]), atol=ATOL)


def test_token_classify_matches_transformers(models: dict[str, Path]) -> None:
    path = models["qwen3-ner"]
    model = T.AutoModelForTokenClassification.from_pretrained(str(path)).eval()
    out, mask = hf_run(model, path, TEXTS)
    llm = LLM(str(path))
    assert set(llm.supported_tasks) == {"token_classify"}
    for got, row, keep in zip(llm.encode(TEXTS, pooling_task="token_classify"), out.logits, mask):
        assert got.outputs.data.shape == (int(keep.sum()), 5)
        assert torch.allclose(got.outputs.data, torch.softmax(row[keep], dim=-1), atol=ATOL)


def _yes_no_reference(path: Path, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Transformers' next-token logits of [no, yes] after each prompt, and softmax(...)[yes]."""
    lm = T.AutoModelForCausalLM.from_pretrained(str(path)).eval()
    tok = T.AutoTokenizer.from_pretrained(str(path))
    no, yes = tok.convert_tokens_to_ids(["no", "yes"])
    logits = hf_run(lm, path, prompts)[0].logits[:, -1, [no, yes]]
    return logits, torch.softmax(logits, dim=-1)[:, 1]


@pytest.mark.parametrize(
    "name, how",
    [
        ("qwen3-lm", "hf_overrides"),
        ("qwen3-lm-untied", "config.json"),
        ("qwen3-lm", "original_qwen3_reranker"),
    ],
)
def test_yes_no_reranker_reads_the_lm_head(models: dict[str, Path], name: str, how: str, tmp_path: Path) -> None:
    path = models[name]
    logits, ref = _yes_no_reference(path, RERANK_PROMPTS)
    overrides = {"classifier_from_token": ["no", "yes"], "method": "from_2_way_softmax"}
    if how == "config.json":
        # A copy of the checkpoint whose config.json names the tokens itself.
        for f in path.iterdir():
            (tmp_path / f.name).write_bytes(f.read_bytes())
        raw = json.loads((path / "config.json").read_text())
        (tmp_path / "config.json").write_text(json.dumps({**raw, **overrides}))
        assert not raw["tie_word_embeddings"]
        llm = LLM(str(tmp_path))
    elif how == "original_qwen3_reranker":
        llm = LLM(str(path), hf_overrides={"architectures": ["Qwen3ForSequenceClassification"], "is_original_qwen3_reranker": True})
        assert llm.model.architecture_name == "Qwen3ForSequenceClassification"
    else:
        llm = LLM(str(path), hf_overrides=overrides)
    assert llm.model.architecture.num_labels == 1 and llm.score_type == "cross-encoder"
    got = torch.tensor([o.outputs.probs[0] for o in llm.classify(RERANK_PROMPTS)])
    assert torch.allclose(got, ref, atol=ATOL)
    assert ref.std() > 0.01, "the tiny reranker must not be constant"
    raw = torch.tensor([o.outputs.probs[0] for o in llm.classify(RERANK_PROMPTS, PoolingParams(use_activation=False))])
    assert torch.allclose(raw, logits[:, 1] - logits[:, 0], atol=ATOL)


def test_no_post_processing_keeps_the_token_logits(models: dict[str, Path]) -> None:
    path = models["qwen3-lm-untied"]
    logits, _ = _yes_no_reference(path, RERANK_PROMPTS)
    llm = LLM(str(path), hf_overrides={"classifier_from_token": ["no", "yes"], "method": "no_post_processing"})
    assert llm.model.architecture.num_labels == 2
    raw = torch.tensor([o.outputs.probs for o in llm.classify(RERANK_PROMPTS, PoolingParams(use_activation=False))])
    assert torch.allclose(raw, logits, atol=ATOL)
    (single,) = LLM(str(path), hf_overrides={"classifier_from_token": ["yes"], "method": "no_post_processing"}).classify(RERANK_PROMPTS[0])
    assert single.outputs.probs[0] == pytest.approx(torch.sigmoid(logits[0, 1]).item(), abs=ATOL)


def test_reranker_config_errors(models: dict[str, Path]) -> None:
    path = models["qwen3-lm"]
    with pytest.raises(ModelLoadError, match="'capital of' is not one token"):
        LLM(str(path), hf_overrides={"classifier_from_token": ["no", "capital of"], "method": "from_2_way_softmax"})
    with pytest.raises(ModelLoadError, match="needs method"):
        LLM(str(path), hf_overrides={"classifier_from_token": ["no", "yes"]})
    with pytest.raises(ModelLoadError, match="exactly two"):
        LLM(str(path), hf_overrides={"classifier_from_token": ["yes"], "method": "from_2_way_softmax"})
    # An untied checkpoint without an LM head has nothing to read the tokens from.
    with pytest.raises(ModelLoadError, match="lm_head.weight"):
        LLM(
            str(models["qwen3"]),
            hf_overrides={"architectures": ["Qwen3ForCausalLM"], "tie_word_embeddings": False, **{
                "classifier_from_token": ["no", "yes"], "method": "from_2_way_softmax"}},
        )


@pytest.fixture(scope="module")
def reward_models(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Qwen2 reward / process reward checkpoints: the tiny Qwen2Model plus ``score.0`` / ``score.2``."""
    root = tmp_path_factory.mktemp("qwen2-rm")
    base = models["qwen2"]
    dirs = {}
    for arch, labels in (("Qwen2ForRewardModel", 1), ("Qwen2ForProcessRewardModel", 2)):
        out = root / arch
        out.mkdir()
        g = torch.Generator().manual_seed(labels)
        tensors = {f"model.{n}": t for n, t in iter_tensors(checkpoint_files(base))}
        tensors.update({
            "score.0.weight": torch.randn(32, 32, generator=g) * 0.3,
            "score.0.bias": torch.randn(32, generator=g) * 0.3,
            "score.2.weight": torch.randn(labels, 32, generator=g) * 0.3,
            "score.2.bias": torch.randn(labels, generator=g) * 0.3,
        })
        save_file(tensors, str(out / "model.safetensors"))
        raw = json.loads((base / "config.json").read_text())
        (out / "config.json").write_text(json.dumps({**raw, "architectures": [arch]}))
        for f in ("tokenizer.json", "tokenizer_config.json"):
            (out / f).write_bytes((base / f).read_bytes())
        dirs[arch] = out
    return dirs


def _reward_logits(path: Path, text: str) -> tuple[torch.Tensor, list[int]]:
    """The score MLP on transformers' Qwen2Model hidden states, by hand."""
    tok = T.AutoTokenizer.from_pretrained(str(path))
    ids = tok(text)["input_ids"]
    backbone = T.Qwen2Model.from_pretrained(str(path)).eval()  # drops score.* and the model. prefix
    weights = dict(iter_tensors(checkpoint_files(path)))
    with torch.no_grad():
        hidden = backbone(input_ids=torch.tensor([ids])).last_hidden_state[0]
        h = torch.relu(hidden @ weights["score.0.weight"].T + weights["score.0.bias"])
        return h @ weights["score.2.weight"].T + weights["score.2.bias"], ids


def test_reward_model_scores_every_token(reward_models: dict[str, Path]) -> None:
    path = reward_models["Qwen2ForRewardModel"]
    llm = LLM(str(path))
    assert set(llm.supported_tasks) == {"token_classify"}
    for text in TEXTS[:2]:
        ref, ids = _reward_logits(path, text)
        (out,) = llm.reward(text)
        assert out.outputs.data.shape == (len(ids), 1)
        assert torch.allclose(out.outputs.data, ref, atol=ATOL)  # raw rewards, as in vLLM
    batched = llm.reward(TEXTS)
    assert torch.allclose(batched[0].outputs.data, llm.reward(TEXTS[0])[0].outputs.data, atol=1e-5)


def test_process_reward_model_reads_step_tags(reward_models: dict[str, Path]) -> None:
    path = reward_models["Qwen2ForProcessRewardModel"]
    text = "paris is the capital of france. berlin is the capital of germany"
    ref, ids = _reward_logits(path, text)
    step_tag = next(t for t in ids if ids.count(t) == 2)  # standing in for <extra_0>
    rows = [i for i, t in enumerate(ids) if t == step_tag]
    assert len(rows) == 2
    llm = LLM(str(path), pooler_config={"pooling_type": "STEP", "step_tag_id": step_tag})
    (out,) = llm.reward(text)
    assert out.outputs.data.shape == (2, 2)
    assert torch.allclose(out.outputs.data, torch.softmax(ref[rows], dim=-1), atol=ATOL)
    (every,) = LLM(str(path), pooler_config={"pooling_type": "ALL"}).reward(text)
    assert torch.allclose(every.outputs.data, torch.softmax(ref, dim=-1), atol=ATOL)
    default = LLM(str(path))  # STEP with <extra_0> (151651), which this tiny vocabulary lacks
    assert default.model.describe()["tasks"]["token_classify"]["pooling_type"] == {
        "value": "STEP",
        "source": "architecture default (Qwen2ForProcessRewardModel)",
    }
    assert default.reward(text)[0].outputs.data.shape == (0, 2)
    assert default.model.config_value("step_tag_id").value == 151651
    (per_request,) = default.reward(text, PoolingParams(step_tag_id=step_tag))
    assert torch.allclose(per_request.outputs.data, torch.softmax(ref[rows], dim=-1), atol=ATOL)
