# Port of vllm tests/models/language/pooling/test_classification_pooler_config.py
# (an older vLLM file, the same test as test_override_pooler_config.py's classify case with
# PoolerConfig(softmax=...) through override_pooler_config.)
# jason9693/Qwen2.5-1.5B-apeach -> the tiny two-label Qwen2 classifier; papluca/xlm-roberta-base-
# language-detection -> a tiny three-label XLM-R classifier (conftest); vLLM's max_model_len 512 ->
# the stand-ins' own 128. dtype: half as in vLLM.
import pytest
import torch
import torch.nn.functional as F

from poolkit import LLM, PoolerConfig


@pytest.mark.parametrize("model", ["apeach", "xlm-roberta-base-language-detection"])
@pytest.mark.parametrize("dtype", ["half"])
def test_models(apeach_dir, xlmr_langdetect_dir, example_prompts, model: str, dtype: str) -> None:
    path = apeach_dir if model == "apeach" else xlmr_langdetect_dir
    vllm_model = LLM(str(path), dtype=dtype, override_pooler_config=PoolerConfig(softmax=False))
    wo_softmax_out = [o.outputs.probs for o in vllm_model.classify(example_prompts)]

    vllm_model = LLM(str(path), dtype=dtype, override_pooler_config=PoolerConfig(softmax=True))
    w_softmax_out = [o.outputs.probs for o in vllm_model.classify(example_prompts)]

    for wo_softmax, w_softmax in zip(wo_softmax_out, w_softmax_out):
        wo_softmax = torch.tensor(wo_softmax)
        w_softmax = torch.tensor(w_softmax)

        assert not torch.allclose(wo_softmax, w_softmax, atol=1e-2), "override_pooler_config is not working"
        assert torch.allclose(F.softmax(wo_softmax, dim=-1), w_softmax, 1e-3 if dtype == "float" else 1e-2)
