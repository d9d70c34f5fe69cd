"""The native BERT-family architectures against transformers, on tiny random checkpoints.

Each model is built with transformers' own config classes and saved with ``save_pretrained``;
poolkit loads the saved files and runs packed batches, transformers runs the same sequences as
one padded batch with an attention mask, and the unpadded rows must agree.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import transformers as T
from safetensors.torch import load_file, save_file
from hidden_parity import agreement, reference_hidden, run

from poolkit.builtin_models import bert
from poolkit.contracts.batch import PackedBatch
from poolkit.contracts.errors import InvalidRequest, ModelLoadError
from poolkit.kernels import attention
from poolkit.kernels.attention import varlen_attention
from poolkit.loading.weights import checkpoint_files, iter_tensors
from poolkit.plugins.lookup import Kernel

VOCAB = 100
LENGTHS = [1, 7, 60, 13, 7, 33, 2, 60]
ATOL = 1e-4
MIN_COS = 0.99999


@dataclass
class TinyModel:
    """A checkpoint on disk, the architecture class poolkit loads it into, and the HF reference."""

    path: Path
    arch: type[bert.BertModel]
    reference: torch.nn.Module
    token_types: bool


def _config(config_cls: type, init_range: float, act: str, **extra) -> T.PretrainedConfig:
    return config_cls(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=128, initializer_range=init_range, hidden_act=act, **extra,
    )


def _randomize_norms_and_biases(model: torch.nn.Module) -> None:
    """HF initialises LayerNorms to 1/0 and biases to 0, which would hide a swapped or dropped one."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.normal_(1.0 if name.endswith("LayerNorm.weight") else 0.0, 0.5)


def _rename_legacy_norms(path: Path) -> None:
    file = path / "model.safetensors"
    tensors = load_file(str(file))
    renamed = {}
    for name, t in tensors.items():
        if ".LayerNorm." in name:
            name = name.replace(".LayerNorm.weight", ".LayerNorm.gamma").replace(".LayerNorm.bias", ".LayerNorm.beta")
        renamed[name] = t
    save_file(renamed, str(file), metadata={"format": "pt"})


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TinyModel]:
    root = tmp_path_factory.mktemp("bert-arch")
    specs = {
        "bert": (bert.BertModel, lambda: T.BertModel(_config(T.BertConfig, 0.02, "gelu")), True),
        "bert-large-init": (bert.BertModel, lambda: T.BertModel(_config(T.BertConfig, 1.0, "gelu")), True),
        "roberta": (
            bert.RobertaModel,
            lambda: T.RobertaModel(_config(T.RobertaConfig, 1.0, "gelu_new", pad_token_id=1, type_vocab_size=1)),
            False,
        ),
        "xlm-roberta": (
            bert.XLMRobertaModel,
            lambda: T.XLMRobertaModel(
                _config(T.XLMRobertaConfig, 1.0, "gelu_pytorch_tanh", pad_token_id=1, type_vocab_size=1)
            ),
            False,
        ),
        "bert-seqcls": (
            bert.BertModel,
            lambda: T.BertForSequenceClassification(_config(T.BertConfig, 1.0, "relu", num_labels=3)),
            True,
        ),
        "bert-legacy-names": (bert.BertModel, lambda: T.BertModel(_config(T.BertConfig, 1.0, "gelu")), True),
    }
    models = {}
    for i, (name, (arch, make, token_types)) in enumerate(specs.items()):
        torch.manual_seed(i)
        hf = make().eval()
        if name != "bert":
            _randomize_norms_and_biases(hf)
        hf.save_pretrained(root / name)
        if name == "bert-legacy-names":
            _rename_legacy_norms(root / name)
        reference = hf.bert if isinstance(hf, T.BertForSequenceClassification) else hf
        models[name] = TinyModel(root / name, arch, reference, token_types)
    return models


def load(model: TinyModel) -> bert.BertModel:
    arch = model.arch(T.AutoConfig.from_pretrained(model.path))
    arch.load_weights(iter_tensors(checkpoint_files(model.path)))
    return arch.eval()


def random_sequences(lengths: list[int], seed: int, high: int = VOCAB) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(5, high, (n,), generator=g).tolist() for n in lengths]



@pytest.mark.parametrize(
    "name", ["bert", "bert-large-init", "roberta", "xlm-roberta", "bert-seqcls", "bert-legacy-names"]
)
@pytest.mark.parametrize("with_types", [False, True], ids=["no-types", "types"])
def test_matches_transformers(tiny_models: dict[str, TinyModel], name: str, with_types: bool) -> None:
    model = tiny_models[name]
    if with_types and not model.token_types:
        pytest.skip("the model has one token type")
    seqs = random_sequences(LENGTHS, seed=1)
    g = torch.Generator().manual_seed(2)
    types = [torch.randint(0, 2, (len(s),), generator=g).tolist() for s in seqs] if with_types else None
    arch = load(model)
    exact = reference_hidden(copy.deepcopy(model.reference).double(), seqs, types=types, pad=model.reference.config.pad_token_id)

    # In float64 rounding is out of the way: any difference is a bug.
    max_diff, min_cos = agreement(run(copy.deepcopy(arch).double(), seqs, types), exact)
    assert max_diff <= 1e-9, f"{name} float64: max |diff| {max_diff:.3g}"

    # In float32, large random weights amplify rounding: transformers itself then strays from the
    # float64 result by up to a few ATOL, so the bound widens by that much (not at default init).
    reference = reference_hidden(model.reference, seqs, types=types, pad=model.reference.config.pad_token_id)
    own_error, _ = agreement(reference, exact)
    max_diff, min_cos = agreement(run(arch, seqs, types), reference)
    assert max_diff <= ATOL + 2 * own_error, f"{name}: max |diff| {max_diff:.3g} (HF own error {own_error:.3g})"
    assert min_cos >= MIN_COS, f"{name}: min cosine {min_cos:.7f}"


def test_batch_invariance(tiny_models: dict[str, TinyModel]) -> None:
    arch = load(tiny_models["bert-large-init"])
    g = torch.Generator().manual_seed(3)
    lengths = torch.randint(1, 61, (64,), generator=g).tolist()
    seqs = random_sequences(lengths, seed=4)
    together = run(arch, seqs)
    for i in (0, 17, 63):
        (alone,) = run(arch, [seqs[i]])
        _, min_cos = agreement([alone], [together[i]])
        assert min_cos >= MIN_COS


def test_bfloat16_follows_float32(tiny_models: dict[str, TinyModel]) -> None:
    arch = load(tiny_models["bert"])
    seqs = random_sequences(LENGTHS, seed=5)
    full = run(arch, seqs)
    half = run(arch.to(torch.bfloat16), seqs)
    assert arch.encoder.layer[0].attention.qkv.weight.dtype == torch.bfloat16
    assert all(h.dtype == torch.float32 for h in half)  # bf16 matmuls, fp32 residual stream and norms
    _, min_cos = agreement(half, full)
    assert min_cos >= 0.999


@pytest.mark.parametrize(
    "dropped",
    ["encoder.layer.1.output.dense.weight", "encoder.layer.0.attention.self.value.bias", "embeddings.LayerNorm.weight"],
)
def test_missing_tensor_is_named(tiny_models: dict[str, TinyModel], dropped: str) -> None:
    model = tiny_models["bert"]
    arch = model.arch(T.AutoConfig.from_pretrained(model.path))
    weights = [(n, t) for n, t in iter_tensors(checkpoint_files(model.path)) if n != dropped]
    with pytest.raises(ModelLoadError, match=dropped.replace(".", r"\.")):
        arch.load_weights(weights)


def test_wrong_shape_is_named(tiny_models: dict[str, TinyModel]) -> None:
    model = tiny_models["bert"]
    arch = model.arch(T.AutoConfig.from_pretrained(model.path))
    weights = dict(iter_tensors(checkpoint_files(model.path)))
    weights["encoder.layer.0.attention.self.key.weight"] = torch.zeros(16, 32)
    with pytest.raises(ModelLoadError, match=r"encoder\.layer\.0\.attention\.self\.key\.weight"):
        arch.load_weights(weights.items())


def test_loads_its_own_state_dict(tiny_models: dict[str, TinyModel]) -> None:
    """A poolkit state dict (q/k/v already fused) loads back as it is."""
    model = tiny_models["roberta"]
    arch = load(model)
    again = model.arch(arch.config)
    again.load_weights(arch.state_dict().items())
    seqs = random_sequences([5, 9], seed=9)
    for a, b in zip(run(arch, seqs), run(again.eval(), seqs)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_max_positions(tiny_models: dict[str, TinyModel]) -> None:
    bert_arch = load(tiny_models["bert"])
    roberta_arch = load(tiny_models["roberta"])
    assert bert_arch.max_positions == 128
    assert roberta_arch.max_positions == 128 - 2
    assert roberta_arch(PackedBatch.from_sequences(random_sequences([126], seed=6))).shape == (126, 32)
    with pytest.raises(InvalidRequest, match="127 tokens"):
        roberta_arch(PackedBatch.from_sequences(random_sequences([127], seed=6)))


def test_class_attributes() -> None:
    assert bert.BertModel.default_pooling_type == "CLS"
    assert bert.BertModel.uses_token_type_ids
    assert not bert.RobertaModel.uses_token_type_ids
    assert bert.RobertaModel(_config(T.RobertaConfig, 0.02, "gelu", type_vocab_size=2)).uses_token_type_ids


def test_hooks_register_architectures_and_kernel() -> None:
    registered: dict[str, object] = {}
    bert.poolkit_register_architectures(register=registered.__setitem__)
    families = ("Bert", "Roberta", "XLMRoberta")
    heads = ("Model", "ForSequenceClassification", "ForTokenClassification")
    expected = {f + h: getattr(bert, f + h) for f in families for h in heads}
    expected.update(
        BertForMaskedLM=bert.BertForMaskedLM, RobertaForMaskedLM=bert.RobertaForMaskedLM, XLMRobertaForMaskedLM=bert.XLMRobertaForMaskedLM,
        BertSpladeSparseEmbeddingModel=bert.BertSpladeSparseEmbeddingModel,
    )
    assert registered == expected
    kernels: dict[str, Kernel] = {}
    attention.poolkit_register_kernels(register=kernels.__setitem__)
    kernel = kernels["varlen_attention:torch"]
    assert kernel.fn is varlen_attention and kernel.reference is varlen_attention and kernel.device == "any"


def naive_attention(q, k, v, lengths, causal, scale):
    """Per-sequence softmax(q k^T) v, written out in float64."""
    outs = []
    for qs, ks, vs in zip(*(t.double().split(lengths) for t in (q, k, v))):
        scores = torch.einsum("qhd,khd->hqk", qs, ks) * scale
        if causal:
            n = qs.shape[0]
            scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), -math.inf)
        outs.append(torch.einsum("hqk,khd->qhd", scores.softmax(-1), vs))
    return torch.cat(outs)


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize(
    "lengths",
    [[3, 1, 5, 3, 8, 1, 60, 5], [60, 8, 5, 5, 3, 3, 1, 1], [7, 7, 7], [1], [19]],
    ids=["mixed", "sorted", "uniform", "one-token", "one-seq"],
)
@pytest.mark.parametrize("scale", [None, 0.3])
def test_varlen_attention_matches_naive(lengths: list[int], causal: bool, scale: float | None) -> None:
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(sum(lengths), 3, 8, generator=g) * 2 for _ in range(3))
    batch = PackedBatch.from_sequences([[5] * n for n in lengths])

    out = varlen_attention(q, k, v, batch, causal=causal, scale=scale)

    expected = naive_attention(q, k, v, lengths, causal, 8**-0.5 if scale is None else scale)
    assert out.shape == q.shape
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)


def test_length_runs() -> None:
    """Length-sorted batches (the engine's) attend by contiguous runs; others by gathered groups."""
    batch = PackedBatch.from_sequences([[5] * n for n in [6, 6, 4, 1, 1, 1]])
    assert batch.length_runs == [(6, 0, 2), (4, 12, 1), (1, 16, 3)]
    unsorted = PackedBatch.from_sequences([[5] * n for n in [2, 3, 2]])
    assert unsorted.length_runs == [(2, 0, 1), (3, 2, 1), (2, 5, 1)]
    assert len(unsorted.length_groups) == 2


def test_varlen_attention_on_strided_views() -> None:
    """Architectures pass q, k and v as views into one fused projection."""
    g = torch.Generator().manual_seed(8)
    lengths = [4, 9, 4, 1]
    qkv = torch.randn(sum(lengths), 3, 2, 8, generator=g)
    q, k, v = qkv.unbind(1)
    batch = PackedBatch.from_sequences([[5] * n for n in lengths])
    out = varlen_attention(q, k, v, batch)
    expected = varlen_attention(q.contiguous(), k.contiguous(), v.contiguous(), batch)
    torch.testing.assert_close(out, expected)
