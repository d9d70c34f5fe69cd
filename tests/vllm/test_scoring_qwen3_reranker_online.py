# Port of vllm tests/entrypoints/pooling/scoring/test_qwen3_reranker_online.py
# Qwen/Qwen3-Reranker-0.6B with the same hf_overrides -> a tiny Qwen3ForCausalLM whose byte-level BPE
# has single "yes"/"no" tokens (conftest ``qwen3_lm_dir``); vLLM's --chat-template
# examples/pooling/score/template/qwen3_reranker.jinja -> create_app(chat_template=...) with that
# template's text (port_utils.QWEN3_RERANKER_TEMPLATE).
import pytest
from fastapi.testclient import TestClient
from port_utils import QWEN3_RERANKER_TEMPLATE
from transformers import AutoTokenizer

from poolkit import LLM
from poolkit.entrypoints.server import create_app

MODEL_NAME = "qwen3-reranker-stand-in"
HF_OVERRIDES = {
    "architectures": ["Qwen3ForSequenceClassification"],
    "classifier_from_token": ["no", "yes"],
    "is_original_qwen3_reranker": True,
}

QUERY = "What is the capital of France?"
DOCUMENT = "The capital of France is Paris."


@pytest.fixture(scope="module")
def server(qwen3_lm_dir):
    llm = LLM(str(qwen3_lm_dir), runner="pooling", enforce_eager=True, max_model_len=512, gpu_memory_utilization=0.2, hf_overrides=HF_OVERRIDES)
    with TestClient(create_app(llm, served_model_name=MODEL_NAME, chat_template=QWEN3_RERANKER_TEMPLATE)) as c:
        yield c


@pytest.fixture(scope="module")
def expected_template_token_count(qwen3_lm_dir):
    tokenizer = AutoTokenizer.from_pretrained(str(qwen3_lm_dir))
    prompt = tokenizer.apply_chat_template(
        [{"role": "query", "content": QUERY}, {"role": "document", "content": DOCUMENT}],
        chat_template=QWEN3_RERANKER_TEMPLATE,
        tools=None,
        tokenize=False,
    )
    templated_tokens = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    no_template_tokens = tokenizer(text=QUERY, text_pair=DOCUMENT, add_special_tokens=True)["input_ids"]

    assert "<Instruct>:" in prompt
    assert len(templated_tokens) != len(no_template_tokens)
    return len(templated_tokens)


def test_score_and_rerank_use_qwen3_reranker_template(server, expected_template_token_count: int):
    score_response = server.post("/score", json={"model": MODEL_NAME, "queries": QUERY, "documents": DOCUMENT})
    assert score_response.status_code == 200, score_response.text
    score = score_response.json()

    rerank_response = server.post("/rerank", json={"model": MODEL_NAME, "query": QUERY, "documents": [DOCUMENT]})
    assert rerank_response.status_code == 200, rerank_response.text
    rerank = rerank_response.json()

    assert score["usage"]["prompt_tokens"] == expected_template_token_count
    assert rerank["usage"]["prompt_tokens"] == expected_template_token_count
    assert len(score["data"]) == 1
    assert len(rerank["results"]) == 1
    assert score["data"][0]["score"] == pytest.approx(rerank["results"][0]["relevance_score"], rel=0.01)
