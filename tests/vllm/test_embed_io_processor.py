# Port of vllm tests/entrypoints/pooling/embed/test_io_processor.py (the OpenAI embedding request
# classes: TestEmbeddingRequestParsing and TestPreProcessOpenAIEmbeddingChatOnline).
# vLLM parses the bodies with TypeAdapter(EmbeddingRequest) and checks which request class they
# become, then what its renderer is asked; poolkit has no such classes: the same bodies go to
# /v1/embeddings on all-MiniLM-L6-v2 served with a chat template that shows the template variable,
# and each answer is checked against the embedding of the text the template renders. The other
# classes of the file unit-test EmbedIOProcessor's private Cohere helpers (_resolve_cohere_truncation,
# _apply_task_instruction, _load_task_instructions, _check_cohere_max_tokens, _validate_input_type,
# _pre_process_cohere_online); their behaviour is tested through /v2/embed in
# test_embed_cohere_online.py (truncate END/START/NONE, max_tokens, input_type and its errors).
import pytest
from fastapi.testclient import TestClient

from poolkit.entrypoints.server import create_app

MODEL = "test"
TEMPLATE = (
    "{{ instruction | default('') }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %} [gen]{% endif %}"
)
KWARGS = {"instruction": "Represent the query: "}


@pytest.fixture(scope="module")
def client(minilm):
    with TestClient(create_app(minilm, served_model_name=MODEL, chat_template=TEMPLATE)) as c:
        yield c


def _embeddings(client, **body):
    response = client.post("/v1/embeddings", json={"model": MODEL, **body})
    assert response.status_code == 200, response.text
    return [d["embedding"] for d in response.json()["data"]]


def _rendered(client, *texts):
    """Embeddings of the texts the template renders: tokenized without special tokens, as vLLM
    tokenizes a rendered chat."""
    return _embeddings(client, input=list(texts), add_special_tokens=False)


def _close(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x == pytest.approx(y, abs=1e-5)


class TestEmbeddingRequestParsing:
    """Unit tests for OpenAI embedding request parsing."""

    def test_input_messages_parses_as_chat_request(self, client):
        got = _embeddings(client, input=[{"role": "user", "content": "hello"}], chat_template_kwargs=KWARGS)
        _close(got, _rendered(client, "Represent the query: hello"))

    def test_batched_input_messages_parses_as_batch_chat_input_request(self, client):
        got = _embeddings(
            client,
            input=[[{"role": "user", "content": "hello"}], [{"role": "user", "content": "goodbye"}]],
            chat_template_kwargs=KWARGS,
        )
        _close(got, _rendered(client, "Represent the query: hello", "Represent the query: goodbye"))

    def test_token_ids_still_parse_as_completion_request(self, client, minilm):
        got = _embeddings(client, input=[[1, 2, 3], [4, 5]])
        _close(got, [o.outputs.embedding for o in minilm.embed([[1, 2, 3], [4, 5]])])

    def test_messages_still_parses_as_chat_request(self, client):
        got = _embeddings(client, messages=[{"role": "user", "content": "hello"}], chat_template_kwargs=KWARGS)
        _close(got, _rendered(client, "Represent the query: hello"))

    def test_batched_messages_parses_as_batch_chat_request(self, client):
        got = _embeddings(
            client,
            messages=[[{"role": "user", "content": "hello"}], [{"role": "user", "content": "goodbye"}]],
            chat_template_kwargs=KWARGS,
        )
        _close(got, _rendered(client, "Represent the query: hello", "Represent the query: goodbye"))


class TestPreProcessOpenAIEmbeddingChatOnline:
    """Unit tests for OpenAI embedding chat preprocessing."""

    def test_chat_template_kwargs_forwarded_for_batched_input_messages(self, client):
        got = _embeddings(
            client,
            input=[[{"role": "user", "content": "hello"}], [{"role": "user", "content": "goodbye"}]],
            add_generation_prompt=True,
            chat_template_kwargs=KWARGS,
            mm_processor_kwargs={"max_pixels": 1},  # vLLM forwards it to its renderer; poolkit has none
            cache_salt="salt",
        )
        _close(got, _rendered(client, "Represent the query: hello [gen]", "Represent the query: goodbye [gen]"))

    def test_chat_template_kwargs_may_not_set_the_requests_own_arguments(self, client):
        # POOLKIT (beyond vLLM's test): arguments the request sets itself are no template variables.
        response = client.post(
            "/v1/embeddings",
            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "chat_template_kwargs": {"tokenize": True}},
        )
        assert response.status_code == 400
        assert "chat_template_kwargs may not set tokenize" in response.json()["error"]["message"]
        both = client.post("/v1/embeddings", json={"model": MODEL, "input": [{"role": "user", "content": "hi"}], "messages": [{"role": "user", "content": "hi"}]})
        assert both.status_code == 400
