"""Native MPNet against transformers and sentence-transformers, on tiny random checkpoints.

The checkpoints (``tiny_models.build_mpnet``) have four heads, a random relative position bias
and 256 positions, so the inputs (up to 200 tokens) reach the logarithmic and the clamped
buckets of the bias; transformers runs the same sequences as one right-padded batch with an
attention mask, and the unpadded rows must agree.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers as T
from typer.testing import CliRunner
from hidden_parity import agreement, reference_hidden, run

from poolkit import LLM
from poolkit.builtin_models import mpnet
from poolkit.contracts.batch import PackedBatch
from poolkit.contracts.errors import InvalidRequest, ModelLoadError
from poolkit.kernels.attention import varlen_attention
from poolkit.loading.weights import checkpoint_files, iter_tensors
from poolkit.plugins import registry

ATOL = 1e-4
MIN_COS = 0.99999
#: Unsorted, with repeated lengths apart (the gathered path of the attention kernel) and one
#: sequence past the bias's 128-token farthest distance bucket.
LENGTHS = [1, 7, 60, 13, 7, 33, 2, 60, 200]
TEXTS = [
    "paris is the capital of france",
    "hello",
    "the quick brown fox jumps over the lazy dog " * 3,
    "what is the capital of germany? berlin is the capital of germany.",
    "",
    "zebra xylophone",  # unknown words: <unk>, id 3
]
PAIRS = [
    ("what is the capital of france", "paris is the capital of france"),
    ("what is the capital of france", "hello world"),
    ("hello", "the quick brown fox jumps over the lazy dog"),
]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tiny_models import build_mpnet

    root = tmp_path_factory.mktemp("mpnet")
    return {
        "embed": build_mpnet(root / "embed", "embed", max_len=256),
        "masked_lm": build_mpnet(root / "masked_lm", "masked_lm", seed=1),
        "classify": build_mpnet(root / "classify", "classify", 3, seed=2, init_range=1.0),
        "cross": build_mpnet(root / "cross", "classify", 1, seed=5, init_range=0.5),
        "ner": build_mpnet(root / "ner", "token_classify", 5, seed=4, hidden_act="gelu_new"),
    }


def reference(path: Path, auto: type = T.AutoModel) -> torch.nn.Module:
    """Transformers' model of a checkpoint: ``AutoModel`` is the bare encoder, whatever the task."""
    return auto.from_pretrained(str(path)).eval()


def load(path: Path, config: object = None, arch: type = mpnet.MPNetModel) -> mpnet.MPNetModel:
    model = arch(config or T.AutoConfig.from_pretrained(path))
    model.load_weights(iter_tensors(checkpoint_files(path)))
    return model.eval()


def random_sequences(lengths: list[int], seed: int) -> list[list[int]]:
    """Random ids from 5 up: clear of ``<pad>`` (1), which transformers' MPNet gives no position."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(5, 100, (n,), generator=g).tolist() for n in lengths]


def hf_outputs(model: torch.nn.Module, path: Path, texts: list, pairs: list | None = None) -> tuple[object, torch.Tensor]:
    """Transformers' outputs on one padded batch of tokenized texts, and its attention mask."""
    enc = T.AutoTokenizer.from_pretrained(str(path))(texts, pairs, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    return out, enc["attention_mask"].bool()


# -- the architecture -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["embed", "masked_lm", "classify", "ner"])
@pytest.mark.parametrize("order", ["mixed", "sorted"])
def test_matches_transformers(models: dict[str, Path], name: str, order: str) -> None:
    path = models[name]
    encoder = reference(path)
    limit = int(encoder.config.max_position_embeddings) - 2
    lengths = [min(n, limit) for n in LENGTHS]
    seqs = random_sequences(sorted(lengths, reverse=True) if order == "sorted" else lengths, seed=1)
    arch = load(path)
    exact = reference_hidden(copy.deepcopy(encoder).double(), seqs, pad=encoder.config.pad_token_id)

    # In float64 rounding is out of the way: any difference is a bug.
    max_diff, _ = agreement(run(copy.deepcopy(arch).double(), seqs), exact)
    assert max_diff <= 1e-9, f"{name} float64: max |diff| {max_diff:.3g}"

    # Large random weights amplify fp32 rounding: the bound widens by transformers' own error.
    theirs = reference_hidden(encoder, seqs, pad=encoder.config.pad_token_id)
    own_error, _ = agreement(theirs, exact)
    max_diff, min_cos = agreement(run(arch, seqs), theirs)
    assert max_diff <= ATOL + 2 * own_error, f"{name}: max |diff| {max_diff:.3g} (HF own error {own_error:.3g})"
    assert min_cos >= MIN_COS, f"{name}: min cosine {min_cos:.7f}"


def test_relative_position_bias_matters(models: dict[str, Path]) -> None:
    """The parity test would catch a dropped bias, or one read the wrong way round (key - query)."""
    path = models["embed"]
    seqs = random_sequences([40, 33], seed=2)
    encoder = reference(path)
    theirs = reference_hidden(encoder, seqs, pad=encoder.config.pad_token_id)
    zeroed, flipped = load(path), load(path)
    with torch.no_grad():
        zeroed.encoder.relative_attention_bias.weight.zero_()
    bias = flipped.encoder.position_bias
    flipped.encoder.position_bias = lambda length, device: bias(length, device).transpose(1, 2)
    for arch in (zeroed, flipped):
        max_diff, _ = agreement(run(arch, seqs), theirs)
        assert max_diff > 1e-2


def test_position_bias_is_transformers_table(models: dict[str, Path]) -> None:
    """One table for the longest sequence; its corners are the tables of shorter ones."""
    hf = reference(models["embed"])
    arch = load(models["embed"])
    for length in (1, 9, 200):
        x = torch.zeros(1, length, arch.hidden_size)
        with torch.no_grad():
            expected = hf.encoder.compute_position_bias(x)[0]
        got = arch.encoder.position_bias(length, torch.device("cpu"))
        torch.testing.assert_close(got, expected, atol=0, rtol=0)
    table = arch.encoder.position_bias(200, torch.device("cpu"))
    torch.testing.assert_close(table[:, :9, :9], arch.encoder.position_bias(9, torch.device("cpu")), atol=0, rtol=0)
    distances = torch.arange(-300, 301)
    expected = T.models.mpnet.modeling_mpnet.MPNetEncoder.relative_position_bucket(distances)
    assert torch.equal(mpnet.relative_position_bucket(distances), expected)


def test_batch_invariance(models: dict[str, Path]) -> None:
    arch = load(models["embed"])
    g = torch.Generator().manual_seed(4)
    seqs = random_sequences(torch.randint(1, 129, (48,), generator=g).tolist(), seed=5)
    together = run(arch, seqs)
    for i in (0, 17, 47):
        (alone,) = run(arch, [seqs[i]])
        max_diff, min_cos = agreement([alone], [together[i]])
        assert min_cos >= MIN_COS and max_diff <= ATOL


def test_batch_invariance_through_the_api(models: dict[str, Path]) -> None:
    llm = LLM(str(models["embed"]))
    together = torch.tensor([o.outputs.embedding for o in llm.embed(TEXTS)])
    for i, text in enumerate(TEXTS):
        alone = torch.tensor(llm.embed(text)[0].outputs.embedding)
        assert F.cosine_similarity(alone, together[i], dim=0).item() >= MIN_COS
        assert (alone - together[i]).abs().max().item() <= ATOL


def test_bfloat16_follows_float32(tmp_path: Path) -> None:
    from tiny_models import build_mpnet

    # At the default init: large random weights amplify bfloat16 rounding (transformers' too).
    arch = load(build_mpnet(tmp_path / "embed", "embed", init_range=0.02))
    seqs = random_sequences(LENGTHS[:-1], seed=6)
    full = run(arch, seqs)
    half = run(arch.to(torch.bfloat16), seqs)
    assert arch.encoder.layer[0].attention.attn.qkv.weight.dtype == torch.bfloat16
    assert all(h.dtype == torch.float32 for h in half)  # bf16 matmuls, fp32 residual stream and norms
    _, min_cos = agreement(half, full)
    assert min_cos >= 0.9999, min_cos


def test_bfloat16_through_the_api(tmp_path: Path) -> None:
    from tiny_models import build_mpnet

    # At init_range 0.5 transformers' own bf16 CLS vectors stray to cosine 0.997 from its fp32 ones.
    path = str(build_mpnet(tmp_path / "embed", "embed", init_range=0.02))
    full = torch.tensor([o.outputs.embedding for o in LLM(path, dtype="float32").embed(TEXTS)])
    half_llm = LLM(path, dtype="bfloat16")
    assert half_llm.model.dtype == torch.bfloat16
    half = torch.tensor([o.outputs.embedding for o in half_llm.embed(TEXTS)])
    assert F.cosine_similarity(full, half).min().item() >= 0.9999


@pytest.mark.parametrize(
    "dropped",
    ["encoder.layer.1.attention.attn.v.bias", "encoder.layer.0.attention.LayerNorm.weight", "encoder.relative_attention_bias.weight"],
)
def test_missing_tensor_is_named(models: dict[str, Path], dropped: str) -> None:
    path = models["embed"]
    arch = mpnet.MPNetModel(T.AutoConfig.from_pretrained(path))
    weights = [(n, t) for n, t in iter_tensors(checkpoint_files(path)) if n != dropped]
    with pytest.raises(ModelLoadError, match=dropped.replace(".", r"\.")):
        arch.load_weights(weights)


def test_loads_its_own_state_dict(models: dict[str, Path]) -> None:
    """A poolkit state dict (q/k/v already fused) loads back as it is."""
    arch = load(models["classify"], arch=mpnet.MPNetForSequenceClassification)
    again = mpnet.MPNetForSequenceClassification(arch.config)
    again.load_weights(arch.state_dict().items())
    seqs = random_sequences([5, 9], seed=9)
    for a, b in zip(run(arch, seqs), run(again.eval(), seqs)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_max_positions(models: dict[str, Path]) -> None:
    arch = load(models["masked_lm"])
    assert arch.max_positions == 128  # 130 rows, counted from padding_idx + 1 = 2
    assert arch(PackedBatch.from_sequences(random_sequences([128], seed=6))).shape == (128, 32)
    with pytest.raises(InvalidRequest, match="129 tokens"):
        arch(PackedBatch.from_sequences(random_sequences([129], seed=6)))


def test_config_checks(models: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    path = tmp_path / "bad"
    shutil.copytree(models["embed"], path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(ModelLoadError, match="num_hidden_layers is 3, but the weights hold 2 layers"):
        LLM(str(path))
    (path / "config.json").write_text(json.dumps({**config, "relative_attention_num_buckets": 64}))
    with pytest.raises(ModelLoadError, match="relative_attention_num_buckets is 64"):
        LLM(str(path))
    with pytest.raises(ModelLoadError, match="take 32 buckets"):
        mpnet.MPNetModel(T.MPNetConfig(relative_attention_num_buckets=16, num_hidden_layers=1))


def test_hooks_register_architectures() -> None:
    registered: dict[str, object] = {}
    mpnet.poolkit_register_architectures(register=registered.__setitem__)
    names = ("MPNetModel", "MPNetForSequenceClassification", "MPNetForTokenClassification")
    assert registered == {n: getattr(mpnet, n) for n in names}
    assert all(registry("architecture").entry(n).plugin == "builtin_mpnet" for n in names)


# -- the public API -------------------------------------------------------------------------------


@pytest.mark.parametrize("name, architecture", [("embed", "MPNetModel"), ("masked_lm", "MPNetForMaskedLM")])
def test_served_natively_not_by_the_fallback(models: dict[str, Path], name: str, architecture: str) -> None:
    """all-mpnet-base-v2's config names MPNetForMaskedLM: it is served by the native MPNetModel."""
    info = LLM(str(models[name])).model.describe()
    assert json.loads((models[name] / "config.json").read_text())["architectures"] == [architecture]
    assert info["architecture"] == "MPNetModel"
    assert info["implementation"] == "native"
    assert info["architecture_plugin"] == "builtin_mpnet"


def test_cli_info_says_native(models: dict[str, Path]) -> None:
    from poolkit.entrypoints.cli import app

    result = CliRunner().invoke(app, ["info", str(models["ner"])])
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    assert (info["architecture"], info["implementation"]) == ("MPNetForTokenClassification", "native")


def test_embed_and_token_embed_match_transformers(models: dict[str, Path]) -> None:
    """Default pooling is the first token (``<s>``), normalized; ``token_embed`` is every token."""
    path = models["embed"]
    out, mask = hf_outputs(reference(path), path, TEXTS)
    llm = LLM(str(path))
    ref = F.normalize(out.last_hidden_state[:, 0], dim=-1)
    got = torch.tensor([o.outputs.embedding for o in llm.embed(TEXTS)])
    assert got.shape == ref.shape
    assert (got - ref).abs().max().item() <= ATOL
    assert F.cosine_similarity(got, ref).min().item() >= MIN_COS
    for o, row, keep in zip(llm.encode(TEXTS, pooling_task="token_embed"), out.last_hidden_state, mask):
        tokens = F.normalize(row[keep], dim=-1)
        assert o.outputs.data.shape == tokens.shape
        assert (o.outputs.data - tokens).abs().max().item() <= ATOL


def test_sentence_transformers_parity(models: dict[str, Path], tmp_path: Path) -> None:
    """An all-mpnet-base-v2-shaped model: MPNetForMaskedLM checkpoint, mean pooling, Normalize."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    st = SentenceTransformer(
        modules=[Transformer(str(models["masked_lm"])), Pooling(32, "mean"), Normalize()], device="cpu"
    )
    st.save(str(tmp_path / "st"))
    llm = LLM(str(tmp_path / "st"))
    info = llm.model.describe()
    assert info["tasks"]["embed"]["pooling_type"]["value"] == "MEAN"
    assert info["implementation"] == "native"
    texts = TEXTS + [" ".join(["the capital of france"] * 20)]
    got = torch.tensor([o.outputs.embedding for o in llm.embed(texts)])
    ref = torch.tensor(st.encode(texts))
    assert got.shape == ref.shape
    assert F.cosine_similarity(got, ref).min().item() >= MIN_COS
    assert (got - ref).abs().max().item() <= ATOL


def test_classify_matches_transformers(models: dict[str, Path]) -> None:
    path = models["classify"]
    out, _ = hf_outputs(reference(path, T.AutoModelForSequenceClassification), path, TEXTS)
    ref = torch.softmax(out.logits, dim=-1)
    llm = LLM(str(path))
    assert llm.model.architecture_name == "MPNetForSequenceClassification"
    outs = llm.classify(TEXTS)
    got = torch.tensor([o.outputs.probs for o in outs])
    assert got.shape == ref.shape
    assert torch.allclose(got, ref, atol=ATOL)
    assert [o.outputs.label for o in outs] == [f"class_{i}" for i in ref.argmax(-1).tolist()]
    assert ref.std(0).max() > 0.01, "the tiny model must not be constant"


def test_score_matches_transformers(models: dict[str, Path]) -> None:
    """A one-label MPNet classifier is a cross-encoder: pairs as ``<s> a </s></s> b </s>``."""
    path = models["cross"]
    queries, docs = zip(*PAIRS)
    out, _ = hf_outputs(reference(path, T.AutoModelForSequenceClassification), path, list(queries), list(docs))
    ref = torch.sigmoid(out.logits[:, 0])
    got = torch.tensor([o.outputs.score for o in LLM(str(path)).score(list(queries), list(docs))])
    assert torch.allclose(got, ref, atol=ATOL), (got, ref)
    assert ref.std() > 0.05


def test_token_classify_matches_transformers(models: dict[str, Path]) -> None:
    path = models["ner"]
    out, mask = hf_outputs(reference(path, T.AutoModelForTokenClassification), path, TEXTS)
    llm = LLM(str(path))
    assert "token_classify" in llm.supported_tasks and "classify" not in llm.supported_tasks
    for o, row, keep in zip(llm.encode(TEXTS, pooling_task="token_classify"), out.logits, mask):
        ref = torch.softmax(row[keep], dim=-1)
        assert o.outputs.data.shape == ref.shape == (int(keep.sum()), 5)
        assert torch.allclose(o.outputs.data, ref, atol=ATOL)


# -- the attention kernel's position bias ---------------------------------------------------------


def naive_attention(q, k, v, lengths, bias, causal, window):
    """Per-sequence softmax(q k^T / sqrt(d) + bias) v with the masks written out, in float64."""
    outs = []
    for qs, ks, vs in zip(*(t.double().split(lengths) for t in (q, k, v))):
        n = qs.shape[0]
        scores = torch.einsum("qhd,khd->hqk", qs, ks) / math.sqrt(qs.shape[-1]) + bias[:, :n, :n].double()
        i, j = torch.arange(n).unsqueeze(1), torch.arange(n).unsqueeze(0)
        hidden = (i - j).abs() > (window if window is not None else n)
        if causal:
            hidden |= j > i
        outs.append(torch.einsum("hqk,khd->qhd", scores.masked_fill(hidden, -math.inf).softmax(-1), vs))
    return torch.cat(outs)


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("window", [None, 2])
@pytest.mark.parametrize("lengths", [[3, 1, 9, 3, 12, 1, 40, 9], [40, 12, 9, 9, 3, 3, 1], [11, 11]], ids=["mixed", "sorted", "uniform"])
def test_varlen_attention_bias_matches_naive(lengths: list[int], window: int | None, causal: bool) -> None:
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(sum(lengths), 3, 8, generator=g) * 2 for _ in range(3))
    bias = torch.randn(3, 50, 50, generator=g) * 3  # wider than the longest sequence: its corner applies
    batch = PackedBatch.from_sequences([[5] * n for n in lengths])
    out = varlen_attention(q, k, v, batch, causal=causal, window=window, bias=bias)
    assert out.shape == q.shape
    expected = naive_attention(q, k, v, lengths, bias, causal, window)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)


def test_varlen_attention_bias_in_bfloat16() -> None:
    g = torch.Generator().manual_seed(8)
    lengths = [5, 17, 5]
    q, k, v = (torch.randn(sum(lengths), 2, 8, generator=g) for _ in range(3))
    bias = torch.randn(2, 17, 17, generator=g)
    batch = PackedBatch.from_sequences([[5] * n for n in lengths])
    half = varlen_attention(*(t.bfloat16() for t in (q, k, v)), batch, bias=bias)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), varlen_attention(q, k, v, batch, bias=bias), atol=5e-2, rtol=5e-2)
