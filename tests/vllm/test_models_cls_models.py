# Port of vllm tests/models/language/pooling/test_cls_models.py
# jason9693/Qwen2.5-1.5B-apeach -> the tiny two-label Qwen2ForSequenceClassification (conftest);
# hf_runner(auto_cls=AutoModelForSequenceClassification).classify -> HfClassifier.
import pytest
import torch
from port_utils import HfClassifier

from poolkit import LLM


@pytest.mark.parametrize("model", ["apeach"])
@pytest.mark.parametrize("dtype", ["float"])
def test_classification_models(example_prompts, model: str, dtype: str, apeach_dir) -> None:
    vllm_model = LLM(str(apeach_dir), dtype=dtype)
    vllm_outputs = [o.outputs.probs for o in vllm_model.classify(example_prompts)]

    hf_outputs = HfClassifier(apeach_dir).classify(example_prompts)

    # check logits difference
    for hf_output, vllm_output in zip(hf_outputs, vllm_outputs):
        hf_output = torch.tensor(hf_output)
        vllm_output = torch.tensor(vllm_output)
        assert torch.allclose(hf_output, vllm_output, 1e-3 if dtype == "float" else 1e-2)
