"""Native InternLM2ForRewardModel (internlm2-1_8b-reward, internlm2-7b-reward) against transformers'
Llama on the same weights.

transformers has no InternLM2 (the hub's is remote code, which poolkit never runs); InternLM2 is a
Llama under other names, so the tiny checkpoint (:mod:`tiny_internlm2`) is a transformers
``LlamaModel`` written out under InternLM2's names, ``wqkv`` grouped per key-value head (four
query heads sharing two key-value heads), plus a ``v_head``. The reference is that ``LlamaModel``
on its own weights, the ``v_head`` applied here: every token's reward, fp32 max |diff| <= 1e-4.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers as T
from safetensors.torch import load_file, save_file
from tiny_internlm2 import build_internlm2_reward

from poolkit import LLM, LoRARequest, PoolingParams
from poolkit.builtin_models import internlm2
from poolkit.contracts.errors import InvalidRequest, ModelLoadError
from poolkit.plugins import registry

ATOL = 1e-4
TEXTS = ["paris is the capital of france", "hello", "is berlin the capital of france? no", "yes"]
#: Config variants: InternLM2's published switches, each flipped.
VARIANTS = {
    "published": {},  # bias false, dynamic rope scaling (a no-op within max_position_embeddings)
    "bias": dict(bias=True),
    "linear-rope": dict(rope_scaling={"type": "linear", "factor": 2.0}, rope_theta=10000),
    "no-scaling-mha": dict(rope_scaling=None, num_key_value_heads=4),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("internlm2")
    return {name: build_internlm2_reward(root / name, seed=i, **kw) for i, (name, kw) in enumerate(VARIANTS.items())}


def reference_rewards(path: Path, reference: Path, texts: list[str]) -> list[torch.Tensor]:
    """transformers' LlamaModel on the original weights, one text at a time, then the checkpoint's ``v_head``."""
    tok = T.AutoTokenizer.from_pretrained(str(reference))  # the same tokenizer, beside a config transformers knows
    model = T.LlamaModel.from_pretrained(str(reference), dtype=torch.float32).eval()
    v_head = load_file(str(path / "model.safetensors"))["v_head.weight"]
    rewards = []
    for text in texts:
        with torch.no_grad():
            hidden = model(input_ids=torch.tensor([tok(text)["input_ids"]])).last_hidden_state[0]
        rewards.append(hidden @ v_head.T)
    return rewards


def _max_diff(outputs, want: list[torch.Tensor]) -> float:
    return max((o.outputs.data - w).abs().max().item() for o, w in zip(outputs, want))


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_tokens_reward_matches_llama_with_the_v_head(models, name: str) -> None:
    path, reference = models[name]
    want = reference_rewards(path, reference, TEXTS)
    llm = LLM(str(path), trust_remote_code=True)
    raw = llm.reward(TEXTS, PoolingParams(use_activation=False))
    assert [tuple(o.outputs.data.shape) for o in raw] == [(w.shape[0], 1) for w in want]
    assert _max_diff(raw, want) <= ATOL
    # vLLM's default: the one-output activation, the sigmoid
    assert _max_diff(llm.reward(TEXTS), [w.sigmoid() for w in want]) <= ATOL
    encoded = llm.encode(TEXTS, PoolingParams(use_activation=False), pooling_task="token_classify")
    assert _max_diff(encoded, want) <= ATOL
    assert torch.cat(want).std() > 0.3, "the tiny rewards must vary from token to token"


def test_the_grouping_of_wqkv_matters(models, monkeypatch) -> None:
    """Read as if ``wqkv`` were q, k and v one after the other, the rewards are far off: the parity
    test catches a wrong grouping."""
    path, reference = models["published"]
    want = reference_rewards(path, reference, TEXTS)
    monkeypatch.setattr(internlm2, "ungroup_qkv", lambda tensor, *sizes: tensor)
    wrong = LLM(str(path)).reward(TEXTS, PoolingParams(use_activation=False))
    assert _max_diff(wrong, want) > 1e-2


def test_it_loads_natively_as_a_llama_config_and_serves_token_classify_only(models) -> None:
    path, _ = models["published"]
    llm = LLM(str(path))
    info = llm.model.describe()
    assert info["implementation"] == "native" and info["architecture_plugin"] == "builtin_internlm2"
    assert type(llm.model.hf_config).__name__ == "LlamaConfig" and llm.model.hf_config.num_labels == 1
    assert set(llm.supported_tasks) == {"token_classify"}
    with pytest.raises(InvalidRequest, match="Task embed is not supported by model"):
        llm.embed(TEXTS[:1])
    with pytest.raises(InvalidRequest, match="Task classify is not supported by model"):
        llm.classify(TEXTS[:1])


def test_a_batch_gives_each_text_its_rewards_alone(models) -> None:
    path, _ = models["bias"]
    llm = LLM(str(path))
    params = PoolingParams(use_activation=False)
    together = llm.reward(TEXTS * 3, params)
    for i, text in enumerate(TEXTS):
        (alone,) = llm.reward(text, params)
        torch.testing.assert_close(together[i].outputs.data, alone.outputs.data, atol=1e-5, rtol=0)


def test_config_and_checkpoint_must_agree(models) -> None:
    path, _ = models["published"]
    with pytest.raises(ModelLoadError, match="num_hidden_layers is 3, but the weights hold 2 layers"):
        LLM(str(path), hf_overrides={"num_hidden_layers": 3})
    with pytest.raises(ModelLoadError, match=r"^hf_overrides .* is \(4 \+ 2 \* 4\) \* 8 = 96, but the weights hold 64"):
        LLM(str(path), hf_overrides={"num_key_value_heads": 4})


def test_a_missing_tensor_is_refused(models, tmp_path: Path) -> None:
    """Named as the checkpoint names it (``wqkv`` once, not the q, k and v it is regrouped into)."""
    path, _ = models["published"]
    for dropped in ("v_head.weight", "model.layers.1.attention.wqkv.weight", "model.layers.0.feed_forward.w3.weight",
                    "model.norm.weight"):
        copy = tmp_path / dropped
        shutil.copytree(path, copy)
        tensors = load_file(str(path / "model.safetensors"))
        del tensors[dropped]
        save_file(tensors, str(copy / "model.safetensors"))
        with pytest.raises(ModelLoadError, match=f"^checkpoint lacks weights for {dropped.replace('.', '[.]')}$"):
            LLM(str(copy))


def _adapter(path: Path, out: Path, layers: list[str], seed: int) -> tuple[Path, Path]:
    """A PEFT-format adapter on the checkpoint's linear layers ``layers`` (InternLM2's names, random
    factors), and the checkpoint with it merged (``W + alpha / r * B A``)."""
    r, alpha = 4, 8
    weights = load_file(str(path / "model.safetensors"))
    g = torch.Generator().manual_seed(seed)
    factors = {}
    for layer in layers:
        w = weights[layer + ".weight"]
        a, b = torch.randn(r, w.shape[1], generator=g) * 0.3, torch.randn(w.shape[0], r, generator=g) * 0.3
        factors[f"base_model.model.{layer}.lora_A.weight"], factors[f"base_model.model.{layer}.lora_B.weight"] = a, b
        weights[layer + ".weight"] = w + alpha / r * b @ a
    adapter, merged = out / "adapter", out / "merged"
    adapter.mkdir(parents=True)
    save_file(factors, str(adapter / "adapter_model.safetensors"))
    targets = sorted({layer.rpartition(".")[2] for layer in layers})
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": r, "lora_alpha": alpha,
                                                             "target_modules": targets, "bias": "none"}))
    shutil.copytree(path, merged)
    save_file(weights, str(merged / "model.safetensors"))
    return adapter, merged


def test_lora_on_wo_and_the_feed_forward_equals_merged_weights_and_wqkv_is_refused(models, tmp_path: Path) -> None:
    path, _ = models["bias"]
    layers = ["model.layers.0.attention.wo", "model.layers.1.feed_forward.w1", "model.layers.0.feed_forward.w3",
              "model.layers.1.feed_forward.w2"]
    adapter, merged = _adapter(path, tmp_path / "ok", layers, seed=5)
    params = PoolingParams(use_activation=False)
    want = LLM(str(merged)).reward(TEXTS, params)
    llm = LLM(str(path), enable_lora=True)
    got = llm.reward(TEXTS, params, lora_request=LoRARequest("internlm", 1, str(adapter)))
    assert _max_diff(got, [o.outputs.data for o in want]) <= ATOL
    assert _max_diff(llm.reward(TEXTS, params), [o.outputs.data for o in want]) > 1e-2
    wqkv, _ = _adapter(path, tmp_path / "wqkv", ["model.layers.0.attention.wqkv"], seed=6)
    with pytest.raises(InvalidRequest, match="LoRA adapters on InternLM2's fused model.layers.0.attention.wqkv") as err:
        llm.reward(TEXTS[:1], lora_request=LoRARequest("wqkv", 2, str(wqkv)))
    assert "\n" not in str(err.value)


def test_the_hook_registers_the_reward_model() -> None:
    registered: dict[str, object] = {}
    internlm2.poolkit_register_architectures(register=registered.__setitem__)
    assert registered == {"InternLM2ForRewardModel": internlm2.InternLM2ForRewardModel}
    assert registry("architecture").entry("InternLM2ForRewardModel").plugin == "builtin_internlm2"
