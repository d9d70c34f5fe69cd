# Port of vllm tests/entrypoints/pooling/token_classify/test_offline.py
# jason9693/Qwen2.5-1.5B-apeach with PoolerConfig(pooling_task="token_classify") -> the tiny
# two-label Qwen2ForSequenceClassification stand-in (conftest ``apeach_dir``), same pooler config.
import pytest
from transformers import AutoTokenizer

from poolkit import LLM, PoolerConfig, PoolingRequestOutput

prompt = "The chef prepared a delicious meal."
num_labels = 2


@pytest.fixture(scope="module")
def prompt_token_ids(apeach_dir):
    return AutoTokenizer.from_pretrained(str(apeach_dir))(prompt)["input_ids"]


@pytest.fixture(scope="module")
def llm(apeach_dir):
    return LLM(
        model=str(apeach_dir),
        pooler_config=PoolerConfig(pooling_task="token_classify"),
        max_num_batched_tokens=32768,
        tensor_parallel_size=1,
        gpu_memory_utilization=0.75,
        enforce_eager=True,
        seed=0,
    )


def test_str_prompts(llm: LLM, prompt_token_ids):
    outputs = llm.encode(prompt, pooling_task="token_classify", use_tqdm=False)
    assert len(outputs) == 1
    assert isinstance(outputs[0], PoolingRequestOutput)
    assert outputs[0].prompt_token_ids == prompt_token_ids
    assert outputs[0].outputs.data.shape == (len(prompt_token_ids), num_labels)


def test_token_ids_prompts(llm: LLM, prompt_token_ids):
    outputs = llm.encode([prompt_token_ids], pooling_task="token_classify", use_tqdm=False)
    assert len(outputs) == 1
    assert isinstance(outputs[0], PoolingRequestOutput)
    assert outputs[0].prompt_token_ids == prompt_token_ids
    assert outputs[0].outputs.data.shape == (len(prompt_token_ids), num_labels)


def test_score_api(llm: LLM):
    # DEPARTURE: this vLLM test wants "Score API is only enabled for num_labels == 1."; vLLM's other
    # scoring tests (and its server) say "Scoring API is only enabled for num_labels == 1.", which
    # poolkit says everywhere.
    err_msg = "Scoring API is only enabled for num_labels == 1."
    with pytest.raises(ValueError, match=err_msg):
        llm.score("ping", "pong", use_tqdm=False)


@pytest.mark.parametrize("task", ["classify", "embed", "token_embed"])
def test_unsupported_tasks(llm: LLM, task: str):
    if task == "classify":
        # DEPARTURE: vLLM serves only the pooling_task the config names (token_classify) and raises
        # "Try switching the model's pooling_task via ..."; poolkit serves every task the model
        # supports, so the sequence classifier still classifies.
        (out,) = llm.encode(prompt, pooling_task=task, use_tqdm=False)
        assert out.outputs.data.shape == (num_labels,)
        return
    err_msg = "Embedding API is not supported by this model.+"
    with pytest.raises(ValueError, match=err_msg):
        llm.encode(prompt, pooling_task=task, use_tqdm=False)
