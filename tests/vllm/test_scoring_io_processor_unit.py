# Port of vllm tests/entrypoints/pooling/scoring/test_io_processor_unit.py
# vLLM unit-tests helpers of its private scoring IO processors. The one with a public counterpart is
# test_token_type_ids_stay_aligned_with_a_truncated_padded_prompt: a cross-encoder pair truncated
# from the left must keep its token_type_ids (the query/document segments) aligned with the kept
# tokens. vLLM checks its internal truncate-and-pad of a hand-made 50-token prompt with
# TokenizeParams and compress_token_type_ids; the port scores a left-truncated pair through
# LLM.score on a tiny one-label BertForSequenceClassification (tests/support/tiny_models.build_classifier;
# BERT reads token_type_ids) and compares the kept tokens and the raw logit with transformers run
# on the same left-truncated pair, with the tokenizer's own token_type_ids. poolkit packs without
# padding, so vLLM's pad_prompt_tokens has no counterpart; the pair is truncated by the tokenizer
# (longest_first), as vLLM's pair prompts are.
# Not ported (vLLM internals):
# - test_llm_reranker_tokenization_is_independent_of_nonbinding_doc_limit: get_score_prompt of
#   vLLM's processor without a separator token (use_sep_token=False, plain concatenation), a mode
#   poolkit's cross-encoders do not have;
# - test_paired_scoring_preserves_request_error, test_jina_scoring_preserves_request_error_before_
#   indexing_output: vLLM's RequestError (a multimodal processor cache miss) carried through its
#   post-processing; poolkit has no such error path.
import pytest
import torch

from poolkit import LLM, PoolingParams


@pytest.fixture(scope="module")
def bert_cross_encoder_dir(vllm_models_root):
    from tiny_models import build_classifier

    return build_classifier(vllm_models_root / "bert-cross-encoder", "bert", num_labels=1)


def test_token_type_ids_stay_aligned_with_a_truncated_padded_prompt(bert_cross_encoder_dir):
    """The cross-encoder segment boundary must survive truncation from the left."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    num_query, num_doc = 30, 20
    words = "paris is the capital of france berlin is the capital of germany".split()
    query = " ".join(words[i % len(words)] for i in range(num_query))
    doc = " ".join(words[(i * 5) % len(words)] for i in range(num_doc))

    llm = LLM(str(bert_cross_encoder_dir), dtype="float32")
    truncation = {"truncate_prompt_tokens": 40, "truncation_side": "left"}
    (output,) = llm.score(query, doc, PoolingParams(use_activation=False), tokenization_kwargs=truncation)

    tokenizer = AutoTokenizer.from_pretrained(str(bert_cross_encoder_dir))
    tokenizer.truncation_side = "left"
    expected = tokenizer(query, doc, truncation=True, max_length=40, return_tensors="pt")
    prompt_token_ids = output.prompt_token_ids
    assert prompt_token_ids == expected["input_ids"][0].tolist()
    assert len(prompt_token_ids) == 40

    # Left truncation dropped the query's first tokens; the document starts after the first [SEP].
    token_type_ids = expected["token_type_ids"][0].tolist()
    first_doc = token_type_ids.index(1)
    query_ids = tokenizer(query, add_special_tokens=False)["input_ids"]
    kept_query = prompt_token_ids[1 : first_doc - 1]
    assert len(kept_query) < num_query and kept_query == query_ids[-len(kept_query) :]
    assert prompt_token_ids[first_doc - 1] == tokenizer.sep_token_id

    model = AutoModelForSequenceClassification.from_pretrained(str(bert_cross_encoder_dir)).eval()
    with torch.inference_mode():
        reference = model(**expected).logits[0, 0].item()
        # The types of the untruncated pair cut from the other end: the misalignment vLLM's test
        # guards against, which the model tells apart.
        full = tokenizer(query, doc, return_tensors="pt")["token_type_ids"][:, :40]
        misaligned = model(input_ids=expected["input_ids"], attention_mask=expected["attention_mask"], token_type_ids=full)
        misaligned = misaligned.logits[0, 0].item()
    assert output.outputs.score == pytest.approx(reference, abs=1e-4)
    assert abs(misaligned - reference) > 1e-2
