"""Native ModernBERT against transformers, on tiny random checkpoints.

The checkpoints (``tiny_models.build_modernbert``) have a 4-token local half-window and inputs
run to 40 tokens, so local and global layers attend differently; transformers runs the same
sequences as one right-padded batch with an attention mask, and the unpadded rows must agree.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import transformers as T
from hidden_parity import agreement, reference_hidden, run

from poolkit import LLM
from poolkit.builtin_models import modernbert
from poolkit.contracts.batch import PackedBatch
from poolkit.contracts.errors import ModelLoadError
from poolkit.kernels.attention import varlen_attention
from poolkit.loading.weights import checkpoint_files, iter_tensors
from poolkit.plugins import registry

ATOL = 1e-4
MIN_COS = 0.99999
#: Up to 5 tokens fit one local window; the longer sequences do not.
LENGTHS = [1, 5, 6, 40, 13, 6, 33, 2, 40]
TEXTS = [
    "paris is the capital of france",
    "hello",
    "the quick brown fox jumps over the lazy dog " * 3,
    "what is the capital of germany? berlin is the capital of germany.",
    "",
]
#: Every bias and norm bias on, other activations and rotary bases, global attention every third layer.
BIASED = dict(
    attention_bias=True,
    mlp_bias=True,
    norm_bias=True,
    classifier_bias=True,
    hidden_activation="gelu_pytorch_tanh",
    classifier_activation="silu",
    global_rope_theta=500.0,
    local_rope_theta=50.0,
    num_hidden_layers=3,
    global_attn_every_n_layers=3,
)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tiny_models import build_modernbert

    root = tmp_path_factory.mktemp("modernbert")
    return {
        "embed": build_modernbert(root / "embed", "embed"),
        "cls": build_modernbert(root / "cls", "classify", 3, seed=1, classifier_pooling="cls"),
        "mean": build_modernbert(root / "mean", "classify", 3, seed=2, classifier_pooling="mean", **BIASED),
        "ner": build_modernbert(root / "ner", "token_classify", 5, seed=3),
    }


def reference(path: Path, auto: type = T.AutoModel) -> torch.nn.Module:
    """Transformers' model of a checkpoint: ``AutoModel`` is the bare encoder, whatever the task."""
    return auto.from_pretrained(str(path)).eval()


def load(path: Path, config: object = None, arch: type = modernbert.ModernBertModel) -> modernbert.ModernBertModel:
    model = arch(config or T.AutoConfig.from_pretrained(path))
    model.load_weights(iter_tensors(checkpoint_files(path)))
    return model.eval()


def random_sequences(lengths: list[int], seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(5, 100, (n,), generator=g).tolist() for n in lengths]


def hf_outputs(model: torch.nn.Module, path: Path, texts: list[str]) -> tuple[object, torch.Tensor]:
    """Transformers' outputs on one padded batch of tokenized texts, and its attention mask."""
    enc = T.AutoTokenizer.from_pretrained(str(path))(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    return out, enc["attention_mask"].bool()


# -- the architecture -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["embed", "mean", "ner"])
def test_matches_transformers(models: dict[str, Path], name: str) -> None:
    path = models[name]
    encoder = reference(path)
    seqs = random_sequences(LENGTHS, seed=1)
    arch = load(path)
    exact = reference_hidden(copy.deepcopy(encoder).double(), seqs)

    # In float64 rounding is out of the way: any difference is a bug.
    max_diff, _ = agreement(run(copy.deepcopy(arch).double(), seqs), exact)
    assert max_diff <= 1e-9, f"{name} float64: max |diff| {max_diff:.3g}"

    max_diff, min_cos = agreement(run(arch, seqs), reference_hidden(encoder, seqs))
    assert max_diff <= ATOL, f"{name}: max |diff| {max_diff:.3g}"
    assert min_cos >= MIN_COS, f"{name}: min cosine {min_cos:.7f}"


def test_local_attention_and_rotary_bases_matter(models: dict[str, Path]) -> None:
    """The parity test would catch a missing window or swapped rotary bases."""
    path = models["mean"]
    seqs = random_sequences([40, 33], seed=2)
    theirs = reference_hidden(reference(path), seqs)
    raw = json.loads((path / "config.json").read_text())
    no_window = T.ModernBertConfig(**{**raw, "local_attention": 1000})
    thetas = raw["rope_parameters"]
    swapped = T.ModernBertConfig(
        **{**raw, "rope_parameters": {"full_attention": thetas["sliding_attention"], "sliding_attention": thetas["full_attention"]}}
    )
    for config in (no_window, swapped):
        max_diff, _ = agreement(run(load(path, config), seqs), theirs)
        assert max_diff > 1e-2


def test_legacy_config_fields(models: dict[str, Path]) -> None:
    """transformers 4 configs: ``global_attn_every_n_layers`` and ``*_rope_theta``, no ``layer_types``."""
    path = models["mean"]
    raw = json.loads((path / "config.json").read_text())
    del raw["layer_types"], raw["rope_parameters"]
    legacy = T.PretrainedConfig.from_dict({**raw, "global_rope_theta": 500.0, "local_rope_theta": 50.0})
    assert not getattr(legacy, "layer_types", None) and not getattr(legacy, "rope_parameters", None)
    assert modernbert.layer_types(legacy) == ["full_attention", "sliding_attention", "sliding_attention"]
    seqs = random_sequences(LENGTHS, seed=3)
    for a, b in zip(run(load(path, legacy), seqs), run(load(path), seqs)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)

    null_local = SimpleNamespace(global_rope_theta=1e4, local_rope_theta=None)
    assert modernbert.rope_theta(null_local, "sliding_attention") == 1e4
    null_local = SimpleNamespace(rope_parameters={"full_attention": {"rope_theta": 7.0}, "sliding_attention": {"rope_theta": None}})
    assert modernbert.rope_theta(null_local, "sliding_attention") == 7.0
    assert modernbert.rope_theta(SimpleNamespace(), "sliding_attention") == 10_000.0
    with pytest.raises(ModelLoadError, match="rope_type 'linear'"):
        modernbert.rope_theta(SimpleNamespace(rope_parameters={"full_attention": {"rope_type": "linear"}}), "full_attention")
    with pytest.raises(ModelLoadError, match="classifier_pooling 'max'"):
        modernbert.ModernBertForSequenceClassification(T.PretrainedConfig.from_dict({**raw, "classifier_pooling": "max"}))


def test_batch_invariance(models: dict[str, Path]) -> None:
    arch = load(models["embed"])
    g = torch.Generator().manual_seed(4)
    seqs = random_sequences(torch.randint(1, 41, (48,), generator=g).tolist(), seed=5)
    together = run(arch, seqs)
    for i in (0, 17, 47):
        (alone,) = run(arch, [seqs[i]])
        max_diff, min_cos = agreement([alone], [together[i]])
        assert min_cos >= MIN_COS and max_diff <= ATOL


def test_bfloat16_follows_float32(tmp_path: Path) -> None:
    from tiny_models import build_modernbert

    # At the default init: large random weights amplify bfloat16 rounding (transformers' too).
    arch = load(build_modernbert(tmp_path / "embed", "embed", init_range=0.02))
    seqs = random_sequences(LENGTHS, seed=6)
    full = run(arch, seqs)
    half = run(arch.to(torch.bfloat16), seqs)
    assert all(h.dtype == torch.bfloat16 for h in half)
    _, min_cos = agreement(half, full)
    assert min_cos >= 0.99


@pytest.mark.parametrize(
    "name, dropped",
    [
        ("embed", "layers.1.attn.Wqkv.weight"),
        ("embed", "final_norm.weight"),
        ("mean", "model.layers.2.attn_norm.bias"),
        ("mean", "head.dense.weight"),
        ("ner", "classifier.bias"),
    ],
)
def test_missing_tensor_is_named(models: dict[str, Path], name: str, dropped: str) -> None:
    path = models[name]
    arch_cls = {"embed": modernbert.ModernBertModel, "mean": modernbert.ModernBertForSequenceClassification}
    arch = arch_cls.get(name, modernbert.ModernBertForTokenClassification)(T.AutoConfig.from_pretrained(path))
    weights = [(n, t) for n, t in iter_tensors(checkpoint_files(path)) if n != dropped]
    assert len(weights) == len(list(iter_tensors(checkpoint_files(path)))) - 1
    with pytest.raises(ModelLoadError, match=dropped.removeprefix("model.").replace(".", r"\.")):
        arch.load_weights(weights)


def test_hooks_register_architectures() -> None:
    registered: dict[str, object] = {}
    modernbert.poolkit_register_architectures(register=registered.__setitem__)
    names = ("ModernBertModel", "ModernBertForSequenceClassification", "ModernBertForTokenClassification")
    assert registered == {n: getattr(modernbert, n) for n in names}
    assert all(registry("architecture").entry(n).plugin == "builtin_modernbert" for n in names)


# -- the public API -------------------------------------------------------------------------------


def test_embed_is_the_normalized_cls_vector(models: dict[str, Path]) -> None:
    path = models["embed"]
    out, _ = hf_outputs(reference(path), path, TEXTS)
    ref = torch.nn.functional.normalize(out.last_hidden_state[:, 0], dim=-1)
    got = torch.tensor([o.outputs.embedding for o in LLM(str(path)).embed(TEXTS)])
    assert got.shape == ref.shape
    assert (got - ref).abs().max() <= ATOL
    assert torch.nn.functional.cosine_similarity(got, ref).min() >= MIN_COS


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_classify_matches_transformers(models: dict[str, Path], pooling: str) -> None:
    path = models[pooling]
    out, _ = hf_outputs(reference(path, T.AutoModelForSequenceClassification), path, TEXTS)
    ref = torch.softmax(out.logits, dim=-1)
    llm = LLM(str(path))
    assert llm.model.architecture.default_pooling_type == pooling.upper()
    outs = llm.classify(TEXTS)
    got = torch.tensor([o.outputs.probs for o in outs])
    assert got.shape == ref.shape
    assert torch.allclose(got, ref, atol=ATOL)
    assert [o.outputs.label for o in outs] == [f"class_{i}" for i in ref.argmax(-1).tolist()]
    assert ref.std(0).max() > 0.01, "the tiny model must not be constant"
    other = "CLS" if pooling == "mean" else "MEAN"
    pooled_otherwise = LLM(str(path), pooler_config={"pooling_type": other}).classify(TEXTS)
    assert not torch.allclose(torch.tensor([o.outputs.probs for o in pooled_otherwise]), ref, atol=1e-3)


def test_token_classify_matches_transformers(models: dict[str, Path]) -> None:
    path = models["ner"]
    ref_out, mask = hf_outputs(reference(path, T.AutoModelForTokenClassification), path, TEXTS)
    llm = LLM(str(path))
    assert "token_classify" in llm.supported_tasks and "classify" not in llm.supported_tasks
    for out, row, keep in zip(llm.encode(TEXTS, pooling_task="token_classify"), ref_out.logits, mask):
        ref = torch.softmax(row[keep], dim=-1)
        assert out.outputs.data.shape == ref.shape == (int(keep.sum()), 5)
        assert torch.allclose(out.outputs.data, ref, atol=ATOL)


def test_sequence_classifier_classifies_tokens_with_its_head(models: dict[str, Path]) -> None:
    path = models["mean"]
    model = reference(path, T.AutoModelForSequenceClassification)
    out, mask = hf_outputs(model.model, path, TEXTS)
    with torch.no_grad():
        logits = model.classifier(model.head(out.last_hidden_state))
    for out, row, keep in zip(LLM(str(path)).encode(TEXTS, pooling_task="token_classify"), logits, mask):
        assert torch.allclose(out.outputs.data, torch.softmax(row[keep], dim=-1), atol=ATOL)


# -- the sliding-window attention kernel ----------------------------------------------------------


def naive_attention(q, k, v, lengths, causal, window):
    """Per-sequence softmax(q k^T / sqrt(d)) v with the window written out, in float64."""
    outs = []
    for qs, ks, vs in zip(*(t.double().split(lengths) for t in (q, k, v))):
        n = qs.shape[0]
        scores = torch.einsum("qhd,khd->hqk", qs, ks) / math.sqrt(qs.shape[-1])
        i, j = torch.arange(n).unsqueeze(1), torch.arange(n).unsqueeze(0)
        hidden = (i - j).abs() > window
        if causal:
            hidden |= j > i
        outs.append(torch.einsum("hqk,khd->qhd", scores.masked_fill(hidden, -math.inf).softmax(-1), vs))
    return torch.cat(outs)


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("window", [0, 2, 5, 100])
@pytest.mark.parametrize("lengths", [[3, 1, 9, 3, 12, 1, 40, 9], [11, 11]], ids=["mixed", "uniform"])
def test_varlen_attention_window_matches_naive(lengths: list[int], window: int, causal: bool) -> None:
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(sum(lengths), 3, 8, generator=g) * 2 for _ in range(3))
    batch = PackedBatch.from_sequences([[5] * n for n in lengths])
    out = varlen_attention(q, k, v, batch, causal=causal, window=window)
    assert out.shape == q.shape
    torch.testing.assert_close(out.double(), naive_attention(q, k, v, lengths, causal, window), atol=1e-5, rtol=1e-5)
