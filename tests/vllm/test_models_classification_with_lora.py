# Port of vllm tests/models/language/pooling/test_classification_with_lora.py
# jason9693/Qwen2.5-1.5B-apeach -> the tiny Qwen2ForSequenceClassification (``apeach_dir``), whose
# context is 128 tokens (max_model_len=128 for vLLM's 512); vLLM reads the dtypes off its engine's
# model config, poolkit off ``llm.model_config``.
# ADAPTED: poolkit's "auto" dtype is float32 on a CPU without native bfloat16, where the check
# cannot tell a float32 head from the model's dtype, so the model is loaded in bfloat16 as well: with
# LoRA enabled its head follows the model's dtype (without, it stays float32: test_models_fp32_head.py).
import pytest
import torch

from poolkit import LLM


@pytest.mark.parametrize("model", ["apeach_dir"])
def test_models(request, model: str) -> None:
    model_dir = request.getfixturevalue(model)
    for dtype in ("auto", "bfloat16"):
        llm = LLM(str(model_dir), max_model_len=128, enable_lora=True, dtype=dtype)
        model_config = llm.model_config
        head_dtype = model_config.head_dtype
        dtype = model_config.dtype
        assert head_dtype == dtype
        head = llm.model.architecture.sequence_classifier()
        assert {p.dtype for p in head.parameters()} == {dtype}
    assert LLM(str(model_dir), dtype="bfloat16").model_config.head_dtype == torch.float32
