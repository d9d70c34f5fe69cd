"""Native LFM2 (gated short convolutions beside attention) against transformers' ``Lfm2Model`` on
tiny random checkpoints laid out as Liquid AI publishes them (:mod:`tiny_lfm2`).

transformers runs one sequence at a time (its convolution zero-pads each sequence's start); poolkit
runs them all as one packed batch, neighbours of different lengths, some shorter than the
convolution's window, so a window reading the previous sequence's rows (or attention leaking
across sequences) shows. fp32: max |diff| <= 1e-4.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers as T
from tiny_lfm2 import build_lfm2, build_lfm2_colbert

from poolkit import LLM, LoRARequest, PoolingParams
from poolkit.builtin_models import lfm2
from poolkit.contracts.errors import ModelLoadError
from poolkit.plugins import registry

ATOL = 1e-4
RAW = PoolingParams(use_activation=False)
TEXTS = [
    "paris is the capital of france",
    "a",
    "the quick brown fox jumps over the lazy dog " * 2,
    "hi",
    "what is the capital of germany? berlin is the capital of germany.",
]
DOCS = ["paris is the capital of france", "hello world", "the quick brown fox", "berlin is the capital of germany"]
#: Config variants: the published layout, and each switch transformers' Lfm2Config reads flipped.
VARIANTS = {
    "published": {},
    "conv-bias-wider-window": dict(conv_bias=True, conv_L_cache=4),
    # configs before layer_types: attention where full_attn_idxs says (the key is dropped from config.json)
    "full-attn-idxs-only": dict(full_attn_idxs=[0, 3], layer_types=["full_attention", "conv", "conv", "full_attention", "conv", "conv"]),
    "no-ff-adjust": dict(block_auto_adjust_ff_dim=False, block_ff_dim=48, intermediate_size=48),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lfm2")
    built = {}
    for i, (name, overrides) in enumerate(VARIANTS.items()):
        path = build_lfm2(root / name, seed=i, **overrides)
        if "full_attn_idxs" in overrides:
            stored = json.loads((path / "config.json").read_text())
            del stored["layer_types"]
            (path / "config.json").write_text(json.dumps(stored))
        built[name] = path
    return built


def reference_hidden(path: Path, texts: list[str], dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """transformers' ``Lfm2Model``, one text at a time (no padding, nothing packed): last hidden states."""
    tok = T.AutoTokenizer.from_pretrained(str(path))
    model = T.Lfm2Model.from_pretrained(str(path), dtype=dtype).eval()
    out = []
    for text in texts:
        with torch.no_grad():
            # use_cache off: transformers' cache asks its attention layers for a length it never uses here
            hidden = model(input_ids=torch.tensor([tok(text)["input_ids"]]), use_cache=False).last_hidden_state[0]
        out.append(hidden.float())
    return out


def _max_diff(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    assert [tuple(g.shape) for g in got] == [tuple(w.shape) for w in want]
    return max((g.float() - w).abs().max().item() for g, w in zip(got, want))


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_a_packed_batch_matches_transformers_one_sequence_at_a_time(models, name: str) -> None:
    path = models[name]
    want = reference_hidden(path, TEXTS)
    llm = LLM(str(path))
    assert llm.model.describe()["implementation"] == "native"
    got = [o.outputs.data for o in llm.encode(TEXTS, RAW, pooling_task="token_embed")]
    assert _max_diff(got, want) <= ATOL
    # embed: the last token, L2-normalised, as the decoders' default
    embedded = torch.tensor([o.outputs.embedding for o in llm.embed(TEXTS)])
    torch.testing.assert_close(embedded, F.normalize(torch.stack([w[-1] for w in want]), dim=-1), atol=ATOL, rtol=0)


def test_each_sequence_of_a_packed_batch_equals_it_alone(models) -> None:
    """Neighbours of 1, 2 and more tokens (the window is 4 taps): packed rows equal each run alone."""
    llm = LLM(str(models["conv-bias-wider-window"]))
    texts = TEXTS + ["b", "yes", "no no"]
    together = llm.encode(texts, RAW, pooling_task="token_embed")
    for text, packed in zip(texts, together):
        (alone,) = llm.encode(text, RAW, pooling_task="token_embed")
        torch.testing.assert_close(packed.outputs.data, alone.outputs.data, atol=1e-5, rtol=0)


def test_packed_short_conv_is_each_sequence_convolved_alone() -> None:
    """The torch reference against ``F.conv1d`` of each sequence alone (zero-padded on the left),
    and read as one sequence it differs: the per-sequence restart is what keeps neighbours apart."""
    g = torch.Generator().manual_seed(0)
    lens, hidden, taps = [5, 1, 2, 7], 6, 3
    x = torch.randn(sum(lens), hidden, generator=g)
    weight, bias = torch.randn(hidden, taps, generator=g), torch.randn(hidden, generator=g)
    offsets = torch.cat([torch.arange(n) for n in lens])
    got = lfm2.packed_short_conv(x, weight, bias, offsets)
    want = torch.cat([
        F.conv1d(seq.T.unsqueeze(0), weight.unsqueeze(1), bias, padding=taps - 1, groups=hidden)[0, :, : seq.shape[0]].T
        for seq in x.split(lens)
    ])
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    as_one = lfm2.packed_short_conv(x, weight, bias, torch.arange(x.shape[0]))
    assert (as_one - want).abs().max() > 1e-2


def test_prompts_with_a_common_prefix_are_not_shared(models) -> None:
    """No prefix sharing: the convolution's state at a prefix's end is not kept, so prompts that
    begin alike each run from their first token, and equal themselves run alone."""
    llm = LLM(str(models["published"]), enable_prefix_caching=True)
    assert not llm.model.architecture.shares_prefixes
    prefix = "the quick brown fox jumps over the lazy dog and then "
    texts = [prefix + "runs", prefix + "sleeps all day long"]
    want = reference_hidden(models["published"], texts)
    got = [o.outputs.data for o in llm.encode(texts, RAW, pooling_task="token_embed")]
    assert _max_diff(got, want) <= ATOL


def test_bfloat16_stays_within_the_references_own_bfloat16_error(models) -> None:
    """In bf16, poolkit's hidden states are as far from fp32 as transformers' own bf16 ones are, on
    average (the mean |diff| over every value; a single value's worst case swings with rounding)."""
    path = models["published"]
    exact = torch.cat(reference_hidden(path, TEXTS))
    reference_error = (torch.cat(reference_hidden(path, TEXTS, torch.bfloat16)) - exact).abs().mean().item()
    llm = LLM(str(path), dtype="bfloat16")
    got = torch.cat([o.outputs.data.float() for o in llm.encode(TEXTS, RAW, pooling_task="token_embed")])
    assert (got - exact).abs().mean().item() <= reference_error
    assert F.cosine_similarity(got, exact, dim=-1).min() > 0.995


def test_the_lm_head_is_the_tied_embeddings(models) -> None:
    path = models["published"]
    llm = LLM(str(path))
    arch = llm.model.architecture
    assert isinstance(arch, lfm2.Lfm2ForCausalLM) and "sparse_embed" not in llm.supported_tasks
    tok = T.AutoTokenizer.from_pretrained(str(path))
    reference = T.Lfm2ForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    ids = tok(TEXTS[0])["input_ids"]
    with torch.no_grad():
        want = reference(input_ids=torch.tensor([ids]), use_cache=False).logits[0]
    (hidden,) = llm.encode(TEXTS[0], RAW, pooling_task="token_embed")
    with torch.inference_mode():  # as the tasks that read the head run it
        logits = arch.lm_head()(hidden.outputs.data.to(next(arch.parameters()).device))  # the suite's device
    torch.testing.assert_close(logits.cpu(), want, atol=ATOL, rtol=0)


@pytest.fixture(scope="module")
def colbert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_lfm2_colbert(tmp_path_factory.mktemp("lfm2-colbert") / "colbert", query_length=32, document_length=48)


def test_lfm2_colbert_as_published_gives_sentence_transformers_document_vectors(colbert: Path) -> None:
    """LFM2-ColBERT-350M's layout (a PyLate save of ``Lfm2Model`` and its ``1_Dense``, ``[Q]`` /
    ``[D]`` markers): on the token ids sentence-transformers' MultiVectorEncoder encodes a document
    as, poolkit's token vectors are its vectors."""
    from sentence_transformers import MultiVectorEncoder

    assert json.loads((colbert / "config.json").read_text())["architectures"] == ["Lfm2Model"]
    llm = LLM(str(colbert))
    assert llm.score_type == "late-interaction" and "token_embed" in llm.supported_tasks
    reference = MultiVectorEncoder(str(colbert), device="cpu")
    prompts = [{"prompt_token_ids": reference.tokenizer("[D] " + d)["input_ids"]} for d in DOCS]
    got = [o.outputs.data for o in llm.encode(prompts, pooling_task="token_embed")]
    assert _max_diff(got, [torch.as_tensor(e) for e in reference.encode_document(DOCS)]) <= ATOL


def test_an_unattended_query_expansion_feeds_no_convolution_window(colbert: Path) -> None:
    """A short query is expanded with end-of-text tokens nobody attends to (PyLate's default for a
    tokenizer without a mask token): their rows feed neither attention nor any convolution window,
    as transformers' ``Lfm2Model`` with that attention mask zeroes them before its convolutions."""
    from poolkit import MultiVectorEncoder
    from safetensors.torch import load_file

    query = "what is the capital"
    (got,) = MultiVectorEncoder(str(colbert)).encode_query([query])
    tok = T.AutoTokenizer.from_pretrained(str(colbert))
    ids = tok(" " + query)["input_ids"]  # the text keeps the space after the marker ("[Q] "), as sentence-transformers'
    ids = ids[:1] + [tok.convert_tokens_to_ids("[Q]")] + ids[1:]
    expanded = ids + [tok.eos_token_id] * (32 - len(ids))
    model = T.Lfm2Model.from_pretrained(str(colbert), dtype=torch.float32).eval()
    dense = load_file(str(colbert / "1_Dense" / "model.safetensors"))["linear.weight"]
    for attended, close in ((len(ids), True), (32, False)):
        mask = torch.tensor([[1] * attended + [0] * (32 - attended)])
        with torch.no_grad():
            hidden = model(input_ids=torch.tensor([expanded]), attention_mask=mask, use_cache=False).last_hidden_state[0]
        diff = (torch.as_tensor(got).cpu() - F.normalize(hidden @ dense.T, dim=-1)).abs().max().item()
        assert (diff <= ATOL) is close, (attended, diff)


def test_lfm2_colbert_maxsim_scores_equal_sentence_transformers(colbert: Path) -> None:
    """Queries and documents tokenized as sentence-transformers tokenizes "[Q] " + text (the byte-level
    space kept after the marker), the same MaxSim scores."""
    from sentence_transformers import MultiVectorEncoder

    reference = MultiVectorEncoder(str(colbert), device="cpu")
    want = reference.similarity(reference.encode_query([DOCS[0]]), reference.encode_document(DOCS))[0].tolist()
    assert [s.outputs.score for s in LLM(str(colbert)).score(DOCS[0], DOCS)] == pytest.approx(want, abs=ATOL)


def test_colbert_lfm2_model_by_override_projects_with_the_checkpoints_linear(models, tmp_path: Path) -> None:
    """vLLM's ``ColBERTLfm2Model``: a ``linear.weight`` in the checkpoint projects every token vector."""
    from safetensors.torch import load_file, save_file

    path = tmp_path / "linear"
    shutil.copytree(models["published"], path)
    state = load_file(str(path / "model.safetensors"))
    state["linear.weight"] = torch.randn(8, 32, generator=torch.Generator().manual_seed(3))
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    llm = LLM(str(path), hf_overrides={"architectures": ["ColBERTLfm2Model"]})
    assert llm.score_type == "late-interaction"
    got = [o.outputs.data for o in llm.encode(TEXTS, pooling_task="token_embed")]
    want = [F.normalize(h @ state["linear.weight"].T, dim=-1) for h in reference_hidden(path, TEXTS)]
    assert _max_diff(got, want) <= ATOL


def test_an_adapter_on_attention_convolution_and_feed_forward_matches_peft(models, tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    path = models["published"]
    torch.manual_seed(7)
    targets = ["q_proj", "v_proj", "out_proj", "in_proj", "w1", "w2"]
    config = peft.LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=targets)
    peft.get_peft_model(T.AutoModel.from_pretrained(str(path)), config).save_pretrained(tmp_path / "adapter")
    reference = peft.PeftModel.from_pretrained(T.AutoModel.from_pretrained(str(path)), tmp_path / "adapter").eval()
    tok = T.AutoTokenizer.from_pretrained(str(path))
    want = []
    for text in TEXTS:
        with torch.no_grad():
            want.append(reference(input_ids=torch.tensor([tok(text)["input_ids"]]), use_cache=False).last_hidden_state[0])
    llm = LLM(str(path), enable_lora=True)
    request = LoRARequest("lfm2", 1, str(tmp_path / "adapter"))
    got = [o.outputs.data for o in llm.encode(TEXTS, RAW, pooling_task="token_embed", lora_request=request)]
    assert _max_diff(got, want) <= ATOL
    base = [o.outputs.data for o in llm.encode(TEXTS, RAW, pooling_task="token_embed")]
    assert _max_diff(base, want) > 1e-2


def test_config_and_checkpoint_must_agree(models) -> None:
    path = models["published"]
    with pytest.raises(ModelLoadError, match=r"^layer_types .* must name 'full_attention' or 'conv' once per layer \(6\)$"):
        LLM(str(path), hf_overrides={"layer_types": ["conv", "mamba", "conv", "conv", "conv", "full_attention"]})
    with pytest.raises(ModelLoadError, match="conv_L_cache"):
        LLM(str(path), hf_overrides={"conv_L_cache": 5})


def test_the_hook_registers_the_family() -> None:
    registered: dict[str, object] = {}
    lfm2.poolkit_register_architectures(register=registered.__setitem__)
    assert registered == {
        "Lfm2Model": lfm2.Lfm2Model, "Lfm2ForCausalLM": lfm2.Lfm2ForCausalLM, "ColBERTLfm2Model": lfm2.ColBERTLfm2Model,
    }
    assert registry("architecture").entry("Lfm2Model").plugin == "builtin_lfm2"
