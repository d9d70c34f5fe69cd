# The Python examples of vLLM's pooling documentation, run against poolkit with only the import
# changed (``from vllm import ...`` -> ``from poolkit import ...``) and the model names replaced by
# offline equivalents. Sources (copies in /work/shared/reference/):
#   vllm-pooling-overview.md           "Pooling models" overview page
#   vllm-pooling-models-stable.md      docs/models/pooling_models.md (stable)
#   vllm-pooling-models-2025-09.md     the same page, September 2025
#   vllm-pooling-models-chunked.md     the same page with the "Chunked processing" section
#   vllm-embedding-usages.md           docs/models/pooling_models/embed.md ("Embedding Usages")
# Models: intfloat/e5-small, intfloat/e5-mistral-7b-instruct, intfloat/multilingual-e5-large,
# Snowflake/snowflake-arctic-embed-m-v1.5 -> all-MiniLM-L6-v2; jinaai/jina-embeddings-v3 (a
# matryoshka model, remote code) -> all-MiniLM-L6-v2 with hf_overrides={"is_matryoshka": True};
# jason9693/Qwen2.5-1.5B-apeach, BAAI/bge-reranker-v2-m3, internlm/internlm2-1_8b-reward,
# answerdotai/answerai-colbert-small-v1 -> the conftest stand-ins; Qwen/Qwen2.5-Math-RM-72B -> a tiny
# Qwen2ForRewardModel; peiyi9979/math-shepherd-mistral-7b-prm -> a tiny LlamaForCausalLM.
# ``vllm serve ...`` lines become ``poolkit serve ...`` through typer's CliRunner with the server's
# ``run`` and the model load replaced by recorders (the flags are parsed, nothing is served);
# ``curl`` requests go to the app under FastAPI's TestClient. print() calls are kept.
import json

import pytest
from fastapi.testclient import TestClient
from port_utils import DUMMY_CHAT_TEMPLATE, build_math_prm
from typer.testing import CliRunner

import poolkit.api.llm
import poolkit.entrypoints.server
from poolkit.entrypoints.cli import app as cli_app
from poolkit.entrypoints.server import create_app

MATRYOSHKA = {"is_matryoshka": True}


# -- helpers ---------------------------------------------------------------------------------------


def poolkit_serve(monkeypatch, *argv: str):
    """``poolkit serve ARGV`` with uvicorn and the model load replaced: the parsed EngineArgs and
    the keyword arguments the server would have started with."""
    calls: dict = {}

    def fake_run(loader, **kwargs):
        calls["run"] = kwargs
        loader()

    monkeypatch.setattr(poolkit.entrypoints.server, "run", fake_run)
    monkeypatch.setattr(poolkit.api.llm.LLM, "from_args", classmethod(lambda cls, args: calls.setdefault("args", args)))
    result = CliRunner().invoke(cli_app, ["serve", *argv])
    assert result.exit_code == 0, result.output
    return calls["args"], calls["run"]


@pytest.fixture(scope="module")
def minilm_server(minilm_dir):
    from poolkit import LLM

    llm = LLM(str(minilm_dir), hf_overrides=MATRYOSHKA)
    with TestClient(create_app(llm, served_model_name="minilm")) as c:
        yield c


@pytest.fixture(scope="module")
def reranker_server(bge_reranker):
    with TestClient(create_app(bge_reranker, served_model_name="bge-reranker-v2-m3")) as c:
        yield c


@pytest.fixture(scope="module")
def colbert_server(colbert_dir):
    from poolkit import LLM

    with TestClient(create_app(LLM(str(colbert_dir)), served_model_name="answerai-colbert-small-v1")) as c:
        yield c


@pytest.fixture(scope="module")
def math_rm_dir(vllm_models_root):
    return build_math_prm(vllm_models_root / "math-rm", arch="Qwen2ForRewardModel", labels=1)


# -- vllm-pooling-overview.md ----------------------------------------------------------------------


def test_overview_embedding_models_basic_usage(minilm_dir):
    # vllm-pooling-overview.md, "Embedding models" > "Basic usage"
    from poolkit import LLM

    llm = LLM(model=str(minilm_dir), runner="pooling")
    outputs = llm.embed("Hello, my name is")

    embeds = outputs[0].outputs.embedding
    print(f"Embeddings: {embeds!r} (size={len(embeds)})")
    assert len(embeds) == 384


def test_overview_matryoshka_embeddings(minilm_dir):
    # vllm-pooling-overview.md, "Matryoshka embeddings" (jinaai/jina-embeddings-v3 is matryoshka;
    # all-MiniLM-L6-v2 is declared so with the hf_overrides the section names)
    from poolkit import LLM, PoolingParams

    llm = LLM(
        model=str(minilm_dir),
        runner="pooling",
        trust_remote_code=True,
        hf_overrides=MATRYOSHKA,
    )
    outputs = llm.embed(
        ["Follow the white rabbit."],
        pooling_params=PoolingParams(dimensions=32),
    )
    print(outputs[0].outputs)
    assert len(outputs[0].outputs.embedding) == 32


def test_overview_matryoshka_serve_hf_overrides(monkeypatch, minilm_dir):
    # vllm-pooling-overview.md, "Matryoshka embeddings": vllm serve model-name --hf-overrides '{"is_matryoshka": true}'
    args, _ = poolkit_serve(monkeypatch, str(minilm_dir), "--hf-overrides", '{"is_matryoshka": true}')
    assert args.hf_overrides == {"is_matryoshka": True}


def test_overview_online_serving_embeddings(monkeypatch, minilm_dir, minilm_server):
    # vllm-pooling-overview.md, "Embedding models" > "Online serving": vllm serve intfloat/e5-small + curl /v1/embeddings
    args, run = poolkit_serve(monkeypatch, str(minilm_dir))
    assert args.model == str(minilm_dir)
    response = minilm_server.post("/v1/embeddings", json={"input": "Hello, my name is", "model": "minilm"})
    assert response.status_code == 200, response.text
    assert len(response.json()["data"][0]["embedding"]) == 384


def test_overview_classification_basic_usage(apeach_dir):
    # vllm-pooling-overview.md, "Classification models" > "Basic usage"
    from poolkit import LLM

    llm = LLM(model=str(apeach_dir), runner="pooling")
    outputs = llm.classify("Hello, my name is")

    probs = outputs[0].outputs.probs
    print(f"Class Probabilities: {probs!r} (size={len(probs)})")
    assert len(probs) == 2


def test_overview_cross_encoder_basic_usage(bge_reranker_dir):
    # vllm-pooling-overview.md, "Cross-encoder / Reranker models" > "Basic usage"
    from poolkit import LLM

    llm = LLM(model=str(bge_reranker_dir), runner="pooling")
    outputs = llm.score(
        "What is the capital of France?",
        "The capital of Brazil is Brasilia.",
    )

    score = outputs[0].outputs.score
    print(f"Score: {score}")
    assert 0.0 <= score <= 1.0


def test_overview_cross_encoder_online_serving(monkeypatch, bge_reranker_dir, reranker_server):
    # vllm-pooling-overview.md, "Cross-encoder / Reranker models" > "Online serving": vllm serve + curl /score
    args, _ = poolkit_serve(monkeypatch, str(bge_reranker_dir))
    assert args.model == str(bge_reranker_dir)
    response = reranker_server.post(
        "/score",
        json={
            "model": "bge-reranker-v2-m3",
            "text_1": "What is machine learning?",
            "text_2": ["ML is a subset of AI.", "The weather is sunny."],
        },
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["data"]) == 2


def test_overview_reward_basic_usage(internlm_reward_dir):
    # vllm-pooling-overview.md, "Reward models" > "Basic usage"
    from poolkit import LLM

    llm = LLM(model=str(internlm_reward_dir), runner="pooling", trust_remote_code=True)
    outputs = llm.reward("Hello, my name is")

    data = outputs[0].outputs.data
    print(f"Data: {data!r}")
    assert data.shape[-1] == 1


def test_overview_reward_process_supervised_pooler_config(vllm_models_root):
    # vllm-pooling-overview.md, "Reward models": a process-supervised reward model with an explicit
    # STEP pooler config. peiyi9979/math-shepherd-mistral-7b-prm -> a tiny LlamaForCausalLM; the ids
    # 123 / 456 / 789 are outside its ~100-token vocabulary, so in-vocabulary ids stand in for them.
    from tiny_models import build_transformers_model
    from transformers import AutoTokenizer

    from poolkit import LLM

    path = build_transformers_model(vllm_models_root / "math-shepherd", "LlamaForCausalLM")
    tok = AutoTokenizer.from_pretrained(str(path))
    step, plus, minus = tok.convert_tokens_to_ids(["?", "yes" if "yes" in tok.get_vocab() else "is", "the"])
    llm = LLM(
        model=str(path),
        pooler_config=json.dumps({"pooling_type": "STEP", "step_tag_id": step, "returned_token_ids": [plus, minus]}),
    )
    (output,) = llm.reward("what is the capital of germany ? berlin is the capital of germany ?")
    assert output.outputs.data.shape == (2, 2)


def test_overview_colbert_serve(monkeypatch, colbert_dir, vllm_models_root, colbert_server):
    # vllm-pooling-overview.md, "ColBERT late interaction models" > "Usage": vllm serve
    # answerdotai/answerai-colbert-small-v1; vllm serve lightonai/GTE-ModernColBERT-v1 --hf-overrides
    # '{"architectures": ["ColBERTModernBertModel"]}'; curl /rerank.
    from tiny_models import build_modernbert

    args, _ = poolkit_serve(monkeypatch, str(colbert_dir))
    assert args.model == str(colbert_dir)
    modern = build_modernbert(vllm_models_root / "gte-moderncolbert", "embed")
    args, _ = poolkit_serve(monkeypatch, str(modern), "--hf-overrides", '{"architectures": ["ColBERTModernBertModel"]}')
    assert args.hf_overrides == {"architectures": ["ColBERTModernBertModel"]}
    response = colbert_server.post(
        "/rerank",
        json={
            "model": "answerai-colbert-small-v1",
            "query": "What is machine learning?",
            "documents": ["Machine learning is a subset of AI.", "Python is a programming language."],
        },
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["results"]) == 2


# -- vllm-pooling-models-stable.md -----------------------------------------------------------------


def test_stable_llm_embed(minilm_dir):
    # vllm-pooling-models-stable.md, "Offline Inference" > "LLM.embed"
    from poolkit import LLM

    llm = LLM(model=str(minilm_dir), runner="pooling")
    (output,) = llm.embed("Hello, my name is")

    embeds = output.outputs.embedding
    print(f"Embeddings: {embeds!r} (size={len(embeds)})")
    assert len(embeds) == 384


def test_stable_llm_classify(apeach_dir):
    # vllm-pooling-models-stable.md, "Offline Inference" > "LLM.classify"
    from poolkit import LLM

    llm = LLM(model=str(apeach_dir), runner="pooling")
    (output,) = llm.classify("Hello, my name is")

    probs = output.outputs.probs
    print(f"Class Probabilities: {probs!r} (size={len(probs)})")
    assert len(probs) == 2


def test_stable_llm_score(bge_reranker_dir):
    # vllm-pooling-models-stable.md, "Offline Inference" > "LLM.score"
    from poolkit import LLM

    llm = LLM(model=str(bge_reranker_dir), runner="pooling")
    (output,) = llm.score(
        "What is the capital of France?",
        "The capital of Brazil is Brasilia.",
    )

    score = output.outputs.score
    print(f"Score: {score}")


def test_stable_llm_reward(internlm_reward_dir):
    # vllm-pooling-models-stable.md, "Offline Inference" > "LLM.reward"
    from poolkit import LLM

    llm = LLM(model=str(internlm_reward_dir), runner="pooling", trust_remote_code=True)
    (output,) = llm.reward("Hello, my name is")

    data = output.outputs.data
    print(f"Data: {data!r}")


def test_stable_llm_encode(minilm_dir):
    # vllm-pooling-models-stable.md, "Offline Inference" > "LLM.encode"
    from poolkit import LLM

    llm = LLM(model=str(minilm_dir), runner="pooling")
    (output,) = llm.encode("Hello, my name is", pooling_task="embed")

    data = output.outputs.data
    print(f"Data: {data!r}")
    assert data.shape == (384,)


def test_stable_online_serving_pooling_api(monkeypatch, minilm_dir, minilm_server):
    # vllm-pooling-models-stable.md, "Online Serving": the requests example posting to /pooling
    # (the page's scrape lost the dict; vLLM's example sends {"model": model_name, "input": prompts}).
    poolkit_serve(monkeypatch, str(minilm_dir))
    model_name = "minilm"
    api_url = "/pooling"

    prompts = [
        "Hello, my name is",
        "The president of the United States is",
        "The capital of France is",
        "The future of AI is",
    ]
    prompt = {"model": model_name, "input": prompts}

    response = minilm_server.post(api_url, json=prompt)

    for output in response.json()["data"]:
        data = output["data"]
        print(f"Data: {data!r} (size={len(data)})")
    assert len(response.json()["data"]) == 4


@pytest.mark.skip(reason="the saved page lost this command's JSON argument (--hf-overrides ''); the full command, "
                  "'{\"matryoshka_dimensions\":[256]}', is run from vllm-pooling-models-2025-09.md (test_2025_09_matryoshka_serve)")
def test_stable_matryoshka_serve(monkeypatch, minilm_dir):
    # vllm-pooling-models-stable.md, "Manually enable Matryoshka Embeddings": vllm serve
    # Snowflake/snowflake-arctic-embed-m-v1.5 --hf-overrides '' (as the page shows it; the JSON
    # '{"matryoshka_dimensions":[256]}' was lost when the page was saved)
    poolkit_serve(monkeypatch, str(minilm_dir), "--hf-overrides", "")


def test_stable_matryoshka_offline(minilm_dir):
    # vllm-pooling-models-stable.md, "Matryoshka Embeddings" > "Offline Inference"
    from poolkit import LLM, PoolingParams

    llm = LLM(
        model=str(minilm_dir),
        runner="pooling",
        trust_remote_code=True,
        hf_overrides=MATRYOSHKA,
    )
    outputs = llm.embed(
        ["Follow the white rabbit."],
        pooling_params=PoolingParams(dimensions=32),
    )
    print(outputs[0].outputs)
    assert len(outputs[0].outputs.embedding) == 32


def test_stable_matryoshka_online(monkeypatch, minilm_dir, minilm_server):
    # vllm-pooling-models-stable.md, "Matryoshka Embeddings" > "Online Inference": vllm serve
    # jinaai/jina-embeddings-v3 --trust-remote-code, then curl /v1/embeddings with dimensions 32
    # (the page's scrape lost the body; the 2025-09 page has it).
    args, _ = poolkit_serve(monkeypatch, str(minilm_dir), "--trust-remote-code")
    assert args.trust_remote_code is True
    response = minilm_server.post(
        "/v1/embeddings",
        json={"input": "Follow the white rabbit.", "model": "minilm", "encoding_format": "float", "dimensions": 32},
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["data"][0]["embedding"]) == 32


# -- vllm-pooling-models-2025-09.md ----------------------------------------------------------------


def test_2025_09_llm_embed(minilm_dir):
    # vllm-pooling-models-2025-09.md, "Offline Inference" > "LLM.embed"
    from poolkit import LLM

    llm = LLM(model=str(minilm_dir), runner="pooling")
    (output,) = llm.embed("Hello, my name is")

    embeds = output.outputs.embedding
    print(f"Embeddings: {embeds!r} (size={len(embeds)})")


def test_2025_09_llm_classify(apeach_dir):
    # vllm-pooling-models-2025-09.md, "Offline Inference" > "LLM.classify"
    from poolkit import LLM

    llm = LLM(model=str(apeach_dir), runner="pooling")
    (output,) = llm.classify("Hello, my name is")

    probs = output.outputs.probs
    print(f"Class Probabilities: {probs!r} (size={len(probs)})")


def test_2025_09_llm_score(bge_reranker_dir):
    # vllm-pooling-models-2025-09.md, "Offline Inference" > "LLM.score"
    from poolkit import LLM

    llm = LLM(model=str(bge_reranker_dir), runner="pooling")
    (output,) = llm.score("What is the capital of France?",
                          "The capital of Brazil is Brasilia.")

    score = output.outputs.score
    print(f"Score: {score}")


def test_2025_09_llm_reward(internlm_reward_dir):
    # vllm-pooling-models-2025-09.md, "Offline Inference" > "LLM.reward"
    from poolkit import LLM

    llm = LLM(model=str(internlm_reward_dir), runner="pooling", trust_remote_code=True)
    (output,) = llm.reward("Hello, my name is")

    data = output.outputs.data
    print(f"Data: {data!r}")


def test_2025_09_llm_encode(minilm_dir):
    # vllm-pooling-models-2025-09.md, "Offline Inference" > "LLM.encode"
    from poolkit import LLM

    llm = LLM(model=str(minilm_dir), runner="pooling")
    (output,) = llm.encode("Hello, my name is", pooling_task="embed")

    data = output.outputs.data
    print(f"Data: {data!r}")


def test_2025_09_matryoshka_serve(monkeypatch, minilm_dir):
    # vllm-pooling-models-2025-09.md, "Manually enable Matryoshka Embeddings":
    # vllm serve Snowflake/snowflake-arctic-embed-m-v1.5 --hf-overrides '{"matryoshka_dimensions":[256]}'
    args, _ = poolkit_serve(monkeypatch, str(minilm_dir), "--hf-overrides", '{"matryoshka_dimensions":[256]}')
    assert args.hf_overrides == {"matryoshka_dimensions": [256]}


def test_2025_09_matryoshka_offline(minilm_dir):
    # vllm-pooling-models-2025-09.md, "Matryoshka Embeddings" > "Offline Inference"
    from poolkit import LLM, PoolingParams

    llm = LLM(model=str(minilm_dir),
              runner="pooling",
              trust_remote_code=True,
              hf_overrides=MATRYOSHKA)
    outputs = llm.embed(["Follow the white rabbit."],
                        pooling_params=PoolingParams(dimensions=32))
    print(outputs[0].outputs)


def test_2025_09_matryoshka_online(monkeypatch, minilm_dir, minilm_server):
    # vllm-pooling-models-2025-09.md, "Matryoshka Embeddings" > "Online Inference": vllm serve
    # jinaai/jina-embeddings-v3 --trust-remote-code; curl with dimensions 32; the expected output's
    # shape (32 floats, usage with completion_tokens 0 and prompt_tokens_details null).
    poolkit_serve(monkeypatch, str(minilm_dir), "--trust-remote-code")
    response = minilm_server.post(
        "/v1/embeddings",
        headers={"accept": "application/json"},
        json={"input": "Follow the white rabbit.", "model": "minilm", "encoding_format": "float", "dimensions": 32},
    )
    body = response.json()
    assert body["object"] == "list" and body["id"].startswith("embd-")
    assert len(body["data"][0]["embedding"]) == 32
    assert body["usage"]["completion_tokens"] == 0 and body["usage"]["prompt_tokens_details"] is None


# -- vllm-embedding-usages.md ----------------------------------------------------------------------


def test_embedding_usages_llm_embed(minilm_dir):
    # vllm-embedding-usages.md, "Offline Inference" > "LLM.embed"
    from poolkit import LLM

    llm = LLM(model=str(minilm_dir), runner="pooling")
    (output,) = llm.embed("Hello, my name is")

    embeds = output.outputs.embedding
    print(f"Embeddings: {embeds!r} (size={len(embeds)})")


def test_embedding_usages_llm_encode(minilm_dir):
    # vllm-embedding-usages.md, "Offline Inference" > "LLM.encode"
    from poolkit import LLM

    llm = LLM(model=str(minilm_dir), runner="pooling")
    (output,) = llm.encode("Hello, my name is", pooling_task="embed")

    data = output.outputs.data
    print(f"Data: {data!r}")


def test_embedding_usages_llm_score(minilm_dir):
    # vllm-embedding-usages.md, "Offline Inference" > "LLM.score" (an embedding model: cosine)
    from poolkit import LLM

    llm = LLM(model=str(minilm_dir), runner="pooling")
    (output,) = llm.score(
        "What is the capital of France?",
        "The capital of Brazil is Brasilia.",
    )

    score = output.outputs.score
    print(f"Score: {score}")
    assert -1.0 <= score <= 1.0


def test_embedding_usages_chat_embeddings(minilm_dir):
    # vllm-embedding-usages.md, "Examples": create_chat_embeddings with the OpenAI client ("If the
    # model has a chat template": all-MiniLM-L6-v2 is served with vLLM's dummy template).
    from typing import Literal, Union

    from openai import OpenAI
    from openai._types import NOT_GIVEN, NotGiven
    from openai.types.chat import ChatCompletionMessageParam
    from openai.types.create_embedding_response import CreateEmbeddingResponse

    from poolkit import LLM

    def create_chat_embeddings(
        client: OpenAI,
        *,
        messages: list[ChatCompletionMessageParam],
        model: str,
        encoding_format: Union[Literal["base64", "float"], NotGiven] = NOT_GIVEN,
    ) -> CreateEmbeddingResponse:
        return client.post(
            "/embeddings",
            cast_to=CreateEmbeddingResponse,
            body={"messages": messages, "model": model, "encoding_format": encoding_format},
        )

    app = create_app(LLM(str(minilm_dir)), served_model_name="minilm", chat_template=DUMMY_CHAT_TEMPLATE)
    with TestClient(app) as http:
        client = OpenAI(base_url="http://testserver/v1", api_key="EMPTY", http_client=http)
        response = create_chat_embeddings(
            client,
            model="minilm",
            # the page's message holds an image part and a text part for VLM2Vec; a text model takes text
            messages=[{"role": "user", "content": "Represent the given text."}],
            encoding_format="float",
        )
        print("Text embedding output:", response.data[0].embedding)
        assert len(response.data[0].embedding) == 384


@pytest.mark.skip(reason="TIGER-Lab/VLM2Vec-Full and MrLight/dse-qwen2-2b-mrl-v1 (vision-language embedding "
                  "models, remote code, with their chat templates and a remote image URL) have no offline equivalent")
def test_embedding_usages_multimodal_inputs():
    # vllm-embedding-usages.md, "Multi-modal inputs": vllm serve TIGER-Lab/VLM2Vec-Full / MrLight/dse-qwen2-2b-mrl-v1
    pass


def test_embedding_usages_cohere_text_embedding(minilm_server):
    # vllm-embedding-usages.md, "Cohere Embed API" > "Text embedding" and "Embedding types"
    # (Snowflake/snowflake-arctic-embed-m-v1.5 with input_type "query", a prompt all-MiniLM-L6-v2
    # does not define: the page says such an input_type is rejected)
    response = minilm_server.post(
        "/v2/embed",
        json={"model": "minilm", "input_type": "query", "texts": ["Hello world", "How are you?"], "embedding_types": ["float"]},
    )
    assert response.status_code == 400
    response = minilm_server.post(
        "/v2/embed", json={"model": "minilm", "texts": ["What is machine learning?"], "embedding_types": ["float", "binary"]}
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["embeddings"]["binary"][0]) == 384 // 8


def test_embedding_usages_cohere_mixed_inputs(vllm_models_root):
    # vllm-embedding-usages.md, "Cohere Embed API" > "Mixed text and image inputs"
    # (google/siglip-so400m-patch14-384 -> a tiny CLIP; one input holding a text part and an image part).
    # DEPARTURE: the page shows this request answered; vLLM's own SigLIP and CLIP refuse a prompt
    # holding text and an image ("... accepts text-only or image-only inputs, not both!"). poolkit
    # refuses it with a 400 that says so; the page's other shapes (a text, an image) are answered.
    import base64
    import io

    from PIL import Image
    from tiny_models import build_clip

    from poolkit import LLM

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, format="PNG")
    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    llm = LLM(str(build_clip(vllm_models_root / "clip-docs")))
    with TestClient(create_app(llm, served_model_name="siglip")) as c:
        response = c.post(
            "/v2/embed",
            json={
                "model": "siglip",
                "inputs": [{"content": [{"type": "text", "text": "A photo of a cat"}, {"type": "image_url", "image_url": {"url": uri}}]}],
                "embedding_types": ["float"],
            },
        )
        assert response.status_code == 400
        assert "text-only or image-only inputs, not both" in response.json()["error"]["message"]
        for part in ({"type": "text", "text": "A photo of a cat"}, {"type": "image_url", "image_url": {"url": uri}}):
            response = c.post("/v2/embed", json={"model": "siglip", "inputs": [{"content": [part]}], "embedding_types": ["float"]})
            assert response.status_code == 200, response.text


def test_embedding_usages_matryoshka_offline(minilm_dir):
    # vllm-embedding-usages.md, "Matryoshka Embeddings" > "Offline Inference"
    from poolkit import LLM, PoolingParams

    llm = LLM(
        model=str(minilm_dir),
        runner="pooling",
        trust_remote_code=True,
        hf_overrides=MATRYOSHKA,
    )
    outputs = llm.embed(
        ["Follow the white rabbit."],
        pooling_params=PoolingParams(dimensions=32),
    )
    print(outputs[0].outputs)


# -- vllm-pooling-models-chunked.md ----------------------------------------------------------------

CHUNKED = '{"pooling_type": "MEAN", "normalize": true, "enable_chunked_processing": true, "max_embed_len": 3072000}'


def test_chunked_configuration_serve(monkeypatch, minilm_dir):
    # vllm-pooling-models-chunked.md, "Configuration": vllm serve intfloat/multilingual-e5-large
    # --task embed --override-pooler-config '{...}' --trust-remote-code
    args, _ = poolkit_serve(monkeypatch, str(minilm_dir), "--task", "embed", "--override-pooler-config", CHUNKED, "--trust-remote-code")
    assert args.pooler_config.enable_chunked_processing is True
    assert args.pooler_config.max_embed_len == 3072000


def test_chunked_example_usage_basic_configuration(minilm_dir):
    # vllm-pooling-models-chunked.md, "Example Usage" > "Basic Configuration": the OpenAI client
    # against a server started as in "Configuration" (here the app under TestClient).
    from openai import OpenAI

    from poolkit import LLM

    llm = LLM(str(minilm_dir), pooler_config=CHUNKED)
    with TestClient(create_app(llm, served_model_name="multilingual-e5-large")) as http:
        client = OpenAI(api_key="your-api-key", base_url="http://testserver/v1", http_client=http)

        # This will automatically use chunked processing for very long text
        # max_embed_len=3072000 allows inputs up to 3M+ tokens
        response = client.embeddings.create(
            input="Very long text that exceeds the model's position embeddings..." * 5000,
            model="multilingual-e5-large",
        )

        print(f"Embedding dimension: {len(response.data[0].embedding)}")
        assert len(response.data[0].embedding) == 384


def test_chunked_alternative_model_configurations(monkeypatch, minilm_dir):
    # vllm-pooling-models-chunked.md, "Alternative Model Configurations": jina-embeddings-v3,
    # jina-embeddings-v4-vllm-retrieval, Qwen3-Embedding-4B, each with --task embed
    # --override-pooler-config '{...}' --trust-remote-code
    for max_embed_len in (1048576, 2097152, 1572864):
        config = json.dumps({"pooling_type": "MEAN", "normalize": True, "enable_chunked_processing": True, "max_embed_len": max_embed_len})
        args, _ = poolkit_serve(monkeypatch, str(minilm_dir), "--task", "embed", "--override-pooler-config", config, "--trust-remote-code")
        assert args.pooler_config.max_embed_len == max_embed_len


def test_chunked_llm_encode(math_rm_dir):
    # vllm-pooling-models-chunked.md, "Offline Inference" > "LLM.encode"
    # (Qwen/Qwen2.5-Math-RM-72B with task="reward" -> a tiny Qwen2ForRewardModel)
    from poolkit import LLM

    llm = LLM(model=str(math_rm_dir), task="reward")
    (output,) = llm.encode("Hello, my name is")

    data = output.outputs.data
    print(f"Data: {data!r}")


def test_chunked_llm_embed(minilm_dir):
    # vllm-pooling-models-chunked.md, "Offline Inference" > "LLM.embed" (intfloat/e5-mistral-7b-instruct)
    from poolkit import LLM

    llm = LLM(model=str(minilm_dir), task="embed")
    (output,) = llm.embed("Hello, my name is")

    embeds = output.outputs.embedding
    print(f"Embeddings: {embeds!r} (size={len(embeds)})")


def test_chunked_llm_classify(apeach_dir):
    # vllm-pooling-models-chunked.md, "Offline Inference" > "LLM.classify"
    from poolkit import LLM

    llm = LLM(model=str(apeach_dir), task="classify")
    (output,) = llm.classify("Hello, my name is")

    probs = output.outputs.probs
    print(f"Class Probabilities: {probs!r} (size={len(probs)})")


def test_chunked_llm_score(bge_reranker_dir):
    # vllm-pooling-models-chunked.md, "Offline Inference" > "LLM.score"
    from poolkit import LLM

    llm = LLM(model=str(bge_reranker_dir), task="score")
    (output,) = llm.score("What is the capital of France?",
                          "The capital of Brazil is Brasilia.")

    score = output.outputs.score
    print(f"Score: {score}")


def test_chunked_matryoshka_serve(monkeypatch, minilm_dir):
    # vllm-pooling-models-chunked.md, "Manually enable Matryoshka Embeddings":
    # vllm serve Snowflake/snowflake-arctic-embed-m-v1.5 --hf_overrides '{"matryoshka_dimensions":[256]}'
    args, _ = poolkit_serve(monkeypatch, str(minilm_dir), "--hf_overrides", '{"matryoshka_dimensions":[256]}')
    assert args.hf_overrides == {"matryoshka_dimensions": [256]}


def test_chunked_matryoshka_offline(minilm_dir):
    # vllm-pooling-models-chunked.md, "Matryoshka Embeddings" > "Offline Inference"
    from poolkit import LLM, PoolingParams

    model = LLM(model=str(minilm_dir),
                task="embed",
                trust_remote_code=True,
                hf_overrides=MATRYOSHKA)
    outputs = model.embed(["Follow the white rabbit."],
                          pooling_params=PoolingParams(dimensions=32))
    print(outputs[0].outputs)


def test_chunked_matryoshka_online(monkeypatch, minilm_dir, minilm_server):
    # vllm-pooling-models-chunked.md, "Matryoshka Embeddings" > "Online Inference"
    poolkit_serve(monkeypatch, str(minilm_dir), "--trust-remote-code")
    response = minilm_server.post(
        "/v1/embeddings",
        json={"input": "Follow the white rabbit.", "model": "minilm", "encoding_format": "float", "dimensions": 32},
    )
    assert len(response.json()["data"][0]["embedding"]) == 32
