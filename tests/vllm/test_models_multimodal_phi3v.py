# Port of vllm tests/models/multimodal/pooling/test_phi3v.py
# TIGER-Lab/VLM2Vec-Full (Phi3VForCausalLM, served natively) -> the tiny random VLM2Vec that
# tests/tiny_phi3v.build_phi3v lays out as the published checkpoint (num_crops 4). vLLM's
# IMAGE_ASSETS (stop_sign, cherry_blossom) and the cherry_blossom.jpg it downloads for the
# special-tokens case -> the generated stop-sign / cherry-blossom images of the CLIP port
# (test_models_clip.py). vLLM's HfRunner (the checkpoint's remote code, eager attention, the last
# token's final hidden state, L2-normalised, as VLM2Vec's src/model.py pools) -> the reference
# tests/models/test_phi3v.py assembles from transformers' Phi3ForCausalLM and CLIPVisionModel on the same
# weights, with the published processor's crops and placeholders written out (Reference.embed), run
# in the same dtype. dtype: half as in vLLM, both sides. vLLM's ``vllm_model.embed(texts,
# images=images)`` -> LLM.embed on the prompts VllmRunner builds (the CLIP port's ``_vllm_inputs``).
# test_models_image's @large_gpu_test(min_gb=48) and the core_model marks do not apply here.
import pytest
import torch
from port_utils import check_embeddings_close
from test_models_clip import _cherry_blossom, _stop_sign, _vllm_inputs

from poolkit import LLM

HF_TEXT_PROMPTS = [
    # T -> X
    "Find me an everyday image that matches the given caption: The label of the object is stop sign",  # noqa: E501
    # T -> X
    "Retrieve an image of this caption: cherry blossom",
]

# vLLM: IMAGE_ASSETS.prompts({...}), one prompt per asset, in IMAGE_ASSETS' order.
HF_IMAGE_PROMPTS = [
    # T + I -> X
    "<|image_1|> Select the portion of the image that isolates the object of the given label: The label of the object is stop sign",  # noqa: E501
    # I -> X
    "<|image_1|> Represent the given image for classification",  # noqa: E501
]

MODELS = ["VLM2Vec-Full-stand-in"]


@pytest.fixture(scope="module")
def image_assets():
    return [_stop_sign(), _cherry_blossom()]


@pytest.fixture(scope="module")
def vlm2vec_dir(vllm_models_root):
    from tiny_phi3v import build_phi3v

    return build_phi3v(vllm_models_root / "vlm2vec")


def _run_test(vlm2vec_dir, input_texts, input_images, model: str, *, dtype: str) -> None:
    from test_phi3v import Reference

    vllm_model = LLM(str(vlm2vec_dir), runner="pooling", dtype=dtype, enforce_eager=True)
    vllm_outputs = [o.outputs.embedding for o in vllm_model.embed(_vllm_inputs(input_texts, input_images))]

    hf_model = Reference(vlm2vec_dir, dtype={"half": torch.float16}[dtype])
    hf_outputs = [
        hf_model.embed(text, [] if image is None else [image]).tolist() for text, image in zip(input_texts, input_images)
    ]

    check_embeddings_close(
        embeddings_0_lst=hf_outputs,
        embeddings_1_lst=vllm_outputs,
        name_0="hf",
        name_1="vllm",
    )
    # The tiny random model must still tell its inputs apart, or the comparison proves little.
    vectors = torch.nn.functional.normalize(torch.tensor(vllm_outputs), dim=-1)
    assert (vectors[0] @ vectors[1]).item() < 0.999


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("dtype", ["half"])
def test_models_text(vlm2vec_dir, image_assets, model: str, dtype: str) -> None:
    input_texts_images = [(text, None) for text in HF_TEXT_PROMPTS]
    input_texts = [text for text, _ in input_texts_images]
    input_images = [image for _, image in input_texts_images]

    _run_test(vlm2vec_dir, input_texts, input_images, model, dtype=dtype)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("dtype", ["half"])
def test_models_image(vlm2vec_dir, image_assets, model: str, dtype: str) -> None:
    input_texts_images = [(text, asset) for text, asset in zip(HF_IMAGE_PROMPTS, image_assets)]
    # add cases for special_tokens
    input_texts_images.append(
        (
            "\n<s><|user|>\n <|image_1|>\n\t <s>"
            "Represent the given image for classification<|end|>"
            "\n<|assistant|>\n",
            _cherry_blossom(),  # vLLM: cherry_blossom.jpg from its public assets
        )
    )
    input_texts = [text for text, _ in input_texts_images]
    input_images = [image for _, image in input_texts_images]

    _run_test(vlm2vec_dir, input_texts, input_images, model, dtype=dtype)
