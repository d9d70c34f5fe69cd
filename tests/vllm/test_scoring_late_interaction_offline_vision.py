# Port of vllm tests/entrypoints/pooling/scoring/test_late_interaction_offline_vision.py
# (also at scoring/late_interaction/test_late_interaction_offline_vision.py)
# vidore/colpali-v1.3-hf -> a tiny random ColPaliForRetrieval (tests/support/tiny_colretrieval.build_colpali:
# SigLIP tower, projector, Gemma decoder, 16-wide projection), its transformers ColPaliProcessor saved
# beside it. make_base64_image / make_image_mm_param as vLLM's scoring/util.py builds them.
# ADAPTED: vLLM asserts trained-model orderings (the red image above the blue one for "Describe the
# red object"); a random model has no such preference, so each score is held to transformers' own
# ColPaliForRetrieval on the same weights: MaxSim of its token vectors (score_retrieval), within 1e-4.
import base64
import io

import pytest
import torch
import transformers as T
from PIL import Image

from poolkit import LLM

ATOL = 1e-4


def make_base64_image(width: int = 64, height: int = 64, color: tuple[int, int, int] = (255, 0, 0)) -> str:
    img = Image.new("RGB", (width, height), color)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def make_image_mm_param(image_uri: str, text: str | None = None) -> dict:
    content: list = [{"type": "image_url", "image_url": {"url": image_uri}}]
    if text is not None:
        content.append({"type": "text", "text": text})
    return {"content": content}


def _image(uri: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB")


@pytest.fixture(scope="module")
def model_dir(vllm_models_root):
    from tiny_colretrieval import build_colpali

    return build_colpali(vllm_models_root / "colpali")


@pytest.fixture(scope="module")
def llm(model_dir):
    return LLM(
        model=str(model_dir),
        max_num_batched_tokens=32768,
        tensor_parallel_size=1,
        gpu_memory_utilization=0.75,
        enforce_eager=True,
        seed=0,
        dtype="float32",
    )


@pytest.fixture(scope="module")
def hf(model_dir):
    model = T.ColPaliForRetrieval.from_pretrained(model_dir, dtype=torch.float32).eval()
    return model, T.ColPaliProcessor.from_pretrained(model_dir), T.PaliGemmaProcessor.from_pretrained(model_dir)


def _vectors(model, inputs) -> torch.Tensor:
    inputs = {k: v for k, v in inputs.items() if k != "labels"}
    with torch.no_grad():
        out = model(**inputs).embeddings[0]
    return out[inputs["attention_mask"][0].bool()]


def hf_query(hf, text: str) -> torch.Tensor:
    return _vectors(hf[0], hf[1].process_queries([text]))


def hf_page(hf, uri: str, text: str | None = None) -> torch.Tensor:
    """A page as ColPali's processor builds it; with a text, PaliGemma's prompt of both."""
    if text is None:
        return _vectors(hf[0], hf[1].process_images([_image(uri)]))
    return _vectors(hf[0], hf[2](text=[text], images=[_image(uri)], return_tensors="pt"))


def hf_scores(hf, query: torch.Tensor, docs: list[torch.Tensor]) -> list[float]:
    return hf[1].score_retrieval([query], docs)[0].tolist()


def test_query_text_vs_docs_image(llm, hf):
    """Score a text query against image documents via the multimodal path."""
    red_image = make_base64_image(64, 64, color=(255, 0, 0))
    blue_image = make_base64_image(64, 64, color=(0, 0, 255))

    query = "Describe the red object"
    image_docs = [
        make_image_mm_param(red_image),
        make_image_mm_param(blue_image),
    ]

    scores = llm.score(query, image_docs)

    assert len(scores) == 2
    want = hf_scores(hf, hf_query(hf, query), [hf_page(hf, red_image), hf_page(hf, blue_image)])
    assert [s.outputs.score for s in scores] == pytest.approx(want, abs=ATOL)


def test_query_text_vs_docs_mix(llm, hf) -> None:
    """Score a text query against a mix of text and image documents."""
    red_image = make_base64_image(64, 64, color=(255, 0, 0))

    query = "What is the capital of France?"
    documents: list = [
        "The capital of France is Paris.",
        make_image_mm_param(red_image),
    ]

    scores = llm.score(query, documents)

    assert len(scores) == 2
    # a text is read in the model's text form (ColPali's query prompt), an image as a page
    want = hf_scores(hf, hf_query(hf, query), [hf_query(hf, documents[0]), hf_page(hf, red_image)])
    assert [s.outputs.score for s in scores] == pytest.approx(want, abs=ATOL)


def test_query_image_vs_docs_text(llm, hf) -> None:
    """Score an image query against text documents."""
    red_image = make_base64_image(64, 64, color=(255, 0, 0))
    image_query = make_image_mm_param(red_image, text="red color")

    documents = [
        "Describe the red object.",
        "The capital of France is Paris.",
    ]

    scores = llm.score(image_query, documents)

    assert len(scores) == 2
    want = hf_scores(hf, hf_page(hf, red_image, "red color"), [hf_query(hf, d) for d in documents])
    assert [s.outputs.score for s in scores] == pytest.approx(want, abs=ATOL)
