# Port of vllm tests/entrypoints/pooling/classify/test_offline.py
# jason9693/Qwen2.5-1.5B-apeach -> a tiny Qwen2ForSequenceClassification with two labels
# (conftest ``apeach_dir``); the expected token ids come from its tokenizer (transformers).
import pytest
import torch
from port_utils import softmax
from transformers import AutoTokenizer

from poolkit import LLM, ClassificationRequestOutput, PoolingParams

prompt = "The chef prepared a delicious meal."
num_labels = 2


@pytest.fixture(scope="module")
def prompt_token_ids(apeach_dir):
    return AutoTokenizer.from_pretrained(str(apeach_dir))(prompt)["input_ids"]


@pytest.fixture(scope="module")
def llm(apeach_dir):
    return LLM(
        str(apeach_dir),
        max_model_len=None,
        max_num_batched_tokens=32768,
        tensor_parallel_size=1,
        gpu_memory_utilization=0.75,
        enforce_eager=True,
        seed=0,
        enable_chunked_prefill=None,
    )


def test_str_prompts(llm: LLM, prompt_token_ids):
    outputs = llm.classify(prompt, use_tqdm=False)
    assert len(outputs) == 1
    assert isinstance(outputs[0], ClassificationRequestOutput)
    assert outputs[0].prompt_token_ids == prompt_token_ids
    assert len(outputs[0].outputs.probs) == num_labels


def test_token_ids_prompts(llm: LLM, prompt_token_ids):
    outputs = llm.classify([prompt_token_ids], use_tqdm=False)
    assert len(outputs) == 1
    assert isinstance(outputs[0], ClassificationRequestOutput)
    assert outputs[0].prompt_token_ids == prompt_token_ids
    assert len(outputs[0].outputs.probs) == num_labels


def test_list_prompts(llm: LLM, prompt_token_ids):
    prompts = [prompt, prompt_token_ids]
    outputs = llm.classify(prompts, use_tqdm=False)
    assert len(outputs) == 2
    for i in range(len(outputs)):
        assert isinstance(outputs[i], ClassificationRequestOutput)
        assert outputs[i].prompt_token_ids == prompt_token_ids
        assert len(outputs[i].outputs.probs) == num_labels


def test_pooling_params(llm: LLM):
    def get_outputs(use_activation):
        outputs = llm.classify(prompt, pooling_params=PoolingParams(use_activation=use_activation), use_tqdm=False)
        return torch.tensor([x.outputs.probs for x in outputs])

    default = get_outputs(use_activation=None)
    w_activation = get_outputs(use_activation=True)
    wo_activation = get_outputs(use_activation=False)

    assert torch.allclose(default, w_activation, atol=1e-2), "Default should use activation."
    assert not torch.allclose(w_activation, wo_activation, atol=1e-2), "wo_activation should not use activation."
    assert torch.allclose(softmax(wo_activation), w_activation, atol=1e-2), "w_activation should be close to activation(wo_activation)."


def test_score_api(llm: LLM):
    err_msg = "Scoring API is only enabled for num_labels == 1."
    with pytest.raises(ValueError, match=err_msg):
        llm.score("ping", "pong", use_tqdm=False)


@pytest.mark.parametrize(
    "task",
    [
        "embed",
        "token_embed",
        "token_classify",
        "plugin",
    ],
)
def test_unsupported_tasks(llm: LLM, task: str):
    if task == "token_classify":
        # DEPARTURE: vLLM serves one pooling task per model (classify here) and raises "Try switching
        # the model's pooling_task via ..."; poolkit serves every task the model supports, and a
        # sequence classifier supports token_classify (its head on every token).
        (out,) = llm.encode(prompt, pooling_task=task, use_tqdm=False)
        assert out.outputs.data.shape == (len(out.prompt_token_ids), num_labels)
        return
    if task == "plugin":
        err_msg = "No IOProcessor plugin installed."
    else:
        err_msg = "Embedding API is not supported by this model.+"
    with pytest.raises(ValueError, match=err_msg):
        llm.encode(prompt, pooling_task=task, use_tqdm=False)
