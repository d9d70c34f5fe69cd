# Port of vllm tests/models/language/pooling/test_auto_prefix_cache_support.py
# jason9693/Qwen2.5-1.5B-apeach -> the tiny Qwen2ForSequenceClassification of conftest (apeach_dir);
# Qwen/Qwen3-Embedding-0.6B -> a tiny Qwen3Model (tiny_models.build_qwen); intfloat/e5-small -> the
# tiny MiniLM (minilm_dir), Alibaba-NLP/gte-Qwen2-1.5B-instruct -> a tiny Qwen2 with is_causal: false,
# papluca/xlm-roberta-base-language-detection -> conftest's tiny XLM-R classifier.
# vLLM's "cache_config.enable_prefix_caching" is poolkit's prefix sharing of the engine
# (llm.engine.prefixes: None where the model cannot share prefixes). The second run of the same
# prompts reads the prefix states the first left in the cache, so num_cached_tokens > 0.
# DEPARTURE: vLLM repeats the example prompts 10 times (for a 512-token context); the stand-ins'
# byte-level tokenizers take 128 tokens, so they run as they are (50-100 tokens each, more than one
# 16-token block).
# DEPARTURE: dtype "half" -> float32 (CPU); the comparison with transformers keeps vLLM's 1e-3 for
# float. test_embed_models compares with transformers' Qwen3Model (last token, L2) instead of
# sentence-transformers: the stand-in has no sentence-transformers files.
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from poolkit import LLM


@pytest.mark.parametrize("model", ["jason9693/Qwen2.5-1.5B-apeach"])
@pytest.mark.parametrize("dtype", ["float"])
def test_classify_models(apeach_dir, example_prompts, model: str, dtype: str) -> None:
    llm = LLM(str(apeach_dir), max_model_len=128, dtype="float32", enable_prefix_caching=True)
    assert llm.engine.prefixes is not None
    # First Run
    llm.classify(example_prompts)
    # assert prefix_caching works
    pooling_outputs = llm.encode(example_prompts, pooling_task="classify")
    for output in pooling_outputs:
        assert output.num_cached_tokens > 0
    vllm_outputs = [req_output.outputs.data for req_output in pooling_outputs]

    hf_model = AutoModelForSequenceClassification.from_pretrained(str(apeach_dir)).eval()
    tok = AutoTokenizer.from_pretrained(str(apeach_dir))
    with torch.no_grad():
        hf_outputs = [hf_model(**tok(p, return_tensors="pt")).logits[0].softmax(-1) for p in example_prompts]
    for hf_output, vllm_output in zip(hf_outputs, vllm_outputs):
        assert torch.allclose(hf_output, torch.as_tensor(vllm_output).float(), 1e-3)


@pytest.mark.parametrize("model", ["Qwen/Qwen3-Embedding-0.6B"])
@pytest.mark.parametrize("dtype", ["float"])
def test_embed_models(vllm_models_root, example_prompts, model: str, dtype: str):
    from tiny_models import build_qwen

    path = build_qwen(vllm_models_root / "qwen3-embedding-prefix", "qwen3", "embed")
    example_prompts = [str(s).strip() for s in example_prompts]
    llm = LLM(str(path), runner="pooling", max_model_len=None, enable_prefix_caching=True)
    assert llm.engine.prefixes is not None
    # First Run
    llm.embed(example_prompts)
    # assert prefix_caching works
    pooling_outputs = llm.encode(example_prompts, pooling_task="embed")
    for output in pooling_outputs:
        assert output.num_cached_tokens > 0
    vllm_outputs = [torch.as_tensor(req_output.outputs.data).float() for req_output in pooling_outputs]

    hf = AutoModel.from_pretrained(str(path)).eval()
    tok = AutoTokenizer.from_pretrained(str(path))
    with torch.no_grad():
        for prompt, got in zip(example_prompts, vllm_outputs):
            hidden = hf(**tok(prompt, return_tensors="pt")).last_hidden_state[0, -1]
            assert F.cosine_similarity(got, F.normalize(hidden, dim=-1), dim=0) >= 1 - 1e-4


@pytest.mark.parametrize(
    "model",
    [
        "intfloat/e5-small",
        "Alibaba-NLP/gte-Qwen2-1.5B-instruct",  # is_causal == False
        "papluca/xlm-roberta-base-language-detection",
    ],
)
@pytest.mark.parametrize("dtype", ["float"])
def test_non_causal_models(minilm_dir, xlmr_langdetect_dir, vllm_models_root, example_prompts, model: str, dtype: str) -> None:
    from tiny_models import build_qwen

    paths = {
        "intfloat/e5-small": minilm_dir,
        "Alibaba-NLP/gte-Qwen2-1.5B-instruct": build_qwen(vllm_models_root / "gte-qwen2-prefix", "qwen2", "embed", is_causal=False),
        "papluca/xlm-roberta-base-language-detection": xlmr_langdetect_dir,
    }
    llm = LLM(str(paths[model]), max_model_len=128, dtype="float32")
    assert llm.engine.prefixes is None
    task = "classify" if "language-detection" in model else "embed"
    for _ in range(2):  # a second run finds nothing cached either
        assert all(o.num_cached_tokens == 0 for o in llm.encode(example_prompts, pooling_task=task))
