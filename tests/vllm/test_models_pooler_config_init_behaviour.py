# Port of vllm tests/models/language/pooling/test_pooler_config_init_behaviour.py
# jason9693/Qwen2.5-1.5B-apeach -> the tiny two-label Qwen2 classifier; papluca/xlm-roberta-base-
# language-detection -> a tiny three-label XLM-R classifier; intfloat/multilingual-e5-small ->
# all-MiniLM-L6-v2; internlm/internlm2-1_8b-reward -> the tiny one-label Qwen2 token classifier
# (conftest). vLLM runs them with max_model_len 512 / 1024; the tiny stand-ins keep their own 128.
# dtype: half as in vLLM.
import pytest
import torch
import torch.nn.functional as F
from port_utils import softmax

from poolkit import LLM, PoolerConfig


@pytest.fixture(scope="module")
def paths(apeach_dir, xlmr_langdetect_dir, minilm_dir, internlm_reward_dir):
    return {
        "apeach": (apeach_dir, None),
        "xlm-roberta-base-language-detection": (xlmr_langdetect_dir, None),
        "multilingual-e5-small": (minilm_dir, 512),
        "internlm2-1_8b-reward": (internlm_reward_dir, None),
    }


@pytest.mark.parametrize("model", ["apeach", "xlm-roberta-base-language-detection"])
@pytest.mark.parametrize("dtype", ["half"])
def test_classify_models_using_activation(paths, example_prompts, model: str, dtype: str) -> None:
    path, max_model_len = paths[model]
    vllm_model = LLM(str(path), max_model_len=max_model_len, dtype=dtype, pooler_config=PoolerConfig(use_activation=False))
    wo_activation_out = [o.outputs.probs for o in vllm_model.classify(example_prompts)]

    vllm_model = LLM(str(path), max_model_len=max_model_len, dtype=dtype, pooler_config=PoolerConfig(use_activation=True))
    w_activation_out = [o.outputs.probs for o in vllm_model.classify(example_prompts)]

    for wo_activation, w_activation in zip(wo_activation_out, w_activation_out):
        wo_activation = torch.tensor(wo_activation)
        w_activation = torch.tensor(w_activation)

        assert not torch.allclose(wo_activation, w_activation, atol=1e-2), "pooler_config is not working"
        assert torch.allclose(softmax(wo_activation), w_activation, 1e-3 if dtype == "float" else 1e-2)


@pytest.mark.parametrize("model", ["multilingual-e5-small"])
@pytest.mark.parametrize("dtype", ["half"])
def test_embed_models_using_normalize(paths, example_prompts, model: str, dtype: str) -> None:
    path, max_model_len = paths[model]
    vllm_model = LLM(str(path), max_model_len=max_model_len, dtype=dtype, pooler_config=PoolerConfig(use_activation=False))
    wo_normalize = torch.tensor([o.outputs.embedding for o in vllm_model.embed(example_prompts)])

    vllm_model = LLM(str(path), max_model_len=max_model_len, dtype=dtype, pooler_config=PoolerConfig(use_activation=True))
    w_normalize = torch.tensor([o.outputs.embedding for o in vllm_model.embed(example_prompts)])

    assert not torch.allclose(wo_normalize, w_normalize, atol=1e-2), "pooler_config normalize is not working"
    assert torch.allclose(F.normalize(wo_normalize, p=2, dim=-1), w_normalize, atol=1e-2), "w_normal should be close to normal(wo_normal)."


@pytest.mark.parametrize("model", ["internlm2-1_8b-reward"])
@pytest.mark.parametrize("dtype", ["half"])
def test_reward_models_using_activation(paths, example_prompts, model: str, dtype: str) -> None:
    path, max_model_len = paths[model]
    vllm_model = LLM(str(path), max_model_len=max_model_len, dtype=dtype, pooler_config=PoolerConfig(use_activation=False))
    wo_activation = [o.outputs.data for o in vllm_model.reward(example_prompts)]

    vllm_model = LLM(str(path), max_model_len=max_model_len, dtype=dtype, pooler_config=PoolerConfig(use_activation=True))
    w_activation = [o.outputs.data for o in vllm_model.reward(example_prompts)]

    for wo, w in zip(wo_activation, w_activation):
        wo = torch.tensor(wo)
        w = torch.tensor(w)
        assert not torch.allclose(wo, w, atol=1e-2), "pooler_config activation is not working"
        assert torch.allclose(softmax(wo), w, atol=1e-2), "w_activation should be close to activation(wo_activation)."


@pytest.mark.parametrize("model", ["multilingual-e5-small"])
@pytest.mark.parametrize("dtype", ["half"])
def test_multi_vector_retrieval_models_using_normalize(paths, example_prompts, model: str, dtype: str) -> None:
    path, max_model_len = paths[model]
    vllm_model = LLM(
        str(path), max_model_len=max_model_len, dtype=dtype, pooler_config=PoolerConfig(use_activation=False, pooling_task="token_embed")
    )
    wo_normalize = [o.outputs.data for o in vllm_model.encode(example_prompts, pooling_task="token_embed")]

    vllm_model = LLM(
        str(path), max_model_len=max_model_len, dtype=dtype, pooler_config=PoolerConfig(use_activation=True, pooling_task="token_embed")
    )
    w_normalize = [o.outputs.data for o in vllm_model.encode(example_prompts, pooling_task="token_embed")]

    for wo, w in zip(wo_normalize, w_normalize):
        assert not torch.allclose(wo, w, atol=1e-2), "pooler_config normalize is not working"
        assert torch.allclose(F.normalize(wo, p=2, dim=-1), w, atol=1e-2), "w_normal should be close to normal(wo_normal)."
