# Port of vllm tests/models/language/pooling/test_reward.py
# Qwen/Qwen2.5-Math-PRM-7B (Qwen2ForProcessRewardModel, remote code on the HF side) -> a tiny Qwen2
# process reward model with the same layout (port_utils.build_math_prm: ``model.*`` backbone,
# ``score.0`` / ``score.2`` MLP, "<extra_0>" in its vocabulary). The HF reference is the PRM's own
# computation (the score MLP on transformers' Qwen2Model states) followed by vLLM's
# make_step_rewards. vLLM hard-codes Qwen's "<extra_0>" id (151651) as the STEP pooler's
# step_tag_id; the tiny vocabulary has it elsewhere, so the port passes it in pooler_config.
# max_model_len: 2048 (vLLM: 1024; the tiny byte-level BPE splits the prompt into more tokens).
# dtype: float (vLLM: half, on GPUs).
# Not ported: test_prm_models_with_golden_outputs (its golden values, tests/models/fixtures/
# qwen2_5_math_prm_reward_step.json, are the step rewards of the real Qwen2.5-Math-PRM-7B, a hub-only
# 7B model; the stand-in's own values are held to the reference by test_prm_models).
import pytest
import torch
import torch.nn.functional as F
from port_utils import STEP_TAG, math_prm_reference_logits
from port_utils import math_step_prompts as _math_step_prompts
from transformers import AutoTokenizer

from poolkit import LLM, PoolerConfig


@pytest.fixture
def math_step_prompts():
    return _math_step_prompts()


def hf_reward(model_dir, prompts: list[str]) -> list[list[float]]:
    """vLLM's step_reward_patch_hf_model: softmax over the two labels, kept at the step tags."""
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))

    def make_step_rewards(logits: torch.Tensor, token_masks: torch.Tensor) -> list[list[float]]:
        probabilities = F.softmax(logits, dim=-1)
        probabilities = probabilities * token_masks.unsqueeze(-1)
        all_scores_res: list[list[float]] = []
        for i in range(probabilities.size(0)):
            sample = probabilities[i]  # seq_len, num_labels
            positive_probs = sample[sample != 0].view(-1, 2)
            all_scores_res.append(positive_probs.cpu().tolist())
        return all_scores_res

    input_ids = tokenizer(prompts, return_tensors="pt").input_ids
    outputs = math_prm_reference_logits(model_dir, input_ids)
    step_sep_id = tokenizer.encode(STEP_TAG)[0]
    token_masks = input_ids == step_sep_id
    return make_step_rewards(outputs, token_masks)


@pytest.mark.parametrize("model", ["Qwen2.5-Math-PRM-stand-in"])
@pytest.mark.parametrize("dtype", ["float"])
def test_prm_models(math_prm_dir, math_step_prompts, monkeypatch, model: str, dtype: str) -> None:
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "1")
    step_tag_id = AutoTokenizer.from_pretrained(str(math_prm_dir)).convert_tokens_to_ids(STEP_TAG)
    vllm_model = LLM(str(math_prm_dir), max_model_len=2048, dtype=dtype, pooler_config=PoolerConfig(step_tag_id=step_tag_id))
    vllm_outputs = [o.outputs.data for o in vllm_model.encode(math_step_prompts, pooling_task="token_classify")]

    hf_outputs = hf_reward(math_prm_dir, math_step_prompts)

    # check logits difference
    for hf_output, vllm_output in zip(hf_outputs, vllm_outputs):
        hf_output = torch.tensor(hf_output).float()
        vllm_output = torch.tensor(vllm_output).float()
        assert torch.allclose(hf_output, vllm_output, 1.5e-2)
