# Port of vllm tests/models/language/pooling/test_head_dtype.py
# nie3e/sentiment-polish-gpt2-small (GPT2ForSequenceClassification) -> a tiny one of the same class
# (tests/support/tiny_models.build_transformers_model), run by poolkit's transformers fallback. vLLM reads
# the resolved dtypes from llm.llm_engine.model_config; poolkit keeps them on llm.model_config.
import pytest
import torch
from port_utils import HfClassifier

from poolkit import LLM


@pytest.fixture(scope="module")
def gpt2_dir(vllm_models_root):
    from tiny_models import build_transformers_model

    return build_transformers_model(vllm_models_root / "gpt2-cls", "GPT2ForSequenceClassification", num_labels=3, init_range=0.2, pad_token_id=0)


@pytest.mark.parametrize("model", ["sentiment-polish-gpt2-small-stand-in"])
@pytest.mark.parametrize("dtype", ["half"])
def test_classify_models(gpt2_dir, example_prompts, model: str, dtype: str) -> None:
    hf_outputs = HfClassifier(gpt2_dir, dtype=dtype).classify(example_prompts)

    for head_dtype_str in ["float32", "model"]:
        vllm_model = LLM(str(gpt2_dir), max_model_len=None, dtype=dtype, hf_overrides={"head_dtype": head_dtype_str})
        model_config = vllm_model.model_config
        model_dtype = model_config.dtype
        head_dtype = model_config.head_dtype

        if head_dtype_str == "float32":
            assert head_dtype == torch.float32
        elif head_dtype_str == "model":
            assert head_dtype == model_dtype

        vllm_outputs = [o.outputs.probs for o in vllm_model.classify(example_prompts)]

        for hf_output, vllm_output in zip(hf_outputs, vllm_outputs):
            hf_output = torch.tensor(hf_output).float()
            vllm_output = torch.tensor(vllm_output).float()
            assert torch.allclose(hf_output, vllm_output, atol=1e-2)
