# Port of vllm tests/entrypoints/pooling/scoring/test_late_interaction_offline.py
# answerdotai/answerai-colbert-small-v1 (HF_ColBERT, 96-wide projection) -> a tiny HF_ColBERT with a
# 16-wide ``linear`` projection (conftest ``colbert_dir``); ColBERTScoringHfRunner reads the same
# directory with transformers. vLLM's (9, 96) is colbert-small's token count: here the tokenizer's.
import pytest
from port_utils import ColBERTScoringHfRunner
from transformers import AutoTokenizer

from poolkit import LLM

COLBERT_DIM = 16
LINEAR_WEIGHTS_KEY = "linear.weight"
PROMPT = "The chef prepared a delicious meal."

TEXTS_1 = ["What is the capital of France?", "What is the capital of Germany?"]
TEXTS_2 = ["The capital of France is Paris.", "The capital of Germany is Berlin."]


@pytest.fixture(scope="module")
def llm(colbert_dir):
    return LLM(
        model=str(colbert_dir),
        max_num_batched_tokens=32768,
        tensor_parallel_size=1,
        gpu_memory_utilization=0.75,
        enforce_eager=True,
        seed=0,
    )


@pytest.fixture(scope="module")
def hf_model(colbert_dir):
    return ColBERTScoringHfRunner(model_name=str(colbert_dir), linear_weights_key=LINEAR_WEIGHTS_KEY)


def test_1_to_1(llm, hf_model):
    text_pair = [TEXTS_1[0], TEXTS_2[0]]

    hf_outputs = hf_model.predict([text_pair]).tolist()
    vllm_outputs = [output.outputs.score for output in llm.score(text_pair[0], text_pair[1])]

    assert len(vllm_outputs) == 1
    assert len(hf_outputs) == 1
    assert hf_outputs[0] == pytest.approx(vllm_outputs[0], rel=0.01)


def test_1_to_n(llm, hf_model):
    text_pairs = [[TEXTS_1[0], TEXTS_2[0]], [TEXTS_1[0], TEXTS_2[1]]]

    hf_outputs = hf_model.predict(text_pairs).tolist()
    vllm_outputs = [output.outputs.score for output in llm.score(TEXTS_1[0], TEXTS_2)]

    assert len(vllm_outputs) == 2
    assert len(hf_outputs) == 2
    assert hf_outputs[0] == pytest.approx(vllm_outputs[0], rel=0.01)
    assert hf_outputs[1] == pytest.approx(vllm_outputs[1], rel=0.01)


def test_n_to_n(llm, hf_model):
    text_pairs = [[TEXTS_1[0], TEXTS_2[0]], [TEXTS_1[1], TEXTS_2[1]]]

    hf_outputs = hf_model.predict(text_pairs).tolist()
    vllm_outputs = [output.outputs.score for output in llm.score(TEXTS_1, TEXTS_2)]

    assert len(vllm_outputs) == 2
    assert len(hf_outputs) == 2
    assert hf_outputs[0] == pytest.approx(vllm_outputs[0], rel=0.01)
    assert hf_outputs[1] == pytest.approx(vllm_outputs[1], rel=0.01)


def test_token_embed(llm, colbert_dir):
    outputs = llm.encode(PROMPT, pooling_task="token_embed", use_tqdm=False)
    n_tokens = len(AutoTokenizer.from_pretrained(str(colbert_dir))(PROMPT)["input_ids"])
    assert len(outputs) == 1
    assert outputs[0].outputs.data.shape == (n_tokens, COLBERT_DIM)
