# Port of vllm tests/entrypoints/pooling/test_embed_max_embed_len.py
# vLLM unit-tests EmbeddingCompletionRequest.build_tok_params on a mocked ModelConfig (max_model_len
# 128) and reads the cap it computes (max_input_tokens). poolkit has no such class: the same three
# configurations load all-MiniLM-L6-v2 with max_model_len=128, and the cap is read off /v1/embeddings
# (an input of exactly the cap is answered, one token more is refused) and LLM.embed alike.
import pytest
from fastapi.testclient import TestClient

from poolkit import LLM, PoolerConfig
from poolkit.entrypoints.server import create_app

MODEL = "m"


def _llm(minilm_dir, *, max_model_len=128, max_embed_len=None, enable_chunked_processing=False):
    config = PoolerConfig(max_embed_len=max_embed_len, enable_chunked_processing=enable_chunked_processing)
    return LLM(str(minilm_dir), max_model_len=max_model_len, pooler_config=config)


def _input_of(llm: LLM, n_tokens: int) -> list[int]:
    """A token-id input of ``n_tokens`` tokens, [CLS] ... [SEP] (vLLM's input="hi", grown to the cap)."""
    tok = llm.get_tokenizer()
    return [tok.cls_token_id] + [tok.convert_tokens_to_ids("hi")] * (n_tokens - 2) + [tok.sep_token_id]


def _max_input_tokens(llm: LLM) -> int:
    """The longest input /v1/embeddings answers: the cap vLLM calls max_input_tokens."""
    with TestClient(create_app(llm, served_model_name=MODEL)) as client:
        lengths = [n for n in range(8, llm.model_config.max_model_len + 2, 8)] + [63, 64, 65, 127, 128, 129]
        answered = [
            n for n in sorted(set(lengths))
            if client.post("/v1/embeddings", json={"model": MODEL, "input": _input_of(llm, n)}).status_code == 200
        ]
        refused = client.post("/v1/embeddings", json={"model": MODEL, "input": _input_of(llm, max(answered) + 1)})
        assert refused.status_code == 400, refused.text
    return max(answered)


def test_non_chunked_max_embed_len_caps_input(minilm_dir):
    """The regression: with max_embed_len < max_model_len and chunking off,
    the input cap must still be max_embed_len, not the full context."""
    llm = _llm(minilm_dir, max_model_len=128, max_embed_len=64)
    assert _max_input_tokens(llm) == 64
    with pytest.raises(ValueError, match="maximum context length is 64 tokens"):
        llm.embed([_input_of(llm, 65)])
    (truncated,) = llm.embed([_input_of(llm, 100)], tokenization_kwargs={"truncate_prompt_tokens": -1})
    assert len(truncated.prompt_token_ids) == 64


def test_chunked_max_embed_len_caps_input(minilm_dir):
    llm = _llm(minilm_dir, max_model_len=128, max_embed_len=64, enable_chunked_processing=True)
    assert _max_input_tokens(llm) == 64


def test_no_max_embed_len_falls_back_to_model_len(minilm_dir):
    """Unset max_embed_len must leave the cap at the full context length."""
    llm = _llm(minilm_dir, max_model_len=128)
    assert _max_input_tokens(llm) == 128
