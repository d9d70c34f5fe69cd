# Port of vllm tests/models/language/pooling/test_fp32_head.py
# intfloat/multilingual-e5-small -> the real all-MiniLM-L6-v2 (``minilm_dir``);
# jason9693/Qwen2.5-1.5B-apeach -> the tiny Qwen2ForSequenceClassification (``apeach_dir``).
# vLLM builds a bare ModelConfig(model_id, task="auto"); poolkit reads the same resolved dtypes off
# a loaded model's llm.model_config. Only the two pooling rows of test_model_config are ported.
# Not ported:
# - the ("distilbert/distilgpt2", "generate") row of test_model_config: poolkit runs pooling models
#   only, so there is no generate runner whose head keeps the model's dtype;
# - test_VLLM_USING_FP32_HEAD_0 and test_VLLM_USING_FP32_HEAD_1: the environment switch has no
#   counterpart (the file has one stored version; upstream it was replaced by test_head_dtype.py,
#   ported as test_models_head_dtype.py, which checks poolkit's per-model switch, hf_overrides'
#   ``head_dtype`` "model" / "float32").
import pytest
import torch

from poolkit import LLM


@pytest.mark.parametrize(
    ("model_id", "runner_type"),
    [
        ("minilm_dir", "pooling"),
        ("apeach_dir", "pooling"),
    ],
)
def test_model_config(request, model_id, runner_type):
    model_dir = request.getfixturevalue(model_id)
    config = LLM(str(model_dir)).model_config

    if runner_type == "generate":
        assert config.head_dtype == config.dtype
    else:
        assert config.head_dtype == torch.float32

    # poolkit's "auto" dtype is float32 on a CPU without native bfloat16, where the check above
    # cannot tell a float32 head from the model's dtype: in bfloat16 the head still resolves to
    # float32, and a classifier head's weights are float32.
    llm = LLM(str(model_dir), dtype="bfloat16")
    assert llm.model_config.dtype == torch.bfloat16
    assert llm.model_config.head_dtype == torch.float32
    head = llm.model.architecture.sequence_classifier()
    if head is not None:
        assert {p.dtype for p in head.parameters()} == {torch.float32}
