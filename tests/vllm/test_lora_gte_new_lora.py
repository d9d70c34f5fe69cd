# Port of vllm tests/lora/test_gte_new_lora.py
# Alibaba-NLP/gte-multilingual-base -> a tiny GTE ("new") with its checkpoint layout
# (tests/support/tiny_rotary_encoders.py); the synthetic adapters are drawn as vLLM draws them (random
# factors on every layer's attention.qkv_proj and attention.o_proj, B scaled by 0.01), sized to the tiny model.
# DEPARTURE: poolkit runs in float32 here (vLLM: half); the mixed batch is held to 1e-5, not 1e-3.
# vLLM's create_new_process_for_each_test is not needed: one LLM per test, in process.
import json

import numpy as np
import pytest
from port_utils import write_random_lora

from poolkit import LLM, LoRARequest

LORA_RANK = 8
LORA_ALPHA = 16
TEST_PROMPTS = [
    "What is machine learning?",
    "The quick brown fox jumps over the lazy dog.",
]


@pytest.fixture(scope="module")
def gte_dir(tmp_path_factory):
    from tiny_rotary_encoders import build_gte

    return build_gte(tmp_path_factory.mktemp("gte"))


def _create_random_gte_lora(model_dir, save_dir: str, seed: int = 0):
    """Generate a synthetic PEFT LoRA adapter for GteNewModel."""
    config = json.loads((model_dir / "config.json").read_text())
    hidden = config["hidden_size"]
    layers = {}
    for i in range(config["num_hidden_layers"]):
        layers[f"encoder.layer.{i}.attention.qkv_proj"] = (3 * hidden, hidden)
        layers[f"encoder.layer.{i}.attention.o_proj"] = (hidden, hidden)
    write_random_lora(save_dir, model_dir, layers, ["qkv_proj", "o_proj"], seed, LORA_RANK, LORA_ALPHA)


@pytest.fixture(scope="module")
def gte_lora_adapter_1(gte_dir, tmp_path_factory):
    adapter_dir = str(tmp_path_factory.mktemp("gte_lora_1"))
    _create_random_gte_lora(gte_dir, adapter_dir, seed=42)
    return adapter_dir


@pytest.fixture(scope="module")
def gte_lora_adapter_2(gte_dir, tmp_path_factory):
    adapter_dir = str(tmp_path_factory.mktemp("gte_lora_2"))
    _create_random_gte_lora(gte_dir, adapter_dir, seed=123)
    return adapter_dir


def create_gte_llm(gte_dir, enable_lora: bool = True, max_loras: int = 4):
    return LLM(
        model=str(gte_dir),
        enable_lora=enable_lora,
        max_loras=max_loras if enable_lora else 1,
        max_lora_rank=LORA_RANK,
        trust_remote_code=True,
    )


def test_gte_lora_basic_inference(gte_dir, gte_lora_adapter_1):
    llm = create_gte_llm(gte_dir, enable_lora=True)
    lora_request = LoRARequest(lora_name="adapter-1", lora_int_id=1, lora_path=gte_lora_adapter_1)
    outputs = llm.embed(TEST_PROMPTS, lora_request=lora_request)
    assert len(outputs) == len(TEST_PROMPTS)
    for output in outputs:
        embedding = output.outputs.embedding
        assert len(embedding) > 0
        assert not all(v == 0.0 for v in embedding)


def test_gte_lora_changes_output(gte_dir, gte_lora_adapter_1):
    llm = create_gte_llm(gte_dir, enable_lora=True)
    base_outputs = llm.embed(TEST_PROMPTS)
    lora_request = LoRARequest(lora_name="adapter-1", lora_int_id=1, lora_path=gte_lora_adapter_1)
    lora_outputs = llm.embed(TEST_PROMPTS, lora_request=lora_request)
    for base_out, lora_out in zip(base_outputs, lora_outputs):
        base_emb = np.array(base_out.outputs.embedding)
        lora_emb = np.array(lora_out.outputs.embedding)
        cosine_sim = np.dot(base_emb, lora_emb) / (np.linalg.norm(base_emb) * np.linalg.norm(lora_emb))
        assert cosine_sim < 1.0, "LoRA adapter should produce different embeddings than base model"


def test_gte_multi_lora(gte_dir, gte_lora_adapter_1, gte_lora_adapter_2):
    llm = create_gte_llm(gte_dir, enable_lora=True, max_loras=4)
    lora_request_1 = LoRARequest(lora_name="adapter-1", lora_int_id=1, lora_path=gte_lora_adapter_1)
    lora_request_2 = LoRARequest(lora_name="adapter-2", lora_int_id=2, lora_path=gte_lora_adapter_2)
    outputs_1 = llm.embed(TEST_PROMPTS, lora_request=lora_request_1)
    outputs_2 = llm.embed(TEST_PROMPTS, lora_request=lora_request_2)
    for out_1, out_2 in zip(outputs_1, outputs_2):
        emb_1 = np.array(out_1.outputs.embedding)
        emb_2 = np.array(out_2.outputs.embedding)
        assert not np.allclose(emb_1, emb_2, atol=1e-5), "Different LoRA adapters should produce different embeddings"


def test_gte_multi_lora_mixed_batch(gte_dir, gte_lora_adapter_1, gte_lora_adapter_2):
    llm = create_gte_llm(gte_dir, enable_lora=True, max_loras=4)
    lora_request_1 = LoRARequest(lora_name="adapter-1", lora_int_id=1, lora_path=gte_lora_adapter_1)
    lora_request_2 = LoRARequest(lora_name="adapter-2", lora_int_id=2, lora_path=gte_lora_adapter_2)
    prompt = TEST_PROMPTS[0]
    ref_1 = llm.embed([prompt], lora_request=lora_request_1)[0]
    ref_2 = llm.embed([prompt], lora_request=lora_request_2)[0]
    mixed = llm.embed([prompt, prompt], lora_request=[lora_request_1, lora_request_2])
    mixed_emb_1 = np.array(mixed[0].outputs.embedding)
    mixed_emb_2 = np.array(mixed[1].outputs.embedding)
    np.testing.assert_allclose(mixed_emb_1, np.array(ref_1.outputs.embedding), atol=1e-5)
    np.testing.assert_allclose(mixed_emb_2, np.array(ref_2.outputs.embedding), atol=1e-5)
    assert not np.allclose(mixed_emb_1, mixed_emb_2, atol=1e-5), "Different adapters in mixed batch should produce different embeddings"
