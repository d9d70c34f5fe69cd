# Port of vllm tests/models/language/pooling/test_override_pooler_config.py
# (an older vLLM file: the pooler configuration is passed as override_pooler_config, with the
# fields activation / normalize / softmax that later became use_activation.)
# jason9693/Qwen2.5-1.5B-apeach -> the tiny two-label Qwen2 classifier; papluca/xlm-roberta-base-
# language-detection -> a tiny three-label XLM-R classifier; intfloat/multilingual-e5-small ->
# all-MiniLM-L6-v2; Qwen/Qwen2.5-Math-PRM-7B -> the tiny Qwen2 PRM (port_utils.build_math_prm; its
# "<extra_0>" id is passed as step_tag_id, which vLLM hard-codes for Qwen's vocabulary). vLLM's
# max_model_len 512 / 1024 -> the stand-ins' own limits (128; the PRM 2048). dtype: half as in vLLM.
import pytest
import torch
import torch.nn.functional as F
from port_utils import STEP_TAG
from port_utils import math_step_prompts as _math_step_prompts
from transformers import AutoTokenizer

from poolkit import LLM, PoolerConfig


@pytest.fixture
def math_step_prompts():
    return _math_step_prompts()


@pytest.fixture(scope="module")
def paths(apeach_dir, xlmr_langdetect_dir, minilm_dir, math_prm_dir):
    return {
        "apeach": (apeach_dir, None),
        "xlm-roberta-base-language-detection": (xlmr_langdetect_dir, None),
        "multilingual-e5-small": (minilm_dir, 512),
        "Qwen2.5-Math-PRM-7B": (math_prm_dir, 2048),
    }


@pytest.mark.parametrize("model", ["apeach", "xlm-roberta-base-language-detection"])
@pytest.mark.parametrize("dtype", ["half"])
def test_classify_models_using_activation(paths, example_prompts, model: str, dtype: str) -> None:
    path, max_model_len = paths[model]
    vllm_model = LLM(str(path), max_model_len=max_model_len, dtype=dtype, override_pooler_config=PoolerConfig(activation=False))
    wo_activation_out = [o.outputs.probs for o in vllm_model.classify(example_prompts)]

    vllm_model = LLM(str(path), max_model_len=max_model_len, dtype=dtype, override_pooler_config=PoolerConfig(activation=True))
    w_activation_out = [o.outputs.probs for o in vllm_model.classify(example_prompts)]

    for wo_activation, w_activation in zip(wo_activation_out, w_activation_out):
        wo_activation = torch.tensor(wo_activation)
        w_activation = torch.tensor(w_activation)

        assert not torch.allclose(wo_activation, w_activation, atol=1e-2), "override_pooler_config is not working"
        assert torch.allclose(F.softmax(wo_activation, dim=-1), w_activation, 1e-3 if dtype == "float" else 1e-2)


@pytest.mark.parametrize("model", ["multilingual-e5-small"])
@pytest.mark.parametrize("dtype", ["half"])
def test_embed_models_using_normalize(paths, example_prompts, model: str, dtype: str) -> None:
    path, max_model_len = paths[model]
    vllm_model = LLM(str(path), max_model_len=max_model_len, dtype=dtype, override_pooler_config=PoolerConfig(normalize=False))
    wo_normalize = torch.tensor([o.outputs.embedding for o in vllm_model.embed(example_prompts)])

    vllm_model = LLM(str(path), max_model_len=max_model_len, dtype=dtype, override_pooler_config=PoolerConfig(normalize=True))
    w_normalize = torch.tensor([o.outputs.embedding for o in vllm_model.embed(example_prompts)])

    assert not torch.allclose(wo_normalize, w_normalize, atol=1e-2), "override_pooler_config normalize is not working"
    assert torch.allclose(F.normalize(wo_normalize, p=2, dim=-1), w_normalize, atol=1e-2), "w_normal should be close to normal(wo_normal)."


@pytest.mark.parametrize("model", ["Qwen2.5-Math-PRM-7B"])
@pytest.mark.parametrize("dtype", ["half"])
def test_reward_models_using_softmax(paths, math_step_prompts, model: str, dtype: str) -> None:
    path, max_model_len = paths[model]
    step_tag_id = AutoTokenizer.from_pretrained(str(path)).convert_tokens_to_ids(STEP_TAG)
    vllm_model = LLM(str(path), max_model_len=max_model_len, dtype=dtype, override_pooler_config=PoolerConfig(softmax=False, step_tag_id=step_tag_id))
    wo_softmax = [o.outputs.data for o in vllm_model.encode(math_step_prompts)]

    vllm_model = LLM(str(path), max_model_len=max_model_len, dtype=dtype, override_pooler_config=PoolerConfig(softmax=True, step_tag_id=step_tag_id))
    w_softmax = [o.outputs.data for o in vllm_model.encode(math_step_prompts)]

    for wo, w in zip(wo_softmax, w_softmax):
        wo = torch.tensor(wo)
        w = torch.tensor(w)
        assert not torch.allclose(wo, w, atol=1e-2), "override_pooler_config softmax is not working"
        assert torch.allclose(F.softmax(wo, dim=-1), w, atol=1e-2), "w_softmax should be close to softmax(wo_softmax)."
