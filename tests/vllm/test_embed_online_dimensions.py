# Port of vllm tests/entrypoints/pooling/embed/test_online_dimensions.py
# intfloat/multilingual-e5-small (not matryoshka) -> all-MiniLM-L6-v2;
# Snowflake/snowflake-arctic-embed-m-v1.5 with --hf_overrides '{"matryoshka_dimensions":[256]}'
# -> all-MiniLM-L6-v2 with the same hf_overrides (matryoshka is declared, as vLLM's test declares it).
from dataclasses import dataclass

import openai
import pytest
from fastapi.testclient import TestClient
from port_utils import openai_client, run_embedding_correctness_test

from poolkit import LLM
from poolkit.entrypoints.server import create_app


@dataclass
class EmbedModelInfo:
    name: str
    is_matryoshka: bool = False
    matryoshka_dimensions: list | None = None


MODELS = [
    EmbedModelInfo("minilm-as-e5-small", is_matryoshka=False),
    EmbedModelInfo("minilm-as-arctic-embed-m-v1.5", is_matryoshka=True, matryoshka_dimensions=[256]),
]

input_texts = ["The chef prepared a delicious meal."]


@pytest.fixture(scope="module", params=MODELS, ids=lambda m: m.name)
def model_info(request):
    return request.param


@pytest.fixture(scope="module")
def server(model_info, minilm_dir):
    kwargs = {}
    if model_info.is_matryoshka:
        # Manually enable Matryoshka Embeddings
        kwargs["hf_overrides"] = {"matryoshka_dimensions": [256]}
    llm = LLM(str(minilm_dir), runner="pooling", enforce_eager=True, max_model_len=512, **kwargs)
    with TestClient(create_app(llm, served_model_name=model_info.name)) as c:
        yield c


@pytest.fixture(scope="module")
def hf_model(minilm_st):
    return minilm_st


def test_matryoshka(model_info: EmbedModelInfo, server, hf_model):
    client = openai_client(server)

    def make_request_and_correctness_test(dimensions):
        prompts = input_texts * 3
        embeddings = client.embeddings.create(model=model_info.name, input=prompts, dimensions=dimensions, encoding_format="float")
        assert embeddings.id is not None
        assert len(embeddings.data) == 3
        assert len(embeddings.data[0].embedding) > 0
        assert embeddings.usage.completion_tokens == 0
        assert embeddings.usage.prompt_tokens > 0
        assert embeddings.usage.total_tokens > 0

        if dimensions is not None:
            assert len(embeddings.data[0].embedding) == dimensions

        vllm_outputs = [d.embedding for d in embeddings.data]
        run_embedding_correctness_test(hf_model, prompts, vllm_outputs, dimensions)

    if model_info.is_matryoshka:
        valid_dimensions = [None]
        if model_info.matryoshka_dimensions is not None:
            valid_dimensions += model_info.matryoshka_dimensions[:2]

        for dimensions in valid_dimensions:
            make_request_and_correctness_test(dimensions)

        invalid_dimensions = [-1]
        if model_info.matryoshka_dimensions is not None:
            assert 5 not in model_info.matryoshka_dimensions
            invalid_dimensions.append(5)

        for dimensions in invalid_dimensions:
            with pytest.raises(openai.BadRequestError):
                make_request_and_correctness_test(dimensions)
    else:
        for dimensions in [None]:
            make_request_and_correctness_test(dimensions)

        for dimensions in [-1, 16]:
            with pytest.raises(openai.BadRequestError):
                make_request_and_correctness_test(dimensions)
