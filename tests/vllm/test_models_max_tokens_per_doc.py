# Port of vllm tests/models/language/pooling/test_max_tokens_per_doc.py
# /rerank's usage.prompt_tokens for a long query and a long document, with max_tokens_per_query and
# max_tokens_per_doc, on four scoring paths. vLLM's hub models and their offline stand-ins:
# - jinaai/jina-reranker-v2-base-multilingual (cross-encoder, --max-model-len 1024) -> the tiny
#   one-label XLMRobertaForSequenceClassification of conftest's bge_reranker_dir, built here with 1024
#   tokens of context (conftest's has 128, fewer than the 283-token pair);
# - Qwen/Qwen3-Reranker-0.6B (cross-encoder + score template, --max-model-len 1024) -> the tiny
#   Qwen3ForCausalLM of qwen3_lm_dir with the same hf_overrides and examples/.../qwen3_reranker.jinja,
#   built here with 1024 tokens of context (its byte-level BPE makes 736 tokens of the pair);
# - intfloat/multilingual-e5-small (bi-encoder, --max-model-len 512) -> all-MiniLM-L6-v2 (minilm_dir),
#   max_model_len=512;
# - answerdotai/answerai-colbert-small-v1 (late interaction, --max-model-len 512) -> the tiny HF_ColBERT
#   of colbert_dir, built here with 512 tokens of context.
# jinaai/jina-reranker-v3 (JinaForRanking, a listwise reranker) has no stand-in: poolkit does not serve
# that model family, so its parametrisation is left out.
# vLLM's expected counts are numbers for its hub tokenizers. Here each is computed from the stand-in's
# tokenizer the way vLLM counts: a text is cut where its Nth token ends (scoring/utils.py
# truncate_text_to_tokens); a cross-encoder counts its pair prompt (a tokenizer pair, or the rendered
# score template); a bi-encoder and late interaction count the query's tokens, one pad token and the
# document's tokens (scoring/io_processor.py).
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import port_utils
import pytest
from fastapi.testclient import TestClient

from poolkit import LLM
from poolkit.entrypoints.server import create_app

long_query = "What is the capital of France?" * 20
long_doc = "The capital of France is Paris. " * 20


def truncate_text_to_tokens(text: str, tokenizer: Any, max_tokens: int) -> str:
    """vLLM's cut: the text up to the character where its ``max_tokens``-th token ends."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if len(encoded["input_ids"]) <= max_tokens:
        return text
    return text[: encoded["offset_mapping"][max_tokens - 1][1]]


def pair_tokens(tokenizer: Any, query: str, doc: str) -> int:
    """Cross-encoder: the tokenizer's (query, document) pair."""
    return len(tokenizer(query, doc)["input_ids"])


def score_template_tokens(tokenizer: Any, query: str, doc: str) -> int:
    """Cross-encoder with a score template: the rendered query/document messages."""
    messages = [{"role": "query", "content": query}, {"role": "document", "content": doc}]
    text = tokenizer.apply_chat_template(messages, chat_template=port_utils.QWEN3_RERANKER_TEMPLATE, tokenize=False)
    return len(tokenizer(text)["input_ids"])


def separate_tokens(tokenizer: Any, query: str, doc: str) -> int:
    """Bi-encoder and late interaction: query tokens, one pad token, document tokens."""
    return len(tokenizer(query)["input_ids"]) + 1 + len(tokenizer(doc)["input_ids"])


@dataclass
class TestConfig:
    __test__ = False

    model: str
    stand_in: str  # the fixture giving the stand-in's directory
    llm_kwargs: dict[str, Any]
    count: Callable[[Any, str, str], int]
    server_kwargs: dict[str, Any] = field(default_factory=dict)


RERANK_CONFIGS = [
    # 1. cross-encoder
    TestConfig(
        model="jinaai/jina-reranker-v2-base-multilingual",
        stand_in="long_bge_reranker_dir",
        llm_kwargs={"enforce_eager": True, "max_model_len": 1024, "trust_remote_code": True},
        count=pair_tokens,
    ),
    # 2. cross-encoder + score template
    TestConfig(
        model="Qwen/Qwen3-Reranker-0.6B",
        stand_in="long_qwen3_lm_dir",
        llm_kwargs={
            "enforce_eager": True,
            "max_model_len": 1024,
            "hf_overrides": {
                "architectures": ["Qwen3ForSequenceClassification"],
                "classifier_from_token": ["no", "yes"],
                "is_original_qwen3_reranker": True,
            },
        },
        count=score_template_tokens,
        server_kwargs={"chat_template": port_utils.QWEN3_RERANKER_TEMPLATE},
    ),
    # 3. bi-encoder
    TestConfig(
        model="intfloat/multilingual-e5-small",
        stand_in="minilm_dir",
        llm_kwargs={"enforce_eager": True, "max_model_len": 512, "trust_remote_code": True},
        count=separate_tokens,
    ),
    # 4. late-interaction
    TestConfig(
        model="answerdotai/answerai-colbert-small-v1",
        stand_in="long_colbert_dir",
        llm_kwargs={"enforce_eager": True, "max_model_len": 512, "trust_remote_code": True},
        count=separate_tokens,
    ),
]


@pytest.fixture(scope="module")
def long_bge_reranker_dir(vllm_models_root):
    return port_utils.build_bge_reranker(vllm_models_root / "bge-reranker-1024", max_len=1024)


@pytest.fixture(scope="module")
def long_qwen3_lm_dir(vllm_models_root):
    return port_utils.build_qwen3_lm(vllm_models_root / "qwen3-lm-1024", max_len=1024)


@pytest.fixture(scope="module")
def long_colbert_dir(vllm_models_root):
    return port_utils.build_colbert(vllm_models_root / "colbert-512", max_len=512)


@pytest.fixture(scope="module", params=RERANK_CONFIGS, ids=lambda c: c.model)
def server(request):
    config: TestConfig = request.param
    llm = LLM(str(request.getfixturevalue(config.stand_in)), **config.llm_kwargs)
    with TestClient(create_app(llm, served_model_name=config.model, **config.server_kwargs)) as remote_server:
        yield config, remote_server, llm.get_tokenizer()


def expected_prompt_tokens(config: TestConfig, tokenizer: Any, max_tokens_per_query: int = 0, max_tokens_per_doc: int = 0) -> int:
    query = truncate_text_to_tokens(long_query, tokenizer, max_tokens_per_query) if max_tokens_per_query else long_query
    doc = truncate_text_to_tokens(long_doc, tokenizer, max_tokens_per_doc) if max_tokens_per_doc else long_doc
    return config.count(tokenizer, query, doc)


def rerank(remote_server, config: TestConfig, **limits: int) -> dict:
    response = remote_server.post("/rerank", json={"model": config.model, "query": long_query, "documents": [long_doc], **limits})
    assert response.status_code == 200, response.text
    rerank = response.json()
    assert rerank["id"] is not None
    assert rerank["results"] is not None
    assert len(rerank["results"]) == 1
    return rerank


def test_without_truncated(server):
    """Test that max_tokens_per_doc truncates documents correctly."""
    config, remote_server, tokenizer = server
    rerank_response = rerank(remote_server, config)
    assert rerank_response["usage"]["prompt_tokens"] == expected_prompt_tokens(config, tokenizer)


def test_max_tokens_per_query(server):
    """Test that max_tokens_per_doc truncates documents correctly."""
    config, remote_server, tokenizer = server
    rerank_response = rerank(remote_server, config, max_tokens_per_query=10)
    assert rerank_response["usage"]["prompt_tokens"] == expected_prompt_tokens(config, tokenizer, max_tokens_per_query=10)


def test_max_tokens_per_doc(server):
    """Test that max_tokens_per_doc truncates documents correctly."""
    config, remote_server, tokenizer = server
    rerank_response = rerank(remote_server, config, max_tokens_per_doc=10)
    assert rerank_response["usage"]["prompt_tokens"] == expected_prompt_tokens(config, tokenizer, max_tokens_per_doc=10)


def test_max_tokens_per_query_and_doc(server):
    """Test that max_tokens_per_doc truncates documents correctly."""
    config, remote_server, tokenizer = server
    rerank_response = rerank(remote_server, config, max_tokens_per_query=10, max_tokens_per_doc=10)
    expected = expected_prompt_tokens(config, tokenizer, max_tokens_per_query=10, max_tokens_per_doc=10)
    assert rerank_response["usage"]["prompt_tokens"] == expected
