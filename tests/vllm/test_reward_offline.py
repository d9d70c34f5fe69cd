# Port of vllm tests/entrypoints/pooling/reward/test_offline.py
# internlm/internlm2-1_8b-reward -> a tiny random InternLM2ForRewardModel laid out as the hub's
# (tests/support/tiny_internlm2.py: InternLM2's config keys and tensor names, a one-output v_head on every
# token), which poolkit runs natively; no remote code runs (trust_remote_code is accepted and ignored).
# Not ported: test_config (asserts vLLM engine settings, llm.llm_engine.vllm_config.cache_config /
# scheduler_config: prefix caching and chunked prefill, which poolkit's engine does not have).
import pytest
import torch
from port_utils import softmax

from poolkit import LLM, PoolingParams

prompts = ["The chef prepared a delicious meal."]


@pytest.fixture(scope="module")
def internlm2_reward_dir(tmp_path_factory):
    from tiny_internlm2 import build_internlm2_reward

    path, _ = build_internlm2_reward(tmp_path_factory.mktemp("internlm2") / "internlm2-1_8b-reward")
    return path


@pytest.fixture(scope="module")
def llm(internlm2_reward_dir):
    return LLM(
        model=str(internlm2_reward_dir),
        max_num_batched_tokens=32768,
        tensor_parallel_size=1,
        gpu_memory_utilization=0.75,
        enforce_eager=True,
        trust_remote_code=True,
        seed=0,
    )


def test_pooling_params(llm: LLM):
    def get_outputs(use_activation):
        outputs = llm.reward(prompts, pooling_params=PoolingParams(use_activation=use_activation), use_tqdm=False)
        return torch.cat([x.outputs.data for x in outputs])

    default = get_outputs(use_activation=None)
    w_activation = get_outputs(use_activation=True)
    wo_activation = get_outputs(use_activation=False)

    assert torch.allclose(default, w_activation, atol=1e-2), "Default should use activation."
    assert not torch.allclose(w_activation, wo_activation, atol=1e-2), "wo_activation should not use activation."
    assert torch.allclose(softmax(wo_activation), w_activation, atol=1e-2), "w_activation should be close to activation(wo_activation)."
