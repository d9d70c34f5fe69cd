# Port of vllm tests/models/language/pooling/test_qwen3_reranker_seq_cls.py
# tomaarsen/Qwen3-Reranker-0.6B-seq-cls is Qwen3-Reranker converted to a one-output
# Qwen3ForSequenceClassification whose score row is lm_head[yes] - lm_head[no]; vLLM compares it
# with the causal LM's "no"/"yes" log-softmax. The offline stand-in keeps that identity without a
# conversion step: the tiny Qwen3ForCausalLM (conftest ``qwen3_lm_dir``) loaded as
# Qwen3ForSequenceClassification with classifier_from_token ["no", "yes"] and method
# "from_2_way_softmax" (vLLM's own recipe for building such a seq-cls checkpoint), against the same
# HF reference on the same directory.
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
            "method": "from_2_way_softmax",
        },
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


@pytest.mark.parametrize("model_name", ["Qwen3-Reranker-0.6B-seq-cls-stand-in"])
def test_model(qwen3_lm_dir, model_name):
    hf_outputs = hf_reranker(qwen3_lm_dir)
    vllm_outputs = vllm_reranker(qwen3_lm_dir)

    assert hf_outputs[0] == pytest.approx(vllm_outputs[0], rel=0.01)
    assert hf_outputs[1] == pytest.approx(vllm_outputs[1], rel=0.01)
