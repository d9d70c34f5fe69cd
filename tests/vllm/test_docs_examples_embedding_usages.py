"""The Python examples of vLLM's "Embedding Usages" page (vllm-embedding-usages.md), run against
poolkit the way test_docs_examples.py runs the pooling-model pages' (its header has the rules)."""
# Models: the text models -> all-MiniLM-L6-v2; TIGER-Lab/VLM2Vec-Full -> the tiny Phi3VForCausalLM of
# tests/support/tiny_phi3v.py; MrLight/dse-qwen2-2b-mrl-v1 -> the tiny Qwen2VLForConditionalGeneration
# of tests/support/tiny_models.py.

import base64
import io
from typing import Literal, Union

import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient
from openai import OpenAI
from openai._types import NOT_GIVEN, NotGiven
from openai.types.chat import ChatCompletionMessageParam
from openai.types.create_embedding_response import CreateEmbeddingResponse
from port_utils import ATOL, DUMMY_CHAT_TEMPLATE, HIDDEN, MATRYOSHKA, VLM2VEC_CHAT_TEMPLATE, assert_embedding_close, poolkit_serve, st_embedding

from poolkit.entrypoints.server import create_app


# -- vllm-embedding-usages.md ----------------------------------------------------------------------


def test_embedding_usages_llm_embed(minilm_dir, minilm_st):
    # vllm-embedding-usages.md, "Offline Inference" > "LLM.embed"
    from poolkit import LLM

    llm = LLM(model=str(minilm_dir), runner="pooling")
    (output,) = llm.embed("Hello, my name is")

    embeds = output.outputs.embedding
    print(f"Embeddings: {embeds!r} (size={len(embeds)})")
    assert len(embeds) == HIDDEN
    assert_embedding_close(embeds, st_embedding(minilm_st, "Hello, my name is"))


def test_embedding_usages_llm_encode(minilm_dir, minilm_st):
    # vllm-embedding-usages.md, "Offline Inference" > "LLM.encode"
    from poolkit import LLM

    llm = LLM(model=str(minilm_dir), runner="pooling")
    (output,) = llm.encode("Hello, my name is", pooling_task="embed")

    data = output.outputs.data
    print(f"Data: {data!r}")
    assert data.shape == (HIDDEN,)
    assert_embedding_close(data, st_embedding(minilm_st, "Hello, my name is"))


def test_embedding_usages_llm_score(minilm_dir, minilm_st):
    # vllm-embedding-usages.md, "Offline Inference" > "LLM.score" (an embedding model: the cosine of
    # the two texts' embeddings)
    from poolkit import LLM

    llm = LLM(model=str(minilm_dir), runner="pooling")
    (output,) = llm.score(
        "What is the capital of France?",
        "The capital of Brazil is Brasilia.",
    )

    score = output.outputs.score
    print(f"Score: {score}")
    assert -1.0 <= score <= 1.0
    want = F.cosine_similarity(
        st_embedding(minilm_st, "What is the capital of France?"), st_embedding(minilm_st, "The capital of Brazil is Brasilia."), dim=0
    )
    assert score == pytest.approx(float(want), abs=ATOL)


def create_chat_embeddings(
    client: OpenAI,
    *,
    messages: list[ChatCompletionMessageParam],
    model: str,
    encoding_format: Union[Literal["base64", "float"], NotGiven] = NOT_GIVEN,
) -> CreateEmbeddingResponse:
    # vllm-embedding-usages.md, "Examples": the page's helper posting chat messages to /v1/embeddings
    return client.post(
        "/embeddings",
        cast_to=CreateEmbeddingResponse,
        body={"messages": messages, "model": model, "encoding_format": encoding_format},
    )


def test_embedding_usages_chat_embeddings(minilm_dir):
    # vllm-embedding-usages.md, "Examples": create_chat_embeddings with the OpenAI client ("If the
    # model has a chat template": all-MiniLM-L6-v2 is served with vLLM's dummy template).
    from poolkit import LLM

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
        assert len(response.data) == 1 and len(response.data[0].embedding) == HIDDEN
    # The reference: the rendered chat tokenized without special tokens (vLLM's default for chat
    # requests), all-MiniLM-L6-v2's mean pooling and normalisation, with transformers.
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Represent the given text."}], chat_template=DUMMY_CHAT_TEMPLATE, tokenize=False
    )
    assert text == "user: Represent the given text.\n"
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.inference_mode():
        hidden = AutoModel.from_pretrained(str(minilm_dir)).eval()(input_ids=ids).last_hidden_state[0]
    assert response.usage.prompt_tokens == ids.shape[1]
    assert_embedding_close(response.data[0].embedding, F.normalize(hidden.mean(0), dim=-1))


# vLLM's examples/pooling/embed/template/dse_qwen2_vl.jinja
DSE_QWEN2_VL_TEMPLATE = (
    "{{ bos_token -}}\n"
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}{% raw %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endraw %}{% endif %}<|im_start|>{{ message['role'] }}{% raw %}\n{% endraw %}{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>{% raw %}\n{% endraw %}{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}"
    "<|im_end|>{% raw %}\n{% endraw %}{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant{% raw %}\n"
    "{% endraw %}{% endif %}<|endoftext|>"
)


def image_data_uri(image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


def image_of(uri: str):
    """The image a data URI holds, decoded from the same bytes the server decodes."""
    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


def rendered_chat(tokenizer, template: str, messages: list) -> str:
    """What ``template`` renders of ``messages`` (image parts as the template's ``image`` parts),
    with transformers' ``apply_chat_template`` and no generation prompt, as vLLM's embedding
    requests render it."""
    parts = [{**m, "content": [{"type": "image"} if p["type"] == "image_url" else p for p in m["content"]]} for m in messages]
    return tokenizer.apply_chat_template(parts, chat_template=template, tokenize=False, add_generation_prompt=False)


def served_with_chat_template(monkeypatch, path, template: str, model_dir, max_model_len: int):
    """The page's ``vllm serve MODEL --runner pooling --trust-remote-code --max-model-len N
    --chat-template PATH`` as ``poolkit serve`` parses it (the template file written first, its
    settings asserted), and the model loaded with those settings: ``(llm, the serve call's run)``."""
    from poolkit import LLM

    path.write_text(template)
    args, run = poolkit_serve(
        monkeypatch, str(model_dir), "--runner", "pooling", "--trust-remote-code", "--max-model-len", str(max_model_len),
        "--chat-template", str(path),
    )
    assert args.runner == "pooling" and args.max_model_len == max_model_len and run["chat_template"] == template
    return LLM(str(model_dir), runner="pooling", trust_remote_code=True, max_model_len=max_model_len), run


def test_embedding_usages_multimodal_inputs_vlm2vec(monkeypatch, tmp_path, vllm_models_root):
    # vllm-embedding-usages.md, "Multi-modal inputs": vllm serve TIGER-Lab/VLM2Vec-Full --runner
    # pooling --trust-remote-code --max-model-len 4096 --chat-template .../vlm2vec_phi3v.jinja, then
    # create_chat_embeddings with an image part and a text part. TIGER-Lab/VLM2Vec-Full -> the tiny
    # VLM2Vec of tests/support/tiny_phi3v.py (Phi3VForCausalLM, served natively; 1024 positions, so
    # --max-model-len 1024). The reference is tests/models/test_phi3v.py's, built from transformers' classes
    # on the same checkpoint: the last token's hidden state, L2-normalised.
    # DEPARTURE: the page's image is a remote URL, which poolkit refuses unless --allowed-media-domains
    # names its host (test_embed_online_vision.py::test_chat_image_url_request); a made JPEG goes as a
    # data URI instead.
    from test_phi3v import Reference
    from tiny_models import picture
    from tiny_phi3v import HIDDEN as VLM2VEC_HIDDEN
    from tiny_phi3v import build_phi3v


    model_dir = build_phi3v(vllm_models_root / "vlm2vec-full-docs")
    llm, run = served_with_chat_template(monkeypatch, tmp_path / "vlm2vec_phi3v.jinja", VLM2VEC_CHAT_TEMPLATE, model_dir, 1024)

    image_url = image_data_uri(picture(48, 64, 0), "JPEG")  # 2560px-Gfp-wisconsin-madison-the-nature-boardwalk.jpg
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": image_url}},
                {"type": "text", "text": "Represent the given image."},
            ],
        }
    ]
    with TestClient(create_app(llm, served_model_name="TIGER-Lab/VLM2Vec-Full", chat_template=run["chat_template"])) as http:
        client = OpenAI(base_url="http://testserver/v1", api_key="EMPTY", http_client=http)
        response = create_chat_embeddings(
            client,
            model="TIGER-Lab/VLM2Vec-Full",
            messages=messages,
            encoding_format="float",
        )
        print("Image embedding output:", response.data[0].embedding)

    ref = Reference(model_dir, num_crops=4)  # VLM2Vec-Full's num_crops, as the tiny checkpoint's
    text = rendered_chat(ref.tok, VLM2VEC_CHAT_TEMPLATE, messages)
    assert text == "<|image_1|> Represent the given image."
    image = image_of(image_url)
    assert len(response.data) == 1 and len(response.data[0].embedding) == VLM2VEC_HIDDEN
    assert response.usage.prompt_tokens == len(ref.input_ids(text, [ref.pixels(image)[1]]))
    assert_embedding_close(response.data[0].embedding, ref.embed(text, [image]))


def test_embedding_usages_multimodal_inputs_dse_qwen2(monkeypatch, tmp_path, vllm_models_root):
    # vllm-embedding-usages.md, "Multi-modal inputs": vllm serve MrLight/dse-qwen2-2b-mrl-v1 --runner
    # pooling --trust-remote-code --max-model-len 8192 --chat-template .../dse_qwen2_vl.jinja (the
    # template ends every prompt with the EOS token the model pools), and the page's "full code
    # example" (vLLM's examples/pooling/embed/vision_embedding_online.py, run_dse_qwen2_vl): an image
    # with a question, then a text query with "a placeholder image of the minimum image size" (a
    # black 56x56 PNG). MrLight/dse-qwen2-2b-mrl-v1 -> tiny_models.build_qwen2_vl (a
    # Qwen2VLForConditionalGeneration; 512 positions, so --max-model-len 512). The reference is
    # tests/models/test_qwen_vl.py's: transformers' own model and image processor, the last token's hidden
    # state, L2-normalised.
    # DEPARTURE: the example's remote image URL is replaced by a made JPEG as a data URI (as in
    # test_embedding_usages_multimodal_inputs_vlm2vec).
    import transformers as T
    from PIL import Image
    from test_qwen_vl import reference
    from tiny_models import build_qwen2_vl, picture


    model_dir = build_qwen2_vl(vllm_models_root / "dse-qwen2-docs")
    llm, run = served_with_chat_template(monkeypatch, tmp_path / "dse_qwen2_vl.jinja", DSE_QWEN2_VL_TEMPLATE, model_dir, 512)

    image_url = image_data_uri(picture(40, 56, 1), "JPEG")  # Qwen-VL/assets/demo.jpeg
    placeholder = image_data_uri(Image.new("RGB", (56, 56)))  # the example's minimum-size placeholder
    requests = [
        [{"type": "image_url", "image_url": {"url": image_url}}, {"type": "text", "text": "What is shown in this image?"}],
        [{"type": "image_url", "image_url": {"url": placeholder}}, {"type": "text", "text": "Query: What is the weather like today?"}],
    ]
    with TestClient(create_app(llm, served_model_name="MrLight/dse-qwen2-2b-mrl-v1", chat_template=run["chat_template"])) as http:
        client = OpenAI(base_url="http://testserver/v1", api_key="EMPTY", http_client=http)
        responses = []
        for content in requests:
            response = create_chat_embeddings(
                client,
                model="MrLight/dse-qwen2-2b-mrl-v1",
                messages=[{"role": "user", "content": content}],
                encoding_format="float",
            )
            print("Image embedding output:", response.data[0].embedding)
            responses.append(response)

    hf = (
        T.Qwen2VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval(),
        T.AutoTokenizer.from_pretrained(model_dir),
        T.AutoImageProcessor.from_pretrained(model_dir, backend="pil"),
    )
    for content, response in zip(requests, responses):
        text = rendered_chat(hf[1], DSE_QWEN2_VL_TEMPLATE, [{"role": "user", "content": content}])
        assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_end|>\n<|endoftext|>")
        assert len(response.data) == 1 and len(response.data[0].embedding) == hf[0].config.text_config.hidden_size
        assert_embedding_close(response.data[0].embedding, reference(hf, text, [image_of(content[0]["image_url"]["url"])]))


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


def test_embedding_usages_matryoshka_offline(minilm_dir, minilm_st):
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
    assert len(outputs) == 1 and len(outputs[0].outputs.embedding) == 32
    assert_embedding_close(outputs[0].outputs.embedding, st_embedding(minilm_st, "Follow the white rabbit.", 32))
