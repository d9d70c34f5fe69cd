# Port of vllm tests/models/multimodal/pooling/test_llama_nemotron_vl.py
# nvidia/llama-nemotron-embed-vl-1b-v2 (LlamaNemotronVLModel, served natively) -> the tiny random
# Llama-Nemotron-VL that tests/support/tiny_nemotron_vl.build_nemotron_vl lays out as the published
# checkpoint (SigLIP tower on 16-pixel tiles, up to 6 tiles and a thumbnail, bidirectional Llama,
# MEAN pooling). vLLM's IMAGE_ASSETS (stop_sign, cherry_blossom) -> the generated stop-sign /
# cherry-blossom images of the CLIP port (test_models_clip.py). vLLM's HfRunner (the checkpoint's
# remote code: encode_queries / encode_documents, which strip and re-add the "query: " / "passage: "
# prefixes) -> the reference tests/models/test_nemotron_vl.py builds from transformers' LlamaModel
# (bidirectional) and SiglipVisionModel on the same weights, with the published tiling, pixel
# shuffle, mlp1 and <image> expansion written out (test_nemotron_vl.reference), run on the prompt
# poolkit gets, in the same dtype. dtype: half as in vLLM, both sides; max_model_len 2048 as vLLM's.
# vLLM's ``vllm_model.embed(texts, images=images)`` -> LLM.embed on the prompts VllmRunner builds
# (the CLIP port's ``_vllm_inputs``), one call per input case as vLLM makes them.
# This is the file's current form; its earlier forms (and test_llama_nemotron_vl_embed.py, the file
# before the reranker joined it) split test_models into test_models_text / test_models_image, the
# same two cases.
# Not ported: test_reranker (nvidia/llama-nemotron-rerank-vl-1b-v2,
# LlamaNemotronVLForSequenceClassification, with vLLM's nemotron-vl-rerank.jinja score template):
# poolkit serves the embedding model only.
import pytest
import torch
from port_utils import check_embeddings_close
from test_models_clip import _cherry_blossom, _stop_sign, _vllm_inputs

from poolkit import LLM

# Prefixes used by the model API
QUERY_PREFIX = "query: "
PASSAGE_PREFIX = "passage: "

# Text prompts for text-only embedding
HF_TEXT_PROMPTS = [
    # T -> X (text embedding queries)
    f"{QUERY_PREFIX}The label of the object is stop sign",
    f"{QUERY_PREFIX}cherry blossom",
]

# Image prompts using the model's expected format
# vLLM: IMAGE_ASSETS.prompts({"stop_sign": ..., "cherry_blossom": ...}), in IMAGE_ASSETS' order.
HF_IMAGE_PROMPTS = [
    # I -> X (image embedding as passage/document)
    f"{PASSAGE_PREFIX}<image>",
    f"{PASSAGE_PREFIX}<image>",
]

MODELS = ["llama-nemotron-embed-vl-1b-v2-stand-in"]


@pytest.fixture(scope="module")
def image_assets():
    return [_stop_sign(), _cherry_blossom()]


@pytest.fixture(scope="module")
def nemotron_vl_dir(vllm_models_root):
    from tiny_nemotron_vl import build_nemotron_vl

    return build_nemotron_vl(vllm_models_root / "llama-nemotron-embed-vl")


def _hf_model(model_dir, dtype: str) -> tuple:
    """``test_nemotron_vl.reference``'s model: transformers' modules on the checkpoint, its tokenizer."""
    import transformers as T
    from tiny_nemotron_vl import load_parts

    torch_dtype = {"half": torch.float16}[dtype]
    # not AutoTokenizer: config.json's auto_map would have it ask whether to run the remote code
    return (*(m.to(torch_dtype) for m in load_parts(model_dir)), T.PreTrainedTokenizerFast.from_pretrained(model_dir))


def _run_test(model_dir, input_cases, model: str, *, dtype: str) -> None:
    from test_nemotron_vl import reference

    vllm_model = LLM(str(model_dir), runner="pooling", dtype=dtype, max_model_len=2048, enforce_eager=True, trust_remote_code=True)
    vllm_outputs_per_case = [
        [o.outputs.embedding for o in vllm_model.embed(_vllm_inputs(input_texts, input_images))]
        for input_texts, input_images in input_cases
    ]

    hf_model = _hf_model(model_dir, dtype)
    hf_outputs_per_case = []
    for input_texts, input_images in input_cases:
        hf_outputs = []
        for text, image in zip(input_texts, input_images):
            if not text.startswith((QUERY_PREFIX, PASSAGE_PREFIX)):
                raise ValueError(f"Text must start with {QUERY_PREFIX!r} or {PASSAGE_PREFIX!r}")
            hf_outputs.append(reference(hf_model, text, [] if image is None else [image]).tolist())
        hf_outputs_per_case.append(hf_outputs)

    for hf_outputs, vllm_outputs in zip(hf_outputs_per_case, vllm_outputs_per_case):
        check_embeddings_close(
            embeddings_0_lst=hf_outputs,
            embeddings_1_lst=vllm_outputs,
            name_0="hf",
            name_1="vllm",
        )
        # The tiny random model must still tell its inputs apart (the two image prompts differ
        # only by their images), or the comparison proves little.
        vectors = torch.nn.functional.normalize(torch.tensor(vllm_outputs), dim=-1)
        assert (vectors[0] @ vectors[1]).item() < 0.999


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("dtype", ["half"])
def test_models(nemotron_vl_dir, image_assets, model: str, dtype: str) -> None:
    """Test text and image embedding."""
    text_images = [None] * len(HF_TEXT_PROMPTS)
    images = list(image_assets)
    input_cases = [
        (HF_TEXT_PROMPTS, text_images),
        (HF_IMAGE_PROMPTS, images),
    ]

    _run_test(nemotron_vl_dir, input_cases, model, dtype=dtype)
