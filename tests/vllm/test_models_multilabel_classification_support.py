# Port of vllm tests/models/language/pooling/test_multilabel_classification_support.py
# Rami/multi-label-class-classification-on-github-issues -> a tiny BertForSequenceClassification
# with problem_type "multi_label_classification" (sigmoid per label); HfRunner.classify applies
# sigmoid for that problem type (port_utils.HfClassifier). dtype: half as in vLLM, for both; the
# stand-in's weights are drawn small (init_range 0.3) so its logits stay in a trained model's range,
# where half precision's rounding fits vLLM's rtol.
import pytest
import torch
from port_utils import HfClassifier

from poolkit import LLM


@pytest.fixture(scope="module")
def model_dir(vllm_models_root):
    from tiny_models import build_classifier

    return build_classifier(vllm_models_root / "multilabel", "bert", num_labels=4, init_range=0.3, problem_type="multi_label_classification")


@pytest.mark.parametrize("model", ["multi-label-stand-in"])
@pytest.mark.parametrize("dtype", ["half"])
def test_classify_models(example_prompts, model: str, dtype: str, model_dir) -> None:
    vllm_model = LLM(str(model_dir), max_model_len=128, dtype=dtype)
    vllm_outputs = [o.outputs.probs for o in vllm_model.classify(example_prompts)]

    hf_outputs = HfClassifier(model_dir, dtype=dtype).classify(example_prompts)

    for hf_output, vllm_output in zip(hf_outputs, vllm_outputs):
        hf_output = torch.tensor(hf_output)
        vllm_output = torch.tensor(vllm_output)
        assert torch.allclose(hf_output, vllm_output, 1e-3 if dtype == "float" else 1e-2)
