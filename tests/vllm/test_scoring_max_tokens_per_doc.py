# Port of vllm tests/entrypoints/pooling/scoring/test_max_tokens_per_doc.py
# Three cross-encoder code paths, each with an offline stand-in:
# - jinaai/jina-reranker-v2-base-multilingual (XLM-R cross-encoder, remote code) -> the tiny
#   one-label XLMRobertaForSequenceClassification (conftest ``bge_reranker_dir``; context 128);
# - BAAI/bge-reranker-v2-gemma (LLM-as-reranker, GemmaForSequenceClassification over the "Yes"
#   token, no_post_processing, examples/.../bge-reranker-v2-gemma.jinja) -> the tiny Qwen3ForCausalLM
#   read the same way through "yes" (its vocabulary has no single "Yes"), same template;
# - Qwen/Qwen3-Reranker-0.6B (score template path) -> the tiny Qwen3ForCausalLM with the same
#   hf_overrides and examples/.../qwen3_reranker.jinja.
# vLLM serves them with --max-model-len 256; so does the gemma stand-in here. The XLM-R stand-in's
# context is 128; the Qwen3-Reranker stand-in gets 512, as its byte-level BPE splits the long
# template and the documents into more tokens than Qwen's tokenizer does.
import pytest
from fastapi.testclient import TestClient
from port_utils import BGE_GEMMA_TEMPLATE, QWEN3_RERANKER_TEMPLATE

from poolkit import LLM
from poolkit.entrypoints.server import create_app

JINA_MODEL = "jina-reranker-v2-stand-in"
GEMMA_MODEL = "bge-reranker-v2-gemma-stand-in"
GEMMA_HF_OVERRIDES = {
    "architectures": ["Qwen3ForSequenceClassification"],  # vLLM: GemmaForSequenceClassification
    "classifier_from_token": ["yes"],  # vLLM: ["Yes"]
    "method": "no_post_processing",
}
QWEN_MODEL = "qwen3-reranker-stand-in"
QWEN_HF_OVERRIDES = {
    "architectures": ["Qwen3ForSequenceClassification"],
    "classifier_from_token": ["no", "yes"],
    "is_original_qwen3_reranker": True,
}


@pytest.fixture(scope="module")
def jina_server(bge_reranker_dir):
    llm = LLM(str(bge_reranker_dir), enforce_eager=True, max_model_len=128, gpu_memory_utilization=0.3, trust_remote_code=True)
    with TestClient(create_app(llm, served_model_name=JINA_MODEL)) as c:
        yield c


@pytest.fixture(scope="module")
def gemma_server(qwen3_lm_dir):
    llm = LLM(str(qwen3_lm_dir), enforce_eager=True, max_model_len=256, gpu_memory_utilization=0.3, hf_overrides=GEMMA_HF_OVERRIDES)
    with TestClient(create_app(llm, served_model_name=GEMMA_MODEL, chat_template=BGE_GEMMA_TEMPLATE)) as c:
        yield c


@pytest.fixture(scope="module")
def qwen_server(qwen3_lm_dir):
    llm = LLM(str(qwen3_lm_dir), enforce_eager=True, max_model_len=512, gpu_memory_utilization=0.3, hf_overrides=QWEN_HF_OVERRIDES)
    with TestClient(create_app(llm, served_model_name=QWEN_MODEL, chat_template=QWEN3_RERANKER_TEMPLATE)) as c:
        yield c


def _max_tokens_per_doc(server, model):
    query = "What is the capital of France?"
    long_doc = "The capital of France is Paris. " * 20
    response = server.post("/rerank", json={"model": model, "query": query, "documents": [long_doc], "max_tokens_per_doc": 10})
    assert response.status_code == 200, response.text
    rerank = response.json()
    assert rerank["id"] is not None
    assert rerank["results"] is not None
    assert len(rerank["results"]) == 1
    assert rerank["usage"]["prompt_tokens"] > 0


def _reduces_tokens(server, model):
    query = "What is the capital of France?"
    doc = "The capital of France is Paris. " * 5
    response_no_limit = server.post("/rerank", json={"model": model, "query": query, "documents": [doc]})
    assert response_no_limit.status_code == 200, response_no_limit.text
    response_with_limit = server.post("/rerank", json={"model": model, "query": query, "documents": [doc], "max_tokens_per_doc": 5})
    assert response_with_limit.status_code == 200, response_with_limit.text
    assert response_with_limit.json()["usage"]["prompt_tokens"] < response_no_limit.json()["usage"]["prompt_tokens"]


def test_jina_max_tokens_per_doc(jina_server):
    """Test max_tokens_per_doc with jina-reranker-v2 (XLM-RoBERTa cross-encoder)."""
    _max_tokens_per_doc(jina_server, JINA_MODEL)


def test_jina_max_tokens_per_doc_reduces_tokens(jina_server):
    """Verify truncation actually reduces tokens for Jina v2 reranker."""
    _reduces_tokens(jina_server, JINA_MODEL)


def test_gemma_max_tokens_per_doc(gemma_server):
    """Test max_tokens_per_doc with bge-reranker-v2-gemma (chat template path)."""
    _max_tokens_per_doc(gemma_server, GEMMA_MODEL)


def test_gemma_max_tokens_per_doc_reduces_tokens(gemma_server):
    """Verify truncation actually reduces tokens for gemma reranker."""
    _reduces_tokens(gemma_server, GEMMA_MODEL)


def test_qwen_max_tokens_per_doc(qwen_server):
    """Test max_tokens_per_doc with Qwen3-Reranker (score template path)."""
    _max_tokens_per_doc(qwen_server, QWEN_MODEL)


def test_qwen_max_tokens_per_doc_reduces_tokens(qwen_server):
    """Verify truncation actually reduces tokens for Qwen3 reranker."""
    _reduces_tokens(qwen_server, QWEN_MODEL)
