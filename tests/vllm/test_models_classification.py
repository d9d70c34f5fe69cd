# Port of vllm tests/models/language/pooling/test_classification.py
# jason9693/Qwen2.5-1.5B-apeach -> the tiny two-label Qwen2ForSequenceClassification (conftest);
# Forrest20231206/ernie-3.0-base-zh-cls -> a tiny ErnieForSequenceClassification (transformers
# fallback). hf_runner(auto_cls=AutoModelForSequenceClassification).classify -> HfClassifier on the
# same directory. dtype: float (vLLM's CPU/CUDA choice; half only on ROCm).
import pytest
import torch
from port_utils import HfClassifier, build_ernie

from poolkit import LLM


@pytest.fixture(scope="module")
def ernie_dir(vllm_models_root):
    return build_ernie(vllm_models_root / "ernie-cls")


@pytest.mark.parametrize("model", ["apeach", "ernie-3.0-base-zh-cls"])
@pytest.mark.parametrize("dtype", ["float"])
def test_models(example_prompts, model: str, dtype: str, apeach_dir, ernie_dir) -> None:
    path = apeach_dir if model == "apeach" else ernie_dir
    vllm_model = LLM(str(path), max_model_len=128, dtype=dtype)
    vllm_outputs = [o.outputs.probs for o in vllm_model.classify(example_prompts)]

    hf_outputs = HfClassifier(path).classify(example_prompts)

    # check logits difference
    for hf_output, vllm_output in zip(hf_outputs, vllm_outputs):
        hf_output = torch.tensor(hf_output)
        vllm_output = torch.tensor(vllm_output)
        assert torch.allclose(hf_output, vllm_output, rtol=2e-3 if dtype == "float" else 1e-2)
