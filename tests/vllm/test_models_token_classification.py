# Port of vllm tests/models/language/pooling/test_token_classification.py
# boltuix/NeuroBERT-NER -> a tiny BertForTokenClassification (5 labels);
# gyr66/Ernie-3.0-base-chinese-finetuned-ner -> a tiny ErnieForTokenClassification (fallback);
# disham993/electrical-ner-ModernBERT-base -> a tiny ModernBertForTokenClassification;
# bd2lcco/Qwen3-0.6B-finetuned (Qwen3ForTokenClassification) -> a tiny one of the same class.
# The HF reference is transformers' AutoModelForTokenClassification on the same directory, with
# vLLM's softmax over the labels.
import random

import numpy as np
import pytest
import torch
from port_utils import build_ernie, softmax
from transformers import AutoModelForTokenClassification, AutoTokenizer

from poolkit import LLM


@pytest.fixture(autouse=True)
def seed_everything():
    """Seed all random number generators for reproducibility."""
    seed = 0
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    yield


@pytest.fixture(scope="module")
def ner_dirs(vllm_models_root):
    from tiny_models import build_classifier, build_modernbert, build_qwen

    root = vllm_models_root / "ner"
    return {
        "NeuroBERT-NER": build_classifier(root / "bert", "bert", num_labels=5, token=True, init_range=0.5),
        "Ernie-3.0-base-chinese-finetuned-ner": build_ernie(root / "ernie", token=True, num_labels=5),
        "electrical-ner-ModernBERT-base": build_modernbert(root / "modernbert", "token_classify", num_labels=5),
        "Qwen3-0.6B-finetuned": build_qwen(root / "qwen3", "qwen3", "token_classify", num_labels=5, init_range=0.5),
    }


def hf_token_classify(path, prompts, dtype):
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForTokenClassification.from_pretrained(str(path), dtype=torch.float32).eval()
    outputs = []
    for prompt in prompts:
        inputs = tokenizer([prompt], return_tensors="pt")
        output = model(**inputs)
        outputs.append(softmax(output.logits[0]))
    return outputs


@pytest.mark.parametrize("model", ["NeuroBERT-NER", "Ernie-3.0-base-chinese-finetuned-ner"])
# The float32 is required for this tiny model to pass the test.
@pytest.mark.parametrize("dtype", ["float"])
@torch.inference_mode
def test_bert_like_models(ner_dirs, example_prompts, model: str, dtype: str) -> None:
    vllm_model = LLM(str(ner_dirs[model]), max_model_len=None, dtype=dtype)
    vllm_outputs = [o.outputs.data for o in vllm_model.encode(example_prompts, pooling_task="token_classify")]

    hf_outputs = hf_token_classify(ner_dirs[model], example_prompts, dtype)

    # check logits difference
    for hf_output, vllm_output in zip(hf_outputs, vllm_outputs):
        hf_output = hf_output.detach().clone().cpu().float()
        vllm_output = vllm_output.detach().clone().cpu().float()
        torch.testing.assert_close(hf_output, vllm_output, atol=3.2e-2, rtol=1e-3)


@pytest.mark.parametrize("model", ["electrical-ner-ModernBERT-base"])
@pytest.mark.parametrize("dtype", ["float"])
@torch.inference_mode
def test_modernbert_models(ner_dirs, example_prompts, model: str, dtype: str) -> None:
    vllm_model = LLM(str(ner_dirs[model]), max_model_len=None, dtype=dtype)
    vllm_outputs = [o.outputs.data for o in vllm_model.encode(example_prompts, pooling_task="token_classify")]

    hf_outputs = hf_token_classify(ner_dirs[model], example_prompts, dtype)

    # check logits difference
    for hf_output, vllm_output in zip(hf_outputs, vllm_outputs):
        hf_output = hf_output.detach().clone().cpu().float()
        vllm_output = vllm_output.detach().clone().cpu().float()
        torch.testing.assert_close(hf_output, vllm_output, atol=3.2e-2, rtol=1e-3)


@pytest.mark.parametrize("model", ["Qwen3-0.6B-finetuned"])
@pytest.mark.parametrize("dtype", ["float"])
@torch.inference_mode
def test_auto_conversion(ner_dirs, example_prompts, model: str, dtype: str) -> None:
    vllm_model = LLM(str(ner_dirs[model]), max_model_len=128, dtype=dtype)
    vllm_outputs = [o.outputs.data for o in vllm_model.encode(example_prompts, pooling_task="token_classify")]

    hf_outputs = hf_token_classify(ner_dirs[model], example_prompts, dtype)

    # check logits difference
    for hf_output, vllm_output in zip(hf_outputs, vllm_outputs):
        hf_output = hf_output.detach().clone().cpu().float()
        vllm_output = vllm_output.detach().clone().cpu().float()
        assert torch.allclose(hf_output, vllm_output, atol=1e-2)
