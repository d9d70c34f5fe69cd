# Port of vllm tests/entrypoints/pooling/test_io_processor.py
# vLLM unit-tests PoolingIOProcessor's private validators on a bare instance; poolkit has no such
# class, so the two checks with a public counterpart go through LLM.encode on all-MiniLM-L6-v2
# (its error is an InvalidRequest, a ValueError, where vLLM's is a VLLMValidationError; vLLM also
# checks the error's .parameter / .value, which poolkit's errors do not carry).
# Not ported: test_rejects_untrusted_request_chat_template (per-request chat templates and
# --trust-request-chat-template do not exist in poolkit) and test_rejects_mismatched_lora_requests
# (no LoRA in poolkit).
import pytest

from poolkit import PoolingParams


def test_rejects_mismatched_pooling_params(minilm):
    with pytest.raises(ValueError) as exc_info:
        minilm.encode(["a", "b"], pooling_params=[PoolingParams()], pooling_task="embed")

    assert str(exc_info.value) == "The lengths of prompts (2) and params (1) must be the same."


def test_rejects_conflicting_pooling_task(minilm):
    with pytest.raises(ValueError) as exc_info:
        minilm.encode([[1000]], pooling_params=PoolingParams(task="classify"), pooling_task="embed")

    assert str(exc_info.value) == "You cannot overwrite param.task='classify' with pooling_task='embed'!"
