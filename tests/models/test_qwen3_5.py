"""Native Qwen3.5 text (gated delta-net beside gated attention) against transformers' classes, on
tiny random checkpoints in the published layout (``tiny_qwen3_5``).

Transformers runs each sequence alone, unpadded: the reference of a recurrent model with nothing
to leak. poolkit runs them packed, neighbours of different lengths (some longer than one chunk of
the chunked delta rule) end to end, so a state or a convolution window carried from one sequence
into the next shows.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers as T
from transformers.models.qwen3_5 import modeling_qwen3_5 as reference

from test_decoders import TEXTS, agreement, random_sequences, reference_hidden, run  # noqa: E402
from tolerances import assert_bf16_as_close_as_the_reference

from poolkit import LLM, LoRARequest
from poolkit.builtin_models import qwen3_5
from poolkit.builtin_models.qwen3_5 import delta_rule, model as qwen3_5_model
from poolkit.contracts.batch import PackedBatch
from poolkit.contracts.errors import ModelLoadError
from poolkit.loading.weights import checkpoint_files, iter_tensors
from poolkit.plugins import registry

ATOL = 1e-4
MIN_COS = 0.99999
#: Neighbours of different lengths: one token, several, and more than one 64-token chunk.
LENGTHS = [5, 1, 70, 13, 2, 66, 9]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tiny_qwen3_5 import build_qwen3_5

    root = tmp_path_factory.mktemp("qwen3_5")
    specs = {"lm": ("lm", 1), "embed": ("embed", 1), "cls3": ("classify", 3)}
    return {name: build_qwen3_5(root / name, task, labels, seed=i) for i, (name, (task, labels)) in enumerate(specs.items())}


def load(path: Path, arch: type = qwen3_5_model.Qwen3_5ForCausalLM) -> qwen3_5_model.Qwen3_5TextModel:
    model = arch(T.AutoConfig.from_pretrained(path))
    model.load_weights(iter_tensors(checkpoint_files(path)))
    return model.eval()


def one_at_a_time(backbone: torch.nn.Module, seqs: list[list[int]]) -> list[torch.Tensor]:
    """Transformers' last hidden states, each sequence run alone (nothing padded)."""
    return reference_hidden(backbone, seqs, padded=False)


# -- the packed pieces ------------------------------------------------------------------------------


def random_rule_inputs(lengths: list[int], heads: int = 3, dk: int = 8, dv: int = 6, seed: int = 0) -> tuple:
    g = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    q = F.normalize(torch.randn(n, heads, dk, generator=g), dim=-1) * dk**-0.5
    k = F.normalize(torch.randn(n, heads, dk, generator=g), dim=-1)
    v = torch.randn(n, heads, dv, generator=g)
    decay = -torch.rand(n, heads, generator=g) * 3.0  # from no decay to fast
    beta = torch.rand(n, heads, generator=g)
    return q, k, v, decay, beta, PackedBatch.from_sequences([[1] * m for m in lengths])


def test_recurrence_matches_transformers_per_sequence() -> None:
    """The packed reference is transformers' token-by-token recurrence, each sequence from zero."""
    lengths = [1, 70, 5, 130, 64, 3]
    q, k, v, decay, beta, batch = random_rule_inputs(lengths)
    ours = delta_rule.gated_delta_rule_recurrent(q, k, v, decay, beta, batch)
    theirs = []
    for sl in (slice(int(a), int(b)) for a, b in zip(batch.cu_seqlens[:-1], batch.cu_seqlens[1:])):
        # transformers normalises queries by sqrt(dk) itself: give it the unscaled ones.
        out, _ = reference.torch_recurrent_gated_delta_rule(
            q[sl][None] * q.shape[-1] ** 0.5, k[sl][None], v[sl][None], decay[sl][None], beta[sl][None]
        )
        theirs.append(out[0])
    assert (ours - torch.cat(theirs)).abs().max() <= 1e-5


@pytest.mark.parametrize("chunk", [64, 8, 1])
def test_chunked_form_equals_the_recurrence(chunk: int) -> None:
    lengths = [1, 70, 5, 130, 64, 3]
    args = random_rule_inputs(lengths, seed=chunk)
    recurrent = delta_rule.gated_delta_rule_recurrent(*args)
    chunked = delta_rule.gated_delta_rule_chunked(*args, chunk=chunk)
    assert (chunked - recurrent).abs().max() <= ATOL
    # The same sequences as one stream would carry the state across: the test would see a leak.
    stream = PackedBatch.from_sequences([[1] * sum(lengths)])
    assert (delta_rule.gated_delta_rule_recurrent(*args[:5], stream) - recurrent).abs().max() > 1e-2


def test_packed_convolution_zero_pads_each_sequence() -> None:
    lengths = [1, 7, 2, 12, 3]
    g = torch.Generator().manual_seed(3)
    x, weight = torch.randn(sum(lengths), 5, generator=g), torch.randn(5, 4, generator=g)
    batch = PackedBatch.from_sequences([[1] * m for m in lengths])
    ours = delta_rule.packed_causal_conv(x, weight, delta_rule.sequence_offsets(batch))
    theirs = [
        F.conv1d(part.T[None], weight[:, None], padding=3, groups=5)[0, :, : part.shape[0]].T for part in batch.split(x)
    ]
    assert (ours - torch.cat(theirs)).abs().max() <= 1e-6
    # Offsets of one stream would let the windows cross the borders: the test would see it.
    assert (delta_rule.packed_causal_conv(x, weight, torch.arange(sum(lengths))) - ours).abs().max() > 1e-2


# -- the architecture -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, arch",
    [
        ("lm", qwen3_5_model.Qwen3_5ForCausalLM),
        ("embed", qwen3_5_model.Qwen3_5TextModel),
        ("cls3", qwen3_5_model.Qwen3_5TextForSequenceClassification),
    ],
)
def test_packed_matches_transformers_one_at_a_time(models: dict[str, Path], name: str, arch: type) -> None:
    path = models[name]
    backbone = T.AutoModel.from_pretrained(str(path)).eval()
    assert type(backbone).__name__ == "Qwen3_5TextModel"
    ours = load(path, arch)
    seqs = random_sequences(LENGTHS, seed=1)
    packed = run(ours, seqs)
    max_diff, min_cos = agreement(packed, one_at_a_time(backbone, seqs))
    assert max_diff <= ATOL, f"{name}: max |diff| {max_diff:.3g}"
    assert min_cos >= MIN_COS, f"{name}: min cosine {min_cos:.7f}"
    # Each sequence alone gives what it gives among its packed neighbours.
    alone = [run(ours, [s])[0] for s in seqs]
    assert agreement(alone, packed)[0] <= 1e-5


def test_neighbours_in_any_order(models: dict[str, Path]) -> None:
    ours = load(models["lm"])
    seqs = random_sequences([3, 80, 1, 17, 40], seed=2)
    forward = run(ours, seqs)
    backward = run(ours, seqs[::-1])[::-1]
    assert agreement(forward, backward)[0] <= 1e-5


def test_bfloat16_within_the_references_own_error(models: dict[str, Path]) -> None:
    path = models["lm"]
    seqs = random_sequences(LENGTHS, seed=3)
    backbone = T.AutoModel.from_pretrained(str(path)).eval()
    full = one_at_a_time(backbone, seqs)
    theirs_half = [h.float() for h in one_at_a_time(backbone.to(torch.bfloat16), seqs)]
    ours_half = run(load(path).to(torch.bfloat16), seqs)
    assert all(h.dtype == torch.bfloat16 for h in ours_half)
    assert_bf16_as_close_as_the_reference(ours_half, theirs_half, full)


def test_checkpoint_layout_as_published(models: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    path = models["lm"]
    config = T.AutoConfig.from_pretrained(path)
    assert config.model_type == "qwen3_5_text" and config.architectures == ["Qwen3_5ForCausalLM"]
    assert config.rope_parameters["partial_rotary_factor"] == 0.25 and config.attn_output_gate
    names = {n for n, _ in iter_tensors(checkpoint_files(path))}
    assert {"mtp.fc.weight", "model.layers.0.linear_attn.in_proj_qkv.weight", "model.layers.0.linear_attn.A_log",
            "model.layers.1.self_attn.q_norm.weight"} <= names
    with caplog.at_level(logging.WARNING):
        load(path)
    assert "unused" not in caplog.text  # the multi-token-prediction block is dropped on purpose


@pytest.mark.parametrize(
    "dropped", ["model.layers.0.linear_attn.A_log", "model.layers.2.linear_attn.conv1d.weight", "model.layers.1.self_attn.k_norm.weight"]
)
def test_missing_tensor_is_named(models: dict[str, Path], dropped: str) -> None:
    path = models["lm"]
    arch = qwen3_5_model.Qwen3_5ForCausalLM(T.AutoConfig.from_pretrained(path))
    weights = [(n, t) for n, t in iter_tensors(checkpoint_files(path)) if n != dropped]
    with pytest.raises(ModelLoadError, match=dropped.removeprefix("model.").replace(".", r"\.")):
        arch.load_weights(weights)


def test_unsupported_configs_are_refused(models: dict[str, Path]) -> None:
    config = T.AutoConfig.from_pretrained(models["lm"])
    config.layer_types = ["linear_attention", "sliding_attention", "linear_attention", "full_attention"]
    with pytest.raises(ModelLoadError, match="layer_types"):
        qwen3_5_model.Qwen3_5TextModel(config)
    config = T.AutoConfig.from_pretrained(models["lm"])
    config.rope_parameters = {**config.rope_parameters, "rope_type": "yarn", "factor": 4.0}
    with pytest.raises(ModelLoadError, match="rope_type 'yarn'"):
        qwen3_5_model.Qwen3_5TextModel(config)


def test_hooks_register_architectures() -> None:
    registered: dict[str, object] = {}
    qwen3_5.poolkit_register_architectures(register=registered.__setitem__)
    names = ["Qwen3_5TextModel", "Qwen3_5ForCausalLM", "Qwen3_5TextForSequenceClassification", "Qwen3_5ForConditionalGeneration"]
    assert registered == {n: getattr(qwen3_5, n) for n in names}
    assert all(registry("architecture").entry(n).plugin == "builtin_qwen3_5" for n in names)


# -- the public API ---------------------------------------------------------------------------------


def reference_last_tokens(path: Path, texts: list[str], backbone: torch.nn.Module | None = None) -> torch.Tensor:
    """transformers' normalised last-token states of ``texts`` (each alone), by ``backbone`` or the checkpoint's ``AutoModel``."""
    tok = T.AutoTokenizer.from_pretrained(str(path))
    backbone = backbone or T.AutoModel.from_pretrained(str(path)).eval()
    hidden = one_at_a_time(backbone, [tok(t)["input_ids"] for t in texts])
    return F.normalize(torch.stack([h[-1] for h in hidden]), dim=-1)


def test_embed_is_the_normalized_last_token(models: dict[str, Path]) -> None:
    path = models["lm"]
    llm = LLM(str(path))
    assert llm.model.architecture.default_pooling_type == "LAST"
    assert "embed" in llm.supported_tasks
    assert not llm.model.architecture.accepts_filler  # each filler would cost the delta rule a whole chunk
    got = torch.tensor([o.outputs.embedding for o in llm.embed(TEXTS)])
    ref = reference_last_tokens(path, TEXTS)
    assert (got - ref).abs().max() <= ATOL
    assert F.cosine_similarity(got, ref).min() >= MIN_COS


def test_prompts_with_a_common_prefix_are_not_shared(models: dict[str, Path]) -> None:
    """Prefix sharing stays off: each prompt's recurrent state is its own, and a pair that begins
    alike gives what each gives alone."""
    path = models["lm"]
    llm = LLM(str(path), enable_prefix_caching=True)
    assert not llm.model.architecture.shares_prefixes
    prompts = ["the quick brown fox jumps over the lazy dog and then", "the quick brown fox jumps over the lazy dog or"]
    together = torch.tensor([o.outputs.embedding for o in llm.embed(prompts)])
    alone = torch.tensor([llm.embed([p])[0].outputs.embedding for p in prompts])
    assert (together - alone).abs().max() <= 1e-5
    assert (together - reference_last_tokens(path, prompts)).abs().max() <= ATOL


def test_classify_matches_transformers(models: dict[str, Path]) -> None:
    path = models["cls3"]
    model = T.AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
    tok = T.AutoTokenizer.from_pretrained(str(path))
    with torch.inference_mode():
        logits = torch.cat([model(input_ids=torch.tensor([tok(t)["input_ids"]])).logits for t in TEXTS])
    ref = torch.softmax(logits, dim=-1)
    got = torch.tensor([o.outputs.probs for o in LLM(str(path)).classify(TEXTS)])
    assert torch.allclose(got, ref, atol=ATOL)
    assert ref.std(0).max() > 0.01, "the tiny model must not be constant"


def test_lora_adapter_matches_peft(models: dict[str, Path], tmp_path: Path) -> None:
    """A PEFT adapter on the attention, delta-net and feed-forward projections (pieces of fused
    layers here), mixed with the bare model in one call, against peft's ``PeftModel``."""
    peft = pytest.importorskip("peft")
    base = models["lm"]
    torch.manual_seed(6)
    targets = ["q_proj", "v_proj", "o_proj", "in_proj_qkv", "in_proj_z", "in_proj_a", "out_proj", "up_proj", "down_proj"]
    config = peft.LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=targets)
    peft.get_peft_model(T.AutoModel.from_pretrained(str(base)), config).save_pretrained(tmp_path / "adapter")
    reference_model = peft.PeftModel.from_pretrained(T.AutoModel.from_pretrained(str(base)), tmp_path / "adapter").eval()
    want = reference_last_tokens(base, TEXTS, reference_model)
    request = LoRARequest("qwen3_5", 1, str(tmp_path / "adapter"))
    got = LLM(str(base), enable_lora=True).embed(TEXTS + TEXTS[:1], lora_request=[request] * len(TEXTS) + [None])
    adapted = torch.tensor([o.outputs.embedding for o in got[: len(TEXTS)]])
    assert (adapted - want).abs().max() <= ATOL
    plain = torch.tensor(got[-1].outputs.embedding)
    assert (plain - reference_last_tokens(base, TEXTS[:1])[0]).abs().max() <= ATOL
    assert (plain - adapted[0]).abs().max() > 1e-2
