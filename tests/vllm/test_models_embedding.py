# Port of vllm tests/models/language/pooling/test_embedding.py
# vLLM compares each model's embeddings with sentence-transformers on the same weights. Offline:
# - the encoder-only models (BAAI/bge-base-en-v1.5, sentence-transformers/all-MiniLM-L12-v2,
#   intfloat/multilingual-e5-small) -> the real all-MiniLM-L6-v2 (a sentence-transformers model);
# - the decoder-only ssmits/Qwen2-7B-Instruct-embed-base, run with
#   PoolerConfig(pooling_type="MEAN", normalize=False) -> a tiny Qwen2Model with the same pooler
#   config (sentence-transformers loads a plain transformers directory with mean pooling and no
#   normalisation, which is what that config asks for).
# Not offline: BAAI/bge-multilingual-gemma2, intfloat/e5-mistral-7b-instruct,
# Alibaba-NLP/gte-Qwen2-1.5B-instruct (remote code), sentence-transformers/stsb-roberta-base-v2:
# hub-only checkpoints whose architectures the two stand-ins above already cover.
import pytest
from port_utils import check_embeddings_close

from poolkit import LLM, PoolerConfig


@pytest.fixture(scope="module")
def qwen2_embed_dir(vllm_models_root):
    from tiny_models import build_qwen

    return build_qwen(vllm_models_root / "qwen2-embed-base", "qwen2", "embed", init_range=0.5)


@pytest.mark.parametrize("model", ["all-MiniLM-L6-v2", "Qwen2-embed-base-stand-in"])
def test_models(model, example_prompts, minilm_dir, qwen2_embed_dir, minilm_st) -> None:
    from sentence_transformers import SentenceTransformer

    vllm_extra_kwargs = {}
    if model == "Qwen2-embed-base-stand-in":
        path = qwen2_embed_dir
        vllm_extra_kwargs["pooler_config"] = PoolerConfig(pooling_type="MEAN", normalize=False)
        max_model_len = 128
    else:
        path = minilm_dir
        max_model_len = None

    # The example_prompts has ending "\n"; sentence_transformers strips the input texts, which makes
    # the input_ids differ, so strip them as vLLM does.
    example_prompts = [str(s).strip() for s in example_prompts]

    hf_model = minilm_st if path == minilm_dir else SentenceTransformer(str(path), device="cpu")
    hf_outputs = hf_model.encode(example_prompts)

    vllm_model = LLM(str(path), runner="pooling", max_model_len=max_model_len, **vllm_extra_kwargs)
    vllm_outputs = [o.outputs.embedding for o in vllm_model.embed(example_prompts)]

    check_embeddings_close(embeddings_0_lst=hf_outputs, embeddings_1_lst=vllm_outputs, name_0="hf", name_1="vllm", tol=1e-2)
