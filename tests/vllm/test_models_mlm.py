# Port of vllm tests/models/language/pooling/test_mlm.py
# google-bert/bert-base-uncased (legacy gamma/beta LayerNorm names, NSP head, decoder tied to the
# input embeddings) -> tests/support/tiny_models.build_masked_lm(legacy_names=True): a tiny BertForMaskedLM
# with gamma/beta names and a tied decoder (no NSP head). The HF reference is transformers'
# AutoModelForMaskedLM with vLLM's softmax over the vocabulary.
import pytest
import torch
from port_utils import softmax
from transformers import AutoModelForMaskedLM, AutoTokenizer

from poolkit import LLM


@pytest.fixture(autouse=True)
def seed_everything():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def mlm_dir(vllm_models_root):
    from tiny_models import build_masked_lm

    return build_masked_lm(vllm_models_root / "bert-base-uncased-mlm", legacy_names=True)


@pytest.mark.parametrize("model", ["bert-base-uncased-stand-in"])
@pytest.mark.parametrize("dtype", ["float"])
@torch.inference_mode
def test_bert_for_masked_lm(mlm_dir, example_prompts, model: str, dtype: str) -> None:
    # vLLM exposes the masked-LM head as a token-level pooling task; the head
    # applies softmax over the vocabulary, so each output row is a distribution.
    vllm_model = LLM(str(mlm_dir), max_model_len=None, dtype=dtype)
    vllm_outputs = [o.outputs.data for o in vllm_model.encode(example_prompts, pooling_task="token_classify")]

    tokenizer = AutoTokenizer.from_pretrained(str(mlm_dir))
    hf = AutoModelForMaskedLM.from_pretrained(str(mlm_dir)).eval()
    hf_outputs = []
    for prompt in example_prompts:
        inputs = tokenizer([prompt], return_tensors="pt")
        output = hf(**inputs)
        hf_outputs.append(softmax(output.logits[0]))

    # Compare the per-token vocabulary distributions position by position.
    for hf_output, vllm_output in zip(hf_outputs, vllm_outputs):
        hf_output = hf_output.detach().clone().cpu().float()
        vllm_output = vllm_output.detach().clone().cpu().float()
        assert hf_output.shape == vllm_output.shape
        assert torch.equal(hf_output.argmax(dim=-1), vllm_output.argmax(dim=-1))
        torch.testing.assert_close(hf_output, vllm_output, atol=3.2e-2, rtol=1e-3)
