"""Native NomicBERT (v1.5 and v2-moe) and GTE ("new") against their published math, on tiny random checkpoints.

Both families are remote code on the hub, which poolkit never runs, and transformers' own
``NomicBertModel`` / ``GteModel`` cover only part of what their checkpoints configure. So the
reference here is a plain re-implementation of the published modeling code (nomic-ai's
``modeling_hf_nomic_bert.py`` with its mixture-of-experts layer, Alibaba-NLP's ``new-impl/modeling.py``):
one right-padded batch with an attention mask, straight from the checkpoint's tensors by their
names, nothing shared with poolkit's packed code; the experts are routed token by token there.
Where transformers' classes can express a config, they are a second
reference. The checkpoints (``tiny_rotary_encoders``) carry the real config keys and tensor
names; every batch mixes lengths and holds one long input.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers as T
from safetensors.torch import load_file
from tiny_rotary_encoders import build_gte, build_nomic, nomic_moe_layers, nomic_sizes
from transformers.activations import ACT2FN
from hidden_parity import agreement, run

from poolkit import LLM, LoRARequest, PoolingParams
from poolkit.builtin_models import rotary_encoders as rot
from poolkit.builtin_models.blocks.rotary import RotarySpec
from poolkit.contracts.batch import PackedBatch
from poolkit.contracts.errors import InvalidRequest, ModelLoadError
from poolkit.loading.weights import checkpoint_files, iter_tensors
from poolkit.plugins import registry

ATOL = 1e-4
MIN_COS = 0.99999
#: Mixed lengths, one of them long (past the dynamic-NTK variants' trained positions).
LENGTHS = [1, 7, 300, 12, 2, 65, 5, 33]
TEXTS = ["paris is the capital of france", "hello", "the quick brown fox jumps over the lazy dog " * 4, ""]

#: Every switch of each family flipped at least once.
VARIANTS = {
    "nomic": ("nomic", {}),
    "nomic-switches": ("nomic", dict(
        activation_function="geglu", qkv_proj_bias=True, mlp_fc1_bias=True, mlp_fc2_bias=True, n_inner=None,
        rotary_emb_fraction=0.5, rotary_emb_interleaved=True, rotary_scaling_factor=2.0, max_trained_positions=64,
        rotary_emb_base=10000,
    )),
    "nomic-glu": ("nomic", dict(activation_function="glu", rotary_scaling_factor=4.0, max_trained_positions=32)),
    "nomic-gelu": ("nomic", dict(activation_function="gelu_new", n_inner=48, type_vocab_size=0, mlp_fc1_bias=True)),
    # nomic-embed-text-v2-moe: layers 1 and 3 route each token to 2 of 4 experts
    "nomic-moe": ("nomic", dict(moe=True, gain=1.0)),
    "nomic-moe-top3": ("nomic", dict(moe=True, gain=1.0, num_experts=6, moe_top_k=3, moe_every_n_layers=3,
                                     rotary_scaling_factor=2.0, max_trained_positions=64)),
    "gte": ("gte", {}),
    "gte-mixed-ntk": ("gte", dict(
        rope_scaling={"type": "ntk", "factor": 4.0, "mixed_b": 0.75}, type_vocab_size=1, layer_norm_type="rms_norm",
        hidden_act="gelu_pytorch_tanh", logn_attention_scale=True,
    )),
    "gte-logn-clip": ("gte", dict(rope_scaling=None, rope_theta=160000, logn_attention_scale=True,
                                  logn_attention_clip1=True, max_position_embeddings=32)),
    "arctic": ("gte", dict(architectures=["GteModel"], model_type="gte", rope_scaling=None, rope_theta=160000,
                           type_vocab_size=1, pad_token_id=1)),
}
BUILDERS = {"nomic": build_nomic, "gte": build_gte}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rotary")
    return {
        name: BUILDERS[family](root / name, seed=i, **overrides)
        for i, (name, (family, overrides)) in enumerate(VARIANTS.items())
    }


# -- the published math, padded -------------------------------------------------------------------


def _layer_norm(x: torch.Tensor, w: dict, name: str, eps: float) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], w[f"{name}.weight"], w[f"{name}.bias"], eps)


def _linear(x: torch.Tensor, w: dict, name: str) -> torch.Tensor:
    return F.linear(x, w[f"{name}.weight"], w.get(f"{name}.bias"))


def _attend(q, k, v, mask):
    """Eager attention on ``[B, L, heads, d]`` with HF's extended additive mask."""
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    scores = scores + (1.0 - mask[:, None, None, :].to(q.dtype)) * torch.finfo(q.dtype).min
    return (scores.softmax(-1) @ v).transpose(1, 2).flatten(2)


#: How :func:`nomic_experts` may route instead of nomic's code, to show the parity test would catch it.
ROUTING_MISTAKES = ("renormalized", "top-1", "bias-per-expert", "w2-transposed")


def nomic_experts(
    x: torch.Tensor, mask: torch.Tensor, w: dict, p: str, cfg: dict, routing: str = "published"
) -> torch.Tensor:
    """nomic's mixture-of-experts layer (``NomicRouter`` + ``NomicExperts``), one token at a time:
    softmax over every expert in float32 (float64 for a float64 run), the top ``moe_top_k`` kept
    as they are, each expert ``gelu(x @ w1[e].T) @ w2[e]`` (the configs here are gelu), the shared bias added once.
    ``routing`` names a mistake of :data:`ROUTING_MISTAKES` to make instead."""
    experts, k = cfg["num_experts"], cfg["moe_top_k"] if routing != "top-1" else 1
    hidden = x.shape[-1]
    w1 = w[p + "mlp.experts.mlp.w1"].view(experts, -1, hidden)
    w2 = w[p + "mlp.experts.mlp.w2"].view(experts, -1, hidden)
    router, bias = w[p + "mlp.router.layer.weight"], w[p + "mlp.experts.bias"]
    wide = torch.promote_types(x.dtype, torch.float32)
    out = torch.zeros_like(x)
    for b, t in mask.nonzero().tolist():
        token = x[b, t]
        top, chosen = (router @ token).to(wide).softmax(-1).topk(k)
        if routing == "renormalized":
            top = top / top.sum()
        for weight, e in zip(top.tolist(), chosen.tolist()):
            if routing == "w2-transposed":  # w2 read as [experts, hidden, inner], as a Linear's weight
                expert = w2.reshape(experts, hidden, -1)[e] @ F.gelu(w1[e] @ token)
            else:
                expert = F.gelu(w1[e] @ token) @ w2[e]
            out[b, t] += weight * (expert + bias if routing == "bias-per-expert" else expert)
    return out if routing == "bias-per-expert" else out + bias


def nomic_reference(
    w: dict, cfg: dict, ids: torch.Tensor, mask: torch.Tensor, routing: str = "published"
) -> torch.Tensor:
    """nomic-ai's NomicBertModel (post-norm blocks), as ``modeling_hf_nomic_bert.py`` computes it;
    mixture-of-experts layers (:func:`nomic_experts`) where the checkpoint has a router."""
    dtype, eps = w["emb_ln.weight"].dtype, cfg["layer_norm_epsilon"]
    batch, length = ids.shape
    heads = cfg["n_head"]
    head_dim = cfg["n_embd"] // heads
    x = w["embeddings.word_embeddings.weight"][ids]
    if cfg["type_vocab_size"]:
        x = x + w["embeddings.token_type_embeddings.weight"][torch.zeros_like(ids)]
    x = _layer_norm(x, w, "emb_ln", eps)
    # NomicBertRotaryEmbedding / NomicBertDynamicNTKRotaryEmbedding: the base scales with the padded length.
    dim, base = head_dim * cfg["rotary_emb_fraction"], float(cfg["rotary_emb_base"])
    factor, trained = cfg["rotary_scaling_factor"], cfg["max_trained_positions"]
    if factor and length > trained:
        base = base * ((factor * length / trained) - (factor - 1)) ** (dim / (dim - 2))
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    freqs = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
    cos, sin = torch.cos(freqs).to(dtype), torch.sin(freqs).to(dtype)
    interleaved = cfg["rotary_emb_interleaved"]
    if interleaved:
        cos, sin = cos.repeat_interleave(2, -1), sin.repeat_interleave(2, -1)
    else:
        cos, sin = torch.cat((cos, cos), -1), torch.cat((sin, sin), -1)
    cos, sin = cos[:, None], sin[:, None]

    def rotate_half(t):
        if not interleaved:
            t1, t2 = t.chunk(2, dim=-1)
            return torch.cat((-t2, t1), dim=-1)
        t1, t2 = t[..., ::2], t[..., 1::2]
        return torch.stack((-t2, t1), dim=-1).flatten(-2)

    def rotary(t):
        ro = cos.shape[-1]
        return torch.cat([t[..., :ro] * cos + rotate_half(t[..., :ro]) * sin, t[..., ro:]], dim=-1)

    act = {"glu": torch.sigmoid, "swiglu": F.silu}.get(cfg["activation_function"], F.gelu)
    for i in range(cfg["n_layer"]):
        p = f"encoder.layers.{i}."
        qkv = _linear(x, w, p + "attn.Wqkv").view(batch, length, 3, heads, head_dim)
        attn = _linear(_attend(rotary(qkv[:, :, 0]), rotary(qkv[:, :, 1]), qkv[:, :, 2], mask), w, p + "attn.out_proj")
        x = _layer_norm(attn + x, w, p + "norm1", eps)
        if f"{p}mlp.router.layer.weight" in w:
            x = _layer_norm(nomic_experts(x, mask, w, p, cfg, routing) + x, w, p + "norm2", eps)
            continue
        if f"{p}mlp.fc11.weight" in w:
            y, gate = _linear(x, w, p + "mlp.fc11"), _linear(x, w, p + "mlp.fc12")
            h = F.glu(torch.cat([y, gate], dim=-1), dim=-1) if act is torch.sigmoid else y * act(gate)
        else:
            h = act(_linear(x, w, p + "mlp.fc1"))
        x = _layer_norm(_linear(h, w, p + "mlp.fc2") + x, w, p + "norm2", eps)
    return x


def gte_reference(w: dict, cfg: dict, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Alibaba's NewModel, as ``new-impl/modeling.py`` computes it (eager attention)."""
    dtype, eps = w["embeddings.LayerNorm.weight"].dtype, cfg["layer_norm_eps"]
    batch, length = ids.shape
    hidden, heads, inner = cfg["hidden_size"], cfg["num_attention_heads"], cfg["intermediate_size"]
    head_dim = hidden // heads
    x = w["embeddings.word_embeddings.weight"][ids]
    if cfg["type_vocab_size"]:
        x = x + w["embeddings.token_type_embeddings.weight"][torch.zeros_like(ids)]
    x = _layer_norm(x, w, "embeddings.LayerNorm", eps)
    # RotaryEmbedding / NTKScalingRotaryEmbedding: a float32 cache built for max_position_embeddings * factor.
    base, max_pos = cfg["rope_theta"], cfg["max_position_embeddings"]
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2).float() / head_dim))
    scaling = cfg["rope_scaling"]
    if scaling is not None and max_pos * scaling["factor"] > max_pos:
        factor, mixed_b = scaling["factor"], scaling.get("mixed_b")
        base = base * (factor if mixed_b is None else 1)
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2).float() / head_dim))
        if mixed_b is None:
            inv_freq = inv_freq / factor ** (2 / head_dim)
        else:
            a = torch.tensor(factor).log() / (head_dim / 2) ** mixed_b
            inv_freq = inv_freq / (a * torch.arange(1, head_dim // 2 + 1).float() ** mixed_b).exp()
    freqs = torch.einsum("i,j->ij", torch.arange(length, dtype=torch.float32), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]

    def rotary(t):
        t1, t2 = t[..., : t.shape[-1] // 2], t[..., t.shape[-1] // 2 :]
        return t * cos + torch.cat((-t2, t1), dim=-1) * sin

    scale = None
    if cfg["logn_attention_scale"]:
        scale = mask.sum(1).log() / torch.tensor(max_pos).log()
        if cfg["logn_attention_clip1"]:
            scale.clip_(1)
        scale = scale[:, None, None, None]
    rms = cfg["layer_norm_type"] == "rms_norm"

    def norm(t, name):
        if not rms:
            return _layer_norm(t, w, name, eps)
        h = t.to(torch.float32) if t.dtype != torch.float64 else t
        return w[f"{name}.weight"] * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)).to(t.dtype)

    act = ACT2FN[cfg["hidden_act"]]
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        qkv = _linear(x, w, p + "attention.qkv_proj").split(hidden, -1)
        q, k, v = (t.view(batch, length, heads, head_dim) for t in qkv)
        q, k = rotary(q), rotary(k)
        if scale is not None:
            q = q * scale.to(dtype)
        x = norm(x + _linear(_attend(q, k, v, mask), w, p + "attention.o_proj"), p + "attn_ln")
        up, gate = _linear(x, w, p + "mlp.up_gate_proj").split(inner, -1)
        x = norm(x + _linear(act(gate) * up, w, p + "mlp.down_proj"), p + "mlp_ln")
    return x


def reference_hidden(
    path: Path, seqs: list[list[int]], dtype: torch.dtype = torch.float32, **options: str
) -> list[torch.Tensor]:
    """The published math on one right-padded batch, cut back to each sequence.

    NomicBERT's dynamic NTK base depends on the padded length (and, in the published code, on the
    batches run before): with ``rotary_scaling_factor`` each sequence runs alone, which is what
    poolkit computes for every sequence of any batch.
    """
    cfg = json.loads((path / "config.json").read_text())
    w = {k.removeprefix("new."): v.to(dtype) for k, v in load_file(str(path / "model.safetensors")).items()}
    fn = nomic_reference if "n_embd" in cfg else gte_reference
    if cfg.get("rotary_scaling_factor"):
        return [r for s in seqs for r in reference_hidden_batch(fn, w, cfg, [s], **options)]
    return reference_hidden_batch(fn, w, cfg, seqs, **options)


def reference_hidden_batch(fn, w, cfg, seqs, **options):
    width = max(map(len, seqs))
    ids = torch.tensor([s + [0] * (width - len(s)) for s in seqs])
    mask = torch.tensor([[1.0] * len(s) + [0.0] * (width - len(s)) for s in seqs])
    with torch.inference_mode():
        out = fn(w, cfg, ids, mask, **options)
    return [out[i, : len(s)] for i, s in enumerate(seqs)]


# -- helpers --------------------------------------------------------------------------------------


def load(path: Path, **overrides: object) -> rot.RotaryEncoder:
    """The native model as poolkit's loader builds it: config.json read as a plain config, then configured."""
    raw = {**json.loads((path / "config.json").read_text()), **overrides}
    config = T.PretrainedConfig.from_dict(raw)
    arch = registry("architecture").get(raw["architectures"][0])
    arch.configure(config, None)
    model = arch(config)
    model.load_weights(iter_tensors(checkpoint_files(path)))
    return model.eval()


def random_sequences(lengths: list[int], seed: int, vocab: int = 100) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(5, vocab, (n,), generator=g).tolist() for n in lengths]


# -- parity -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_matches_the_published_math(models: dict[str, Path], name: str) -> None:
    path = models[name]
    seqs = random_sequences(LENGTHS, seed=1)
    arch = load(path)

    # In float64 rounding is out of the way: any difference is a bug.
    max_diff, _ = agreement(run(copy.deepcopy(arch).double(), seqs), reference_hidden(path, seqs, torch.float64))
    assert max_diff <= 1e-9, f"{name} float64: max |diff| {max_diff:.3g}"

    max_diff, min_cos = agreement(run(arch, seqs), reference_hidden(path, seqs))
    assert max_diff <= ATOL, f"{name}: max |diff| {max_diff:.3g}"
    assert min_cos >= MIN_COS, f"{name}: min cosine {min_cos:.7f}"


# -- nomic-embed-text-v2-moe ------------------------------------------------------------------------


def _routed(arch: rot.RotaryEncoder, seqs: list[list[int]]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Each mixture-of-experts layer's routing of ``seqs``: ``(top_k probabilities, experts)``, ``[T, k]``."""
    routes, hooks = {}, []
    for i, layer in enumerate(arch.layers):
        if isinstance(layer.mlp, rot.NomicMoE):
            def keep(module, args, i=i):  # args: the block's input and the linear_act kernel
                routes[i] = module.route(args[0])
            hooks.append(layer.mlp.register_forward_pre_hook(keep))
    run(arch, seqs)
    for hook in hooks:
        hook.remove()
    return routes


@pytest.mark.parametrize("name", ["nomic-moe", "nomic-moe-top3"])
def test_moe_routes_tokens_apart_and_routing_mistakes_show(models: dict[str, Path], name: str) -> None:
    """The tiny v2-moe routes as the real one must be tested: several experts per token, every
    expert busy, tokens going to different experts; and each plausible mistake (top-k weights
    renormalised, top-1, the bias inside each expert, ``w2`` read transposed) moves the output far
    past the parity tolerance, so the parity test would catch it."""
    path = models[name]
    cfg = json.loads((path / "config.json").read_text())
    arch = load(path)
    assert [i for i, layer in enumerate(arch.layers) if isinstance(layer.mlp, rot.NomicMoE)] == nomic_moe_layers(cfg)
    seqs = random_sequences([1, 7, 90, 12, 65], seed=11)
    routes = _routed(arch, seqs)
    assert sorted(routes) == nomic_moe_layers(cfg)
    for top, chosen in routes.values():
        assert chosen.shape == (sum(map(len, seqs)), cfg["moe_top_k"]) and cfg["moe_top_k"] >= 2
        assert set(chosen.flatten().tolist()) == set(range(cfg["num_experts"]))
        assert len({tuple(sorted(row)) for row in chosen.tolist()}) >= cfg["num_experts"]
        assert (top.sum(-1) < 1 - 1e-3).all()  # the kept probabilities are not renormalised
    ours = run(arch, seqs)
    max_diff, _ = agreement(ours, reference_hidden(path, seqs))
    assert max_diff <= ATOL
    for mistake in ROUTING_MISTAKES:
        wrong, _ = agreement(ours, reference_hidden(path, seqs, routing=mistake))
        assert wrong > 1e-2, (mistake, wrong)


def test_moe_embeddings_and_token_states_through_the_api(models: dict[str, Path]) -> None:
    """nomic-embed-text-v2-moe as its model card runs it: mean pooling, normalised; and every token's state."""
    path = models["nomic-moe"]
    llm = LLM(str(path), pooler_config={"pooling_type": "MEAN"})
    assert llm.model.describe()["implementation"] == "native"
    tok = llm.model.tokenizer
    texts = [*TEXTS, "search_query: what is the capital of france?"]
    seqs = [tok(t)["input_ids"] for t in texts]
    ref = reference_hidden(path, seqs)
    want = F.normalize(torch.stack([h.mean(0) for h in ref]), dim=-1)
    got = torch.tensor([o.outputs.embedding for o in llm.embed(texts)])
    assert (got - want).abs().max() <= ATOL and F.cosine_similarity(got, want).min() >= MIN_COS
    states = llm.encode(texts, PoolingParams(use_activation=False), pooling_task="token_embed")
    max_diff, min_cos = agreement([o.outputs.data for o in states], ref)
    assert max_diff <= ATOL and min_cos >= MIN_COS, (max_diff, min_cos)


@pytest.mark.parametrize("name", ["nomic-moe", "nomic-moe-top3"])
def test_moe_bfloat16_routes_as_float32_but_for_near_ties(models: dict[str, Path], name: str) -> None:
    """bf16 against fp32: a token may go to other experts only where its k-th and (k+1)-th experts'
    fp32 probabilities are within 0.01 of each other (nomic's own bf16 code flips such near ties as
    well; typical gaps here are 0.04 to 0.09), few tokens do, and the tokens routed alike keep the
    bf16 bar (mean cosine error to the fp32 reference at most 1e-4)."""
    from tolerances import BF16_BAR, cosine_errors

    path = models[name]
    seqs = random_sequences(LENGTHS, seed=6)
    full, half = load(path), load(path).to(torch.bfloat16)
    probs, hooks = {}, []
    for i, layer in enumerate(full.layers):
        if isinstance(layer.mlp, rot.NomicMoE):
            def keep(module, args, i=i):
                probs[i] = F.linear(args[0], module.router.weight).softmax(-1).sort(-1, descending=True).values
            hooks.append(layer.mlp.register_forward_pre_hook(keep))
    routes = _routed(full, seqs)
    for hook in hooks:
        hook.remove()
    half_routes = _routed(half, seqs)
    states = run(half, seqs)
    assert all(torch.isfinite(h).all() for h in states)
    rerouted = torch.zeros(sum(map(len, seqs)), dtype=torch.bool)
    for i, (_, chosen) in routes.items():
        k = chosen.shape[1]
        moved = (chosen.sort(-1).values != half_routes[i][1].sort(-1).values).any(-1)
        gap = probs[i][:, k - 1] - probs[i][:, k]
        assert (gap[moved] < 0.01).all(), (i, gap[moved])
        rerouted |= moved
    assert rerouted.float().mean() <= 0.03, int(rerouted.sum())
    errors = cosine_errors(states, reference_hidden(path, seqs))
    assert errors[~rerouted].mean() <= BF16_BAR, float(errors[~rerouted].mean())


def _adapter_of(base: Path, out: Path, layers: list[str], seed: int, merge: bool = True) -> tuple[Path, Path]:
    """A PEFT-format LoRA adapter on the checkpoint's 2-D tensors ``layers`` (random factors), and
    the checkpoint with it merged (``W + alpha / r * B A``)."""
    from safetensors.torch import save_file

    r, alpha = 4, 8
    weights = load_file(str(base / "model.safetensors"))
    g = torch.Generator().manual_seed(seed)
    factors = {}
    for name in layers:
        tensor = weights[name]
        layer = name.removesuffix(".weight")
        a = torch.randn(r, tensor.shape[1], generator=g) * 0.2
        b = torch.randn(tensor.shape[0], r, generator=g) * 0.2
        factors[f"base_model.model.{layer}.lora_A.weight"] = a
        factors[f"base_model.model.{layer}.lora_B.weight"] = b
        weights[name] = tensor + alpha / r * b @ a
    adapter, merged = out / "adapter", out / "merged"
    adapter.mkdir(parents=True)
    save_file(factors, str(adapter / "adapter_model.safetensors"))
    targets = sorted({n.removesuffix(".weight").rpartition(".")[2] for n in layers})
    config = {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "target_modules": targets, "bias": "none"}
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    shutil.copytree(base, merged)
    save_file(weights, str(merged / "model.safetensors"))
    return adapter, merged


def test_moe_adapters_reach_attention_and_router_and_refuse_the_experts(models: dict[str, Path], tmp_path: Path) -> None:
    """LoRA on v2-moe: attention, dense feed-forward and router layers take adapters (equal to
    their merged weights); the experts' stacked ``w1`` / ``w2`` are no linear layers, and an adapter
    naming them is refused in one line."""
    base = models["nomic-moe"]
    layers = ["encoder.layers.1.attn.Wqkv.weight", "encoder.layers.2.mlp.fc1.weight",
              "encoder.layers.1.mlp.router.layer.weight", "encoder.layers.3.mlp.router.layer.weight"]
    adapter, merged = _adapter_of(base, tmp_path / "ok", layers, seed=3)
    pooling = {"pooling_type": "MEAN", "use_activation": False}
    want = torch.tensor([o.outputs.embedding for o in LLM(str(merged), pooler_config=pooling).embed(TEXTS)])
    llm = LLM(str(base), enable_lora=True, pooler_config=pooling)
    request = LoRARequest("moe", 1, str(adapter))
    got = torch.tensor([o.outputs.embedding for o in llm.embed(TEXTS, lora_request=request)])
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    plain = torch.tensor([o.outputs.embedding for o in llm.embed(TEXTS)])
    assert (plain - want).abs().max() > 0.05
    # the router alone: routing changes, and the adapter still equals its merged weights
    router, router_merged = _adapter_of(base, tmp_path / "router", layers[2:], seed=4)
    want = torch.tensor([o.outputs.embedding for o in LLM(str(router_merged), pooler_config=pooling).embed(TEXTS)])
    got = torch.tensor([o.outputs.embedding for o in llm.embed(TEXTS, lora_request=LoRARequest("router", 2, str(router)))])
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    # an adapter on the experts' stacked weights
    experts = tmp_path / "experts"
    shutil.copytree(adapter, experts)
    from safetensors.torch import save_file

    save_file({
        "base_model.model.encoder.layers.1.mlp.experts.mlp.lora_A.weight": torch.randn(4, 32),
        "base_model.model.encoder.layers.1.mlp.experts.mlp.lora_B.weight": torch.randn(4 * 48, 4),
    }, str(experts / "adapter_model.safetensors"))
    with pytest.raises(InvalidRequest, match="has no linear layer for: encoder.layers.1.mlp.experts.mlp") as err:
        llm.embed(TEXTS[:1], lora_request=LoRARequest("experts", 3, str(experts)))
    assert "\n" not in str(err.value)


def _transformers_nomic(path: Path, out: Path) -> torch.nn.Module:
    cfg = json.loads((path / "config.json").read_text())
    vocab, inner = nomic_sizes(cfg)
    config = T.NomicBertConfig(
        vocab_size=vocab, hidden_size=cfg["n_embd"], num_hidden_layers=cfg["n_layer"],
        num_attention_heads=cfg["n_head"],
        intermediate_size=inner, hidden_act="silu", max_position_embeddings=cfg["n_positions"],
        type_vocab_size=cfg["type_vocab_size"], layer_norm_eps=cfg["layer_norm_epsilon"],
        rope_parameters={"rope_type": "default", "rope_theta": float(cfg["rotary_emb_base"])},
    )
    return _transformers_model(T.NomicBertModel, config, path, out)


def _transformers_gte(path: Path, out: Path) -> torch.nn.Module:
    cfg = json.loads((path / "config.json").read_text())
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    rope = {"rope_type": "default", "rope_theta": float(cfg["rope_theta"])}
    if cfg["rope_scaling"]:  # fixed NTK is linear scaling of a larger base
        factor = cfg["rope_scaling"]["factor"]
        rope = {"rope_type": "linear", "factor": factor ** (2 / head_dim), "rope_theta": cfg["rope_theta"] * factor}
    config = T.GteConfig(**{k: cfg[k] for k in (
        "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
        "max_position_embeddings", "type_vocab_size", "layer_norm_eps")}, rope_parameters=rope)
    return _transformers_model(T.GteModel, config, path, out)


def _transformers_model(cls: type, config: object, path: Path, out: Path) -> torch.nn.Module:
    """transformers' class on the same tensors: its own conversion mapping renames them."""
    config.save_pretrained(out)
    shutil.copy(path / "model.safetensors", out / "model.safetensors")
    model, info = cls.from_pretrained(str(out), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    return model.eval()


@pytest.mark.parametrize("name", ["nomic", "gte", "arctic"])
def test_matches_transformers_where_it_has_the_model(models: dict[str, Path], name: str, tmp_path: Path) -> None:
    path = models[name]
    hf = (_transformers_nomic if name == "nomic" else _transformers_gte)(path, tmp_path / "hf")
    seqs = random_sequences(LENGTHS, seed=2)
    width = max(map(len, seqs))
    ids = torch.tensor([s + [0] * (width - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    with torch.inference_mode():
        out = hf(input_ids=ids, attention_mask=mask).last_hidden_state
    theirs = [out[i, : len(s)] for i, s in enumerate(seqs)]
    max_diff, min_cos = agreement(run(load(path), seqs), theirs)
    assert max_diff <= ATOL and min_cos >= MIN_COS, (name, max_diff, min_cos)


@pytest.mark.parametrize("name", ["nomic", "arctic"])
def test_transformers_style_configs_load_the_same_model(models: dict[str, Path], name: str, tmp_path: Path) -> None:
    """A config.json saved by transformers' NomicBertConfig / GteConfig (hidden_size, rope_parameters...)
    over the same tensors is the same model."""
    path = models[name]
    (_transformers_nomic if name == "nomic" else _transformers_gte)(path, tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    config = T.AutoConfig.for_model(raw.pop("model_type"), **raw)  # as poolkit's loader reads it
    assert getattr(config, "n_embd", None) is None and getattr(config, "rope_theta", None) is None
    arch = registry("architecture").get("NomicBertModel" if name == "nomic" else "GteModel")
    arch.configure(config, None)
    native = arch(config)
    native.load_weights(iter_tensors(checkpoint_files(tmp_path)))
    seqs = random_sequences([40, 3, 17], seed=9)
    for a, b in zip(run(native.eval(), seqs), run(load(path), seqs)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_the_switches_matter(models: dict[str, Path]) -> None:
    """The parity test would catch a switch read wrong: flipping any changes the output."""
    seqs = random_sequences([300, 40, 3], seed=3)
    flips = {
        "nomic-switches": [dict(rotary_emb_interleaved=False), dict(rotary_emb_fraction=1.0),
                           dict(rotary_scaling_factor=None), dict(activation_function="swiglu")],
        "gte-mixed-ntk": [dict(rope_scaling={"type": "ntk", "factor": 4.0}), dict(logn_attention_scale=False),
                          dict(hidden_act="silu")],
        "gte": [dict(rope_scaling=None)],
        "gte-logn-clip": [dict(logn_attention_clip1=False)],
        "nomic-moe": [dict(moe_top_k=1), dict(moe_top_k=3)],
        "nomic-moe-top3": [dict(moe_top_k=2)],
    }
    for name, changes in flips.items():
        theirs = reference_hidden(models[name], seqs)
        for change in changes:
            max_diff, _ = agreement(run(load(models[name], **change), seqs), theirs)
            assert max_diff > 1e-3, (name, change)


@pytest.mark.parametrize("name", ["nomic-switches", "gte-mixed-ntk", "nomic-moe"])
def test_batch_invariance(models: dict[str, Path], name: str) -> None:
    arch = load(models[name])
    g = torch.Generator().manual_seed(4)
    lengths = torch.randint(1, 90, (40,), generator=g).tolist() + [300]
    seqs = random_sequences(lengths, seed=5)
    together = run(arch, seqs)
    for i in (0, 17, 39, 40):
        (alone,) = run(arch, [seqs[i]])
        max_diff, min_cos = agreement([alone], [together[i]])
        assert min_cos >= MIN_COS and max_diff <= ATOL, (i, max_diff, min_cos)


@pytest.mark.parametrize("family", ["nomic", "gte"])
def test_bfloat16_follows_float32(family: str, tmp_path: Path) -> None:
    overrides = {"nomic": dict(rotary_scaling_factor=2.0, max_trained_positions=64), "gte": {}}[family]
    path = BUILDERS[family](tmp_path / family, gain=0.5, **overrides)
    arch = load(path)
    seqs = random_sequences(LENGTHS, seed=6)
    full = run(arch, seqs)
    half = run(arch.to(torch.bfloat16), seqs)
    assert all(torch.isfinite(h).all() for h in half)
    _, min_cos = agreement(half, full)
    assert min_cos >= 0.9999, f"{family} bf16: min cosine {min_cos:.6f}"


def test_long_inputs_are_never_padded(models: dict[str, Path]) -> None:
    """A long input next to short ones: attention sees one sequence at a time, no padded square."""
    arch = load(models["nomic"])
    from poolkit.plugins.lookup import select_kernel

    attend = select_kernel("varlen_attention", "cpu")
    shapes = []

    def recording(q, k, v, batch, **kwargs):
        shapes.append(batch.seq_lens)
        return attend(q, k, v, batch, **kwargs)

    arch.__dict__.setdefault("_kernels", {})[("varlen_attention", torch.device("cpu"))] = recording
    seqs = random_sequences([900, 3, 5], seed=7)
    with torch.inference_mode():
        hidden = arch(PackedBatch.from_sequences(seqs))
    assert hidden.shape == (908, 32) and shapes and all(s == [900, 3, 5] for s in shapes)
    (alone,) = run(arch, [seqs[0]])
    torch.testing.assert_close(alone, hidden[:900], atol=ATOL, rtol=0)


# -- loading ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["nomic", "gte", "arctic"])
def test_embed_through_the_api_reports_native(models: dict[str, Path], name: str) -> None:
    path = models[name]
    llm = LLM(str(path))
    info = llm.model.describe()
    assert info["implementation"] == "native" and info["architecture_plugin"] == "builtin_rotary_encoders"
    assert info["hidden_size"] == 32
    tok = llm.model.tokenizer
    seqs = [tok(t)["input_ids"] for t in TEXTS]
    ref = torch.stack([h[0] for h in reference_hidden(path, seqs)])
    ref = F.normalize(ref, dim=-1)
    got = torch.tensor([o.outputs.embedding for o in llm.embed(TEXTS)])
    assert (got - ref).abs().max() <= ATOL
    assert F.cosine_similarity(got, ref).min() >= MIN_COS


def test_nomic_config_fields_are_read(models: dict[str, Path]) -> None:
    """nomic's GPT-2-style fields win over transformers' NomicBertConfig defaults (hidden_size 768...)."""
    llm = LLM(str(models["nomic-switches"]))
    config, spec = llm.model.hf_config, llm.model.architecture._spec
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (32, 2, 4)
    assert config.intermediate_size == spec.intermediate_size == 256  # n_inner null, gated: 8/3 * 32 rounded up to 256
    assert config.vocab_size % 64 == 0 and llm.model.max_model_len.value == 1024
    rotary = RotarySpec(dim=4, theta=10000.0, interleaved=True, dynamic_factor=2.0, trained_positions=64)
    assert spec.rotary == rotary
    assert (spec.qkv_bias, spec.out_bias, spec.up_bias, spec.down_bias, spec.gated) == (True, True, True, True, True)


def test_sequence_classifier_matches_the_published_head(tmp_path: Path) -> None:
    path = build_gte(tmp_path / "reranker", num_labels=3)
    llm = LLM(str(path))
    tok = llm.model.tokenizer
    cls = torch.stack([h[0] for h in reference_hidden(path, [tok(t)["input_ids"] for t in TEXTS])])
    w = load_file(str(path / "model.safetensors"))
    logits = F.linear(torch.tanh(F.linear(cls, w["new.pooler.dense.weight"], w["new.pooler.dense.bias"])),
                      w["classifier.weight"], w["classifier.bias"])
    got = torch.tensor([o.outputs.probs for o in llm.classify(TEXTS)])
    assert torch.allclose(got, logits.softmax(-1), atol=ATOL)
    assert logits.softmax(-1).std(0).max() > 0.01, "the tiny classifier must not be constant"


@pytest.mark.parametrize(
    "name, change, field",
    [
        ("nomic", dict(rotary_emb_scale_base=512), "rotary_emb_scale_base"),
        ("nomic", dict(prenorm=True), "prenorm"),
        ("nomic", dict(activation_function="relu"), "activation_function"),
        ("nomic", dict(rotary_emb_fraction=0.0), "rotary_emb_fraction"),
        ("nomic", dict(rotary_emb_fraction=0.3), "rotary_emb_fraction"),
        ("nomic", dict(moe_every_n_layers=2, num_experts=8), "moe_top_k"),
        ("nomic", dict(moe_every_n_layers=2, moe_top_k=2), "num_experts"),
        ("nomic", dict(moe_every_n_layers=2, num_experts=8, moe_top_k=2), "activation_function"),
        ("nomic-moe", dict(moe_top_k=5), "moe_top_k"),
        ("nomic-moe", dict(moe_every_n_layers=-1), "moe_every_n_layers"),
        ("nomic-moe", dict(moe_normalize_expert_weights=True), "moe_normalize_expert_weights"),
        ("nomic-moe", dict(num_shared_experts=1), "num_shared_experts"),
        ("nomic-moe", dict(expert_choice_router=True), "expert_choice_router"),
        ("nomic", dict(num_heads_kv=2), "num_heads_kv"),
        ("gte", dict(rope_scaling={"type": "linear", "factor": 2.0}), "rope_scaling"),
        ("gte", dict(rope_scaling={"type": "dynamic", "factor": 2.0}), "rope_scaling"),
        ("gte", dict(position_embedding_type="absolute"), "position_embedding_type"),
        ("gte", dict(layer_norm_type="batch_norm"), "layer_norm_type"),
        ("gte", dict(pack_qkv=False), "pack_qkv"),
    ],
)
def test_uncovered_configs_are_refused_naming_the_field(
    models: dict[str, Path], name: str, change: dict, field: str
) -> None:
    with pytest.raises(ModelLoadError, match=field) as err:
        LLM(str(models[name]), hf_overrides=change)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "name, dropped",
    [
        ("nomic", "encoder.layers.1.attn.Wqkv.weight"),
        ("nomic", "encoder.layers.0.mlp.fc12.weight"),
        ("nomic", "emb_ln.bias"),
        ("nomic-switches", "encoder.layers.1.attn.out_proj.bias"),
        ("nomic-moe", "encoder.layers.1.mlp.router.layer.weight"),
        ("nomic-moe", "encoder.layers.3.mlp.experts.mlp.w2"),
        ("nomic-moe", "encoder.layers.3.mlp.experts.bias"),
        ("gte", "encoder.layer.1.mlp.up_gate_proj.weight"),
        ("gte", "embeddings.LayerNorm.weight"),
    ],
)
def test_missing_tensor_is_named(models: dict[str, Path], name: str, dropped: str) -> None:
    path = models[name]
    raw = json.loads((path / "config.json").read_text())
    arch = registry("architecture").get(raw["architectures"][0])
    config = T.PretrainedConfig.from_dict(raw)
    arch.configure(config, None)
    weights = [(n, t) for n, t in iter_tensors(checkpoint_files(path)) if n != dropped]
    with pytest.raises(ModelLoadError, match=f"lacks weights for {dropped.replace('.', r'[.]')}$"):
        arch(config).load_weights(weights)


def test_config_and_checkpoint_must_agree(models: dict[str, Path]) -> None:
    with pytest.raises(ModelLoadError, match="n_layer is 3, but the weights hold 2 layers"):
        LLM(str(models["nomic"]), hf_overrides={"n_layer": 3})
    with pytest.raises(ModelLoadError, match="n_embd is 0; it must be a positive integer"):
        LLM(str(models["nomic"]), hf_overrides={"n_embd": 0})
    with pytest.raises(ModelLoadError, match=r"hf_overrides n_embd is 64, but the weights hold 32 \('embeddings"):
        LLM(str(models["nomic"]), hf_overrides={"n_embd": 64})
    with pytest.raises(ModelLoadError, match="hf_overrides n_embd 30 is not a multiple of n_head 4"):
        LLM(str(models["nomic"]), hf_overrides={"n_embd": 30})
    with pytest.raises(ModelLoadError, match=r"2 \* intermediate_size is 2 \* 64 = 128, but the weights hold 96"):
        LLM(str(models["gte"]), hf_overrides={"intermediate_size": 64})
    with pytest.raises(ModelLoadError, match=r"hf_overrides num_experts is 8, but the weights hold 4 \('encoder.layers.1.mlp"):
        LLM(str(models["nomic-moe"]), hf_overrides={"num_experts": 8})


def test_task_checkpoints_load_the_encoder(tmp_path: Path) -> None:
    """NomicBertForPreTraining-style checkpoints keep the encoder under ``bert.``."""
    plain = build_nomic(tmp_path / "plain", seed=9)
    prefixed = build_nomic(tmp_path / "prefixed", seed=9, prefix="bert.")
    seqs = random_sequences([4, 9], seed=8)
    for a, b in zip(run(load(prefixed), seqs), run(load(plain), seqs)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_hooks_register_architectures() -> None:
    registered: dict[str, object] = {}
    rot.poolkit_register_architectures(register=registered.__setitem__)
    assert registered == {
        "NomicBertModel": rot.NomicBertModel,
        "NewModel": rot.NewModel,
        "GteModel": rot.NewModel,
        "GteNewModel": rot.NewModel,
        "NewForSequenceClassification": rot.NewForSequenceClassification,
        "GteNewForSequenceClassification": rot.NewForSequenceClassification,
        "NewForTokenClassification": rot.NewForTokenClassification,
    }
    assert all(registry("architecture").entry(n).plugin == "builtin_rotary_encoders" for n in registered)
