"""jina-reranker-m0 (``JinaVLForRanking``) against the publisher's modeling code, on a tiny
checkpoint laid out as published (tests/support/tiny_jina_reranker_m0.py says where each key comes from).

The reference is the publisher's ``JinaVLForRanking`` written out (transformers' Qwen2-VL with the
``score`` MLP, ``sigmoid(score - 2.65)`` at the appended score token), fed the publisher's prompt
(``formatting_prompts_func``: the document, then the query) through transformers' image processor;
poolkit makes the prompt from the pair itself (its score template, its media processor).
"""

from __future__ import annotations

import base64
import io

import pytest
import torch
from PIL import Image

from tiny_jina_reranker_m0 import SCORE_TOKEN_ID, build_jina_reranker_m0, formatting_prompt, load_reference, reference_score
from tiny_models import picture
from poolkit import LLM
from poolkit.contracts.errors import InvalidRequest

#: fp32 parity (DESIGN.md §7).
ATOL = 1e-4
QUERY = "what is the capital of france?"
DOCS = ["paris is the capital of france", "the weather is nice today in berlin"]
IMAGES = [picture(40, 24, 1), picture(37, 53, 2), picture(20, 70, 3)]


def image_input(image: Image.Image) -> dict:
    """vLLM's multimodal score input of one image."""
    return {"content": [{"type": "image_pil", "image_pil": image}]}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The tiny checkpoint, laid out as published."""
    return build_jina_reranker_m0(tmp_path_factory.mktemp("jina-reranker-m0"))


@pytest.fixture(scope="module")
def llm(model_dir):
    """poolkit's model, fp32."""
    return LLM(str(model_dir), dtype="float32")


@pytest.fixture(scope="module")
def ref(model_dir):
    """The publisher's model, its tokenizer and image processor."""
    return load_reference(model_dir)


def scores(outputs) -> torch.Tensor:
    """The scores of ``LLM.score``'s outputs."""
    return torch.tensor([o.outputs.score for o in outputs])


def test_published_layout_serves_natively_as_a_cross_encoder(llm):
    assert llm.model.architecture_name == "JinaVLForRanking"
    assert llm.score_type == "cross-encoder"
    assert llm.model.architecture.implementation == "native"


def test_transformers_5_names_load_alike(model_dir, llm, tmp_path):
    """A checkpoint saved by transformers 4.52 or later (``model.language_model.``, ``model.visual.``;
    vLLM's ``weight_mapper`` reads both) scores as the published names do."""
    import shutil

    from safetensors.torch import load_file, save_file

    for f in model_dir.iterdir():
        shutil.copy(f, tmp_path / f.name)
    renamed = {
        (k if k.startswith("score.") else "model." + k if k.startswith("visual.") else "model.language_model." + k[len("model."):]): v
        for k, v in load_file(model_dir / "model.safetensors").items()
    }
    save_file(renamed, tmp_path / "model.safetensors", metadata={"format": "pt"})
    docs = [DOCS[0], image_input(IMAGES[0])]
    got = scores(LLM(str(tmp_path), dtype="float32").score(QUERY, docs))
    torch.testing.assert_close(got, scores(llm.score(QUERY, docs)), atol=1e-6, rtol=0)


def test_text_documents_match_the_publisher(llm, ref):
    got = scores(llm.score(QUERY, DOCS))
    want = torch.tensor([reference_score(ref, formatting_prompt(QUERY, d), []) for d in DOCS])
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_the_prompt_is_the_publishers_with_the_score_token_last(llm, ref):
    (out,) = llm.score(QUERY, DOCS[0])
    tok = ref[1]
    assert out.prompt_token_ids == tok(formatting_prompt(QUERY, DOCS[0]))["input_ids"] + [SCORE_TOKEN_ID]


@pytest.mark.parametrize("kind", ["text query, image documents", "image query, text documents", "image query, image documents"])
def test_image_sides_match_the_publisher(llm, ref, kind):
    """The publisher's query_type / doc_type: an image side is one image, the document's before the query's."""
    query_image = kind.startswith("image query")
    doc_images = kind.endswith("image documents")
    query = image_input(IMAGES[2]) if query_image else QUERY
    docs = [image_input(i) for i in IMAGES[:2]] if doc_images else DOCS
    got = scores(llm.score(query, docs))
    want = []
    for i, doc in enumerate(IMAGES[:2] if doc_images else DOCS):
        text = formatting_prompt(QUERY, doc, "image" if query_image else "text", "image" if doc_images else "text")
        images = ([doc] if doc_images else []) + ([IMAGES[2]] if query_image else [])
        want.append(reference_score(ref, text, images))
    torch.testing.assert_close(got, torch.tensor(want), atol=ATOL, rtol=0)


def test_a_batch_of_text_and_image_documents_scores_each_as_alone(llm):
    docs = [DOCS[0], image_input(IMAGES[0]), DOCS[1], image_input(IMAGES[1])]
    together = scores(llm.score(QUERY, docs))
    alone = torch.cat([scores(llm.score(QUERY, [d])) for d in docs])
    torch.testing.assert_close(together, alone, atol=ATOL, rtol=0)


def test_instruction_is_the_publishers_prefix(llm, ref):
    got = scores(llm.score(QUERY, DOCS, instruction="rank the passages"))
    want = torch.tensor([reference_score(ref, formatting_prompt(QUERY, d, prefix="rank the passages"), []) for d in DOCS])
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_rerank_orders_text_and_image_documents(llm):
    docs = [DOCS[0], image_input(IMAGES[0]), DOCS[1]]
    ranked = llm.rerank(QUERY, docs)
    assert sorted(r.index for r in ranked) == [0, 1, 2]
    by_index = {r.index: r.relevance_score for r in ranked}
    torch.testing.assert_close(torch.tensor([by_index[i] for i in range(3)]), scores(llm.score(QUERY, docs)), atol=ATOL, rtol=0)
    assert [r.relevance_score for r in ranked] == sorted(by_index.values(), reverse=True)


def test_rerank_takes_an_image_query(llm, ref):
    """The publisher's ``query_type="image"``: the query's image after the document's text."""
    ranked = llm.rerank(image_input(IMAGES[2]), DOCS)
    want = [reference_score(ref, formatting_prompt("", d, "image", "text"), [IMAGES[2]]) for d in DOCS]
    by_index = {r.index: r.relevance_score for r in ranked}
    torch.testing.assert_close(torch.tensor([by_index[0], by_index[1]]), torch.tensor(want), atol=ATOL, rtol=0)
    with pytest.raises(InvalidRequest, match="query must be a string or an input with images"):
        llm.rerank(3, DOCS)


def test_classify_of_a_prompt_is_the_publishers_forward(llm, ref):
    """The publisher's forward appends the score token where the prompt does not end with it."""
    text = formatting_prompt(QUERY, DOCS[1])
    (out,) = llm.classify([text])
    assert abs(float(out.outputs.probs[0]) - reference_score(ref, text, [])) <= ATOL
    assert out.prompt_token_ids[-1] == SCORE_TOKEN_ID


def test_logit_bias_is_the_pooler_setting(model_dir, llm):
    """2.65 by default (vLLM's ``logit_bias``); ``pooler_config`` changes it."""
    raw = LLM(str(model_dir), dtype="float32", pooler_config={"logit_mean": 0.0})
    base = scores(llm.score(QUERY, DOCS))
    shifted = scores(raw.score(QUERY, DOCS))
    torch.testing.assert_close(torch.logit(shifted.double()) - 2.65, torch.logit(base.double()), atol=1e-4, rtol=0)


def test_truncation_keeps_the_score_token(llm):
    (out,) = llm.score(QUERY, DOCS[0] * 8, pooling_params={"truncate_prompt_tokens": 12})
    assert len(out.prompt_token_ids) == 12 and out.prompt_token_ids[-1] == SCORE_TOKEN_ID and out.truncated


@pytest.mark.parametrize(
    "docs, message",
    [
        ([{"content": [{"type": "image_pil", "image_pil": "IMG"}, {"type": "text", "text": "no placeholder"}]}], "image placeholders"),
        ([{"content": [{"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAA"}}]}], "content part"),
    ],
)
def test_bad_inputs_are_one_line_errors(llm, docs, message):
    docs = [{"content": [{**p, "image_pil": IMAGES[0]} if p.get("image_pil") == "IMG" else p for p in d["content"]]} for d in docs]
    with pytest.raises(InvalidRequest) as info:
        llm.score(QUERY, docs)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_videos_are_refused(llm):
    with pytest.raises(InvalidRequest, match="takes no videos") as info:
        llm.classify([{"prompt": "<|vision_start|><|video_pad|><|vision_end|>", "multi_modal_data": {"video": [IMAGES[0]] * 2}}])
    assert "\n" not in str(info.value)


def uri(image: Image.Image) -> str:
    """An image as a PNG data URI, as a request sends it."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_score_and_rerank_routes_take_image_documents(llm):
    """vLLM's ``/score`` and ``/rerank`` with multimodal documents (data URIs): as offline; a remote
    URL the server may not fetch is a 400."""
    from fastapi.testclient import TestClient

    from poolkit.entrypoints.server import create_app

    docs = [DOCS[0], {"content": [{"type": "image_url", "image_url": {"url": uri(IMAGES[0])}}]}]
    want = scores(llm.score(QUERY, [DOCS[0], image_input(IMAGES[0])]))
    with TestClient(create_app(llm, served_model_name="m0")) as client:
        scored = client.post("/score", json={"text_1": QUERY, "text_2": docs})
        ranked = client.post("/rerank", json={"query": QUERY, "documents": docs})
        remote = {"content": [{"type": "image_url", "image_url": {"url": "https://example.com/p.png"}}]}
        bad = client.post("/rerank", json={"query": QUERY, "documents": [remote]})
        unmarked = {"content": [{"type": "image_url", "image_url": {"url": uri(IMAGES[0])}}, {"type": "text", "text": "a page"}]}
        miscounted = client.post("/score", json={"text_1": QUERY, "text_2": [unmarked]})
    assert scored.status_code == 200, scored.text
    torch.testing.assert_close(torch.tensor([d["score"] for d in scored.json()["data"]]), want, atol=ATOL, rtol=0)
    assert ranked.status_code == 200, ranked.text
    by_index = {r["index"]: r["relevance_score"] for r in ranked.json()["results"]}
    torch.testing.assert_close(torch.tensor([by_index[0], by_index[1]]), want, atol=ATOL, rtol=0)
    assert bad.status_code == 400 and "\n" not in bad.json()["error"]["message"]
    message = miscounted.json()["error"]["message"]
    assert miscounted.status_code == 400 and "image placeholders" in message and "\n" not in message
