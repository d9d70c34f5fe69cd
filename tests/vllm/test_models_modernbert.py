# Port of vllm tests/models/language/pooling/test_modernbert.py
# cirimus/modernbert-base-go-emotions -> a tiny ModernBertForSequenceClassification (3 labels);
# Alibaba-NLP/gte-reranker-modernbert-base (classifier_pooling: mean) and
# cl-nagoya/ruri-v3-reranker-310m (classifier_pooling: cls) -> tiny one-label
# ModernBertForSequenceClassification with the same classifier_pooling. HF references:
# transformers' classifier (HfClassifier) and sentence-transformers' CrossEncoder on the same
# directories, in half as vLLM's dtype.
# Not ported: test_rerank_models_mteb (an MTEB NFCorpus rerank evaluation, BM25 first stage, of the
# trained gte-reranker-modernbert-base and ruri-v3-reranker-310m: it needs the hub's dataset and the
# hub-only models, and measures trained rankings, which stand-ins do not have).
import pytest
import torch
from port_utils import HfClassifier

from poolkit import LLM


@pytest.fixture(scope="module")
def modernbert_dirs(vllm_models_root):
    from tiny_models import build_modernbert

    root = vllm_models_root / "modernbert"
    return {
        "modernbert-base-go-emotions": build_modernbert(root / "go-emotions", "classify", num_labels=3, init_range=0.2),
        "gte-reranker-modernbert-base": build_modernbert(root / "gte-reranker", "classify", num_labels=1, init_range=0.2, classifier_pooling="mean"),
        "ruri-v3-reranker-310m": build_modernbert(root / "ruri", "classify", num_labels=1, init_range=0.2, classifier_pooling="cls"),
    }


@pytest.mark.parametrize("model", ["modernbert-base-go-emotions"])
@pytest.mark.parametrize("dtype", ["half"])
def test_classify_models(modernbert_dirs, model: str, dtype: str) -> None:
    example_prompts = ["This is a good movie."]

    vllm_model = LLM(str(modernbert_dirs[model]), max_model_len=128, dtype=dtype)
    vllm_outputs = [o.outputs.probs for o in vllm_model.classify(example_prompts)]

    hf_outputs = HfClassifier(modernbert_dirs[model], dtype=dtype).classify(example_prompts)

    for hf_output, vllm_output in zip(hf_outputs, vllm_outputs):
        hf_output = torch.tensor(hf_output)
        vllm_output = torch.tensor(vllm_output)
        assert torch.allclose(hf_output, vllm_output, 1e-3 if dtype == "float" else 1e-2)


@pytest.mark.parametrize("model", ["gte-reranker-modernbert-base", "ruri-v3-reranker-310m"])
@pytest.mark.parametrize("dtype", ["half"])
def test_reranker_models(modernbert_dirs, model: str, dtype: str) -> None:
    from sentence_transformers import CrossEncoder

    TEXTS_1 = ["What is the capital of France?", "What is the capital of Germany?"]
    TEXTS_2 = ["The capital of France is Paris.", "The capital of Germany is Berlin."]
    text_pairs = [[TEXTS_1[0], TEXTS_2[0]], [TEXTS_1[1], TEXTS_2[1]]]

    hf_model = CrossEncoder(str(modernbert_dirs[model]), device="cpu", model_kwargs={"dtype": torch.float16})
    hf_outputs = hf_model.predict(text_pairs).tolist()

    vllm_model = LLM(str(modernbert_dirs[model]), runner="pooling", dtype=dtype, max_model_len=None)
    vllm_outputs = [o.outputs.score for o in vllm_model.score(TEXTS_1, TEXTS_2)]

    assert hf_outputs[0] == pytest.approx(vllm_outputs[0], rel=0.01)
    assert hf_outputs[1] == pytest.approx(vllm_outputs[1], rel=0.01)
