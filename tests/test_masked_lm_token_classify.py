"""token_classify on a masked LM (BertForMaskedLM): the MLM head over the vocabulary at every token.

tests/vllm/test_models_mlm.py checks the softmax against transformers; this checks what it does
not: raw logits with ``use_activation=False`` (also mixed per request in one batch), that the
chunked head gives what one call over all rows gives, and which models do not gain the task.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer

from poolkit import LLM, InvalidRequest, PoolingParams

TEXTS = ["The capital of France is Paris.", "hello", "what is the capital of germany?"]


@pytest.fixture(scope="module")
def mlm_dir(tmp_path_factory):
    from tiny_models import build_masked_lm

    return build_masked_lm(tmp_path_factory.mktemp("mlm") / "mlm", tie_word_embeddings=False)


@torch.inference_mode()
def test_raw_logits_over_the_vocabulary_match_transformers(mlm_dir, tiny_encoders):
    tok = AutoTokenizer.from_pretrained(str(mlm_dir))
    hf = AutoModelForMaskedLM.from_pretrained(str(mlm_dir)).eval()
    ref = [hf(**tok([t], return_tensors="pt")).logits[0].float() for t in TEXTS]

    llm = LLM(str(mlm_dir), dtype="float32")
    assert llm.default_task == "embed"  # unchanged: token_classify ranks after embed
    assert "token_classify" in llm.supported_tasks
    # Raw in even positions, softmax in odd ones, all in one packed batch.
    params = [PoolingParams(use_activation=i % 2 == 1) for i in range(len(TEXTS))]
    outs = llm.encode(TEXTS, params, pooling_task="token_classify")
    for i, (out, want) in enumerate(zip(outs, ref)):
        got = out.outputs.data
        assert got.dtype == torch.float32 and got.shape == want.shape == (len(out.prompt_token_ids), hf.config.vocab_size)
        torch.testing.assert_close(got, want.softmax(-1) if i % 2 else want, atol=1e-4, rtol=1e-4)

    # The head takes the LM head a few rows at a time; the chunks change nothing.
    head = llm.model.head(llm.model.task("token_classify"))
    head.chunk_rows = 3
    again = llm.encode(TEXTS, params, pooling_task="token_classify")
    for a, b in zip(outs, again):
        torch.testing.assert_close(a.outputs.data, b.outputs.data, atol=1e-6, rtol=0)

    # STEP parameters stay refused without STEP pooling.
    with pytest.raises(InvalidRequest, match="does not support"):
        llm.encode(TEXTS[:1], PoolingParams(returned_token_ids=[1]), pooling_task="token_classify")

    # A BertModel checkpoint labelled BertForMaskedLM has no MLM head: no token_classify.
    headless = LLM(str(tiny_encoders["bert"]), hf_overrides={"architectures": ["BertForMaskedLM"]})
    assert headless.supported_tasks == ["embed", "token_embed"]


def test_entities_need_a_token_classifier_with_labels(mlm_dir):
    # A masked LM classifies tokens over its vocabulary, not into entity labels.
    with pytest.raises(InvalidRequest, match="entities need a token classifier with labels"):
        LLM(str(mlm_dir)).entities("The capital of France is Paris.")
