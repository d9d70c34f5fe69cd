# Port of vllm tests/models/language/pooling/test_qwen3_reranker.py
# Qwen/Qwen3-Reranker-4B (a Qwen3ForCausalLM read through its "no"/"yes" logits) with
# hf_overrides {"architectures": ["Qwen3ForSequenceClassification"], "classifier_from_token":
# ["no", "yes"], "is_qwen3_reranker": True} -> the tiny Qwen3ForCausalLM (conftest ``qwen3_lm_dir``),
# same overrides. The HF reference is vLLM's: the causal LM's last-position log-softmax over
# (no, yes), on the tokenizer's (query, document) pairs. Declared through these overrides, the
# model scores the plain pair as in vLLM (no score template unless one is given).
import pytest

text_1 = "What is the capital of France?"
texts_2 = ["The capital of Brazil is Brasilia.", "The capital of France is Paris."]


def vllm_reranker(model_dir):
    from poolkit import LLM

    model = LLM(
        model=str(model_dir),
        task="score",
        hf_overrides={
            "architectures": ["Qwen3ForSequenceClassification"],
            "classifier_from_token": ["no", "yes"],
            "is_qwen3_reranker": True,
        },
        dtype="float32",
    )
    outputs = model.score(text_1, texts_2)
    return [output.outputs.score for output in outputs]


def hf_reranker(model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()

    token_false_id = tokenizer.convert_tokens_to_ids("no")
    token_true_id = tokenizer.convert_tokens_to_ids("yes")

    max_length = 8192

    def process_inputs(pairs):
        inputs = tokenizer(pairs, padding=False, truncation="longest_first", return_attention_mask=False, max_length=max_length)
        for i, ele in enumerate(inputs["input_ids"]):
            inputs["input_ids"][i] = ele
        inputs = tokenizer.pad(inputs, padding=True, return_tensors="pt", max_length=max_length)
        return inputs

    @torch.no_grad()
    def compute_logits(inputs, **kwargs):
        batch_scores = model(**inputs).logits[:, -1, :]
        true_vector = batch_scores[:, token_true_id]
        false_vector = batch_scores[:, token_false_id]
        batch_scores = torch.stack([false_vector, true_vector], dim=1)
        batch_scores = torch.nn.functional.log_softmax(batch_scores, dim=1)
        return batch_scores[:, 1].exp().tolist()

    pairs = [(text_1, texts_2[0]), (text_1, texts_2[1])]
    return compute_logits(process_inputs(pairs))


@pytest.mark.parametrize("model_name", ["Qwen3-Reranker-4B-stand-in"])
def test_model(qwen3_lm_dir, model_name):
    hf_outputs = hf_reranker(qwen3_lm_dir)
    vllm_outputs = vllm_reranker(qwen3_lm_dir)

    assert hf_outputs[0] == pytest.approx(vllm_outputs[0], rel=0.01)
    assert hf_outputs[1] == pytest.approx(vllm_outputs[1], rel=0.01)
