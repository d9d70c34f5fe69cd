# Port of vllm tests/models/language/pooling/test_st_projector.py
# TencentBAC/Conan-embedding-v1 (a BERT sentence-transformers model: Transformer, mean Pooling and a
# Dense projector to 1792 dimensions) -> all-MiniLM-L6-v2's Transformer and Pooling saved again by
# sentence-transformers with a seeded Dense projector (384 -> 256, tanh): the same layout, offline.
# Not ported: test_embed_models_mteb (an MTEB STS12 evaluation of the trained Conan-embedding-v1: it
# needs the hub's dataset and the hub-only model, and measures a trained model's quality, which a
# stand-in does not have).
import numpy as np
import pytest
import torch
from scipy.spatial.distance import cosine

from poolkit import LLM

EXPECTED_DIM = 256


@pytest.fixture(scope="module")
def projector_dir(minilm_dir, vllm_models_root):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense

    path = vllm_models_root / "minilm-dense-projector"
    if not (path / "modules.json").is_file():
        base = SentenceTransformer(str(minilm_dir), device="cpu")
        torch.manual_seed(0)
        # Conan-embedding-v1's layout: Transformer, Pooling (mean), Dense — no Normalize module.
        model = SentenceTransformer(modules=[base[0], base[1], Dense(384, EXPECTED_DIM, activation_function=torch.nn.Tanh())], device="cpu")
        model.save(str(path))
    return path


def _get_vllm_embeddings(model_dir, test_texts):
    """Get embeddings from poolkit (vLLM's helper calls encode without a pooling task)."""
    vllm_model = LLM(str(model_dir), runner="pooling", max_model_len=None, trust_remote_code=True)
    embeddings = vllm_model.encode(test_texts)
    return np.array([emb.outputs.data.cpu().numpy() for emb in embeddings])


def _get_hf_embeddings(model_dir, test_texts):
    from sentence_transformers import SentenceTransformer

    return np.array(SentenceTransformer(str(model_dir), device="cpu").encode(test_texts))


@pytest.mark.parametrize("model_info", ["Conan-embedding-v1-stand-in"])
def test_st_projector_loading(projector_dir, model_info) -> None:
    """Ensure projector models load and output expected dim."""
    test_texts = ["This is a test sentence."]
    embeddings_data = _get_vllm_embeddings(projector_dir, test_texts)

    actual_dim = embeddings_data.shape[-1]
    assert actual_dim == EXPECTED_DIM, f"Expected {EXPECTED_DIM}, got {actual_dim}"


@pytest.mark.parametrize("model_info", ["Conan-embedding-v1-stand-in"])
def test_compare_with_hf_dimensions(projector_dir, model_info) -> None:
    """Compare embedding dimensions between poolkit and sentence-transformers."""
    test_texts = ["This is a test sentence for dimension comparison."]

    vllm_data = _get_vllm_embeddings(projector_dir, test_texts)
    hf_data = _get_hf_embeddings(projector_dir, test_texts)

    assert vllm_data.shape[-1] == hf_data.shape[-1], f"Embedding dim mismatch: vLLM {vllm_data.shape[-1]} vs HF {hf_data.shape[-1]}"


@pytest.mark.parametrize("model_info", ["Conan-embedding-v1-stand-in"])
def test_embedding_numerical_similarity(projector_dir, model_info) -> None:
    """Numerical similarity between poolkit and sentence-transformers embeddings."""
    test_texts = [
        "This is a test sentence for numerical comparison.",
        "Another sentence to verify embedding quality.",
        "机器学习是人工智能的一个重要分支。",  # Chinese test
    ]

    vllm_data = _get_vllm_embeddings(projector_dir, test_texts)
    hf_data = _get_hf_embeddings(projector_dir, test_texts)

    assert vllm_data.shape == hf_data.shape, f"Shape mismatch: vLLM {vllm_data.shape} vs HF {hf_data.shape}"

    similarities = []
    for i in range(len(test_texts)):
        similarity = 1 - cosine(vllm_data[i], hf_data[i])
        similarities.append(similarity)
        assert similarity > 0.95, f"Text {i + 1} similarity too low: {similarity:.6f} < 0.95"

    assert np.mean(similarities) > 0.98, f"Average similarity too low: {np.mean(similarities):.6f} < 0.98"


@pytest.mark.parametrize("model_info", ["Conan-embedding-v1-stand-in"])
def test_embedding_quality_checks(projector_dir, model_info) -> None:
    """Basic quality checks: non-zero, non-constant, distinct."""
    test_texts = ["First test sentence.", "Second different sentence.", "Completely different content here."]

    embeddings_data = _get_vllm_embeddings(projector_dir, test_texts)

    for i, emb in enumerate(embeddings_data):
        norm = np.linalg.norm(emb)
        assert norm > 1e-6, f"Embedding {i + 1} too close to zero: norm={norm}"
        std = np.std(emb)
        assert std > 1e-6, f"Embedding {i + 1} too close to constant: std={std}"

    for i in range(len(embeddings_data)):
        for j in range(i + 1, len(embeddings_data)):
            sim = 1 - cosine(embeddings_data[i], embeddings_data[j])
            assert sim < 0.99, f"Embeddings too similar: {i + 1} vs {j + 1} -> {sim:.6f}"
